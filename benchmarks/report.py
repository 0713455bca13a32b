"""Write ``reports/benchmarks.md`` from the committed JSON results in ``reports/benchmarks/``.

    python -m benchmarks.report

Every figure in the report comes from one of these files; each section names the command that regenerates its
file (built from the settings the JSON records, see ``command``) and the provenance the script recorded in it
(``benchmarks/provenance.py``; files written before it existed say so):

- ``throughput.json`` (ours vs diffusers), ``ldm_vs_pixel.json`` (latent vs pixel space),
- ``autoencoders.json``, ``autoencoders_perceptual_gan.json``, ``autoencoders_downstream.json`` (autoencoder variants),
- ``unet_layouts*.json`` (U-Net layouts), ``pipeline_run.json`` and ``pipeline_run_<preset>.json`` (what a ``make run`` measured),
  ``stage_profile.json`` (where a pipeline run's time goes, per stage), ``eval_speed.json`` (the evaluation's fixed costs),
  ``judge_spread*.json`` (one run's classifier-feature figures under reference classifiers of several seeds),
  ``judge_sensitivity*.json`` (known degradations of real images scored like samples: what a ratio means),
  ``sampling_spread.json`` (one run's figures over sampling seeds),
- ``quality_vs_steps.json`` (quality vs sampler steps of the default model),
- ``distill.json`` (distilled few-step students vs their teacher),
- ``autoencoder_ceiling.json`` (the autoencoder's ceiling on FD and recall, per autoencoder variant),
- ``downstream*.json`` (whole-pipeline variants of one ``make run``: params overrides re-run with ``dvc repro``),
- ``gpu_check.json`` and ``throughput_gpu.json`` (a GPU session).

A section whose JSON is absent says so and names the command that writes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.provenance import describe
from components.io import atomic_write_bytes

COMMANDS = {  # when a file is absent
    "throughput.json": "python -m benchmarks.throughput --threads 1",
    "ldm_vs_pixel.json": "python -m benchmarks.ldm_vs_pixel --pixel-max-images 110000 --ldm-budgets 5000,10000,20000,40000",
    "pixel_model_ddpm100_samples.png": "python -m benchmarks.ldm_vs_pixel --samples-png reports/benchmarks/pixel_model_ddpm100_samples.png",
    "autoencoders.json": "python -m benchmarks.autoencoders --datasets mnist cifar10 --downstream --num-threads 1",
    "pipeline_run.json": "make run && .venv/bin/python -m benchmarks.pipeline_run",
    "gpu_check.json": "bash benchmarks/gpu_check.sh",
    "throughput_gpu.json": "bash benchmarks/gpu_check.sh",
    "quality_vs_steps.json": "make run && .venv/bin/python -m benchmarks.quality_vs_steps --num-per-class 20",
    "text_prompts.json": "make run && .venv/bin/python -m benchmarks.text_prompts",
    "distill.json": "latentflow distill (distill.enabled: true) && .venv/bin/python -m benchmarks.distill --threads 1",
    "rgb_judge.json": "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.rgb_judge --preset cifar10",
    "autoencoder_ceiling.json": "python -m benchmarks.autoencoder_ceiling --num-threads 1",
}


def command(name: str, r: dict | list | None) -> str:
    """The command that rewrites ``reports/benchmarks/<name>`` with the settings recorded in ``r``."""
    out = "" if name in ("throughput.json", "ldm_vs_pixel.json", "autoencoders.json") else f" --out reports/benchmarks/{name}"
    if name.startswith("throughput") and isinstance(r, dict) and name != "throughput_gpu.json":
        threads = f" --threads {r['threads']}" if r.get("threads") else ""
        device = f" --device {r['device']}" if r.get("device", "cpu") != "cpu" else ""
        return (f"python -m benchmarks.throughput{threads}{device} --batch {r['batch']} --train-steps {r['train_steps_per_run']} "
                f"--sample-n {r['sample_n']} --sample-steps {r['sample_steps']} --guidance {r['guidance']:g} --repeats {r['repeats']}{out}")
    if name == "ldm_vs_pixel.json" and isinstance(r, dict):
        t = r["pixel_training"]
        budgets = ",".join(str(s["max_images"]) for s in r.get("ldm_sweep") or [])
        schedule = f" --pixel-schedule {t['schedule']},{t['beta_start']:g},{t['beta_end']:g}" if "schedule" in t else ""
        return (f"python -m benchmarks.ldm_vs_pixel --pixel-max-images {t['max_images']} --pixel-channels {t['channels']}{schedule}"
                f" --pixel-clip-sample {r.get('pixel_clip_sample') or 0:g}" + (f" --ldm-budgets {budgets}" if budgets else "")
                + f" --sampler {r['sampler']} --steps {r['steps']} --guidance {r['guidance']:g} --num-per-class {r['images_per_run'] // 10}"
                f" --repeats {r['repeats']} --threads {r['threads']}{out}")
    if name == "quality_vs_steps.json" and isinstance(r, dict):
        p = r["protocol"]
        samplers = ",".join(dict.fromkeys(x["sampler"] for x in r["rows"]))
        steps = ",".join(str(s) for s in dict.fromkeys(x["steps"] for x in r["rows"]))
        return (f"python -m benchmarks.quality_vs_steps --samplers {samplers} --steps {steps} --num-per-class "
                f"{p['num_generated'] // 10} --guidance {p['guidance']:g} --seed {p['seed']} "
                f"--timestep-spacing {p.get('timestep_spacing', 'leading')}")
    if name == "distill.json" and isinstance(r, dict):
        p = r["protocol"]
        return (f"python -m benchmarks.distill --num-per-class {p['num_generated'] // 10} --teacher-steps {p['teacher_steps']} "
                f"--guidance {p['guidance']:g} --seed {p['seed']} --batch-size {p['batch_size']} --threads {p['threads']}"
                + (f" --timing-per-class {p['timing_per_class']} --repeats {p['repeats']}" if "repeats" in p else ""))
    if name == "text_prompts.json" and isinstance(r, dict) and r.get("arguments"):
        a = r["arguments"]
        return (f"python -m benchmarks.text_prompts --run {a['run']} --seen-per-prompt {a['seen_per_prompt']} --held-out-per-prompt "
                f"{a['held_out_per_prompt']}" + (f" --max-images {a['max_images']}" if a.get("max_images") else "")
                + f" --threads {a['threads']}")
    if name.startswith("posterior_ceiling") and isinstance(r, dict) and r.get("command"):
        return r["command"]
    if name.startswith("downstream") and isinstance(r, dict) and r.get("variants"):
        variants = " ".join(f"--variant {n} " + " ".join(v["overrides"]) for n, v in r["variants"].items())
        base = (r.get("command_args") or {}).get("base", ".")
        return f"make run && .venv/bin/python -m benchmarks.downstream --base {base} {variants}{out}"
    if name.startswith("pipeline_run_"):
        if isinstance(r, dict) and r.get("command"):  # a run of an earlier recipe of the preset records how it was made
            return r["command"]
        preset, recipe = _preset_recipe(name)
        if recipe:  # pipeline_run_<preset>_<recipe>.json: `make run-<preset>` is today's recipe, not this file's
            raise ValueError(f"reports/benchmarks/{name}: a run of the {preset} preset's {recipe} recipe must record the "
                             "`command` that made it (its params differ from the preset's); add it to the JSON")
        return f"make run-{preset} && .venv/bin/python -m benchmarks.pipeline_run --root runs/{preset}{out}"
    if name.startswith("unet_layouts") and isinstance(r, dict):
        rows = r.get("rows") or []
        budgets = sorted({x["images_seen"] for x in rows})
        layouts = " ".join(dict.fromkeys(x["layout"] for x in rows))
        threads = f" --num-threads {r['num_threads']}" if r.get("num_threads") is not None else ""
        return (f"python -m benchmarks.unet_layouts --layouts {layouts}" + (f" --max-images {budgets[0]}" if len(budgets) == 1 else "")
                + f"{threads} --out reports/benchmarks/{name}")
    if name.startswith("autoencoders") and r:
        rows = _rows(r)
        datasets = " ".join(dict.fromkeys(x["dataset"] for x in rows))
        variants = " ".join(dict.fromkeys(x["variant"] for x in rows))
        down = sorted({x["diffusion_images"] for x in rows if "diffusion_images" in x})
        threads = r.get("num_threads", 1) if isinstance(r, dict) else 1
        return (f"python -m benchmarks.autoencoders --datasets {datasets} --variants {variants}"
                + (f" --downstream --diffusion-images {down[0]}" if down else "") + f" --num-threads {threads}{out}")
    if name.startswith("autoencoder_ceiling") and isinstance(r, dict) and r.get("rows"):
        variants = " ".join(x["variant"] for x in r["rows"])
        ae_images = f" --ae-images {r['ae_images']}" if r.get("ae_images") else ""
        return f"python -m benchmarks.autoencoder_ceiling --variants {variants}{ae_images} --num-threads {r.get('num_threads', 1)}{out}"
    return COMMANDS[name]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _source(name: str, r: dict | list | None) -> str:
    """The line naming a section's JSON, the command that regenerates it and the provenance it recorded."""
    prov = r.get("provenance") if isinstance(r, dict) else None
    return f"From `reports/benchmarks/{name}`; regenerate with `{command(name, r)}`. {describe(prov)}"


def throughput_section(r: dict | None, name: str = "throughput.json", where: str = "") -> list[str]:
    if r is None:
        return [f"## Ours vs diffusers{where}", "", f"Not measured yet: `{COMMANDS[name]}`.", ""]
    o, p = r["ours"], r["peer"]
    med = statistics.median
    return [
        f"## Ours vs diffusers{where} (same latent size, same batch, ±10 % parameters)",
        "",
        _source(name, r),
        "",
        f"Device: {r['device']} ({r['threads']} threads). Ours: U-Net `{o['preset']}` {tuple(o['channels'])}, "
        f"{o['parameters']:,} parameters. Peer: `diffusers.UNet2DModel` block_out_channels={tuple(p['block_out_channels'])}, "
        f"layers_per_block={p['layers_per_block']}, {p['parameters']:,} parameters ({p['parameters'] / o['parameters']:.3f}x).",
        f"Latents 4x8x8, training batch {r['batch']} ({r['train_steps_per_run']} steps a run), sampling {r['sample_n']} images with "
        f"{r['sample_steps']} DDIM steps and guidance {r['guidance']} (cond + uncond batched). Runs alternate ours/peer, "
        f"median of {r['repeats']} after a warm-up.",
        "",
        "| | ours | diffusers | ratio (ours / diffusers) |",
        "|---|---|---|---|",
        f"| training images/s | {med(o['train_img_s']):.1f} | {med(p['train_img_s']):.1f} | **{r['train_ratio']:.2f}** |",
        f"| sampling images/s | {med(o['sample_img_s']):.2f} | {med(p['sample_img_s']):.2f} | **{r['sample_ratio']:.2f}** |",
        "",
        f"All runs, training ours: {', '.join(f'{v:.1f}' for v in o['train_img_s'])}; diffusers: "
        f"{', '.join(f'{v:.1f}' for v in p['train_img_s'])}.",
        f"All runs, sampling ours: {', '.join(f'{v:.2f}' for v in o['sample_img_s'])}; diffusers: "
        f"{', '.join(f'{v:.2f}' for v in p['sample_img_s'])}.",
        "",
    ]


def _with_se(p: float, n: int) -> str:
    """A proportion with its binomial standard error sqrt(p (1 - p) / n)."""
    return f"{p:.3f} ± {(p * (1 - p) / n) ** 0.5:.3f}"


def _equal_consistency(p1: float, p2: float, n: int) -> bool:
    """Equal within measurement: the gap is at most 0.02 or two standard errors of the difference."""
    se_gap = (p1 * (1 - p1) / n + p2 * (1 - p2) / n) ** 0.5
    return abs(p1 - p2) <= max(0.02, 2 * se_gap)


def _clip_note(clip: float | None) -> str:
    return f", x0 clipped to ±{clip:g} while sampling" if clip else ""


def _pixel_schedule(t: dict) -> str:
    return f", noise schedule {t['schedule']} beta {t['beta_start']:g} to {t['beta_end']:g}" if "schedule" in t else ""


def budget_sentence(sweep: list[dict], target: float, pixel_images: int) -> str:
    """How many fewer training images the LDM needed to reach the pixel model's class consistency ``target``,
    bracketed by the sweep: the largest budget below the target and the smallest at or above it."""
    runs = sorted(sweep, key=lambda s: s["max_images"])
    tried = ", ".join(f"{s['max_images']:,} images → {s['class_consistency']:.3f}" for s in runs)
    head = (f"LDM training budgets tried for equal class consistency (the pipeline's stage, same autoencoder): {tried}; "
            f"the pixel model reached {target:.3f} with {pixel_images:,} images. ")
    above = [s for s in runs if s["class_consistency"] >= target]
    if not above:
        last = runs[-1]
        return head + (f"No LDM budget tried reached it (the largest, {last['max_images']:,} images, is "
                       f"{pixel_images / last['max_images']:.1f}x fewer than the pixel model's): try larger `--ldm-budgets`.")
    hi = above[0]
    below = [s for s in runs if s["max_images"] < hi["max_images"] and s["class_consistency"] < target]
    if not below:
        return head + (f"The LDM reached it with at most {hi['max_images']:,} images, at least "
                       f"{pixel_images / hi['max_images']:.1f}x fewer training images (no smaller budget was tried).")
    lo = below[-1]
    return head + (f"The LDM reached it between {lo['max_images']:,} ({lo['class_consistency']:.3f}) and {hi['max_images']:,} images "
                   f"({hi['class_consistency']:.3f}): {pixel_images / hi['max_images']:.3g}–{pixel_images / lo['max_images']:.3g}x "
                   "fewer training images than the pixel model. Sampling cost does not depend on the training budget, so the "
                   "speed-up holds for any level the pixel model reaches with this architecture.")


def ldm_section(r: dict | None, samples_png: bool = False) -> list[str]:
    if r is None:
        return ["## Latent vs pixel space", "", f"Not measured yet: `{COMMANDS['ldm_vs_pixel.json']}`.", ""]
    mem = "cuda_peak_mb" if r["device"] == "cuda" else "peak_rss_mb"
    n = r["images_per_run"]
    compared = r.get("compared", "ldm")
    ldm_budget = r.get("ldm_training", {}).get("max_images")
    cols = [("ldm", f"LDM, pipeline ({ldm_budget:,} images)" if ldm_budget else "LDM (8x8x4 latents)")]
    if "ldm_matched" in r:
        cols.append(("ldm_matched", f"LDM at the pixel model's class consistency ({r['ldm_matched']['max_images']:,} images)"))
    cols.append(("pixel", f"pixel (32x32, {r['pixel_training']['max_images']:,} images)"))

    def row(name: str, cell) -> str:
        return f"| {name} | " + " | ".join(cell(r[k]) for k, _ in cols) + " |"

    sweep = r.get("ldm_sweep") or []
    comp = r[compared]
    return [
        "## Latent vs pixel space (per sample)",
        "",
        _source("ldm_vs_pixel.json", r),
        "",
        f"Device: {r['device']} ({r['threads']} threads). {n} images a run, {r['sampler']} {r['steps']} steps, "
        f"guidance {r['guidance']} for every model; median of {r['repeats']} runs, each in a fresh process. The LDM's time includes "
        f"decoding. Pixel model: channels {r['pixel_training']['channels']}, trained on {r['pixel_training']['max_images']:,} images "
        f"({r['pixel_training']['train_seconds']} s){_pixel_schedule(r['pixel_training'])}"
        f"{_clip_note(r.get('pixel_clip_sample'))}. "
        "Class consistency is the share of samples the project's classifier (`models/classifier`) labels as the class asked "
        "for; ± is its standard error.",
        "",
        "| | " + " | ".join(title for _, title in cols) + " |",
        "|---|" + "---|" * len(cols),
        row("U-Net parameters", lambda m: f"{m['parameters']:,}"),
        row("MACs per U-Net forward", lambda m: f"{m['macs_per_forward']:,}"),
        row("class consistency", lambda m: _with_se(m["class_consistency"], n)),
        row("sampling images/s", lambda m: f"{m['img_s']:.2f}"),
        row(f"peak memory (MB, {mem}; process baseline {r['baseline_rss_mb']:.0f})", lambda m: f"{m[mem]:.0f}"),
        "",
        *([budget_sentence(sweep, r["pixel"]["class_consistency"], r["pixel_training"]["max_images"]), ""] if sweep else []),
        f"**Speed-up per sample: {r['speedup_per_sample']:.1f}x** ({compared} vs pixel; MACs ratio {r['macs_ratio']:.1f}x); class "
        f"consistency gap (LDM - pixel) {r['class_consistency_gap']:+.3f}. Pipeline LDM vs pixel: "
        f"{r['ldm']['img_s'] / r['pixel']['img_s']:.1f}x at class consistency {r['ldm']['class_consistency']:.3f} vs "
        f"{r['pixel']['class_consistency']:.3f}.",
        "",
        *([f"**Not at equal class consistency** (gap {r['class_consistency_gap']:+.3f}): give the pixel model a larger training "
           "budget (`--pixel-max-images`) or the LDM smaller ones (`--ldm-budgets`); the MACs ratio above does not depend on it."]
          if not _equal_consistency(comp["class_consistency"], r["pixel"]["class_consistency"], n) else []),
        "",
        *([f"Samples of the pixel model (columns are classes 0-9): `reports/benchmarks/pixel_model_ddpm100_samples.png`; regenerate with "
           f"`{COMMANDS['pixel_model_ddpm100_samples.png']}` (the run's sampler, steps, guidance and x0 clipping by default; it needs "
           "the benchmark's pixel model in `models_bench/pixel`, which is not in git). The PNG records its settings and provenance "
           "in its text chunks; one without them predates that command.", ""]
          if samples_png else []),
    ]


def _rows(r: dict | list | None) -> list[dict]:
    """Rows of an autoencoder benchmark JSON: ``{"rows": [...], ...}``, or a bare list (files from before provenance)."""
    if r is None:
        return []
    return r if isinstance(r, list) else r["rows"]


def _img_s(row: dict) -> float:
    return row["images"] / row["train_seconds"]


def _cost_verdict(v: float, lo: float, hi: float) -> str:
    """A variant's training images/s against the baseline's runs (lo..hi images/s); 10 % slack either side."""
    if v < lo / 1.1:
        return f"{lo / v:.1f}–{hi / v:.1f}x slower than the baseline's runs" if hi >= lo * 1.05 else f"{lo / v:.1f}x slower"
    if v > hi * 1.1:
        return "faster than every baseline run"
    return "within the baseline runs' spread"


def autoencoder_section(main: dict | list | None, extra: dict | list | None, downstream: dict | list | None) -> list[str]:
    rows, extra_rows, down_rows = _rows(main), _rows(extra), _rows(downstream)
    if not rows:
        return ["## Autoencoder variants", "", f"Not measured yet: `{COMMANDS['autoencoders.json']}`.", ""]
    by = {(r["dataset"], r["variant"]): r for r in rows + extra_rows}
    names = {"kl_f4": "`kl`, f = 4", "kl_f8": "`kl`, f = 8", "vq_f4": "`vq`, f = 4", "none_f4": "`none`, f = 4 (plain MSE)",
             "kl_f4_perceptual": "`kl` f = 4 + perceptual", "kl_f4_gan": "`kl` f = 4 + PatchGAN"}
    variants = list(dict.fromkeys(r["variant"] for r in rows + extra_rows))
    lines = ["## Autoencoder variants (validation PSNR, same size, same seed)", "",
             _source("autoencoders.json", main)]
    if extra_rows:
        lines.append(_source("autoencoders_perceptual_gan.json", extra))
    lines += ["", "| variant | MNIST val PSNR (dB) | CIFAR-10 val PSNR (dB) | parameters (MNIST) | MACs / round trip | MNIST training s |",
              "|---|---|---|---|---|---|"]
    for v in variants:
        m, c = by.get(("mnist", v)), by.get(("cifar10", v))
        ref = m or c
        extras = ", ".join(f"{k} {ref[k]:,}" for k in ("perceptual_weight", "disc_weight", "disc_start_images") if k in ref)
        lines.append(f"| {names.get(v, v)}{f' ({extras})' if extras else ''} | {m['val_psnr']:.2f} | " if m else f"| {names.get(v, v)} | – | ")
        lines[-1] += (f"{c['val_psnr']:.2f} | " if c else "– | ") + (f"{ref['parameters']:,} | {ref['macs_per_forward'] / 1e6:.1f} M | "
                                                                      f"{m['train_seconds'] if m else '–'} |")
    def budgets(dataset: str) -> str:
        return ", ".join(f"{i:,}" for i in sorted({r["images"] for r in rows + extra_rows if r["dataset"] == dataset})) or "–"

    lines += ["", f"Training budget: MNIST {budgets('mnist')} images, CIFAR-10 {budgets('cifar10')} images."]
    base_runs = [r for r in rows + down_rows if r["dataset"] == "mnist" and r["variant"] == "kl_f4"]
    costly = [by[("mnist", v)] for v in ("kl_f4_perceptual", "kl_f4_gan") if ("mnist", v) in by]
    if base_runs and costly:
        speeds = sorted(_img_s(r) for r in base_runs)
        lo, hi = speeds[0], speeds[-1]
        verdicts = [(r, _cost_verdict(_img_s(r), lo, hi)) for r in costly]
        slower = [names[r["variant"]] for r, text in verdicts if "slower" in text]
        psnr = ", ".join(f"{names[r['variant']]} {r['val_psnr']:.2f} dB" for r in costly)
        lines += ["", f"Training throughput on MNIST (wall time of the stage on a shared CPU): `kl` f = 4 alone "
                  f"{' and '.join(f'{s:.1f}' for s in speeds)} images/s in {len(speeds)} run(s) of the same configuration; "
                  + "; ".join(f"{names[r['variant']]} {_img_s(r):.1f} images/s ({text})" for r, text in verdicts) + ". "
                  + ("These wall times do not show a throughput cost of the perceptual or GAN term."
                     if not slower else f"Slower than every baseline run: {', '.join(slower)}.")
                  + f" PSNR: {psnr} against "
                  f"{by[('mnist', 'kl_f4')]['val_psnr']:.2f} dB for `kl` f = 4."]
    if down_rows:
        lines += ["", _source("autoencoders_downstream.json", downstream),
                  "", "Downstream (the pipeline's latent U-Net trained on each autoencoder's latents, same budget, sampled with params.yaml's "
                  "`sample` settings): "
                  + "; ".join(f"{names.get(r['variant'], r['variant'])}: class consistency {r['class_consistency']:.3f}, Fréchet distance "
                              f"(classifier features) {r['fd_classifier']:.1f} ({r['diffusion_images']:,} diffusion training images)"
                              for r in down_rows) + "."]
    return [*lines, ""]


def unet_layouts_section(files: dict[str, dict]) -> list[str]:
    lines = ["## U-Net layouts", ""]
    if not files:
        return [*lines, "No U-Net layout run committed: `python -m benchmarks.unet_layouts --num-threads 1` (after `make run`) writes "
                "`reports/benchmarks/unet_layouts.json`.", ""]
    for name, r in files.items():
        lines += [_source(name, r), "", "| layout | images | params | MACs/forward | train s | class consistency | FD (classifier) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {x['layout']} | {x['images_seen']:,} | {x['parameters']:,} | {x['macs_per_forward'] / 1e6:.1f} M | {x['train_seconds']:.0f} | "
                  f"{x['class_consistency']:.3f} ± {(x['class_consistency'] * (1 - x['class_consistency']) / x['num_generated']) ** 0.5:.3f} | "
                  f"{x['fd_classifier']:.2f} |" for x in r["rows"]]
        lines.append("")
    return lines


def _preset_recipe(name: str) -> tuple[str, str]:
    """``pipeline_run_<preset>[_<recipe>].json`` -> (preset, recipe or "")."""
    preset, _, recipe = name.removeprefix("pipeline_run_").removesuffix(".json").partition("_")
    return preset, recipe


def pipeline_section(r: dict | None, name: str = "pipeline_run.json") -> list[str]:
    preset, recipe = _preset_recipe(name)
    title = "## Pipeline run (`make run`)" if name == "pipeline_run.json" else f"## Pipeline run ({preset} preset{f', {recipe} recipe' if recipe else ''})"
    if r is None:
        return [title, "", "No pipeline run committed: after `make run`, `.venv/bin/python -m benchmarks.pipeline_run` "
                "writes `reports/benchmarks/pipeline_run.json` (a preset: `make run-cifar10 && .venv/bin/python -m benchmarks.pipeline_run "
                "--root runs/cifar10 --out reports/benchmarks/pipeline_run_cifar10.json`).", ""]
    ae, dm, ev = r["autoencoder"], r["diffusion"], r["evaluate"]
    s = ev.get("sampler") or {}
    wall = f" The whole `make run` took {r['make_run_wall_minutes']:.1f} min." if r.get("make_run_wall_minutes") else ""
    fds = ", ".join(f"{k.removeprefix('fd_')} {v:.1f}" for k, v in ev.items() if k.startswith("fd_") and not k.startswith("fd_ratio_"))
    return [title, "", _source(name, r), "",
            f"Autoencoder {ae['train_seconds'] / 60:.1f} min ({ae['images_seen']:,} images, val PSNR {ae['val_psnr']:.1f} dB), latent U-Net "
            f"{dm['train_seconds'] / 60:.1f} min ({dm['images_seen']:,} images).{wall} {ev['class_consistency']:.1%} of "
            f"{ev['num_generated']:,} generated images ({s.get('name')} {s.get('steps')} steps, guidance {s.get('guidance')}) are classified "
            f"as the requested class by {_judge(ev)}; Fréchet distance {fds}.{_ratios(ev)}", ""]


def downstream_section(r: dict, name: str) -> list[str]:
    """Whole-pipeline variants of one run (``benchmarks.downstream``): per variant, its overrides, the stages it
    re-ran and their wall time, the training seconds and evaluate's figures, the base run's first."""
    def row(label: str, rec: dict, seconds: str) -> str:
        ae, dm, ev = rec["autoencoder"], rec["diffusion"], rec["evaluate"]
        pair = lambda k: f"{ev.get(k + '_classifier', float('nan')):.2f} / {ev.get(k + '_effnet_lite0', float('nan')):.2f}"  # noqa: E731
        return (f"| {label} | {seconds} | {ae['train_seconds']:.0f} / {dm['train_seconds']:.0f} | {ae.get('val_psnr', float('nan')):.2f} | "
                f"{ev['class_consistency']:.3f} | {pair('fd_ratio')} | {pair('recall_ratio')} | {pair('fd_ratio_reconstruction')} |")
    lines = [f"## Whole-pipeline variants (`{name}`)", "", _source(name, r), ""] + ([r["note"], ""] if r.get("note") else []) + [
             "| run | `dvc repro` s (stages re-run) | autoencoder / U-Net s | val PSNR dB | class consistency | FD ratio "
             "(classifier / EffNet) | recall ratio | autoencoder ceiling FD ratio |", "|---|---|---|---|---|---|---|---|",
             row("base (`make run`)", r["base"], "-")]
    for n, v in r["variants"].items():
        rerun = ", ".join(v.get("stages_rerun") or []) or "none"
        lines.append(row(f"{n}: `{' '.join(v['overrides'])}`", v["record"], f"{v['repro_seconds']:.0f} ({rerun})"))
    return [*lines, ""]


def _ratios(ev: dict) -> str:
    """The samples' FD and recall over the real-vs-real baseline's, per extractor, and the autoencoder's ceiling on them
    (the baseline's images passed through the autoencoder), where the run recorded them."""
    parts = []
    for e in sorted(k.removeprefix("fd_ratio_") for k in ev if k.startswith("fd_ratio_") and not k.startswith("fd_ratio_reconstruction_")):
        ceiling = ev.get(f"fd_ratio_reconstruction_{e}"), ev.get(f"recall_ratio_reconstruction_{e}")
        of = f" (the autoencoder's reconstructions: {ceiling[0]:.2f} and {ceiling[1]:.2f})" if None not in ceiling else ""
        recall = ev.get(f"recall_ratio_{e}")
        parts.append(f"{e}: FD ratio {ev[f'fd_ratio_{e}']:.2f}" + (f", recall ratio {recall:.2f}" if recall is not None else "") + of)
    return (" Over the real-vs-real baseline, " + "; ".join(parts) + ".") if parts else ""


def _judge(ev: dict) -> str:
    """Who judged class consistency (metrics.json's ``judge``; runs before it existed: the classifier) and how well it
    reads real val images."""
    nan = float("nan")
    if ev.get("judge", "classifier") == "classifier":
        probe = ev.get("effnet_probe_val_accuracy")
        other = f"; the EfficientNet-Lite0 probe reached {probe:.3f}" if probe is not None else ""
        return f"the pipeline's classifier (its val accuracy {ev.get('classifier_val_accuracy', nan):.3f}{other})"
    return (f"the {ev['judge']} judge (a linear probe on EfficientNet-Lite0 features, val accuracy {ev.get('judge_val_accuracy', nan):.3f}; "
            f"the pipeline's classifier: val accuracy {ev.get('classifier_val_accuracy', nan):.3f}, class consistency "
            f"{ev.get('class_consistency_classifier', nan):.1%})")


def stage_profile_section(r: dict | None) -> list[str]:
    """Per stage of one pipeline run: wall seconds, import seconds, peak memory and the costliest function of
    ``components/`` (the stage modules' own ``run`` only wraps it)."""
    title = "## Where a pipeline run's time goes (stage profile)"
    if not r or not r.get("runs"):
        return [title, "", "No profile committed: `.venv/bin/python -m benchmarks.stage_profile --breakdown` writes "
                "`reports/benchmarks/stage_profile.json`.", ""]
    lines = [title, ""]
    for label, run in r["runs"].items():
        env = f"OMP_NUM_THREADS={run['omp_num_threads']} " if run.get("omp_num_threads") else ""
        profiled = run.get("profiled", "--breakdown" in run.get("command", ""))
        how = ("under cProfile (`--breakdown`): the times show where a stage's time goes, not how long the pipeline "
               "takes (cProfile slows Python-heavy stages up to about 2x)" if profiled else "without a profiler: the pipeline's own times")
        lines += [f"**{label}**: from `reports/benchmarks/stage_profile.json` (`runs.{label}`); regenerate with "
                  f"`{env}.venv/bin/{run['command']}`; {how}. {describe(run.get('provenance'))}", "",
                  "| stage | wall s | of which imports s | peak MB | costliest function of components/ (cumulative s) |", "|---|---:|---:|---:|---|"]
        for row in run["stages"]:
            top = next((t for t in row.get("top") or [] if t["function"].startswith("components/")), None)
            where = f"`{top['function'].split(':')[-1]}` ({top['cumulative_s']:.1f})" if top else ""
            lines.append(f"| {row['stage']} | {row['wall_s']:.1f} | {row['import_s']:.1f} | {row['peak_rss_mb']:,} | {where} |")
        lines += [f"| total | {run['total_wall_s']:.1f} | {run['total_import_s']:.1f} | | `dvc status` {run['dvc_status_s']:.1f} s |", ""]
    return lines


NETWORK_NAMES = {"unet": "U-Net"}  # eval_speed.json's network keys as the report writes them


def eval_speed_section(r: dict | None) -> list[str]:
    """The evaluation's fixed costs and the training loop's AdamW step, each against its former way in the same process
    (``benchmarks/eval_speed.py``)."""
    title = "## The evaluation's fixed costs (EfficientNet features, classifier training, Fréchet distance) and the training loop's optimizer step"
    if r is None:
        return [title, "", "Not measured yet: `.venv/bin/python -m benchmarks.eval_speed` writes `reports/benchmarks/eval_speed.json`.", ""]
    e, c, f = r["effnet_lite0_features"], r["classifier_training"], r["frechet_distance"]
    return [
        title, "", f"From `reports/benchmarks/eval_speed.json`; regenerate with `.venv/bin/{r['command']}`. {describe(r.get('provenance'))} "
        f"Medians of {r['repeats']} alternating runs each; speed-up = the former way's time / today's.", "",
        "| piece | today | former way | today's time | former time | speed-up |", "|---|---|---|---:|---:|---:|",
        *(f"| EfficientNet-Lite0 features, {x['images']} images, batches of {x['batch_size']} | {x.get('ours', 'channels-last')} | "
          f"{x.get('peer', 'contiguous')} | {x['ours_s']:.2f} s ({x['ours_images_per_s']:.1f} img/s) | {x['peer_s']:.2f} s "
          f"({x['peer_images_per_s']:.1f} img/s) | {x['speedup']:.2f}x |" for x in (e, r.get("effnet_lite0_fusion")) if x),
        *(f"| EfficientNet-Lite0 features, {b['images']} images | {b['ours']} | {b['peer']} | {b['ours_s']:.2f} s "
          f"({b['ours_images_per_s']:.1f} img/s) | {b['peer_s']:.2f} s ({b['peer_images_per_s']:.1f} img/s) | {b['speedup']:.2f}x |"
          for b in (r.get("effnet_lite0_batch"),) if b),
        f"| reference classifier, one training step of {c['batch_size']} | channels-last | contiguous | {c['ours_s_per_step']:.3f} s | "
        f"{c['peer_s_per_step']:.3f} s | {c['speedup']:.2f}x |",
        f"| Fréchet distance, {f['dim']}-d statistics of {f['images']} images | two `eigh` | pytorch-fid's `sqrtm` | {f['ours_s']:.3f} s | "
        f"{f['peer_s']:.3f} s | {f['speedup']:.2f}x |",
        *(f"| AdamW step, the default {NETWORK_NAMES.get(o['network'], o['network'])}'s {o['parameters']:,} parameters ({o['tensors']} tensors) | foreach | "
          f"torch's default on the CPU (a loop) | {1000 * o['ours_s_per_step']:.2f} ms | {1000 * o['peer_s_per_step']:.2f} ms | "
          f"{o['speedup']:.2f}x |" for o in r.get("training_optimizer", [])), "",
        f"The features differ by at most {e['max_abs_feature_difference']:.1e} (rounding)"
        + (f", across the two batch sizes by {r['effnet_lite0_batch']['max_abs_feature_difference']:.1e}" if "effnet_lite0_batch" in r else "")
        + f"; the two Fréchet distances by "
        f"{f['relative_difference']:.1e} relative."
        + "".join(f" The {NETWORK_NAMES.get(o['network'], o['network'])}'s parameters after the same AdamW steps differ by "
                  f"{o['max_abs_parameter_difference']:.1e} "
                  f"(foreach against the loop); torch's fused CPU kernel takes {1000 * o['fused_s_per_step']:.2f} ms "
                  f"({o['fused_speedup']:.2f}x the loop's speed) and differs by {o['fused_max_abs_parameter_difference']:.1e}."
                  for o in r.get("training_optimizer", [])), "",
    ]


def _spread_table(r: dict, cols: list[tuple[str, str, int]], seed_header: str, ratio_digits: int, matches: bool | None) -> list[str]:
    """A spread benchmark's table: one row per seed, the max/min row, whether the base seed reproduced the run, the note."""
    lines = [f"| {seed_header} | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {row['seed']} | " + " | ".join(f"{row[k]:.{d}f}" for k, _, d in cols) + " |" for row in r["rows"]]
    ratios = [r["spread"][k]["max_over_min"] for k, _, _ in cols]
    lines.append("| max / min | " + " | ".join("-" if v is None else f"{v:.{ratio_digits}f}" for v in ratios) + " |")
    if matches is not None:
        lines += ["", "The row of the run's own seed " + ("reproduces" if matches else "does **not** reproduce") + " its `metrics.json` (rel 1e-3)."]
    if r.get("note"):
        lines += ["", r["note"]]
    return [*lines, ""]


def judge_spread_section(r: dict | None, name: str = "judge_spread.json") -> list[str]:
    """One run's classifier-feature figures read by reference classifiers trained with several seeds."""
    if r is None:
        return []
    title = "## How much one run's classifier-feature figures depend on the reference classifier (judge spread)"
    if name != "judge_spread.json":
        title += f" — `{name}`"
    cols = [("val_accuracy", "val accuracy", 3), ("class_consistency", "class consistency", 3), ("fd_real", "FD real-vs-real", 3),
            ("fd_ratio_samples", "FD ratio samples", 2), ("recall_ratio_samples", "recall ratio samples", 2),
            ("fd_ratio_reconstruction", "FD ratio ceiling", 2), ("recall_ratio_reconstruction", "recall ratio ceiling", 2)]
    head = [title, "", f"From `reports/benchmarks/{name}`; regenerate with `.venv/bin/{r['command']}`. "
            f"{describe(r.get('provenance'))} The run `{r['run']}` scored {r['num']} images per set with the classifier of each "
            "seed (everything else as `reference_stats`).", ""]
    return head + _spread_table(r, cols, "classifier seed", 2, (r.get("evaluate") or {}).get("base_seed_row_matches"))


def judge_sensitivity_section(r: dict | None, name: str = "judge_sensitivity.json") -> list[str]:
    """Known degradations of real images scored like samples (``benchmarks/judge_sensitivity.py``): what a ratio means."""
    if r is None:
        return []
    title = "## What an FD ratio means: the judges on known degradations of real images (judge sensitivity)"
    if name != "judge_sensitivity.json":
        title += f" — `{name}`"
    extractors = [e for e in ("classifier", "effnet_lite0") if e in r["real"]]
    label = {"classifier": "classifier", "effnet_lite0": "EfficientNet"}
    check = (r.get("evaluate") or {}).get("reconstruction_row_matches")
    lines = [title, "", f"From `reports/benchmarks/{name}`; regenerate with `.venv/bin/{r['command']}`. {describe(r.get('provenance'))} "
             f"The run `{r['run']}`'s real-vs-real subset ({r['num']} train images; {r['real_zero_fraction']:.1%} of their pixels are "
             "exactly 0), changed one way per row and scored against the run's val reference by its own judges, as `evaluate` "
             "scores samples. The reconstruction row is `evaluate`'s autoencoder ceiling"
             + ("" if check is None else f" (it reproduces the run's metrics.json: {'yes' if check else '**no**'})") + "."
             + (f" {r['note']}" if r.get("note") else ""), "",
             "| images | PSNR dB | exactly-0 pixels | " + " | ".join(f"FD ratio {label[e]} | recall ratio {label[e]}" for e in extractors) + " |",
             "|---|---|---|" + "---|---|" * len(extractors)]
    for row in r["rows"]:
        cells = " | ".join(f"{row[e]['fd']:.2f} | {row[e]['recall']:.2f}" if row[e]["recall"] is not None else f"{row[e]['fd']:.2f} | -"
                           for e in extractors)
        lines.append(f"| {row['set']} | {row['psnr']:.1f} | {row['zero_fraction']:.3f} | {cells} |")
    return [*lines, ""]


def sampling_spread_section(r: dict | None) -> list[str]:
    """One run's figures over sampling seeds: the same U-Net, judge and reference (``benchmarks/sampling_spread.py``)."""
    if r is None:
        return []
    cols = [("class_consistency", "class consistency", 3), ("fd_ratio_classifier", "FD ratio classifier", 2),
            ("fd_ratio_effnet_lite0", "FD ratio EfficientNet", 3), ("recall_ratio_classifier", "recall ratio classifier", 2),
            ("recall_ratio_effnet_lite0", "recall ratio EfficientNet", 2)]
    head = ["## How much one run's figures move with the sampling seed (sampling spread)", "",
            f"From `reports/benchmarks/sampling_spread.json`; regenerate with `.venv/bin/{r['command']}`. {describe(r.get('provenance'))} "
            f"The run `{r['run']}` sampled again ({r['sampler']['name']}, {r['sampler']['steps']} steps, guidance {r['sampler']['guidance']:g}) "
            "and scored by `evaluate`'s code with the run's own judge and reference.", ""]
    return head + _spread_table(r, [c for c in cols if c[0] in r["spread"]], "sampling seed", 3, r.get("base_seed_row_matches"))


def quality_vs_steps_section(r: dict | None) -> list[str]:
    """Class consistency and Fréchet distance (classifier features) per sampler and step count."""
    title = "## Quality vs sampler steps"
    if r is None:
        return [title, "", "Not measured yet (`reports/benchmarks/quality_vs_steps.json` is absent): "
                f"`{COMMANDS['quality_vs_steps.json']}`. dpmpp_2m figures measured before issue 13's fix (a DDIM timestep grid "
                "under DPM-Solver++ for leading and linspace spacing) are not comparable with it.", ""]
    p, rows = r["protocol"], r["rows"]
    steps = list(dict.fromkeys(x["steps"] for x in rows))
    samplers = list(dict.fromkeys(x["sampler"] for x in rows))
    cell = {(x["sampler"], x["steps"]): x for x in rows}

    def table(key: str, fmt: str) -> list[str]:
        out = ["| sampler | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
        for sm in samplers:
            vals = [cell.get((sm, st)) for st in steps]
            out.append(f"| {sm} | " + " | ".join("–" if v is None or "error" in v else format(v[key], fmt) for v in vals) + " |")
        return out

    lines = [title, "", _source("quality_vs_steps.json", r), "",
             f"{p['num_generated']} images per run ({p['num_generated'] // 10} per class), guidance {p['guidance']:g}, seed {p['seed']}, "
             f"timestep spacing {p.get('timestep_spacing', 'leading')}; the same initial noise and labels for every run. "
             f"Reference: the {p['reference']} ({p['num_reference']} images); features: {p['extractor']}.", "",
             "Class consistency (share classified as the requested class):", "", *table("class_consistency", ".3f"), "",
             "Fréchet distance in the classifier's feature space (lower is better):", "", *table("fd_classifier", ".2f"), ""]
    errors = [x for x in rows if "error" in x]
    if errors:
        lines += ["Not run (the sampler refuses the step count): " + "; ".join(f"{x['sampler']} {x['steps']}: {x['error']}" for x in errors), ""]
    return lines


def distill_section(r: dict | None) -> list[str]:
    """Distilled students vs their teacher: class consistency, Fréchet distance, images/s, and the issue's targets."""
    title = "## Distilled few-step students"
    if r is None:
        return [title, "", f"Not measured yet (`reports/benchmarks/distill.json` is absent): `{COMMANDS['distill.json']}`.", ""]
    p, d, rows, t = r["protocol"], r["distill"], r["rows"], r.get("targets")
    rounds = "; ".join(f"{x['teacher_steps']}→{x['student_steps']} steps: {x['images_seen']:,} images, {x['train_seconds']:.0f} s, "
                       f"loss {x['first_loss']:.4f}→{x['final_loss']:.4f}" for x in d.get("rounds") or [])
    lines = [title, "", _source("distill.json", r), "",
             f"Students of the distill stage (guided progressive distillation, guidance {d['guidance']:g} folded in; rounds: {rounds}). "
             f"{p['num_generated']} images per row ({p['num_generated'] // 10} per class), seed {p['seed']}, the same labels and initial "
             f"noise for every row; reference: the {p['reference']} ({p['num_reference']} images); features: {p['extractor']}. "
             f"Timing: {p['timing']}, {p['threads']} torch thread(s).", "",
             "| model | DDIM steps | U-Net passes per step | class consistency | Fréchet distance | images/s | × teacher |",
             "|---|---|---|---|---|---|---|"]
    teacher = rows[0]
    for x in rows:
        speed = x["images_per_s"] / teacher["images_per_s"]
        lines.append(f"| {x['model']} | {x['steps']} | {x['unet_passes_per_step']} | {x['class_consistency']:.3f} | "
                     f"{x['fd_classifier']:.2f} | {x['images_per_s']:.1f} | {speed:.1f} |")
    lines.append("")
    if t is not None:
        def ok(flag: bool) -> str:
            return "met" if flag else "NOT met"

        lines += [f"Targets at {t['steps']} steps ({t['rule']}): class consistency drop {t['class_consistency_drop']:+.3f} "
                  f"({ok(t['class_consistency_met'])}), FD ratio {t['fd_ratio']:.2f} ({ok(t['fd_met'])}), speed-up {t['speedup']:.1f}× "
                  f"({ok(t['speedup_met'])}).", ""]
    return lines


def text_prompts_section(r: dict | None) -> list[str]:
    """Class consistency of prompt-generated samples (seen and held-out phrasings) and the text encoder's cost."""
    title = "## Text prompts"
    if r is None:
        return [title, "", f"Not measured yet (`reports/benchmarks/text_prompts.json` is absent): `{COMMANDS['text_prompts.json']}`.", ""]
    h, se, enc, tr, th = r["held_out"], r["seen"], r["text_encoder"], r["training"], r["thickness"]
    lines = [title, "", _source("text_prompts.json", r), "",
             f"The text-conditioned U-Net trained at {tr['images_seen']:,} images ({tr['train_seconds']:.0f} s), sampled with "
             f"{r['sampling']['sampler']} {r['sampling']['steps']} steps at guidance {r['sampling']['guidance']:g}; class consistency "
             "is the share the pipeline's classifier labels as the prompt's digit.", "",
             "| phrasings | images | class consistency |", "|---|---|---|",
             f"| seen in training ({len(se['per_template'])} templates) | {se['num_images']} | {se['class_consistency']:.3f} |",
             f"| held out ({len(h['per_template'])} templates) | {h['num_images']} | {h['class_consistency']:.3f} |", "",
             "Held-out templates: " + "; ".join(f"`{t}` {v:.3f}" for t, v in h["per_template"].items()) + ".", "",
             f"Text encoder: {enc['parameters']:,} parameters ({enc['parameters_with_projections']:,} with the two projections into the "
             f"U-Net, {enc['share_of_parameters']:.1%} of {enc['unet_parameters_total']:,}), {enc['macs_per_caption']:,} MACs per caption, "
             f"{enc['text_encoder_share_of_step']:.1%} of a training step's time ({enc['text_encoder_seconds'] * 1000:.0f} of "
             f"{enc['step_seconds'] * 1000:.0f} ms, forward + backward, batch of the default params).", "",
             f"Thickness (mean stroke width of the samples, px): 'thin' prompts {th['seen_thin_mean_thickness_px']:.2f} vs 'thick' "
             f"{th['seen_thick_mean_thickness_px']:.2f} (seen template), {th['held_out_thin_mean_thickness_px']:.2f} vs "
             f"{th['held_out_thick_mean_thickness_px']:.2f} (held out); real training digits {th['real_train_thin_mean_px']:.2f} vs "
             f"{th['real_train_thick_mean_px']:.2f}.", ""]
    return lines


def rgb_judge_section(r: dict | None) -> list[str]:
    """The two judges of class consistency on each preset's data (``benchmarks/rgb_judge.py``): val accuracy of the
    pipeline's classifier and of the EfficientNet-Lite0 linear probe, the probe's accuracy by its train-image cap."""
    title = "## The judge of class consistency on RGB data (classifier vs EfficientNet-Lite0 probe)"
    if not r:
        return [title, "", f"Not measured yet (`reports/benchmarks/rgb_judge.json` is absent): `{COMMANDS['rgb_judge.json']}`.", ""]
    lines = [title, "", "From `reports/benchmarks/rgb_judge.json`; regenerate a preset's entry with "
             "`OMP_NUM_THREADS=1 python -m benchmarks.rgb_judge --preset <name>`. Both judges trained as `reference_stats` trains "
             "them, with the preset's params; accuracy on the real val split.", "",
             "| preset | train / val images | classifier val accuracy | probe val accuracy | `auto` picks | EfficientNet-Lite0 s / image |",
             "|---|---|---|---|---|---|"]
    for name, e in r.items():
        c, p, counts = e["classifier"], e["effnet_probe"], e["data"].get("counts") or {}
        used = min(p["max_train_images"], counts.get("train", p["max_train_images"]))
        reduced = f" ({e['max_per_class_override']} images per class)" if e.get("max_per_class_override") else ""
        lines.append(f"| {name}{reduced} | {counts.get('train', '?'):,} / {counts.get('val', '?'):,} | {c['val_accuracy']:.3f} ({c['epochs']} epochs, "
                     f"{c['seconds']:.0f} s) | {p['val_accuracy']:.3f} ({used:,} train images, weight decay "
                     f"{p['weight_decay']:g}) | {e['auto_picks']} | {p['feature_seconds_per_image']:.3f} |")
    lines.append("")
    for name, e in r.items():
        curve = ", ".join(f"{row['max_train_images']:,}: {row['val_accuracy']:.3f}" for row in e["effnet_probe"]["by_max_train_images"])
        lines += [f"{name}: probe val accuracy by `evaluate.probe.max_train_images`: {curve}. {describe(e.get('provenance'))}", ""]
    return lines


def frontier_section(r: dict | None, name: str = "frontier.json") -> list[str]:
    """Issue 14's frontier table: every training and sampling variant at every guidance, with the commands that made it
    (one per part when the run was split over cores and merged). ``frontier_<name>.json`` is the same table from another
    run (a preset's, or a later question on MNIST's); its title carries ``<name>``."""
    title = "## The fidelity/diversity frontier (training and sampling variants)"
    if name != "frontier.json":
        title += f": {name.removeprefix('frontier_').removesuffix('.json')}"
    if not r or not r.get("rows"):
        return [title, "", "No frontier committed: `.venv/bin/python -m benchmarks.frontier --run RUN` writes "
                "`reports/benchmarks/frontier.json`.", ""]
    from benchmarks.frontier import markdown

    commands = r.get("commands") or [r["command"]]
    parts = r.get("parts") or [{"provenance": r.get("provenance")}]
    lines = [title, "", f"From `reports/benchmarks/{name}` (run `{r['run']}`): {r['sampler']} {r['steps']} steps, {r['num_per_class']} images per "
             f"class per row, seed {r['seed']}, extractors {', '.join(r['extractors'])}; ratios are against the real-vs-real "
             "baseline at the same n. Made by " + "; ".join(f"`{c}`" for c in commands) + ". "
             + " ".join(describe(part.get("provenance")) for part in parts[:1]) + _run_autoencoder(r.get("run_autoencoder"))
             + (f" {r['notes']}" if r.get("notes") else ""),
             "", markdown(r["rows"]), ""]
    return lines


def _run_autoencoder(config: dict | None) -> str:
    """The run's autoencoder, as a frontier JSON records it (its ``config.json``): the latent shape every row (but an
    autoencoder variant's) trained on."""
    from benchmarks.frontier import describe_autoencoder

    return f" The run's autoencoder: {describe_autoencoder(config)}." if config else ""


def _ae_compute(row: dict) -> float:
    return row["macs_per_forward"] * row["images"]


def spots_section(r: dict, name: str) -> list[str]:
    """Spot artifacts of trained autoencoders side by side (``benchmarks/autoencoder_spots.py``): the decoder's spot
    ratio, val PSNR, the judge on the reconstructions and their classifier FD ratio, one row per autoencoder."""
    title = f"## Autoencoder spots: {name.removeprefix('autoencoder_spots_').removesuffix('.json')}"
    lines = [title, "", f"From `reports/benchmarks/{name}`; made by `{r['command']}`. {describe(r.get('provenance'))}", "",
             f"{r['num_val']} val images; the judge reads {r['real_accuracy']:.3f} of the real ones right. Spot ratio: the largest "
             "per-position feature norm over the median one at the input of the decoder's last norm (median over images).", "",
             "| autoencoder | norm | train s | spot ratio | val PSNR dB | judge on reconstructions | FD ratio classifier |",
             "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['name']} | {x['norm']} | {x['train_seconds']:.0f} | {x['spot_ratio']:.1f} | {x['val_psnr']:.2f} | "
                     f"{x['reconstruction_consistency']:.3f} | {x['fd_ratio_classifier']:.1f} |")
    return [*lines, ""]


def judges_section(r: dict, name: str) -> list[str]:
    """The two judges of class consistency on real val images, on reconstructions of them and on samples
    (``benchmarks/judges_decoded.py``): each one's accuracy, and what ``evaluate.judge: auto`` picks on each."""
    title = f"## Judges on decoded images: {name.removeprefix('judges_decoded_').removesuffix('.json')}"
    lines = [title, "", f"From `reports/benchmarks/{name}`; made by `{r['command']}`. {describe(r.get('provenance'))}", "",
             "| images | classifier | EfficientNet-Lite0 probe | agreement |", "|---|---|---|---|"]
    parts = [("real val", r["real_val"])]
    parts += [(f"reconstructions: {k}", v) for k, v in r["reconstructions"].items()]
    parts += [(f"decoded posterior samples: {k}", v) for k, v in r.get("posterior_samples", {}).items()]
    parts += [(f"samples: {k}", v) for k, v in r["samples"].items()]
    for label, x in parts:
        lines.append(f"| {label} | {x['classifier']['accuracy']:.3f} | {x['effnet_probe']['accuracy']:.3f} | {x.get('agreement', float('nan')):.3f} |")
    picks = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in r["auto_picks"].items())
    lines += ["", f"`evaluate.judge: auto` would pick, {picks}. On samples the column is class consistency.", ""]
    for k, v in r.get("posterior_samples", {}).items():
        post = v["posterior"]
        lines += [f"Posterior of {k} (the U-Net's training latents are draws from it): its variance is "
                  f"{post['noise_to_signal']:.2f}x the variance of the posterior means over the val images and latent "
                  "positions; per latent "
                  "channel, variance of the means / mean posterior variance: "
                  + ", ".join(f"{m:.2f}/{p:.2f}" for m, p in zip(post["mean_variance"], post["posterior_variance"], strict=True))
                  + ".", ""]
    if r["samples"] and all(v["classifier"]["confusion"] for v in r["samples"].values()):
        names = r.get("class_names") or [str(i) for i in range(len(next(iter(r["samples"].values()))["classifier"]["confusion"]))]
        lines += ["Per class, the classifier on the samples (the share read as the class asked for; the commonest wrong "
                  "reading when it takes at least a tenth):", "", "| samples | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        lines += [f"| {k} | " + " | ".join(_per_class_cells(v["classifier"]["confusion"], names)) + " |" for k, v in r["samples"].items()]
        lines.append("")
    return lines


def _per_class_cells(confusion: list[list[int]], names: list[str]) -> list[str]:
    """One cell per requested class of a confusion matrix (rows: requested, columns: read as): the share read right and
    the commonest wrong reading if it holds at least 10% of the row."""
    cells = []
    for i, row in enumerate(confusion):
        total = sum(row) or 1
        wrong = max((j for j in range(len(row)) if j != i), key=lambda j: row[j], default=None)
        cell = f"{row[i] / total:.2f}"
        if wrong is not None and row[wrong] / total >= 0.1:
            cell += f" ({names[wrong]} {row[wrong] / total:.2f})"
        cells.append(cell)
    return cells


def ceiling_section(r: dict | None, name: str = "autoencoder_ceiling.json") -> list[str]:
    """Issue 14: the autoencoder's ceiling on the distribution figures (its reconstructions of the real-vs-real baseline,
    scored like samples) per autoencoder variant, with each variant's training time relative to the default's. Another
    file (``autoencoder_ceiling_<what>.json``, its own default row: another machine or day) gets its own section."""
    title = "## The autoencoder's ceiling per variant"
    if name != "autoencoder_ceiling.json":
        title += f": {name.removeprefix('autoencoder_ceiling_').removesuffix('.json')}"
    if not r or not r.get("rows"):
        return [title, "", f"Not measured yet: `{COMMANDS[name]}`.", ""] if name in COMMANDS else []
    rows = r["rows"]
    base = next((x for x in rows if x["variant"] == "default"), rows[0])
    lines = [title, "", _source(name, r) + (f" {r['note']}" if r.get("note") else ""), "",
             "Each variant is params.yaml's autoencoder with one change, trained on the same MNIST artifact with the same seed; its "
             "reconstructions of the real-vs-real baseline (500 train images) are scored like samples against the val reference. "
             f"Ratios are over the real-vs-real baseline. Compute is the autoencoder's MACs per forward times images seen (a perceptual "
             "or adversarial term's own network is not counted), train seconds are one run each on the machine as it was then; "
             f"both relative to `{base['variant']}`.", "",
             "| variant | change | val PSNR dB | parameters | compute (x) | train s (x) | FD ratio classifier | FD ratio EfficientNet | "
             "recall ratio classifier | recall ratio EfficientNet |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        change = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in x["override"].items()) or "-"
        lines.append(f"| {x['variant']} | {change} | {x['val_psnr']:.2f} | {x['parameters']:,} | {_ae_compute(x) / _ae_compute(base):.2f} | "
                     f"{x['train_seconds']:.0f} "
                     f"({x['train_seconds'] / base['train_seconds']:.2f}) | {x['fd_ratio_reconstruction_classifier']:.2f} | "
                     f"{x['fd_ratio_reconstruction_effnet_lite0']:.2f} | {x['recall_ratio_reconstruction_classifier']:.2f} | "
                     f"{x['recall_ratio_reconstruction_effnet_lite0']:.2f} |")
    best = min(rows, key=lambda x: x["fd_ratio_reconstruction_effnet_lite0"])
    if best is base:
        return [*lines, "", f"No variant has a lower EfficientNet-Lite0 FD ratio than `{base['variant']}` "
                f"({base['fd_ratio_reconstruction_effnet_lite0']:.2f}).", ""]
    lines += ["", f"Lowest EfficientNet-Lite0 FD ratio: `{best['variant']}`, {best['fd_ratio_reconstruction_effnet_lite0']:.2f} against "
              f"{base['fd_ratio_reconstruction_effnet_lite0']:.2f} for `{base['variant']}` "
              f"({best['fd_ratio_reconstruction_effnet_lite0'] / base['fd_ratio_reconstruction_effnet_lite0']:.2f}x) at "
              f"{_ae_compute(best) / _ae_compute(base):.2f}x its compute.", ""]
    return lines


def gpu_section(r: dict | None) -> list[str]:
    if r is None:
        return ["## GPU check", "", "No GPU check committed (`reports/benchmarks/gpu_check.json` is absent): "
                "`bash benchmarks/gpu_check.sh` on a machine with a GPU writes it.", ""]
    if r.get("dry_run"):
        return ["## GPU check", "", _source("gpu_check.json", r), "", "Only `bash benchmarks/gpu_check.sh --dry-run` ran (on the CPU, "
                f"{'passed' if r.get('ok') else 'FAILED'}): no GPU measurement committed.", ""]
    lines = ["## GPU check", "", _source("gpu_check.json", r), "", f"Device: {r['device']}, torch {r['torch']}.", "",
             "| model | batch | channels_last | train img/s | peak MB | bf16 vs fp32 loss |", "|---|---|---|---|---|---|"]
    for t in r["train"]:
        lines.append(f"| {t['model']} ({t['parameters']:,}) | {t['batch']} | {t['channels_last']} | {t['train_img_s']:.0f} | "
                     f"{t['peak_mem_mb'] or 0:.0f} | {t['bf16_rel_diff']:.2%} |")
    lines += ["", f"Guided DDIM-50 sampling: {r['sample']['sample_img_s']:.0f} images/s. DDP: {r['ddp']}.", ""]
    return lines


def posterior_ceiling_section(r: dict | None, name: str = "posterior_ceiling.json") -> list[str]:
    """The autoencoder's ceiling two ways (benchmarks/posterior_ceiling.py): the real baseline's images decoded from their
    latent means and from one posterior draw per seed, FD / precision / recall ratios over the real baseline."""
    title = "## The autoencoder's ceiling: decoded posterior means vs decoded posterior draws"
    if name != "posterior_ceiling.json":
        title += f": {name.removeprefix('posterior_ceiling_').removesuffix('.json')}"
    if r is None:
        return []
    extractors = list(r["rows"]["real"])
    head = " | ".join(f"FD ratio {e} | precision ratio {e} | recall ratio {e}" for e in extractors)
    lines = [title, "", _source(name, r), "",
             f"{r['num']} real train images (the real-vs-real baseline of `evaluate`) through `{r['autoencoder']}`; "
             f"real-vs-real FD: " + ", ".join(f"{e} {r['rows']['real'][e]['fd']:.3f}" for e in extractors)
             + f". The posterior's variance is {r['posterior']['noise_to_signal']:.2f}x the variance of its means.", "",
             f"| decoded from | {head} |", "|---|" + "---|" * (3 * len(extractors))]
    for name_, per in r["rows"].items():
        if name_ == "real":
            continue
        what = "posterior means" if name_ == "means" else f"posterior draws ({name_.removeprefix('draws_')})"
        cells = " | ".join(f"{per[e]['fd_ratio']:.2f} | {per[e]['precision_ratio']:.2f} | {per[e]['recall_ratio']:.2f}" for e in extractors)
        lines.append(f"| {what} | {cells} |")
    return [*lines, ""]


def render(root: Path) -> list[str]:
    """The lines of ``benchmarks.md`` from the JSON in ``root/benchmarks/``."""
    b = root / "benchmarks"
    lines = ["# Benchmarks", "", "Written by `python -m benchmarks.report` from the committed JSON in `reports/benchmarks/`; "
             "each section names its file, the command that regenerates it and the provenance recorded in it.", ""]
    lines += pipeline_section(_load(b / "pipeline_run.json"))
    for path in sorted(b.glob("pipeline_run_*.json")):
        lines += pipeline_section(_load(path), path.name)
    lines += throughput_section(_load(b / "throughput.json"))
    lines += ldm_section(_load(b / "ldm_vs_pixel.json"), samples_png=(b / "pixel_model_ddpm100_samples.png").is_file())
    lines += autoencoder_section(_load(b / "autoencoders.json"), _load(b / "autoencoders_perceptual_gan.json"),
                                 _load(b / "autoencoders_downstream.json"))
    lines += unet_layouts_section({p.name: _load(p) for p in sorted(b.glob("unet_layouts*.json"))})
    lines += stage_profile_section(_load(b / "stage_profile.json"))
    lines += eval_speed_section(_load(b / "eval_speed.json"))
    lines += judge_spread_section(_load(b / "judge_spread.json"))
    lines += sampling_spread_section(_load(b / "sampling_spread.json"))
    for path in sorted(b.glob("judge_spread_*.json")):
        lines += judge_spread_section(_load(path), path.name)
    for path in sorted(b.glob("judge_sensitivity*.json")):
        lines += judge_sensitivity_section(_load(path), path.name)
    lines += quality_vs_steps_section(_load(b / "quality_vs_steps.json"))
    lines += distill_section(_load(b / "distill.json"))
    lines += text_prompts_section(_load(b / "text_prompts.json"))
    lines += rgb_judge_section(_load(b / "rgb_judge.json"))
    lines += frontier_section(_load(b / "frontier.json"))
    for path in sorted(b.glob("frontier_*.json")):
        lines += frontier_section(_load(path), path.name)
    lines += ceiling_section(_load(b / "autoencoder_ceiling.json"))
    for path in sorted(b.glob("autoencoder_ceiling_*.json")):
        lines += ceiling_section(_load(path), path.name)  # files without variant rows (a downstream record) render nothing
    for path in sorted(b.glob("autoencoder_spots_*.json")):
        lines += spots_section(_load(path), path.name)
    for path in sorted(b.glob("downstream*.json")):
        lines += downstream_section(_load(path), path.name)
    for path in sorted(b.glob("posterior_ceiling*.json")):
        lines += posterior_ceiling_section(_load(path), path.name)
    for path in sorted(b.glob("judges_decoded_*.json")):
        lines += judges_section(_load(path), path.name)
    gpu = _load(b / "gpu_check.json")
    lines += gpu_section(gpu)
    if gpu is not None and not gpu.get("dry_run") and (b / "throughput_gpu.json").is_file():
        lines += throughput_section(_load(b / "throughput_gpu.json"), "throughput_gpu.json", " on the GPU")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", default="reports")
    a = ap.parse_args()
    root = Path(a.reports)
    lines = render(root)
    atomic_write_bytes(root / "benchmarks.md", "\n".join(lines).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
