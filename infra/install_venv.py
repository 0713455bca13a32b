"""Install latentflow into the project venv (``make install`` / ``make install-test``): uv when it can be had, pip otherwise.

Both install exactly the pinned set of ``constraints.txt`` (same versions, same torch build); uv does it in
about a third of the time on the 2-core machine (a fresh venv: 48 s against pip's 136-237 s, byte-compile
included in both), because it unpacks and compiles wheels in parallel where pip does one at a time.

uv reads none of pip's configuration, so the index settings pip would use on this machine (``pip config list``:
its config files and ``PIP_*`` variables: ``index-url``, ``extra-index-url``, ``find-links``, ``constraint``,
``cert``) are handed to uv as flags; ``--index-strategy unsafe-best-match`` keeps pip's rule of taking the best
match across every index. uv's wheel cache is off unless ``UV_NO_CACHE`` says otherwise (it would keep a copy of
the 6 GB it unpacks).

``LATENTFLOW_INSTALLER=pip`` forces pip; ``=uv`` forces uv (and fails when uv fails); the default ``auto``
tries uv and falls back to pip with a warning when uv cannot be installed or its install fails. Standard
library only: it runs before the venv has anything in it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

UV_VERSION = "0.13.9"
PIP_FLAGS = ("--disable-pip-version-check", "--no-compile", "-q")
# pip config keys (section-less) that uv takes as repeatable flags
PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint"}


def _run(cmd: list[str | Path], env: dict[str, str] | None = None) -> int:
    print("+", shlex.join(str(part) for part in cmd), flush=True)
    return subprocess.call([str(part) for part in cmd], env=env)


def pip_settings(python: Path) -> dict[str, list[str]]:
    """What pip would use for ``PIP_TO_UV``'s keys and ``cert``: ``pip config list`` (files, then ``PIP_*`` variables, the later winning)."""
    listed = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True, check=False).stdout
    found: dict[str, tuple[int, list[str]]] = {}
    for line in listed.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, key = name.rpartition(".")
        if key not in PIP_TO_UV and key != "cert":
            continue
        # pip's precedence: a command section over [global], the environment over both
        rank = {":env:": 2, "install": 1}.get(scope, 0)
        if key in found and found[key][0] > rank:
            continue
        found[key] = (rank, shlex.split(value.strip().strip("'\"")))
    return {key: values for key, (_, values) in found.items()}


def uv_flags(settings: dict[str, list[str]]) -> list[str]:
    """pip's index settings as uv flags (``--extra-index-url A --extra-index-url B``; a single ``--index-url``)."""
    flags = ["--index-strategy", "unsafe-best-match"]
    for key, flag in PIP_TO_UV.items():
        values = settings.get(key, [])
        if key == "index-url":
            values = values[-1:]
        for value in values:
            flags += [flag, value]
    return flags


def install_with_uv(python: Path, requirement: str, constraints: Path) -> int:
    """``uv pip install --compile-bytecode -c constraints -e requirement`` into the venv of ``python``; its exit status."""
    bin_dir = python.parent
    uv = bin_dir / "uv"
    if not uv.exists() and _run([python, "-m", "pip", "install", *PIP_FLAGS, f"uv=={UV_VERSION}"]) != 0:
        print(f"install_venv: could not install uv=={UV_VERSION} with pip", file=sys.stderr)
        return 1
    settings = pip_settings(python)
    env = dict(os.environ)
    env.setdefault("UV_NO_CACHE", "1")
    if settings.get("cert") and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = settings["cert"][-1]
    cmd = [uv, "pip", "install", "--quiet", "--python", python, "--compile-bytecode", *uv_flags(settings), "-c", constraints, "-e", requirement]
    return _run(cmd, env)


def install_with_pip(python: Path, requirement: str, constraints: Path, venv: Path) -> int:
    """pip without its one-file-at-a-time byte-compile, then ``compileall -j 0`` on every core.

    compileall's status is ignored: a few packages ship files for newer Pythons that cannot compile here (pip
    skips them silently too).
    """
    status = _run([python, "-m", "pip", "install", *PIP_FLAGS, "-c", constraints, "-e", requirement])
    if status == 0:
        subprocess.call([str(python), "-m", "compileall", "-q", "-j", "0", str(venv / "lib")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="LATENTFLOW_INSTALLER=auto|uv|pip chooses the installer (default auto: uv, falling back to pip).")
    parser.add_argument("--venv", type=Path, default=Path(".venv"), help="the venv to create or update (default .venv)")
    parser.add_argument("--constraints", "-c", type=Path, default=Path("constraints.txt"), help="the pinned set (default constraints.txt)")
    parser.add_argument("--extras", default="", help="extras of the project to add, e.g. 'test'")
    parser.add_argument("--project", type=Path, default=Path("."), help="the project to install in editable mode (default .)")
    args = parser.parse_args(argv)

    installer = os.environ.get("LATENTFLOW_INSTALLER", "auto").strip().lower()
    if installer not in ("auto", "uv", "pip"):
        parser.error(f"LATENTFLOW_INSTALLER={installer!r}: use auto, uv or pip")
    if not args.constraints.is_file():
        parser.error(f"{args.constraints}: no such constraints file (the pinned set the venv is installed from)")
    python = args.venv / "bin" / "python"
    if not python.exists() and _run([sys.executable, "-m", "venv", args.venv]) != 0:
        print(f"install_venv: could not create the venv {args.venv} with {sys.executable} -m venv", file=sys.stderr)
        return 1
    requirement = f"{args.project}[{args.extras}]" if args.extras else str(args.project)

    start = time.perf_counter()
    if installer in ("auto", "uv"):
        status = install_with_uv(python, requirement, args.constraints)
        if status == 0 or installer == "uv":
            _report("uv", status, start, requirement, args.venv)
            return status
        print("install_venv: uv failed (above); installing with pip instead (LATENTFLOW_INSTALLER=pip skips uv)", file=sys.stderr)
    status = install_with_pip(python, requirement, args.constraints, args.venv)
    _report("pip", status, start, requirement, args.venv)
    return status


def _report(installer: str, status: int, start: float, requirement: str, venv: Path) -> None:
    outcome = "installed" if status == 0 else f"FAILED (exit {status}) to install"
    seconds = time.perf_counter() - start
    print(f"install_venv: {outcome} -e {requirement} into {venv} with {installer} in {seconds:.0f} s", file=sys.stderr if status else sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
