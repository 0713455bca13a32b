"""Distilled few-step students vs their teacher: quality and sampling throughput, measured in one process.

For the teacher (``models/``: DDIM, ``--teacher-steps`` steps, classifier-free guidance ``--guidance``, two U-Net passes per
step, the project's default ``leading`` spacing) and for every student the distill stage wrote
(``models/distilled/rounds/steps_<N>/``: one U-Net pass per step, guidance folded in, its trailing grid): class
consistency and the Fréchet distance to the real val split in the evaluate stage's classifier features
(``models/classifier``), and images/s of ``LatentDiffusionGenerator.generate`` (sampling + decoding) on the same labels
and seed, in this process with the same thread count: the quality from one run of ``--num-per-class`` images per class,
the speed as the median of ``--repeats`` timed runs of ``--timing-per-class`` images per class, the models taking turns
within each repeat (on a shared machine one-shot timings drift with the load). As a baseline for what distillation buys,
the teacher itself is also run with guidance at the students' step counts (DDIM, trailing spacing).

Targets (issue #13): at 4 steps, class consistency within 0.02 of the teacher's, FD within 25% of the teacher's, images/s
>= 10x the teacher's. Writes ``reports/benchmarks/distill.json``:

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.distill --threads 1 --num-per-class 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from benchmarks.quality_vs_steps import load_classifier
from components.data.artifact import read_dataset
from components.evaluation import class_consistency, feature_statistics, frechet_distance
from components.evaluation.classifier import classify
from components.generation import LatentDiffusionGenerator
from components.io import atomic_write_json

TARGET_STEPS, MAX_CC_DROP, MAX_FD_RATIO, MIN_SPEEDUP = 4, 0.02, 1.25, 10.0


def measure(gen: LatentDiffusionGenerator, labels: np.ndarray, clf, ref: tuple, **kwargs) -> dict:
    """Generate ``labels`` once and score the images."""
    images = gen.generate(labels, **kwargs)
    feats, pred = classify(clf, images)
    return {"class_consistency": class_consistency(pred, labels, gen.num_classes)["overall"],
            "fd_classifier": frechet_distance(*feature_statistics(feats), *ref)}


def images_per_s(gen: LatentDiffusionGenerator, labels: np.ndarray, **kwargs) -> float:
    """images/s of one ``generate`` call (sampling + decoding)."""
    t0 = time.perf_counter()
    gen.generate(labels, **kwargs)
    return len(labels) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models"), help="teacher folder (autoencoder/, diffusion/, classifier/)")
    ap.add_argument("--students", type=Path, default=Path("models/distilled"), help="the distill stage's output")
    ap.add_argument("--data", type=Path, default=Path("data/dataset"))
    ap.add_argument("--num-per-class", type=int, default=50)
    ap.add_argument("--teacher-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-per-class", type=int, default=10, help="images per class of each timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per model (median)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/distill.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    teacher = LatentDiffusionGenerator.from_dir(args.models)
    clf = load_classifier(args.models / "classifier")
    ds = read_dataset(args.data)
    ref_feats, _ = classify(clf, ds.images["val"])
    ref = feature_statistics(ref_feats)
    labels = np.repeat(np.arange(teacher.num_classes), args.num_per_class)
    common = {"seed": args.seed, "batch_size": args.batch_size}
    status = json.loads((args.students / "status.json").read_text())
    students = sorted(((int(p.name.split("_")[1]), p) for p in (args.students / "rounds").glob("steps_*")), reverse=True)
    if not students:
        raise SystemExit(f"{args.students}/rounds holds no student: run the distill stage with distill.enabled: true first")

    runs = [("teacher", teacher, {"steps": args.teacher_steps, "timestep_spacing": "leading"}, 2, args.guidance)]
    for steps, folder in students:
        student = LatentDiffusionGenerator.from_dir(folder)
        assert student.distilled is not None and student.distilled.steps == steps, folder
        runs.append(("student", student, {"steps": steps, "timestep_spacing": "trailing"}, 1, student.distilled.guidance))
        runs.append(("teacher (no distillation)", teacher, {"steps": steps, "timestep_spacing": "trailing"}, 2, args.guidance))
    rows = []
    for model, gen, kw, passes, folded in runs:
        row = {"model": model, "sampler": "ddim", **kw, "guidance": folded, "unet_passes_per_step": passes,
               **measure(gen, labels, clf, ref, sampler="ddim", guidance=args.guidance, **kw, **common)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    timing_labels = np.repeat(np.arange(teacher.num_classes), args.timing_per_class)
    speeds: list[list[float]] = [[] for _ in runs]
    for rep in range(args.repeats):
        order = range(len(runs)) if rep % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            _, gen, kw, _, _ = runs[i]
            speeds[i].append(images_per_s(gen, timing_labels, sampler="ddim", guidance=args.guidance, **kw, **common))
    for row, s in zip(rows, speeds, strict=True):
        row["images_per_s"] = round(float(np.median(s)), 2)
        row["images_per_s_runs"] = [round(v, 2) for v in s]
    base = rows[0]
    for row in rows:
        row["speedup_vs_teacher"] = round(row["images_per_s"] / base["images_per_s"], 2)
        print(json.dumps({k: row[k] for k in ("model", "steps", "images_per_s", "images_per_s_runs", "speedup_vs_teacher")}), flush=True)
    target = next((r for r in rows if r["model"] == "student" and r["steps"] == TARGET_STEPS), None)
    targets = None
    if target is not None:
        targets = {
            "steps": TARGET_STEPS,
            "class_consistency_drop": round(base["class_consistency"] - target["class_consistency"], 4),
            "class_consistency_met": base["class_consistency"] - target["class_consistency"] <= MAX_CC_DROP,
            "fd_ratio": round(target["fd_classifier"] / base["fd_classifier"], 3),
            "fd_met": target["fd_classifier"] <= MAX_FD_RATIO * base["fd_classifier"],
            "speedup": target["speedup_vs_teacher"],
            "speedup_met": target["speedup_vs_teacher"] >= MIN_SPEEDUP,
            "rule": f"class consistency >= teacher - {MAX_CC_DROP}; FD <= {MAX_FD_RATIO} x teacher; images/s >= {MIN_SPEEDUP} x teacher",
        }
    result = {
        "protocol": {"num_generated": int(len(labels)), "guidance": args.guidance, "seed": args.seed, "batch_size": args.batch_size,
                     "teacher_steps": args.teacher_steps, "threads": args.threads, "timing_per_class": args.timing_per_class,
                     "repeats": args.repeats,
                     "reference": "val split", "num_reference": int(len(ds.labels["val"])),
                     "extractor": "evaluate stage classifier (models/classifier)",
                     "timing": f"median images/s of {args.repeats} generate() calls (sampling + decoding) of "
                               f"{len(timing_labels)} images per model, the models taking turns (alternating order) in this process"},
        "distill": {k: status.get(k) for k in ("steps", "guidance", "rounds", "teacher_weights_sha256")},
        "rows": rows,
        "targets": targets,
        "provenance": provenance(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(targets), flush=True)


if __name__ == "__main__":
    main()
