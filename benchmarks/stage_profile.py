"""Where a pipeline run's time goes: every stage of ``dvc.yaml`` run in DAG order, timed, with its import time and
peak memory, and optionally the functions of ``components/`` that took the most time (cProfile).

    .venv/bin/python -m benchmarks.stage_profile                         # the default pipeline, every stage
    .venv/bin/python -m benchmarks.stage_profile --breakdown --top 8     # + cProfile's top functions per stage
    .venv/bin/python -m benchmarks.stage_profile --stages sample evaluate --label after

Each stage runs its ``cmd`` from ``dvc.yaml`` as ``python -X importtime -m pipelines.cli ...`` (the ``latentflow``
console script is the same entry point) in a child process of this one, one after the other, so the figures of one
profile come from the same machine state. Recorded per stage:

* ``wall_s``: the stage process's wall time, start-up included;
* ``import_s``: the time spent importing modules (the sum of ``-X importtime``'s top-level cumulative times), the
  part of the start-up that lazy imports can cut;
* ``peak_rss_mb``: the stage process's peak resident memory (``os.wait4``'s ``ru_maxrss``; torchrun children not
  included);
* with ``--breakdown``: ``top``, the functions of ``components/`` and ``pipelines/`` with the largest cumulative
  time (cProfile). cProfile slows every Python call, so a profiled run is much slower than the pipeline: measured at
  f56e1c6 on the idle 2-core machine, ``train_autoencoder`` took 373 s profiled and 163 s without, the whole pipeline
  976 s and 431 s. The run records ``"profiled": true``; quote how long the pipeline takes only from a run without
  ``--breakdown``, and use a profiled one for where the time goes within a stage.

A training stage resumes from its checkpoint (``checkpoints/<stage>``) when one of the same params and data is there,
and a resumed stage times nothing; the profile stops before it runs such a stage unless ``--fresh`` removes those
checkpoints first (run it on a fresh clone, e.g. ``git clone . /tmp/p && cd /tmp/p && ln -s $PWD/.venv .venv``).

It also times ``dvc status`` on the finished workspace (DVC's own cost of hashing the deps before a ``repro``).
The stages run outside DVC, so ``dvc.lock`` is not updated: run ``dvc commit -f`` afterwards to record the outputs
(they were made by the same commands from the same deps), or ``dvc repro`` to have DVC re-run them.

Results go to ``reports/benchmarks/stage_profile.json`` under ``runs[<label>]`` (other labels are kept), with the
provenance (commit, threads, machine). Compare two labels (e.g. ``before`` and ``after`` a change) only when both
ran on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.provenance import provenance
from components.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = "checkpoints"  # pipelines.stages.paths.CHECKPOINTS_DIR
TRAINING_STAGES = ("train_autoencoder", "train_diffusion", "distill")  # the stages that resume from checkpoints/<stage>
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def stage_commands(dvc_yaml: Path) -> dict[str, list[str]]:
    """Stage name -> the arguments after ``latentflow`` in its ``cmd``, in the order ``dvc.yaml`` declares them
    (which is a topological order of the DAG: every stage's inputs come from the stages above it)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        argv = shlex.split(spec["cmd"])
        if argv[0] != "latentflow":
            raise SystemExit(f"stage {name!r}: cmd {spec['cmd']!r} does not start with 'latentflow'")
        out[name] = argv[1:]
    return out


def import_seconds(stderr: str) -> float:
    """Seconds spent importing: the sum of the cumulative times of ``-X importtime``'s top-level imports (the lines
    without indentation; nested imports are inside their parent's cumulative time)."""
    total = 0
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m and not m.group(3):
            total += int(m.group(2))
    return total / 1e6


def top_functions(prof: Path, n: int) -> list[dict]:
    """The ``n`` functions of ``components/`` and ``pipelines/stages/`` (not the CLI wrappers) with the largest
    cumulative time."""
    stats = pstats.Stats(str(prof))
    rows = []
    for (file, line, func), (_cc, ncalls, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rel = os.path.relpath(file, ROOT) if os.path.isabs(file) else file
        if rel.startswith(("components/", "pipelines/stages/")) and func != "<module>":
            rows.append({"function": f"{rel}:{line}:{func}", "cumulative_s": round(ct, 2), "calls": ncalls})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:n]


def clear_checkpoints(root: Path, stages: list[str], fresh: bool) -> list[Path]:
    """The checkpoint folders of the training ``stages`` under ``root`` that hold something, deleted when ``fresh``;
    without ``fresh`` their presence stops the profile (SystemExit naming them): the stage would resume and time
    nothing."""
    present = [d for d in (root / CHECKPOINTS / name for name in stages if name in TRAINING_STAGES) if d.is_dir() and any(d.iterdir())]
    if present and not fresh:
        raise SystemExit(f"{', '.join(str(d.relative_to(root)) for d in present)}: a training stage would resume from these "
                         "checkpoints and its time would measure nothing; pass --fresh to delete them first, or profile a fresh clone")
    for d in present:
        shutil.rmtree(d)
    return present


def run_stage(name: str, args: list[str], breakdown: bool, top: int, log_dir: Path) -> dict:
    """Run one stage in a child process; its timings and peak memory."""
    prof = log_dir / f"{name}.prof"
    if breakdown:
        cmd = [sys.executable, "-X", "importtime", "-m", "cProfile", "-o", str(prof), "-m", "pipelines.cli", *args]
    else:
        cmd = [sys.executable, "-X", "importtime", "-m", "pipelines.cli", *args]
    err_path = log_dir / f"{name}.stderr"
    with err_path.open("w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text()
    if proc.returncode != 0:
        tail = "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))[-3000:]
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}):\n{tail}")
    row = {"stage": name, "command": "latentflow " + " ".join(args), "wall_s": round(wall, 1),
           "import_s": round(import_seconds(stderr), 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    if breakdown:
        row["top"] = top_functions(prof, top)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="*", default=None, help="stages to run, in DAG order (default: all of dvc.yaml)")
    ap.add_argument("--label", default="latest", help="name of this profile in the results file (e.g. before, after)")
    ap.add_argument("--breakdown", action="store_true", help="also record cProfile's top project functions per stage")
    ap.add_argument("--top", type=int, default=6, help="functions per stage with --breakdown")
    ap.add_argument("--fresh", action="store_true", help="delete the chosen training stages' checkpoints/<stage> first "
                    "(else the profile refuses to run them: they would resume and time nothing)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "stage_profile.json")
    a = ap.parse_args()

    commands = stage_commands(ROOT / "dvc.yaml")
    chosen = a.stages or list(commands)
    unknown = sorted(set(chosen) - set(commands))
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; dvc.yaml has {list(commands)}")
    clear_checkpoints(ROOT, chosen, a.fresh)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    threads = (params.get("base") or {}).get("num_threads") or None
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stage-profile-") as tmp:
        for name in [s for s in commands if s in chosen]:
            print(f"[stage_profile] {name} ...", flush=True)
            row = run_stage(name, commands[name], a.breakdown, a.top, Path(tmp))
            rows.append(row)
            print(f"[stage_profile] {name}: {row['wall_s']} s (imports {row['import_s']} s), peak RSS {row['peak_rss_mb']} MB",
                  flush=True)
    total = time.perf_counter() - t_start
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", "-q"], cwd=ROOT, capture_output=True, check=False)
    dvc_status_s = time.perf_counter() - t0

    run = {
        "stages": rows,
        "total_wall_s": round(total, 1),
        "total_import_s": round(sum(r["import_s"] for r in rows), 1),
        "dvc_status_s": round(dvc_status_s, 1),
        "command": "python -m benchmarks.stage_profile " + " ".join(sys.argv[1:]),
        "profiled": bool(a.breakdown),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "provenance": provenance(threads=threads),
    }
    results = json.loads(a.out.read_text()) if a.out.is_file() else {"runs": {}}
    results["runs"][a.label] = run
    atomic_write_json(a.out, results)
    print(f"\n{'stage':20s} {'wall s':>8s} {'import s':>9s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['stage']:20s} {r['wall_s']:8.1f} {r['import_s']:9.1f} {r['peak_rss_mb']:8d}")
    print(f"{'total':20s} {run['total_wall_s']:8.1f} {run['total_import_s']:9.1f}    (dvc status {run['dvc_status_s']} s)")
    print(f"results in {a.out} (label {a.label!r})")


if __name__ == "__main__":
    main()
