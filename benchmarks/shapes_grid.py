"""The picture of the shapes data set in the README: ``per_class`` images of each class (one column per class), as
``ingest.source: shapes`` generates them from ``--seed``.

    .venv/bin/python -m benchmarks.shapes_grid --out reports/shapes64_data.png
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from components.data.shapes import SHAPES, generate_shapes
from components.io import atomic_write_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=6, help="rows")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.5, help="nearest-neighbour upscaling of the picture")
    ap.add_argument("--out", type=Path, default=Path("reports/shapes64_data.png"))
    a = ap.parse_args()
    x, _ = generate_shapes(a.per_class, a.image_size, a.seed)
    n, s = len(SHAPES), a.image_size
    grid = x.reshape(a.per_class, n, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(a.per_class * s, n * s, 3)
    img = Image.fromarray(grid).resize((round(n * s * a.scale), round(a.per_class * s * a.scale)), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(a.out, buf.getvalue())
    print(f"wrote {a.out} ({a.per_class} per class, columns {', '.join(SHAPES)})")


if __name__ == "__main__":
    main()
