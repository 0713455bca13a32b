"""The record a distilled student carries in its ``config.json`` (``distilled``): how it must be sampled.

Pure Python (no torch), so the generator can read it without importing the training code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STUDENT_SPACING = "trailing"  # the students' grid: starts at t = T - 1 (pure noise), nested for halving step counts


@dataclass
class DistilledInfo:
    """A student made by the ``distill`` stage (components/training/distill.py): the generator samples it with
    ``sampler`` at ``timestep_spacing`` and guidance 1 (one pass per step: ``guidance`` is folded in; Meng et al. 2023),
    and warns when asked for another step count than ``steps``. ``teacher`` and ``rounds`` record where it came from."""

    steps: int
    guidance: float
    sampler: str = "ddim"
    timestep_spacing: str = STUDENT_SPACING
    method: str = "guided progressive distillation (Meng et al. 2023; Salimans & Ho 2022, alg. 2)"
    teacher: dict = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DistilledInfo:
        """Rebuild from ``config.json``; a ``ValueError`` names a missing or bad field."""
        if not isinstance(d, dict) or "steps" not in d or "guidance" not in d:
            raise ValueError(f"expected a mapping with at least 'steps' and 'guidance', got {d!r}")
        known = {k: d[k] for k in ("steps", "guidance", "sampler", "timestep_spacing", "method", "teacher", "rounds") if k in d}
        info = cls(**known)
        if isinstance(info.steps, bool) or not isinstance(info.steps, int) or info.steps < 1:
            raise ValueError(f"distilled.steps must be a positive integer, got {info.steps!r}")
        if isinstance(info.guidance, bool) or not isinstance(info.guidance, int | float) or info.guidance < 0:
            raise ValueError(f"distilled.guidance must be a number >= 0, got {info.guidance!r}")
        if info.sampler != "ddim":
            raise ValueError(f"distilled.sampler must be 'ddim' (the sampler students are distilled for), got {info.sampler!r}")
        if info.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"distilled.timestep_spacing must be leading, trailing or linspace, got {info.timestep_spacing!r}")
        return info
