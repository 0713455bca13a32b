"""A labelled RGB data set the project makes itself, offline: coloured geometric shapes on textured backgrounds.

Class = the shape (:data:`SHAPES`); everything else varies per image, drawn from one seeded
:class:`numpy.random.Generator` (the data set is a pure function of ``(per_class, image_size, seed)``):

* the shape's size (its outer radius 22-40 % of the image), position (fully inside the image), rotation (uniform;
  the circle and ring have none) and colour (any hue, saturation 0.55-1, value 0.6-1);
* the background: a linear gradient between two muted colours in a random direction, plus stripes of a random
  frequency, orientation and phase, plus pixel noise, so the autoencoder has texture to reconstruct and a classifier
  cannot tell the shapes apart by their backgrounds (drawn independently of the class).

Shapes are drawn with Pillow at 4x the size and downsampled with a Lanczos filter (anti-aliased edges).
Used as ``ingest.source: shapes`` (``presets/shapes64``: 64x64).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
_SUPERSAMPLE = 4


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of outer radius ``r`` centred at (cx, cy), rotated by ``angle``."""
    if kind == "square":
        radii, n = [r] * 4, 4
    elif kind == "triangle":
        radii, n = [r] * 3, 3
    elif kind == "star":  # 5 points, inner radius 0.45 r
        radii, n = [r if i % 2 == 0 else 0.45 * r for i in range(10)], 10
    elif kind == "cross":  # a plus sign of arm width 0.5 r: 12 vertices
        a = 0.25 * r
        pts = [(a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    else:
        raise ValueError(f"{kind!r} is not a polygonal shape")
    return [(cx + rr * math.cos(angle + 2 * math.pi * i / n), cy + rr * math.sin(angle + 2 * math.pi * i / n))
            for i, rr in enumerate(radii)]


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted gradient with stripes and noise, float [size, size, 3] in 0..255."""
    c0, c1 = rng.uniform(20, 150, 3), rng.uniform(20, 150, 3)
    theta, freq, phase = rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 5.0), rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(5, 25)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    along = (xx * math.cos(theta) + yy * math.sin(theta) + 1.5) / 3.0  # 0..1 across the image
    stripes = amp * np.sin(2 * math.pi * freq * (xx * math.sin(theta) - yy * math.cos(theta)) + phase)
    bg = c0 + (c1 - c0) * along[..., None] + stripes[..., None]
    return bg + rng.normal(0, 4, (size, size, 3))


def shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    """The filled ``kind`` of outer radius ``r`` at (cx, cy), rotated by ``angle``, as a binary ``size x size`` mask
    (mode "L", 255 inside). Areas: circle pi r^2, ring pi r^2 (1 - 0.55^2), square 2 r^2, triangle 3 sqrt(3)/4 r^2,
    star (inner radius 0.45 r) 5 * 0.45 r^2 sin 36 deg, cross (arms 0.5 r wide) 1.75 r^2."""
    mask = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(mask)
    if kind in ("circle", "ring"):
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if kind == "ring":
            inner = 0.55 * r
            pen.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        pen.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    return mask


def draw_shape(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """One ``size x size`` RGB image (uint8 [size, size, 3]) of a ``kind`` shape on a textured background."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}; choose one of {SHAPES}")
    big = size * _SUPERSAMPLE
    r = rng.uniform(0.22, 0.40) * big
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    angle = rng.uniform(0, 2 * math.pi)
    colour = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    mask = shape_mask(kind, big, cx, cy, r, angle)
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)[..., None] / 255.0
    img = _background(rng, size) * (1 - alpha) + np.asarray(colour, dtype=np.float64) * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generate_shapes(per_class: int, image_size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every shape: uint8 ``[len(SHAPES) * per_class, image_size, image_size, 3]`` and int64
    labels (the index in :data:`SHAPES`), classes interleaved (image i has label ``i % len(SHAPES)``)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 for shapes to be recognisable, got {image_size}")
    rng = np.random.default_rng(seed)
    n = per_class * len(SHAPES)
    labels = np.arange(n, dtype=np.int64) % len(SHAPES)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = draw_shape(rng, SHAPES[label], image_size)
    return images, labels
