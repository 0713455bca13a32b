"""Re-check, one by one, the 15 mutants of components/training/loop.py that the session-1 mutation run left alive
(reports/mutation.md, "Session 5"): each is applied to a copy of the committed tree (``git archive HEAD``) and the two
tests written for them run on it. A faster stand-in for ``benchmarks.mutation --rerun-survivors-of after`` on loop.py,
whose carried-over equivalents run every covering test, slow ones included.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.loop_survivors_check
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
A = "micro = cfg.batch_size // ctx.world_size // cfg.grad_accum"
S = "sync = m == cfg.grad_accum - 1 or not ctx.distributed"
T = "(time.perf_counter() - t0) > 60 * cfg.max_time_minutes"
R = "result.train_seconds = round(time.perf_counter() - t0, 1)"
MUTANTS = [
    (A, "micro = cfg.batch_size * ctx.world_size // cfg.grad_accum"), (A, "micro = cfg.batch_size // ctx.world_size * cfg.grad_accum"),
    (S, "sync = m != cfg.grad_accum - 1 or not ctx.distributed"), (S, "sync = m == cfg.grad_accum + 1 or not ctx.distributed"),
    (S, "sync = m == cfg.grad_accum - 0 or not ctx.distributed"), (S, "sync = m == cfg.grad_accum - 2 or not ctx.distributed"),
    (T, "(time.perf_counter() - t0) >= 60 * cfg.max_time_minutes"), (T, "(time.perf_counter() + t0) > 60 * cfg.max_time_minutes"),
    (T, "(time.perf_counter() - t0) > 0 * cfg.max_time_minutes"), (T, "(time.perf_counter() - t0) > 59 * cfg.max_time_minutes"),
    (T, "(time.perf_counter() - t0) > 61 * cfg.max_time_minutes"), (R, "pass"),
    (R, "result.train_seconds = round(time.perf_counter() + t0, 1)"), (R, "result.train_seconds = round(time.perf_counter() - t0, 0)"),
    (R, "result.train_seconds = round(time.perf_counter() - t0, 2)"),
]
TESTS = [
    "tests/test_mutants_training.py::test_each_rank_splits_its_share_into_micro_batches_and_all_reduces_only_on_the_last",
    "tests/test_mutants_training.py::test_the_time_budget_stops_after_the_step_that_exceeds_it",
]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="latentflow-loopcheck-") as tmp:
        root = Path(tmp)
        archive = subprocess.run(["git", "archive", "HEAD", "components", "tests", "pyproject.toml"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
        env = {**os.environ, "PYTHONPATH": str(root)}

        def tests_pass() -> bool:
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-x", *TESTS]
            return subprocess.run(cmd, cwd=root, env=env, capture_output=True).returncode == 0

        f = root / "components/training/loop.py"
        orig = f.read_text()
        if not tests_pass():
            print("the tests fail on the unmutated code")
            return 2
        survived = 0
        for old, new in MUTANTS:
            if orig.count(old) != 1:
                print(f"line not found (loop.py changed?): {old}")
                return 2
            f.write_text(orig.replace(old, new))
            ok = tests_pass()
            survived += ok
            print("SURVIVED" if ok else "killed  ", "|", new)
        f.write_text(orig)
        print(f"{len(MUTANTS) - survived} of {len(MUTANTS)} killed")
        return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
