"""Limits on input images, in one place (pure Python, so ``components.config`` can use them without importing Pillow)."""

from __future__ import annotations

# ingest.max_image_pixels' default: above any camera's image (200 MP), far below a decompression bomb's billions
DEFAULT_MAX_IMAGE_PIXELS = 200_000_000
