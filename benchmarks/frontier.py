"""Where does a CPU-second buy the most? (issue 14, part 2: move the fidelity/diversity frontier.)

Trains one U-Net per *training variant* (a set of ``train_diffusion`` overrides: prediction type, min-SNR weighting,
learning rate, batch size, EMA decay, condition dropout, width, images seen) on the latents of one finished run's
autoencoder, with the same data and seed, then samples each at several guidance scales and *sampling variants*
(rescaled guidance, Lin et al. 2024; guidance limited to an interval of noise levels, Kynkäänniemi et al. 2024) and
scores every set as the evaluate stage's guidance sweep does (``components.evaluation.tradeoff.guidance_sweep``):
class consistency by the run's classifier, and per extractor the FD, precision and recall ratios against a
real-vs-real baseline at the same n. Every set comes from the same seed (common random numbers), so rows differ by
the variant only.

    .venv/bin/python -m benchmarks.frontier --run /path/to/finished/run            # every variant, params.yaml's budget
    .venv/bin/python -m benchmarks.frontier --run RUN --variants baseline v_prediction --max-images 55000 --num-threads 2

``--run`` is a folder with ``data/dataset``, ``models/autoencoder``, ``models/classifier`` and ``reference_stats``
(``dvc repro train_autoencoder reference_stats`` makes them); it is only read. Writes
``reports/benchmarks/frontier.json`` after every variant (rows so far, with provenance) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import provenance
from components.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("latentflow")

# Every variant starts from params.yaml with this recipe on top: the defaults the table was first measured against
# (before it made v-prediction, min-SNR 5 and lr 2e-3 the defaults), so "baseline" stays the old recipe and a re-run
# reproduces the committed rows whatever params.yaml's train_diffusion says now.
# (latents: every row before session 23 trained on fresh posterior draws, params.yaml's default then.)
REFERENCE_RECIPE: dict = {"prediction_type": "epsilon", "min_snr_gamma": None, "lr": 1.0e-3, "latents": "posterior_sample",
                          "latent_scale": "autoencoder"}

# name -> train_diffusion overrides of REFERENCE_RECIPE (nested keys as in params.yaml)
TRAINING_VARIANTS: dict[str, dict] = {
    "baseline": {},
    "v_prediction": {"prediction_type": "v_prediction"},
    "min_snr_5": {"min_snr_gamma": 5.0},
    "v_prediction_min_snr_5": {"prediction_type": "v_prediction", "min_snr_gamma": 5.0},
    "v_prediction_zero_snr": {"prediction_type": "v_prediction", "zero_terminal_snr": True},
    "lr_2e-3": {"lr": 2.0e-3},
    "lr_5e-4": {"lr": 5.0e-4},
    "batch_64": {"batch_size": 64},
    "batch_256": {"batch_size": 256},
    "cond_dropout_0.2": {"cond_dropout": 0.2},
    "cond_dropout_0.05": {"cond_dropout": 0.05},
    "wide_96_128": {"unet": {"channels": [96, 128]}},
    "narrow_48_64": {"unet": {"channels": [48, 64]}},
    "res_res": {"unet": {"preset": "res-res-clsAtn-chnAtn"}},
    "images_2x": {"max_images": 89600},  # twice the budget the table is run at (--max-images 44800): what images seen buy
    # v-prediction won the single changes above; these combine it with the next candidates
    "v_prediction_lr_2e-3": {"prediction_type": "v_prediction", "lr": 2.0e-3},
    "v_prediction_cond_dropout_0.2": {"prediction_type": "v_prediction", "cond_dropout": 0.2},
    "v_prediction_batch_64": {"prediction_type": "v_prediction", "batch_size": 64},
    "v_prediction_images_1.5x": {"prediction_type": "v_prediction", "max_images": 67200},
    # the two changes that helped on top of v-prediction, together (the new default)
    "v_prediction_lr_2e-3_min_snr_5": {"prediction_type": "v_prediction", "lr": 2.0e-3, "min_snr_gamma": 5.0},
    # the default at a quarter of its batch: four times the optimizer steps for the same images (the shapes64 preset's
    # U-Net makes 469 steps of 128 and draws blurred shapes); at the default lr and at the reference's lower one
    "v_prediction_lr_2e-3_min_snr_5_batch_32": {"prediction_type": "v_prediction", "lr": 2.0e-3, "min_snr_gamma": 5.0, "batch_size": 32},
    "v_prediction_min_snr_5_batch_32": {"prediction_type": "v_prediction", "min_snr_gamma": 5.0, "batch_size": 32},
    # half the shapes64 preset's batch again: 3,750 steps of 16 for its 60,000 images (32 gave 0.46 -> 0.58 over 128)
    "v_prediction_lr_2e-3_min_snr_5_batch_16": {"prediction_type": "v_prediction", "lr": 2.0e-3, "min_snr_gamma": 5.0, "batch_size": 16},
    # the shapes64 preset's recipe at twice its 60,000 images: what a longer U-Net budget buys at 16x16 latents
    "v_prediction_lr_2e-3_min_snr_5_batch_32_images_120k": {"prediction_type": "v_prediction", "lr": 2.0e-3, "min_snr_gamma": 5.0,
                                                            "batch_size": 32, "max_images": 120000},
    # four times the preset's images: what an f = 8 autoencoder's 8x8 latents (a U-Net image about 4x cheaper than at
    # 16x16) buy in about the seconds of the f = 4 preset's 60,000
    "v_prediction_lr_2e-3_min_snr_5_batch_32_images_240k": {"prediction_type": "v_prediction", "lr": 2.0e-3, "min_snr_gamma": 5.0,
                                                            "batch_size": 32, "max_images": 240000},
    # the 8x8 recipe above at about its seconds with a bigger U-Net: is the shapes64 U-Net short of capacity rather
    # than of images? MACs per 8x8x16 forward: [64, 96] 36.3 M, [96, 128] 71.1 M (1.96x), res-res 56.7 M (1.56x)
    "wide_96_128_v_prediction_lr_2e-3_min_snr_5_batch_32_images_120k": {
        "prediction_type": "v_prediction", "lr": 2.0e-3, "min_snr_gamma": 5.0, "batch_size": 32, "max_images": 120000,
        "unet": {"channels": [96, 128]}},
    "res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k": {
        "prediction_type": "v_prediction", "lr": 2.0e-3, "min_snr_gamma": 5.0, "batch_size": 32, "max_images": 150000,
        "unet": {"preset": "res-res-clsAtn-chnAtn"}},
    # the res-res recipe without min-SNR weighting: under v-prediction min-SNR-5 weighs a step by min(SNR, 5) / (SNR + 1),
    # under 0.1 for the 31 % of scaled_linear's timesteps with SNR < 0.1, the noise levels where a sample's shape is decided
    "res_res_v_prediction_lr_2e-3_batch_32_images_150k": {
        "prediction_type": "v_prediction", "lr": 2.0e-3, "batch_size": 32, "max_images": 150000,
        "unet": {"preset": "res-res-clsAtn-chnAtn"}},
}
# No EMA-decay variant: the EMA's decay warms up as min(decay, (1 + n) / (10 + n)) (components/training/common.py), which
# stays below 0.998 for the first 4,490 updates, so at these budgets (350-700 updates) 0.998, 0.999 and 0.9995 are the same
# average. Shortening the EMA would mean changing that warmup, not the decay.

# name -> train_autoencoder overrides: these variants train their own autoencoder first (the others reuse the run's)
AUTOENCODER_VARIANTS: dict[str, dict] = {
    "v_prediction_ae_20k": {"max_images": 20000},     # half the autoencoder's images: its largest fixed cost after the U-Net
    "v_prediction_ae_kl_1e-4": {"kl_weight": 1.0e-4},  # a smoother, more Gaussian latent (LDM's KL weight is 1e-6 .. 1e-5)
}
TRAINING_VARIANTS.update({name: {"prediction_type": "v_prediction"} for name in AUTOENCODER_VARIANTS})
# twice the autoencoder's images under the shapes64 recipe at 240,000 U-Net images: is an f = 8 autoencoder's ceiling
# (the judge on its reconstructions) its training budget?
AUTOENCODER_VARIANTS["ae_40k_v_prediction_lr_2e-3_min_snr_5_batch_32_images_240k"] = {"max_images": 40000}
TRAINING_VARIANTS["ae_40k_v_prediction_lr_2e-3_min_snr_5_batch_32_images_240k"] = dict(
    TRAINING_VARIANTS["v_prediction_lr_2e-3_min_snr_5_batch_32_images_240k"])
# the shapes64 res-res recipe on an autoencoder with a tenth of the KL weight: at 1e-5 over 64x64x3 pixels (the MSE is a
# mean over pixels, the KL a sum over latents) the posterior's variance is 1.9x the variance of its means, most channels
# nearly N(0, 1) noise, and the judge reads 0.892 of decoded posterior draws against 0.926 of decoded means
# (reports/benchmarks/judges_decoded_shapes64_kl_weight.json)
# (and the other way: three times the KL weight, a noisier, less informative latent; then ten times, 1e-4, the next point
# of that trend)
for _kl in ("1e-6", "3e-5", "1e-4"):
    AUTOENCODER_VARIANTS[f"ae_kl_{_kl}_res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"] = {"kl_weight": float(_kl)}
    TRAINING_VARIANTS[f"ae_kl_{_kl}_res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"] = dict(
        TRAINING_VARIANTS["res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"])
# the same with the L1 pixel loss (the MNIST default since it returned flat backgrounds flat: EfficientNet-Lite0 FD ratio
# 2.69 against MSE's 3.28): does shapes64, whose samples lose the corners of squares and the points of stars, gain the
# same? L1's gradient per pixel is sign(error) where MSE's is 2 x error (about 0.2 at the preset's 25.7 dB), so the same
# KL weight weighs about five times less against it: 3e-5 (the preset's number) and 1e-4 (near its weight against MSE)
for _kl in ("3e-5", "1e-4"):
    AUTOENCODER_VARIANTS[f"ae_l1_kl_{_kl}_res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"] = {
        "kl_weight": float(_kl), "reconstruction_loss": "l1"}
    TRAINING_VARIANTS[f"ae_l1_kl_{_kl}_res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"] = dict(
        TRAINING_VARIANTS["res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"])

# the preset's autoencoder (KL 3e-5) on half as many images again: at this U-Net budget the samples nearly reach what
# the judge reads of decoded posterior draws (0.73-0.77 against 0.79), so the next gain has to come from the autoencoder;
# 60,000 images fit the preset's "about 30 minutes" (21 min at 40,000)
AUTOENCODER_VARIANTS["ae_60k_kl_3e-5_res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"] = {"kl_weight": 3.0e-5, "max_images": 60000}
TRAINING_VARIANTS["ae_60k_kl_3e-5_res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"] = dict(
    TRAINING_VARIANTS["res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"])

# the U-Net on the posterior means instead of fresh posterior draws (train_diffusion.latents: posterior_mean): decoded
# draws of the MNIST default autoencoder sit at FD ratio 4.99 / 2.97 (classifier / EfficientNet-Lite0) where decoded means
# sit at 3.26 / 2.54, so a U-Net that learnt the draws perfectly is bounded by the former
for _base in ("v_prediction_lr_2e-3_min_snr_5", "res_res_v_prediction_lr_2e-3_min_snr_5_batch_32_images_150k"):
    TRAINING_VARIANTS[f"{_base}_latents_mean"] = {**TRAINING_VARIANTS[_base], "latents": "posterior_mean"}
    # ... at unit variance (train_diffusion.latent_scale: unit): under the scale factor made for the draws the means have
    # a std of about 0.84 (MNIST) and 0.44 (shapes64, KL 3e-5), a lower signal-to-noise ratio at every timestep
    TRAINING_VARIANTS[f"{_base}_latents_mean_unit"] = {**TRAINING_VARIANTS[_base], "latents": "posterior_mean", "latent_scale": "unit"}

# name -> generate() keyword arguments beyond the guidance scale
SAMPLING_VARIANTS: dict[str, dict] = {
    "plain": {},
    "rescale_0.7": {"guidance_rescale": 0.7},
    "interval_hi": {"guidance_interval": (0.0, 2.0)},     # no guidance at the noisiest steps (sigma > 2)
    "interval_mid": {"guidance_interval": (0.3, 5.0)},    # neither at the noisiest nor at the last steps
}


def variant_params(params, overrides: dict, *, max_images: int | None, num_threads: int | None, autoencoder: dict | None = None):
    """``params`` with ``train_diffusion`` set to :data:`REFERENCE_RECIPE` plus ``overrides`` (and ``train_autoencoder``
    overridden), validated as params.yaml would be."""
    from components.config import Params, params_dict
    from pipelines.presets import deep_merge

    raw = params_dict(params)
    raw["train_autoencoder"] = deep_merge(raw["train_autoencoder"], autoencoder or {})
    raw["train_diffusion"] = deep_merge(raw["train_diffusion"], REFERENCE_RECIPE)
    if max_images:
        raw["train_diffusion"]["max_images"] = int(max_images)
    raw["train_diffusion"] = deep_merge(raw["train_diffusion"], overrides)  # a variant's own max_images wins
    if num_threads is not None:
        raw["base"]["num_threads"] = int(num_threads)
    return Params.model_validate(raw)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="(required unless --merge) finished run: data/dataset, models/{autoencoder,classifier}, "
                                                      "reference_stats")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--variants", nargs="+", default=list(TRAINING_VARIANTS), choices=list(TRAINING_VARIANTS))
    ap.add_argument("--sampling", nargs="+", default=["plain"], choices=list(SAMPLING_VARIANTS),
                    help="sampling variants scored on every trained variant")
    ap.add_argument("--guidances", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    ap.add_argument("--sampler", default=None, help="default: sample.sampler")
    ap.add_argument("--steps", type=int, default=None, help="default: sample.steps")
    ap.add_argument("--num-per-class", type=int, default=50)
    ap.add_argument("--extractors", nargs="+", default=["classifier"], choices=["classifier", "effnet_lite0", "inception"])
    ap.add_argument("--max-images", type=int, default=None, help="U-Net training budget per variant (default: params.yaml)")
    ap.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: base.num_threads)")
    ap.add_argument("--work", type=Path, default=None, help="keep each variant's models here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/frontier.json")
    ap.add_argument("--append", action="store_true", help="keep the rows already in --out (a (variant, sampling) pair run again "
                    "replaces its rows)")
    ap.add_argument("--reuse", action="store_true", help="a variant already trained in --work with the same params is not trained again")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="only combine the rows of these frontier JSON files (e.g. runs on two cores) into --out")
    ap.add_argument("--note", default=None, help="free text kept in --out's `notes` (what the run folder was, a caveat); "
                    "with --merge, added after the parts' own notes")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, note=args.note)
    if args.run is None:
        ap.error("--run is required (a finished run's folder), unless --merge")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.config import load_params, params_dict
    from components.data.artifact import read_dataset
    from components.evaluation.classifier import load_classifier
    from components.evaluation.protocol import build_extractors, extractor_batch_size, load_reference
    from components.evaluation.tradeoff import guidance_sweep
    from components.generation import LatentDiffusionGenerator
    from pipelines.stages import train_autoencoder, train_diffusion
    from pipelines.stages.runtime import setup

    base_params = load_params(args.params)
    run = args.run.resolve()
    data, models, refs_dir = run / "data/dataset", run / "models", run / "reference_stats"
    s = base_params.sample
    sampler, steps = args.sampler or s.sampler, args.steps or s.steps
    device = setup(variant_params(base_params, {}, max_images=None, num_threads=args.num_threads))
    manifest = json.loads((data / "manifest.json").read_text())
    _, refs = load_reference(refs_dir, manifest["dataset_digest"])
    clf = load_classifier(models / "classifier", device)
    extractors, _ = build_extractors(args.extractors, clf, inception_weights=base_params.evaluate.inception_weights, device=device)
    ds = read_dataset(data)
    run_autoencoder = json.loads((models / "autoencoder" / "config.json").read_text())  # which latents the rows were trained on

    rows: list[dict] = []
    if args.append and args.out.is_file():
        rows = [r for r in json.loads(args.out.read_text())["rows"] if not (r["variant"] in args.variants and r["sampling"] in args.sampling)]
    tmp = tempfile.mkdtemp(prefix="frontier_")
    work = args.work or Path(tmp)
    try:
        for name in args.variants:
            overrides, ae_overrides = TRAINING_VARIANTS[name], AUTOENCODER_VARIANTS.get(name, {})
            p = variant_params(base_params, overrides, max_images=args.max_images, num_threads=args.num_threads, autoencoder=ae_overrides)
            vdir = work / name
            stamp = {"params": params_dict(p)["train_diffusion"], "autoencoder": str(models / "autoencoder"), "data": str(data),
                     "autoencoder_overrides": ae_overrides}
            done = vdir / "trained.json"
            if args.reuse and done.is_file() and json.loads(done.read_text())["stamp"] == stamp:
                train, stage_seconds = json.loads(done.read_text())["train"], json.loads(done.read_text())["stage_seconds"]
                log.info("frontier: %s already trained in %s (--reuse)", name, vdir)
            else:
                shutil.rmtree(vdir, ignore_errors=True)
                (vdir / "models").mkdir(parents=True)
                ae = None
                if ae_overrides:
                    t0 = time.perf_counter()
                    ae = train_autoencoder.run(p, data_dir=data, out_dir=vdir / "models" / "autoencoder", metrics_dir=vdir / "metrics")
                    ae = {k: ae[k] for k in ("val_psnr", "scale_factor", "train_seconds", "images_seen") if k in ae}
                    ae["stage_seconds"] = round(time.perf_counter() - t0, 1)
                else:
                    shutil.copytree(models / "autoencoder", vdir / "models" / "autoencoder")
                t0 = time.perf_counter()
                train = train_diffusion.run(p, data_dir=data, models_dir=vdir / "models", metrics_dir=vdir / "metrics")
                stage_seconds = time.perf_counter() - t0
                train["autoencoder"] = ae
                atomic_write_json(done, {"stamp": stamp, "train": train, "stage_seconds": stage_seconds})
            generator = LatentDiffusionGenerator.from_dir(vdir / "models", device=device)
            spacing = "trailing" if p.train_diffusion.zero_terminal_snr else s.timestep_spacing  # zero SNR: start at t = T-1
            for sname in args.sampling:
                t0 = time.perf_counter()
                sweep = guidance_sweep(generator, clf, extractors, refs, ds.images["train"], ds.labels["train"], guidances=args.guidances,
                                       num_per_class=args.num_per_class, sampler=sampler, steps=steps, seed=base_params.base.seed + 2,
                                       baseline_seed=base_params.base.seed, eta=s.eta, timestep_spacing=spacing, pr_k=base_params.evaluate.pr_k,
                                       batch_size=s.batch_size, generate_kwargs=SAMPLING_VARIANTS[sname],
                                       feature_batch_sizes={e: extractor_batch_size(e, None) for e in args.extractors})
                sweep_seconds = time.perf_counter() - t0
                for r in sweep:
                    rows.append({"variant": name, "overrides": overrides, "autoencoder_overrides": ae_overrides,
                                 "autoencoder": train.get("autoencoder"), "sampling": sname, "sampling_kwargs": SAMPLING_VARIANTS[sname],
                                 "timestep_spacing": spacing, **r,
                                 "images_seen": train["images_seen"], "train_seconds": train["train_seconds"],
                                 "train_stage_seconds": round(stage_seconds, 1), "parameters": train["parameters"],
                                 "macs_per_forward": train["macs_per_forward"], "final_loss": train["final_loss"],
                                 "sweep_seconds": round(sweep_seconds, 1)})
                print(markdown(rows), flush=True)
                atomic_write_json(args.out, {
                    "command": "python -m benchmarks.frontier " + shlex.join(argv if argv is not None else sys.argv[1:]),
                    "run": str(run), "sampler": sampler, "steps": steps, "num_per_class": args.num_per_class,
                    "extractors": args.extractors, "seed": base_params.base.seed, "run_autoencoder": run_autoencoder, "rows": rows,
                    "provenance": provenance(), **({"notes": args.note} if args.note else {})})
    finally:
        if args.work is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nwrote {args.out}")
    return {"rows": rows}


def merge(paths: list[Path], out: Path, note: str | None = None) -> dict:
    """One frontier JSON from several (the same protocol run as separate processes, e.g. one per core): rows in file
    order, a later file's (variant, sampling, guidance) replacing an earlier one's; the protocol fields must agree.
    ``note`` is appended to the parts' notes."""
    docs = [json.loads(p.read_text()) for p in paths]
    keys = ("sampler", "steps", "num_per_class", "extractors", "seed")
    for p, d in zip(paths[1:], docs[1:], strict=True):
        if any(d[k] != docs[0][k] for k in keys):
            raise SystemExit(f"{p}: protocol {[d[k] for k in keys]} differs from {paths[0]}'s {[docs[0][k] for k in keys]}; not merged")
        if d.get("run_autoencoder") != docs[0].get("run_autoencoder"):  # rows on other latents are not one table
            raise SystemExit(f"{p}: its run's autoencoder ({describe_autoencoder(d.get('run_autoencoder'))}) differs from "
                             f"{paths[0]}'s ({describe_autoencoder(docs[0].get('run_autoencoder'))}); not merged (write them as "
                             "separate frontier files)")
    rows: dict = {}
    commands, parts, notes = [], [], []
    for p, d in zip(paths, docs, strict=True):
        for r in d["rows"]:
            rows[(r["variant"], r["sampling"], r["guidance"])] = r
        if "parts" in d:  # an already merged file: its own commands and parts, not one entry that hides them
            commands += d["commands"]
            parts += d["parts"]
        else:
            commands.append(d["command"])
            parts.append({"file": str(p), "provenance": d["provenance"]})
        if d.get("notes") and d["notes"] not in notes:  # parts run with one --note say it once
            notes.append(d["notes"])
    if note:
        notes.append(note)
    merged = {**{k: docs[0][k] for k in ("run", *keys)}, **({"run_autoencoder": docs[0]["run_autoencoder"]} if "run_autoencoder" in docs[0] else {}),
              "commands": commands, "parts": parts, "rows": list(rows.values()),
              "provenance": docs[0]["provenance"]}
    if notes:
        merged["notes"] = " ".join(notes)
    atomic_write_json(out, merged)
    print(markdown(merged["rows"]))
    print(f"\nwrote {out}")
    return merged


def describe_autoencoder(config: dict | None) -> str:
    """A frontier file's ``run_autoencoder`` (the run's autoencoder ``config.json``) in words: its channels, f and latent
    shape (from :class:`~components.models.autoencoder.AutoencoderConfig`) and val PSNR; ``unrecorded`` for files
    written before the record. The report's frontier section and the merge's refusal both say it this way."""
    if not config:
        return "unrecorded"
    from components.models.autoencoder import AutoencoderConfig

    m = AutoencoderConfig.from_dict(config["model"])
    c, h, w = m.latent_shape
    psnr = config.get("metrics", {}).get("val_psnr")
    return (f"channels {list(m.channels)}, f = {m.downsampling_factor}, {h}x{w}x{c} latents"
            + (f", val PSNR {psnr:.2f} dB" if psnr is not None else ""))


def markdown(rows: list[dict]) -> str:
    extra = sorted({k.removeprefix("fd_ratio_") for r in rows for k in r if k.startswith("fd_ratio_") and k != "fd_ratio_classifier"})
    head = ["variant", "sampling", "guidance", "train s", "images", "class consistency", "FD ratio (clf)", "precision ratio", "recall ratio"]
    head += [f"FD ratio ({e})" for e in extra] + [f"recall ratio ({e})" for e in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, d=2):
        return "n/a" if v is None else f"{v:.{d}f}"

    for r in rows:
        cells = [r["variant"], r["sampling"], f"{r['guidance']:g}", f"{r['train_seconds']:.0f}", f"{r['images_seen']:,}",
                 f(r["class_consistency"], 3), f(r["fd_ratio_classifier"]), f(r["precision_ratio_classifier"]),
                 f(r["recall_ratio_classifier"])]
        cells += [f(r.get(f"fd_ratio_{e}")) for e in extra] + [f(r.get(f"recall_ratio_{e}")) for e in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
