"""Render ``dvc plots diff REV ... --json`` as one PNG (for the README; DVC's own HTML loads Vega from a CDN).

Each plot of ``dvc.yaml``'s top-level ``plots`` becomes a panel; each (revision, field) pair that DVC returns becomes
one line, as in DVC's own rendering. The data are exactly what ``dvc plots diff`` outputs; nothing is recomputed.

    python -m benchmarks.plots_diff_png main guidance-1 guidance-2 --out reports/plots_diff.png
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path

from components.io import atomic_write_bytes


def plots_diff(revs: list[str], cwd: Path = Path(".")) -> dict:
    """``dvc plots diff REVS --json`` (DVC's data, per plot id: the points with ``rev``, ``field`` and the y value)."""
    proc = subprocess.run(["dvc", "plots", "diff", *revs, "--json"], cwd=cwd, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout)
    if out.get("errors"):
        raise RuntimeError(f"dvc plots diff reported errors: {out['errors']}")
    return out["data"]


def render(data: dict, out: Path, plot_ids: list[str] | None = None) -> None:
    """One panel per plot id, one line per (revision, field); written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [i for i in (plot_ids or list(data)) if data.get(i)]
    fig, axes = plt.subplots(1, len(ids), figsize=(4.6 * len(ids), 3.8), squeeze=False)
    for ax, plot_id in zip(axes[0], ids, strict=True):
        content = data[plot_id][0]["content"]
        enc = content.get("encoding", {})
        x = enc.get("x", {}).get("field", "step")
        y_enc = enc.get("y") or next((layer["encoding"]["y"] for layer in content.get("layer", []) if "y" in layer.get("encoding", {})), {})
        y = y_enc.get("field", "dvc_inferred_y_value")  # several y fields: DVC's dvc_inferred_y_value + field
        series: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for p in content["data"]["values"]:
            if p.get(y) is not None:
                series.setdefault((p["rev"], p.get("field", y)), []).append((float(p[x]), float(p[y])))
        fields = {f for _, f in series}
        for (rev, field), pts in series.items():
            pts.sort()
            label = rev if len(fields) == 1 else f"{rev}: {field}"
            ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 8 else None, ms=3, lw=1.2, label=label)
        ax.set(title=plot_id, xlabel=enc.get("x", {}).get("title", x), ylabel=y_enc.get("title", ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs="+", help="git revisions or experiment names, as `dvc plots diff` takes them")
    ap.add_argument("--out", type=Path, default=Path("reports/plots_diff.png"))
    ap.add_argument("--plots", nargs="*", default=None, help="plot ids of dvc.yaml (default: all)")
    args = ap.parse_args()
    render(plots_diff(args.revs), args.out, args.plots)
    print(args.out)


if __name__ == "__main__":
    main()
