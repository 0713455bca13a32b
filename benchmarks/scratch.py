"""A scratch working directory for benchmarks that run the pipeline's stage functions outside the repository."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_workdir(prefix: str) -> Iterator[Path]:
    """A temporary directory made the working directory for the block (the training stages write their resumable
    checkpoints relative to it), then the old working directory restored and the directory deleted, even on error."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(cwd)
