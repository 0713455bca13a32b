"""Whole-pipeline variants of a finished run: what a change of params does to the default run's figures, end to end.

    make run                                                     # the base run, in its own clone
    .venv/bin/python -m benchmarks.downstream --base . --variant ae_res2 train_autoencoder.num_res_blocks=2 \\
        --variant unet_64k train_diffusion.max_images=64000 --out reports/benchmarks/downstream.json

Each variant is a copy of ``--base`` (its DVC outputs and lock included, its ``.venv`` not) with the given overrides
of ``params.yaml`` (dotted keys, YAML values), re-run with ``dvc repro`` using the base's venv (``PYTHONPATH`` points
at the copy, so its code is the copy's). DVC re-runs exactly the stages the overrides touch, so a change of the
autoencoder retrains it and everything below it, and a change of the U-Net leaves the autoencoder and the reference
statistics as they are. One variant runs at a time, on the whole machine, with the base run's thread count; its wall
time is the ``dvc repro``'s. The JSON holds, per variant, the overrides, the stages re-run and their seconds, and
the record ``benchmarks.pipeline_run`` makes of a run (training seconds, evaluate's figures), next to the base's.
``benchmarks.frontier`` trains U-Net variants alone, on one thread each, at a lower cost; this one measures what the
user's ``make run`` would give, the autoencoder included.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.pipeline_run import collect
from benchmarks.provenance import provenance
from components.config import load_params
from components.errors import ConfigError
from components.io import atomic_write_json

COPY_IGNORE = (".venv", "__pycache__", ".pytest_cache", ".ruff_cache")


def parse_override(text: str) -> tuple[list[str], object]:
    """``a.b.c=value`` -> (``["a", "b", "c"]``, the YAML value)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SystemExit(f"override {text!r}: write it as section.key=value, e.g. train_autoencoder.num_res_blocks=2")
    return key.split("."), yaml.safe_load(value)


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    """``params`` with every override set; a key that is not already in params.yaml is an error (a typo would
    otherwise run the base recipe under a new name)."""
    out = copy.deepcopy(params)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise SystemExit(f"override {text!r}: params.yaml has no section {'.'.join(path[:-1])!r}")
            node = node[part]
        if not isinstance(node, dict) or path[-1] not in node:
            raise SystemExit(f"override {text!r}: params.yaml has no key {'.'.join(path)!r}")
        node[path[-1]] = value
    return out


def variant_params(base: Path, name: str, overrides: list[str]) -> dict:
    """The base run's params with ``overrides``, validated as a stage would (:func:`components.config.load_params`),
    so a bad value stops before any variant runs, not after the ones before it."""
    params = apply_overrides(yaml.safe_load((base / "params.yaml").read_text()), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            load_params(path)
        except ConfigError as exc:
            raise SystemExit(f"--variant {name}: {str(exc).replace(str(path), 'params.yaml with its overrides')}") from None
    return params


def run_variant(base: Path, work: Path, name: str, overrides: list[str], params: dict) -> dict:
    """Copy ``base`` to ``work/name``, write ``params`` (:func:`variant_params`) there and ``dvc repro``; the run's
    record."""
    dest = work / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest, symlinks=True, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    venv_bin = (base / ".venv" / "bin").resolve()
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(dest.resolve())}
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own sqlite store, as make run uses
    stale = subprocess.run([str(venv_bin / "dvc"), "status", "--json"], cwd=dest, env=env, capture_output=True, text=True,
                           check=True)
    changed = sorted(json.loads(stale.stdout or "{}"))
    print(f"[{name}] {' '.join(overrides)}: changed stages {', '.join(changed) or 'none'}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run([str(venv_bin / "dvc"), "repro"], cwd=dest, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"[{name}] dvc repro failed (exit {proc.returncode}) in {dest}: its log is above")
    return {"overrides": overrides, "stages_changed": changed, "repro_seconds": round(seconds, 1)} | record(base, dest)


def stages_rerun(base: Path, dest: Path) -> list[str]:
    """The stages whose ``dvc.lock`` entry (deps, params, outs) differs between the base run and its copy: what
    ``dvc repro`` re-ran and whose outputs changed."""
    def lock(root: Path) -> dict:
        return (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {})
    a, b = lock(base), lock(dest)
    return sorted(s for s in b if a.get(s) != b[s])


def record(base: Path, dest: Path) -> dict:
    """What the variant's run under ``dest`` measured, and which stages it re-ran against ``base``."""
    return {"stages_rerun": stages_rerun(base, dest), "record": collect(dest)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="project directory of a finished run (make run), with its .venv")
    ap.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), required=True,
                    help="a name and one or more params.yaml overrides (dotted keys); repeat for more variants")
    ap.add_argument("--work", type=Path, default=Path("/tmp/latentflow-downstream"), help="where the copies go")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/downstream.json"))
    ap.add_argument("--note", default=None, help="free text kept in the JSON (what disturbed a timing, say)")
    ap.add_argument("--collect-only", action="store_true",
                    help="re-read the records of variants already run under --work (no dvc repro), e.g. after a change of "
                         "what is recorded")
    a = ap.parse_args()
    if not (a.base / "metrics.json").is_file() or not (a.base / ".venv" / "bin" / "dvc").exists():
        raise SystemExit(f"{a.base} is not a finished run with its venv: run `make run` there first")
    for v in a.variant:
        if len(v) < 2:
            raise SystemExit(f"--variant {v[0]}: give at least one override, e.g. train_diffusion.max_images=64000")
    params = {name: variant_params(a.base, name, overrides) for name, *overrides in a.variant}
    a.work.mkdir(parents=True, exist_ok=True)
    result = json.loads(a.out.read_text()) if a.out.is_file() else {}
    result["base"] = collect(a.base)
    result["command_args"] = {"base": str(a.base), "work": str(a.work)}
    threads = (yaml.safe_load((a.base / "params.yaml").read_text()).get("base") or {}).get("num_threads") or None
    result["provenance"] = provenance(threads=threads)
    result.setdefault("variants", {})
    if a.note:
        result["note"] = a.note
    for name, *overrides in a.variant:
        if a.collect_only:
            if name not in result["variants"] or not (a.work / name / "metrics.json").is_file():
                raise SystemExit(f"--collect-only: variant {name!r} has no run under {a.work} or no entry in {a.out}")
            if result["variants"][name]["overrides"] != overrides:
                raise SystemExit(f"--collect-only: variant {name!r} ran with {result['variants'][name]['overrides']}, not {overrides}")
            result["variants"][name] |= record(a.base, a.work / name)
        else:
            result["variants"][name] = run_variant(a.base, a.work, name, overrides, params[name])
        atomic_write_json(a.out, result)  # each finished variant is kept even if a later one fails
    print(json.dumps({n: {"overrides": v["overrides"], "repro_seconds": v["repro_seconds"], "evaluate": v["record"]["evaluate"]}
                      for n, v in result["variants"].items()}, indent=2))


if __name__ == "__main__":
    main()
