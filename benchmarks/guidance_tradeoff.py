"""The guidance trade-off of a trained model, measured by the evaluate stage itself (issue 14, part 1).

Runs ``pipelines.stages.evaluate.run`` with this checkout's ``params.yaml`` on the inputs of a finished run (``--run``:
a folder holding ``data/dataset``, ``models/``, ``reference_stats/`` and ``samples/`` from ``make run``; they are only
read) and writes its outputs to a scratch folder. Recorded: the real-vs-real baselines and the FD / precision / recall
ratios per extractor at ``sample.guidance`` (the ``samples/`` set), the sweep's rows and ``recommended_guidance``, and
what the new work costs: the baseline's features and metrics per extractor, and the sweep re-run alone (its rows must
equal those evaluate wrote: determinism). The re-run and the wide sweep sample as evaluate does (``sample.guidance_interval``
and ``guidance_rescale`` at every swept scale) and judge with the classifier, so on a run whose ``evaluate.judge`` is
not the classifier ``sweep_rerun_identical`` is false by construction. ``--wide-num-per-class N`` adds a wider sweep (N images per class, the
extractors of ``--wide-extractors``, e.g. EfficientNet-Lite0 too) for the README's table.

    .venv/bin/python -m benchmarks.guidance_tradeoff --run /path/to/finished/run \\
        --wide-num-per-class 50 --wide-extractors classifier effnet_lite0

Writes ``reports/benchmarks/guidance_tradeoff.json`` (with provenance: commit, threads, machine).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import provenance
from components.config import load_params
from components.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT, help="folder of a finished run (data/dataset, models, reference_stats, samples)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--wide-num-per-class", type=int, default=0, help="also a sweep at this many images per class (0: none)")
    ap.add_argument("--wide-extractors", nargs="+", default=["classifier", "effnet_lite0"])
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/guidance_tradeoff.json")
    args = ap.parse_args(argv)

    import numpy as np

    from components.data.artifact import read_dataset
    from components.data.samples import read_samples
    from components.evaluation.classifier import load_classifier
    from components.evaluation.protocol import build_extractors, distribution_metrics, extractor_batch_size, load_reference
    from components.evaluation.tradeoff import guidance_sweep, recommend_guidance, stratified_subset
    from components.generation import LatentDiffusionGenerator
    from pipelines.stages import evaluate
    from pipelines.stages.runtime import setup

    params = load_params(args.params)
    run = args.run.resolve()
    data, models, refs_dir, samples = run / "data/dataset", run / "models", run / "reference_stats", run / "samples"
    scratch = Path(tempfile.mkdtemp(prefix="guidance_tradeoff_"))
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else None
    t0 = time.perf_counter()
    metrics = evaluate.run(params, data_dir=data, samples_dir=samples, models_dir=models, ref_dir=refs_dir, out_path=scratch / "metrics.json",
                           quality_path=scratch / "quality_vs_steps.json", quality_plot=scratch / "quality_plot.json",
                           sweep_path=scratch / "guidance_sweep.json")
    evaluate_seconds = time.perf_counter() - t0
    rows = json.loads((scratch / "guidance_sweep.json").read_text())

    # the parts, timed alone with the stage's own settings
    device = setup(params)
    cfg, s, sweep = params.evaluate, params.sample, params.evaluate.guidance_sweep
    manifest = json.loads((data / "manifest.json").read_text())
    ref_manifest, refs = load_reference(refs_dir, manifest["dataset_digest"])
    clf = load_classifier(models / "classifier", device)
    extractors, _ = build_extractors(cfg.extractors, clf, inception_weights=cfg.inception_weights, require_inception=cfg.require_inception,
                                     device=device)
    ds = read_dataset(data)
    _, gen_labels = read_samples(samples)
    real = ds.images["train"][stratified_subset(ds.labels["train"], gen_labels, params.base.seed)]
    baseline_seconds = {}
    for name in ref_manifest["extractors"]:
        t0 = time.perf_counter()
        feats = extractors[name](real, batch_size=extractor_batch_size(name, cfg.feature_batch_size))
        distribution_metrics(feats, refs[name], name, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, pr_k=cfg.pr_k,
                             seed=params.base.seed)
        baseline_seconds[name] = round(time.perf_counter() - t0, 2)
    generator = LatentDiffusionGenerator.from_dir(models, device=device)
    guidance_options = s.guidance_options()  # as the evaluate stage samples its sweep

    def sweep_rows(num_per_class: int, names: list[str]) -> tuple[list[dict], float]:
        t0 = time.perf_counter()
        out = guidance_sweep(generator, clf, {e: extractors[e] for e in names}, refs, ds.images["train"], ds.labels["train"],
                             guidances=sweep.guidances, num_per_class=num_per_class, sampler=sweep.sampler, steps=sweep.steps,
                             seed=params.base.seed + 2, baseline_seed=params.base.seed, eta=s.eta, timestep_spacing=s.timestep_spacing,
                             pr_k=cfg.pr_k, batch_size=s.batch_size,
                             feature_batch_sizes={e: extractor_batch_size(e, cfg.feature_batch_size) for e in names},
                             generate_kwargs=guidance_options)
        return out, round(time.perf_counter() - t0, 2)

    rerun, sweep_seconds = sweep_rows(sweep.num_per_class, list(sweep.extractors)) if sweep.guidances else ([], 0.0)
    result: dict = {
        "command": "python -m benchmarks.guidance_tradeoff " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "run": str(run),
        "run_git_commit": subprocess.run(["git", "-C", str(run), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
        "params": {"sample": params.sample.model_dump(), "guidance_sweep": sweep.model_dump()},
        "at_sample_guidance": {k: v for k, v in metrics.items() if k != "protocol" and k != "class_consistency_per_class"},
        "protocol": metrics["protocol"],
        "sweep": rows,
        "recommended_guidance": metrics["recommended_guidance"],
        "sweep_rerun_identical": json.dumps(rerun, sort_keys=True) == json.dumps(rows, sort_keys=True),
        "seconds": {"evaluate_total": round(evaluate_seconds, 2), "baseline_per_extractor": baseline_seconds, "sweep": sweep_seconds},
    }
    if args.wide_num_per_class:
        wide, wide_seconds = sweep_rows(args.wide_num_per_class, args.wide_extractors)
        result["wide_sweep"] = {"num_per_class": args.wide_num_per_class, "extractors": args.wide_extractors, "rows": wide,
                                "seconds": wide_seconds,
                                "recommended_guidance": recommend_guidance(wide, max_fd_ratio=sweep.max_fd_ratio,
                                                                           min_recall_ratio=sweep.min_recall_ratio,
                                                                           extractors=args.wide_extractors),
                                "recommended_guidance_classifier_only": recommend_guidance(wide, max_fd_ratio=sweep.max_fd_ratio,
                                                                                           min_recall_ratio=sweep.min_recall_ratio)}
    result["loadavg_1_5_15min"] = {"before": load_before,
                                   "after": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else None}
    result["provenance"] = provenance()  # after evaluate's setup: the thread count is the one used
    atomic_write_json(args.out, result)
    np.set_printoptions(precision=3)
    keys = ("guidance", "class_consistency", "fd_ratio_classifier", "precision_ratio_classifier", "recall_ratio_classifier")
    for r in rows:
        print({k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys})
    print("recommended_guidance", result["recommended_guidance"], "seconds", result["seconds"], "->", args.out)
    return result


if __name__ == "__main__":
    main()
