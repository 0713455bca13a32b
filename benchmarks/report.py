"""Write ``reports/benchmarks.md`` from the JSON results of the speed benchmarks.

    python -m benchmarks.throughput && python -m benchmarks.ldm_vs_pixel && python -m benchmarks.report

Reads ``reports/benchmarks/throughput.json`` (ours vs diffusers), ``reports/benchmarks/ldm_vs_pixel.json``
and, when a GPU session produced it, ``reports/gpu_check.json``; sections whose JSON is missing say so.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from components.io import atomic_write_bytes


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def throughput_section(r: dict | None) -> list[str]:
    if r is None:
        return ["## Ours vs diffusers", "", "Not measured yet: `python -m benchmarks.throughput`.", ""]
    o, p = r["ours"], r["peer"]
    med = statistics.median
    return [
        "## Ours vs diffusers (same latent size, same batch, ±10 % parameters)",
        "",
        f"Device: {r['device']} ({r['threads']} threads). Ours: U-Net `{o['preset']}` {tuple(o['channels'])}, "
        f"{o['parameters']:,} parameters. Peer: `diffusers.UNet2DModel` block_out_channels={tuple(p['block_out_channels'])}, "
        f"layers_per_block={p['layers_per_block']}, {p['parameters']:,} parameters ({p['parameters'] / o['parameters']:.3f}x).",
        f"Latents 4x8x8, training batch {r['batch']} ({r['train_steps_per_run']} steps a run), sampling {r['sample_n']} images with "
        f"{r['sample_steps']} DDIM steps and guidance {r['guidance']} (cond + uncond batched). Runs alternate ours/peer, "
        f"median of {r['repeats']} after a warm-up.",
        "",
        "| | ours | diffusers | ratio (ours / diffusers) |",
        "|---|---|---|---|",
        f"| training images/s | {med(o['train_img_s']):.1f} | {med(p['train_img_s']):.1f} | **{r['train_ratio']:.2f}** |",
        f"| sampling images/s | {med(o['sample_img_s']):.2f} | {med(p['sample_img_s']):.2f} | **{r['sample_ratio']:.2f}** |",
        "",
        f"All runs, training ours: {', '.join(f'{v:.1f}' for v in o['train_img_s'])}; diffusers: "
        f"{', '.join(f'{v:.1f}' for v in p['train_img_s'])}.",
        f"All runs, sampling ours: {', '.join(f'{v:.2f}' for v in o['sample_img_s'])}; diffusers: "
        f"{', '.join(f'{v:.2f}' for v in p['sample_img_s'])}.",
        "",
    ]


def ldm_section(r: dict | None) -> list[str]:
    if r is None:
        return ["## Latent vs pixel space", "", "Not measured yet: `python -m benchmarks.ldm_vs_pixel`.", ""]
    ldm, pix = r["ldm"], r["pixel"]
    mem = "cuda_peak_mb" if r["device"] == "cuda" else "peak_rss_mb"
    return [
        "## Latent vs pixel space (per sample)",
        "",
        f"Device: {r['device']} ({r['threads']} threads). {r['images_per_run']} images a run, {r['sampler']} {r['steps']} steps, "
        f"guidance {r['guidance']}; median of {r['repeats']} runs, each in a fresh process. The LDM's time includes decoding. "
        f"Pixel model: channels {r['pixel_training']['channels']}, trained on {r['pixel_training']['max_images']:,} images "
        f"({r['pixel_training']['train_seconds']} s).",
        "",
        "| | LDM (8x8x4 latents) | pixel (32x32) |",
        "|---|---|---|",
        f"| U-Net parameters | {ldm['parameters']:,} | {pix['parameters']:,} |",
        f"| MACs per U-Net forward | {ldm['macs_per_forward']:,} | {pix['macs_per_forward']:,} |",
        f"| class consistency | {ldm['class_consistency']:.3f} | {pix['class_consistency']:.3f} |",
        f"| sampling images/s | {ldm['img_s']:.2f} | {pix['img_s']:.2f} |",
        f"| peak memory (MB, {mem}; process baseline {r['baseline_rss_mb']:.0f}) | {ldm[mem]:.0f} | {pix[mem]:.0f} |",
        "",
        f"**Speed-up per sample: {r['speedup_per_sample']:.1f}x** (MACs ratio {r['macs_ratio']:.1f}x); class consistency gap "
        f"(LDM - pixel) {r['class_consistency_gap']:+.3f}.",
        "",
        *([f"**Not at equal class consistency** (gap {r['class_consistency_gap']:+.3f}): the pixel model needs a larger training "
           "budget (`--pixel-max-images`) before this speed-up answers the question; the MACs ratio above does not depend on it."]
          if abs(r["class_consistency_gap"]) > 0.02 else []),
        "",
    ]


def gpu_section(r: dict | None) -> list[str]:
    if r is None:
        return ["## GPU check", "", "No GPU was lent to the session that wrote this report; `bash benchmarks/gpu_check.sh` on one.", ""]
    if r.get("dry_run"):
        return ["## GPU check", "", "Only `bash benchmarks/gpu_check.sh --dry-run` ran (on the CPU, "
                f"{'passed' if r.get('ok') else 'FAILED'}): no GPU was lent to the session that wrote this report.", ""]
    lines = ["## GPU check", "", f"Device: {r['device']}, torch {r['torch']}.", "",
             "| model | batch | channels_last | train img/s | peak MB | bf16 vs fp32 loss |", "|---|---|---|---|---|---|"]
    for t in r["train"]:
        lines.append(f"| {t['model']} ({t['parameters']:,}) | {t['batch']} | {t['channels_last']} | {t['train_img_s']:.0f} | "
                     f"{t['peak_mem_mb'] or 0:.0f} | {t['bf16_rel_diff']:.2%} |")
    lines += ["", f"Guided DDIM-50 sampling: {r['sample']['sample_img_s']:.0f} images/s. DDP: {r['ddp']}.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", default="reports")
    a = ap.parse_args()
    root = Path(a.reports)
    lines = ["# Speed benchmarks", "", "Written by `python -m benchmarks.report` from the JSON results in `reports/benchmarks/`.", ""]
    lines += throughput_section(_load(root / "benchmarks" / "throughput.json"))
    lines += ldm_section(_load(root / "benchmarks" / "ldm_vs_pixel.json"))
    lines += gpu_section(_load(root / "gpu_check.json"))
    atomic_write_bytes(root / "benchmarks.md", "\n".join(lines).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
