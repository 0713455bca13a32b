"""How much one run's figures move with the sampling seed alone: the same U-Net, autoencoder, judge and reference.

The ``sample`` stage draws its 500 images with ``base.seed``; this script draws them again with other seeds (the
``sample`` stage's own code and params: sampler, steps, guidance and its interval, batch size) and scores each set
with the ``evaluate`` stage's own code on the run's reference statistics and reference classifier (the quality grid
and the guidance sweep switched off: they do not depend on these samples). The spread over seeds is the sampling
noise of a single run's figures at n = 500; ``benchmarks/judge_spread.py`` measures the judge's share, and two
U-Net training seeds (``benchmarks.frontier --params`` with another ``base.seed``) the training's.

    .venv/bin/python -m benchmarks.sampling_spread --run RUN --seeds 0 1 2 --out reports/benchmarks/sampling_spread.json

RUN is a finished run folder (params.yaml, data/dataset, models/, reference_stats/, metrics.json). CPU,
``--num-threads``. The row of the run's own seed (``base.seed``) must reproduce its metrics.json (recorded).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.judge_spread import _summary, parse_spread_args
from benchmarks.provenance import provenance
from components.io import atomic_write_json

FIGURES = ("class_consistency", "fd_ratio_classifier", "fd_ratio_effnet_lite0", "recall_ratio_classifier",
           "recall_ratio_effnet_lite0", "precision_ratio_classifier", "precision_ratio_effnet_lite0")


def main(argv: list[str] | None = None) -> dict:
    args = parse_spread_args(__doc__, argv, [0, 1, 2], "sampling seeds (include base.seed to check the run)", "sample sets")

    from components.config import load_params
    from pipelines.stages import evaluate, sample

    run = args.run.resolve()
    params = load_params(run / "params.yaml")
    ev = params.evaluate.model_copy(update={"guidance_sweep": params.evaluate.guidance_sweep.model_copy(update={"guidances": ()})})
    scoring = params.model_copy(update={"evaluate": ev})
    s = params.sample
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sampling_spread_") as tmp:
        for seed in args.seeds:
            work = Path(tmp) / f"seed{seed}"
            info = sample.run(model=run / "models", out_dir=work / "samples", num_per_class=s.num_per_class, seed=seed,
                              sampler=s.sampler, steps=s.steps, default_steps=s.steps, guidance=s.guidance, eta=s.eta,
                              timestep_spacing=s.timestep_spacing, device="cpu", batch_size=s.batch_size,
                              guidance_rescale=s.guidance_rescale, guidance_interval=s.guidance_interval)
            metrics = evaluate.run(scoring, data_dir=run / "data/dataset", samples_dir=work / "samples", models_dir=run / "models",
                                   ref_dir=run / "reference_stats", out_path=work / "metrics.json", quality_path=work / "quality.json",
                                   quality_plot=work / "quality.png", sweep_path=work / "sweep.json")
            row = {"seed": seed, "images": info["images"], **{k: metrics[k] for k in FIGURES if metrics.get(k) is not None}}
            rows.append(row)
            print(f"seed {seed}: " + ", ".join(f"{k} {row[k]:.3f}" for k in FIGURES if k in row), flush=True)
    keys = [k for k in FIGURES if all(k in r for r in rows)]
    run_metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None
    base = next((r for r in rows if r["seed"] == params.base.seed), None)
    matches = None
    if run_metrics is not None and base is not None:  # the run's own samples: evaluate's figures again
        matches = all(abs(base[k] - run_metrics[k]) <= 1e-3 * abs(run_metrics[k]) for k in keys if k in run_metrics)
        print(f"seed {params.base.seed} (the run's own samples) reproduces its metrics.json: {matches}")
    result = {"command": "python -m benchmarks.sampling_spread " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "run": str(run), "seeds": args.seeds, "sampler": {"name": s.sampler, "steps": s.steps, "guidance": s.guidance},
              "rows": rows, "spread": {k: _summary([r[k] for r in rows]) for k in keys}, "base_seed_row_matches": matches, "note": args.note,
              "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance()}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
