"""Where a model came from: the code commit and the DVC-recorded hashes of the pipeline's outputs."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout, with ``-dirty`` when tracked files have uncommitted changes;
    ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10, cwd=cwd)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10,
                               cwd=cwd).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lock_hashes(lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each stage's outputs as recorded in ``dvc.lock``, keyed ``dvc.<stage>.<path>``."""
    import yaml

    if not lock_path.is_file():
        return {}
    stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})
    out = {}
    for name, entry in stages.items():
        for o in entry.get("outs", []):
            out[f"dvc.{name}.{o['path']}"] = o.get("md5", "")
    return out
