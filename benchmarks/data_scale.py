"""Data at scale (#15 part 1): the streamed dataset artifact against the in-memory path it replaced.

Generates ``--n`` labelled ``--size`` x ``--size`` RGB JPEGs (10 classes: a coloured rectangle on a gradient, class =
the rectangle's hue), then runs the stages ``ingest``, ``train_autoencoder`` and ``train_diffusion`` each in a child
process and records its peak RSS (``ru_maxrss`` of the child, and of the decode workers for ingest), wall time and,
for training, images/s (``images_seen / train_seconds`` from the stage's metrics: the training loop only, data loading
included).

* streamed: this checkout's code (uint8 shards, DataLoader), ingest with 1 and with 2 decode workers, training at
  ``--n`` and at each ``--baseline-sizes``;
* in-memory: the code of ``--baseline-commit`` (``git archive``; every image ``np.stack``ed by ingest and converted
  to float32 at once by training), at ``--baseline-sizes`` (and ingest also at ``--n``): its training stages need about
  ``N * H*W*C * (1 + 4 * 3)`` bytes (uint8 + three float32 temporaries), 16 GB at 100k 64x64, more than this machine
  lends, so its peak at ``--n`` is extrapolated from the fitted line and marked so.

The speed ratios (ingest with 2 decode workers vs 1 at ``--n``; streamed vs in-memory training images/s at the largest
``--baseline-sizes``) are ratios of medians over ``--repeats`` runs of each side, the sides alternated, every run listed:
one run of each, minutes apart, measured the machine's noise as much as the code (0.82 and 1.31 in one report).

    nice -n 10 python -m benchmarks.data_scale --n 100000 --size 64 --work /tmp/data_scale

Writes ``reports/benchmarks/data_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "benchmarks" / "data_scale.json"
BASELINE_COMMIT = "469d0bd"  # main before #15 part 1: the in-memory path

RUNNER = r"""
import json, resource, sys, time
from pathlib import Path
from components.config import Params
stage, params, data_dir, work = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
p = Params.model_validate(params)
t0 = time.perf_counter()
if stage == "ingest":
    from pipelines.stages import ingest
    m = ingest.run(p, out_dir=data_dir)
    metrics = {"digest": m["dataset_digest"], "counts": m["counts"]}
elif stage == "train_autoencoder":
    from pipelines.stages import train_autoencoder
    metrics = train_autoencoder.run(p, data_dir=data_dir, out_dir=work / "models" / "autoencoder", metrics_dir=work / "metrics")
else:
    from pipelines.stages import train_diffusion
    metrics = train_diffusion.run(p, data_dir=data_dir, models_dir=work / "models", metrics_dir=work / "metrics")
seconds = time.perf_counter() - t0
print("RESULT " + json.dumps({"seconds": seconds, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
      "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, dict)) and k != "counts_per_class"}}))
"""


def _make_one(args: tuple) -> None:
    from PIL import Image

    root, size, start, stop, seed = args
    rng = np.random.default_rng([seed, start])
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(start, stop):
        label = i % 10
        a, b = rng.uniform(0.2, 0.8, 2)
        bg = (np.stack([a * yy + (1 - a) * xx, b * xx, (1 - b) * yy], -1) * 160 + rng.integers(0, 40, 3)).astype(np.float64)
        hue = np.array([np.cos(label / 10 * 2 * np.pi), np.cos((label / 10 + 1 / 3) * 2 * np.pi),
                        np.cos((label / 10 + 2 / 3) * 2 * np.pi)]) * 110 + 140
        w, h = rng.integers(size // 5, size // 2, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        bg[y0 : y0 + h, x0 : x0 + w] = hue
        img = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / str(label) / f"{i:06d}.jpg", quality=90)


def make_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``root/<class>/<i>.jpg``: ``n`` images, 10 balanced classes (generated once; a marker records n and size)."""
    marker = root / ".made"
    if marker.is_file() and marker.read_text() == f"{n} {size} {seed}":
        return
    shutil.rmtree(root, ignore_errors=True)
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
    import multiprocessing

    step = 2000
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_make_one, [(root, size, s, min(s + step, n), seed) for s in range(0, n, step)])
    marker.write_text(f"{n} {size} {seed}")


def run_stage(code: Path, stage: str, params: dict, data_dir: Path, work: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RUNNER, stage, json.dumps(params), str(data_dir), str(work)], cwd=code, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{stage} ({code}) failed:\n{r.stderr[-3000:]}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def params_for(n_per_class: int | None, size: int, raw: Path, threads: int, steps: int, *, streamed: bool, decode_workers: int = 1) -> dict:
    ingest = {"source": "image_folder", "root": str(raw), "image_size": size, "channels": 3, "max_per_class": n_per_class}
    if streamed:
        ingest["decode_workers"] = decode_workers
    return {
        "base": {"seed": 0, "device": "cpu", "num_threads": threads},
        "ingest": ingest,
        "train_autoencoder": {"channels": [4, 8, 8, 8], "latent_channels": 4, "batch_size": 64, "max_images": 64 * steps,
                              "warmup_images": 0, "runtime": {"checkpoint_every_images": 0, "resume": False}},
        "train_diffusion": {"unet": {"preset": "res-clsAtn-chnAtn", "channels": [32, 64], "num_heads": 2}, "batch_size": 64,
                            "max_images": 64 * steps, "warmup_images": 0, "runtime": {"checkpoint_every_images": 0, "resume": False}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--baseline-sizes", type=int, nargs="+", default=[10_000, 20_000])
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    ap.add_argument("--steps", type=int, default=30, help="training steps of 64 images per training stage")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each side of a speed ratio (ingest 1 vs 2 workers at --n; streamed vs in-memory training at the "
                         "largest --baseline-sizes), alternated; the ratio is of the medians")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/data_scale"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from benchmarks.provenance import provenance

    work = args.work
    raw = work / "raw"
    t0 = time.perf_counter()
    make_images(raw, args.n, args.size)
    print(f"images: {args.n} in {time.perf_counter() - t0:.0f} s", flush=True)
    base_src = work / "baseline_src"
    shutil.rmtree(base_src, ignore_errors=True)
    base_src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", args.baseline_commit, "components", "pipelines"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
    rows: list[dict] = []

    def record(path: str, stage: str, n: int, res: dict, **extra) -> dict:
        m = res["metrics"]
        row = {"path": path, "stage": stage, "images": n, "peak_rss_mb": round(res["maxrss_mb"], 1),
               "wall_seconds": res["wall_seconds"], **extra}
        if stage == "ingest":
            row["ingest_images_per_s"] = round(n / res["seconds"], 1)
            row["decode_worker_peak_rss_mb"] = round(res["children_maxrss_mb"], 1)
            row["dataset_digest"] = m["digest"]
        else:
            row["train_images_per_s"] = round(m["images_seen"] / m["train_seconds"], 1)
            row["train_seconds"] = m["train_seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    per_class = lambda n: None if n >= args.n else n // 10  # noqa: E731
    # streamed (this checkout)
    for n in [args.n, *sorted(args.baseline_sizes)]:
        d = work / f"stream_{n}"
        for workers in ((1, 2) if n == args.n else (2,)):
            p = params_for(per_class(n), args.size, raw, args.threads, args.steps, streamed=True, decode_workers=workers)
            record("streamed", "ingest", n, run_stage(ROOT, "ingest", p, d / "data", d, args.threads), decode_workers=workers)
        for stage in ("train_autoencoder", "train_diffusion"):
            record("streamed", stage, n, run_stage(ROOT, stage, p, d / "data", d, args.threads))
        if n == args.n:  # the other runs of the ingest speed ratio, alternated
            for _ in range(args.repeats - 1):
                for workers in (1, 2):
                    p = params_for(None, args.size, raw, args.threads, args.steps, streamed=True, decode_workers=workers)
                    record("streamed", "ingest", n, run_stage(ROOT, "ingest", p, d / "data", d, args.threads), decode_workers=workers)
        elif n != max(args.baseline_sizes):
            shutil.rmtree(d / "data")
    # in memory (the baseline commit)
    for n in [*sorted(args.baseline_sizes), args.n]:
        d = work / f"memory_{n}"
        p = params_for(per_class(n), args.size, raw, args.threads, args.steps, streamed=False)
        record("in_memory", "ingest", n, run_stage(base_src, "ingest", p, d / "data", d, args.threads), decode_workers=1)
        if n != args.n:
            for stage in ("train_autoencoder", "train_diffusion"):
                record("in_memory", stage, n, run_stage(base_src, stage, p, d / "data", d, args.threads))
        if n != max(args.baseline_sizes):
            shutil.rmtree(d / "data")
    # the other runs of the training speed ratio at the largest baseline size, streamed and in memory alternated
    big = max(args.baseline_sizes)
    for _ in range(args.repeats - 1):
        for path, code in (("streamed", ROOT), ("in_memory", base_src)):
            d = work / f"{'stream' if path == 'streamed' else 'memory'}_{big}"
            p = params_for(per_class(big), args.size, raw, args.threads, args.steps, streamed=path == "streamed")
            for stage in ("train_autoencoder", "train_diffusion"):
                record(path, stage, big, run_stage(code, stage, p, d / "data", d, args.threads))
    for path in ("stream", "memory"):
        shutil.rmtree(work / f"{path}_{big}" / "data")

    def median(path, stage, n, key, **kw):
        vals = [r[key] for r in rows if r["path"] == path and r["stage"] == stage and r["images"] == n
                and all(r.get(k) == v for k, v in kw.items())]
        return float(np.median(vals)), vals

    def pick(path, stage, n, **kw):
        return next(r for r in rows if r["path"] == path and r["stage"] == stage and r["images"] == n
                    and all(r.get(k) == v for k, v in kw.items()))

    sizes = sorted(args.baseline_sizes)
    summary: dict = {"n": args.n, "size": args.size}
    (one, ones), (two, twos) = (median("streamed", "ingest", args.n, "ingest_images_per_s", decode_workers=w) for w in (1, 2))
    summary["ingest_speedup_2_vs_1_workers"] = round(two / one, 3)
    summary["ingest_images_per_s_runs"] = {"1_worker": ones, "2_workers": twos}
    ing1 = pick("streamed", "ingest", args.n, decode_workers=1)
    summary["same_digest_streamed_vs_in_memory"] = ing1["dataset_digest"] == pick("in_memory", "ingest", args.n)["dataset_digest"]
    for stage in ("ingest", "train_autoencoder", "train_diffusion"):
        streamed = [r for r in rows if r["path"] == "streamed" and r["stage"] == stage and r["images"] == args.n]
        summary[f"{stage}_streamed_peak_rss_mb_at_n"] = max(r["peak_rss_mb"] for r in streamed)
        mem = [pick("in_memory", stage, n) for n in sizes]
        xs, ys = np.array([r["images"] for r in mem], float), np.array([r["peak_rss_mb"] for r in mem])
        slope, icpt = np.polyfit(xs, ys, 1)
        summary[f"{stage}_in_memory_mb_per_1k_images"] = round(1000 * slope, 2)
        summary[f"{stage}_in_memory_peak_rss_mb_at_n"] = (pick("in_memory", stage, args.n)["peak_rss_mb"] if stage == "ingest"
                                                          else f"~{slope * args.n + icpt:.0f} (extrapolated from {sizes})")
        if stage != "ingest":
            (s, s_runs), (m, m_runs) = (median(path, stage, sizes[-1], "train_images_per_s") for path in ("streamed", "in_memory"))
            summary[f"{stage}_images_per_s_ratio_streamed_vs_in_memory_at_{sizes[-1]}"] = round(s / m, 3)
            summary[f"{stage}_images_per_s_runs_at_{sizes[-1]}"] = {"streamed": s_runs, "in_memory": m_runs}
    summary["targets"] = {
        "peak_rss_le_1500_mb": all(summary[f"{s}_streamed_peak_rss_mb_at_n"] <= 1500 for s in ("ingest", "train_autoencoder", "train_diffusion")),
        "train_images_per_s_ge_0.9x": all(summary[f"{s}_images_per_s_ratio_streamed_vs_in_memory_at_{sizes[-1]}"] >= 0.9
                                          for s in ("train_autoencoder", "train_diffusion")),
    }
    out = {"benchmark": "data_scale", "command": " ".join(["python -m benchmarks.data_scale", *sys.argv[1:]]),
           "baseline_commit": args.baseline_commit, "threads": args.threads, "steps": args.steps, "repeats": args.repeats, "summary": summary, "rows": rows,
           "provenance": provenance(threads=args.threads)}
    from components.io import atomic_write_json

    atomic_write_json(args.out, out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
