"""Where and how a benchmark ran, recorded in its JSON under ``"provenance"``.

    from benchmarks.provenance import provenance
    result["provenance"] = provenance()          # after torch.set_num_threads, so the thread count is the one used

Fields: ``git_commit`` and ``git_dirty`` (uncommitted changes to tracked files; both ``None`` outside a git
checkout), ``torch_threads``, ``machine`` (``platform.machine()``), ``cpu_model`` (``/proc/cpuinfo``, ``None``
where absent), ``cpu_capability`` (the vector ISA torch's kernels use: ``AVX2``, ``AVX512``...; CPU float
results can differ between capabilities, so two runs only agree to the bit on the same one), ``nproc`` (CPUs this
process may run on), ``cpu_count`` (CPUs of the machine), ``cuda_devices``,
``platform``, ``python``, ``torch`` and ``date`` (UTC, ISO 8601).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it); (None, None) outside a git checkout."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return head.strip(), None if status is None else bool(status.strip())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (x86 ``model name``, else ARM ``Model``/``CPU part``), or None."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "model", "hardware", "cpu part"):
        if key in fields:
            return fields[key]
    return None


def nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def provenance(threads: int | None = None) -> dict:
    """The provenance record; ``threads`` overrides ``torch.get_num_threads()`` for scripts whose measurements run in
    subprocesses with their own thread setting."""
    import torch

    commit, dirty = git_state()
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_threads": int(threads) if threads else torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "nproc": nproc(),
        "cpu_count": os.cpu_count(),
        "cuda_devices": cuda,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def describe(p: dict | None) -> str:
    """One line for a report: commit (dirty), threads, machine, CPU, date; says so when the JSON has none."""
    if not p:
        return "Provenance: not recorded (this JSON predates `benchmarks/provenance.py`)."
    commit = (p.get("git_commit") or "unknown")[:10] + (" + uncommitted changes" if p.get("git_dirty") else "")
    cpu = p.get("cpu_model") or "CPU model unknown"
    gpu = f", GPU {', '.join(p['cuda_devices'])}" if p.get("cuda_devices") else ""
    cpu = f"{cpu}, {p['cpu_capability']}" if p.get("cpu_capability") else cpu
    return (f"Provenance: commit {commit}, {p.get('torch_threads')} torch threads, {p.get('machine')} ({cpu}, "
            f"{p.get('nproc')} of {p.get('cpu_count')} CPUs{gpu}), {p.get('date')}.")
