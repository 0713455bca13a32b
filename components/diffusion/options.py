"""The sampling API's names and defaults, in one place: the sampler names and the guidance default.

Pure Python (no torch), so ``components.config`` and the CLI can validate against them without importing torch.
"""

from __future__ import annotations

SAMPLERS: tuple[str, ...] = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras")
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale (Ho & Salimans 2022); 1 = no guidance
