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


def trained_autoencoder_variants(raw: dict, variants: dict[str, dict], only, work: Path) -> Iterator[tuple]:
    """Train one autoencoder per variant (``train_autoencoder`` overrides of the params dict ``raw``) on the dataset in
    ``work/data``, each into ``work/<name>``, skipping names not in ``only`` (all when empty); yields
    ``(name, override, params, models_dir, stage_metrics, train_stage_seconds)`` after each one."""
    import time

    from components.config import Params
    from pipelines.presets import deep_merge
    from pipelines.stages import train_autoencoder

    for name, override in variants.items():
        if only and name not in only:
            continue
        p = Params.model_validate(deep_merge(raw, {"train_autoencoder": override}))
        models = work / name
        t0 = time.perf_counter()
        m = train_autoencoder.run(p, data_dir=work / "data", out_dir=models / "autoencoder", metrics_dir=models / "metrics")
        yield name, override, p, models, m, time.perf_counter() - t0
