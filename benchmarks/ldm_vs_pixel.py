"""Latent vs pixel-space diffusion, per sample, at equal class consistency.

Trains a pixel-space model of ours (the same U-Net family, loss and loop as ``train_diffusion``, on the
32x32 images instead of the autoencoder's latents; one more U-Net level for the 4x larger side, DDPM's
pixel-space noise schedule, x0 clipped to [-1, 1] while sampling), then samples both with the same sampler,
steps and guidance and reports, for each: class consistency (the project's classifier, ``models/classifier``),
sampling images/s (the LDM's time includes decoding) and peak memory.

Equal class consistency: sampling cost does not depend on how long a model trained, so with
``--ldm-budgets`` the LDM is also trained (the pipeline's stage, same autoencoder) at growing budgets until
its class consistency reaches the pixel model's, and the speed-up is quoted against that LDM; the
pipeline's LDM (``--models``) is measured alongside. Each sampling run happens in a fresh subprocess so its
peak RSS (or CUDA peak allocation) is its own; the RSS of a subprocess that only loads the models is the
baseline.

    python -m benchmarks.ldm_vs_pixel --pixel-max-images 110000 --ldm-budgets 5000,10000,20000,40000

The pixel model stays in ``--pixel-dir`` (``models_bench/pixel``, not in git). A grid of its samples (columns are
the classes, ``--samples-per-class`` rows; the run's sampler, steps, guidance, x0 clipping and seed):

    python -m benchmarks.ldm_vs_pixel --samples-png reports/benchmarks/pixel_model_ddpm100_samples.png
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from components.config import load_params, params_dict
from components.diffusion import diffusion_loss, make_betas, sample
from components.images import to_model_range, to_uint8
from components.io import atomic_write_json
from components.models.checkpoint import load_unet, save_checkpoint
from components.models.summary import model_summary
from components.models.unet import UNet, UNetConfig
from components.training.distributed import DistContext
from components.training.loop import Batch, LoopConfig, Trainer


def _pixel_schedule(spec: str) -> tuple[str, float, float]:
    """``"linear,0.0001,0.02"`` -> ("linear", 1e-4, 0.02)."""
    name, start, end = spec.split(",")
    return name, float(start), float(end)


def train_pixel_model(args) -> None:
    """Train the pixel-space U-Net with the train_diffusion section's settings (budget and widths overridable).

    The noise schedule is the pixel-space one of DDPM (Ho et al. 2020, sec. 4: linear beta 1e-4 to 0.02), not
    the LDM's scaled-linear 0.00085-0.012: on 32x32 pixels the latter leaves sqrt(alpha_bar_T) = 0.07 of the
    image at t = T, so sampling from pure noise starts off the training distribution and ends in grey,
    speckled backgrounds that the classifier cannot read (class consistency 0.155 after 110k images).
    """
    from components.data.artifact import read_dataset

    params = load_params(args.params)
    cfg = params.train_diffusion
    ds = read_dataset(args.data)
    images = to_model_range(ds.images["train"])
    labels = torch.from_numpy(ds.labels["train"])
    channels = args.pixel_channels
    unet_params = cfg.unet.model_copy(update={"channels": channels, "attention_levels": None if cfg.unet.attention_levels is None
                                              else (False,) * (len(channels) - 1) + (True,)})
    c, h = images.shape[1], images.shape[2]
    torch.manual_seed(params.base.seed)
    model = UNet(UNetConfig.from_params(unet_params, in_channels=c, out_channels=c, sample_size=h, num_classes=ds.num_classes))
    schedule, beta_start, beta_end = args.pixel_schedule
    betas = make_betas(schedule, cfg.num_timesteps, beta_start, beta_end, zero_terminal_snr=cfg.zero_terminal_snr)
    loop = LoopConfig.from_section(cfg, max_images=args.pixel_max_images, checkpoint_every_images=0)
    trainer = Trainer(model, loop, dataset_size=len(labels), seed=params.base.seed, ctx=DistContext(), desc="pixel model")

    def loss_fn(net, b: Batch):
        g = b.generator(torch.device("cpu"))
        drop = b.draw(torch.rand, (), g) < cfg.cond_dropout
        t = b.draw(torch.randint, (), g, low=0, high=cfg.num_timesteps)
        eps = b.draw(torch.randn, tuple(images.shape[1:]), g)
        y = torch.where(drop, torch.full_like(labels[b.indices], -1), labels[b.indices])
        return diffusion_loss(net, images[b.indices], y, betas, cfg.prediction_type, t=t, noise=eps), {}

    result = trainer.run(loss_fn)
    ema = trainer.final_model()
    save_checkpoint(args.pixel_dir, ema, ema.config.to_dict(), {
        "schedule": {"schedule": schedule, "num_timesteps": cfg.num_timesteps, "beta_start": beta_start, "beta_end": beta_end,
                     "zero_terminal_snr": cfg.zero_terminal_snr, "prediction_type": cfg.prediction_type, "variance_type": "fixed_small"},
        "training": {**params_dict(params)["train_diffusion"], "max_images": args.pixel_max_images},
        "train_seconds": result.train_seconds,
    })


def train_ldm(args, max_images: int) -> Path:
    """The pipeline's ``train_diffusion`` stage at a smaller budget, on the same autoencoder, into
    ``<bench dir>/ldm_<max_images>/`` (a model folder ``LatentDiffusionGenerator`` loads)."""
    import shutil

    from pipelines.stages import train_diffusion

    out = Path(args.pixel_dir).parent / f"ldm_{max_images}"
    if (out / "diffusion" / "model.safetensors").is_file() and not args.retrain:
        return out
    shutil.copytree(Path(args.models) / "autoencoder", out / "autoencoder", dirs_exist_ok=True)
    params = load_params(args.params)
    cfg = params.train_diffusion
    runtime = cfg.runtime.model_copy(update={"resume": False})
    params = params.model_copy(update={"train_diffusion": cfg.model_copy(update={"max_images": max_images, "runtime": runtime})})
    train_diffusion.run(params, data_dir=Path(args.data), models_dir=out, metrics_dir=out / "metrics")
    return out


def match_ldm_budget(args, target: float) -> tuple[dict, list[dict]]:
    """Train the LDM at growing budgets (``--ldm-budgets``) until its class consistency reaches ``target``
    (the pixel model's); return the sweep entry closest to it (``max_images``, ``class_consistency``,
    ``dir``) and the whole sweep."""
    sweep, best = [], None
    for budget in sorted(int(b) for b in args.ldm_budgets.split(",")):
        folder = str(train_ldm(args, budget))
        cc = run_measure(args, "ldm", ["--ldm-dir", folder])["class_consistency"]
        sweep.append({"max_images": budget, "class_consistency": cc, "dir": folder})
        print(f"LDM trained on {budget:,} images: class consistency {cc:.3f} (pixel model {target:.3f})", flush=True)
        if best is None or abs(cc - target) < abs(best["class_consistency"] - target):
            best = sweep[-1]
        if cc >= target:
            break
    return best, sweep


def _pixel_model_matches(args) -> bool:
    """Whether ``--pixel-dir`` holds a pixel model trained with this run's schedule, widths and budget."""
    if not (Path(args.pixel_dir) / "model.safetensors").is_file():
        return False
    unet, meta = load_unet(args.pixel_dir)
    s = meta["schedule"]
    same = ((s["schedule"], s["beta_start"], s["beta_end"]) == args.pixel_schedule
            and tuple(unet.config.channels) == args.pixel_channels
            and meta["training"]["max_images"] == args.pixel_max_images)
    if not same:
        print(f"{args.pixel_dir} was trained with other settings; retraining", flush=True)
    return same


def _generate(args, kind: str, labels: np.ndarray) -> tuple[np.ndarray, float]:
    device = torch.device(args.device)
    if kind == "ldm":
        from components.generation import LatentDiffusionGenerator

        gen = LatentDiffusionGenerator.from_dir(args.ldm_dir or args.models, args.device)
        t0 = time.perf_counter()
        images = gen.generate(labels.tolist(), seed=args.seed, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                              batch_size=args.batch_size)
        return images, time.perf_counter() - t0
    unet, meta = load_unet(args.pixel_dir, device)
    s = meta["schedule"]
    betas = make_betas(s["schedule"], s["num_timesteps"], s["beta_start"], s["beta_end"], zero_terminal_snr=s["zero_terminal_snr"])
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    noise = torch.randn((len(labels), *shape), generator=torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    out = []
    with torch.no_grad():
        for b, start in enumerate(range(0, len(labels), args.batch_size)):
            x = sample(unet, noise[start : start + args.batch_size].to(device), betas=betas, sampler=args.sampler, num_steps=args.steps,
                       prediction_type=s["prediction_type"], generator=torch.Generator().manual_seed(args.seed + 1 + b),
                       class_labels=torch.as_tensor(labels[start : start + args.batch_size], device=device), guidance_scale=args.guidance,
                       clip_sample=args.pixel_clip_sample or None)
            out.append(to_uint8(x))
    return np.concatenate(out), time.perf_counter() - t0


def write_samples_png(args) -> None:
    """Sample ``--samples-per-class`` images of every class from the saved pixel model (``--pixel-dir``; never trains
    one) and write them as a PNG grid to ``--samples-png``: column c holds class c, row r the r-th sample of each.
    The PNG's text chunks record the settings and the provenance."""
    from PIL import Image, PngImagePlugin

    if not (Path(args.pixel_dir) / "model.safetensors").is_file():
        raise SystemExit(f"no pixel model in {args.pixel_dir}: train it first with `python -m benchmarks.ldm_vs_pixel` (its benchmark run)")
    if args.threads:
        torch.set_num_threads(args.threads)
    unet, _ = load_unet(args.pixel_dir)
    k = unet.config.num_classes
    labels = np.tile(np.arange(k), args.samples_per_class)
    images, _ = _generate(args, "pixel", labels)
    n, h, w, c = images.shape
    grid = images.reshape(args.samples_per_class, k, h, w, c).transpose(0, 2, 1, 3, 4).reshape(args.samples_per_class * h, k * w, c)
    info = PngImagePlugin.PngInfo()
    settings = {"pixel_dir": str(args.pixel_dir), "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
                "clip_sample": args.pixel_clip_sample or None, "seed": args.seed, "batch_size": args.batch_size,
                "samples_per_class": args.samples_per_class}
    info.add_text("latentflow_settings", json.dumps(settings))
    info.add_text("latentflow_provenance", json.dumps(provenance()))
    out = Path(args.samples_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(out, pnginfo=info)
    print(f"wrote {out} ({n} samples, {settings})", flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``; unlike ``ru_maxrss`` it is not inherited across exec
    from the forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args) -> None:
    """(subprocess) sample with one model and print a JSON line: seconds, class predictions, peak memory."""
    from components.evaluation.classifier import classify, load_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    labels = np.arange(args.num_per_class * 10) % 10
    if args.measure == "baseline":
        load_unet(Path(args.models) / "diffusion"), load_unet(args.pixel_dir)
        out = {}
    else:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        images, seconds = _generate(args, args.measure, labels)
        _, pred = classify(load_classifier(Path(args.models) / "classifier"), images)
        out = {"seconds": seconds, "images": len(labels), "class_consistency": float((pred == labels).mean()),
               "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None}
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def run_measure(args, kind: str, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.ldm_vs_pixel", "--measure", kind, *sys.argv[1:], *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not lines:
        raise SystemExit(f"measuring {kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/dataset")
    ap.add_argument("--models", default="models", help="folder with autoencoder/, diffusion/, classifier/")
    ap.add_argument("--pixel-dir", default="models_bench/pixel", help="pixel-space model checkpoint (trained if missing)")
    ap.add_argument("--pixel-channels", default="32,64,96", type=lambda v: tuple(int(c) for c in v.split(",")),
                    help="pixel model's U-Net widths, one per level")
    ap.add_argument("--pixel-schedule", default="linear,0.0001,0.02", type=_pixel_schedule,
                    help="pixel model's noise schedule: name,beta_start,beta_end (default: DDPM's pixel-space schedule)")
    ap.add_argument("--pixel-clip-sample", type=float, default=1.0,
                    help="clamp the pixel model's x0 predictions to [-r, r] while sampling (DDPM's pixel-space practice); 0 = off")
    ap.add_argument("--pixel-max-images", type=int, default=None, help="default: train_diffusion.max_images (the LDM's budget)")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--ldm-budgets", default="",
                    help="comma-separated LDM training budgets (images) to try, smallest first, for an LDM at the pixel model's class "
                         "consistency (the pipeline's LDM, --models, is measured too); empty = compare with --models only")
    ap.add_argument("--ldm-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--num-per-class", type=int, default=20)
    ap.add_argument("--sampler", default="ddpm", help="same for both models (default ddpm: the pixel model's DDIM samples are poor)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--measure", choices=["ldm", "pixel", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default="reports/benchmarks/ldm_vs_pixel.json")
    ap.add_argument("--samples-png", default=None,
                    help="only write a grid of the saved pixel model's samples (columns = classes) to this PNG, then stop")
    ap.add_argument("--samples-per-class", type=int, default=3, help="rows of the --samples-png grid")
    args = ap.parse_args()
    if args.measure:
        measure(args)
        return
    if args.samples_png:
        write_samples_png(args)
        return
    if args.pixel_max_images is None:
        args.pixel_max_images = load_params(args.params).train_diffusion.max_images
        sys.argv += ["--pixel-max-images", str(args.pixel_max_images)]
    if args.retrain or not _pixel_model_matches(args):
        train_pixel_model(args)
    ldm_unet, ldm_meta = load_unet(Path(args.models) / "diffusion")
    pix_unet, pix_meta = load_unet(args.pixel_dir)
    one = torch.zeros(1, dtype=torch.long)
    sizes = {
        "ldm": model_summary(ldm_unet, torch.zeros(1, ldm_unet.config.in_channels, ldm_unet.config.sample_size, ldm_unet.config.sample_size), one, one),
        "pixel": model_summary(pix_unet, torch.zeros(1, pix_unet.config.in_channels, pix_unet.config.sample_size, pix_unet.config.sample_size), one, one),
    }
    baseline = run_measure(args, "baseline")
    runs: dict[str, list[dict]] = {"ldm": [], "pixel": [run_measure(args, "pixel")]}
    print("pixel", runs["pixel"][-1], flush=True)
    ldm_dirs: dict[str, list[str]] = {"ldm": []}
    sweep: list[dict] = []
    if args.ldm_budgets:  # an LDM at the pixel model's class consistency
        matched, sweep = match_ldm_budget(args, runs["pixel"][0]["class_consistency"])
        ldm_dirs["ldm_matched"], runs["ldm_matched"] = ["--ldm-dir", matched["dir"]], []
    for rep in range(args.repeats):  # alternate so background load hits every model alike
        for kind, extra in ldm_dirs.items():
            runs[kind].append(run_measure(args, "ldm", extra))
            print(kind, runs[kind][-1], flush=True)
        if rep:
            runs["pixel"].append(run_measure(args, "pixel"))
            print("pixel", runs["pixel"][-1], flush=True)
    summary = {}
    for kind, rs in runs.items():
        secs = float(np.median([r["seconds"] for r in rs]))
        summary[kind] = {**sizes["pixel" if kind == "pixel" else "ldm"], "img_s": rs[0]["images"] / secs,
                         "class_consistency": float(np.mean([r["class_consistency"] for r in rs])),
                         "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in rs])),
                         "cuda_peak_mb": rs[0]["cuda_peak_mb"], "runs_seconds": [r["seconds"] for r in rs]}
    if sweep:
        summary["ldm_matched"]["max_images"] = matched["max_images"]
    compared = "ldm_matched" if sweep else "ldm"
    result = {
        "device": args.device, "threads": args.threads or torch.get_num_threads(), "sampler": args.sampler, "steps": args.steps,
        "guidance": args.guidance, "images_per_run": args.num_per_class * 10, "repeats": args.repeats,
        "pixel_clip_sample": args.pixel_clip_sample or None,
        "pixel_training": {"channels": ",".join(map(str, args.pixel_channels)), "schedule": pix_meta["schedule"]["schedule"],
                           "beta_start": pix_meta["schedule"]["beta_start"], "beta_end": pix_meta["schedule"]["beta_end"],
                           "max_images": args.pixel_max_images, "train_seconds": pix_meta.get("train_seconds")},
        "ldm_training": {"max_images": ldm_meta["metrics"]["images_seen"], "train_seconds": ldm_meta["metrics"]["train_seconds"]},
        "ldm_sweep": sweep, "compared": compared,
        "baseline_rss_mb": baseline["peak_rss_mb"], **summary,
        "speedup_per_sample": summary[compared]["img_s"] / summary["pixel"]["img_s"],
        "macs_ratio": sizes["pixel"]["macs_per_forward"] / sizes["ldm"]["macs_per_forward"],
        "class_consistency_gap": summary[compared]["class_consistency"] - summary["pixel"]["class_consistency"],
        "provenance": provenance(threads=args.threads or torch.get_num_threads()),
    }
    atomic_write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("speedup_per_sample", "macs_ratio", "class_consistency_gap")}))


if __name__ == "__main__":
    main()
