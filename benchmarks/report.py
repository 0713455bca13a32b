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


def _with_se(p: float, n: int) -> str:
    """A proportion with its binomial standard error sqrt(p (1 - p) / n)."""
    return f"{p:.3f} ± {(p * (1 - p) / n) ** 0.5:.3f}"


def _equal_consistency(p1: float, p2: float, n: int) -> bool:
    """Equal within measurement: the gap is at most 0.02 or two standard errors of the difference."""
    se_gap = (p1 * (1 - p1) / n + p2 * (1 - p2) / n) ** 0.5
    return abs(p1 - p2) <= max(0.02, 2 * se_gap)


def _clip_note(clip: float | None) -> str:
    return f", x0 clipped to ±{clip:g} while sampling" if clip else ""


def _pixel_schedule(t: dict) -> str:
    return f", noise schedule {t['schedule']} beta {t['beta_start']:g} to {t['beta_end']:g}" if "schedule" in t else ""


def ldm_section(r: dict | None) -> list[str]:
    if r is None:
        return ["## Latent vs pixel space", "", "Not measured yet: `python -m benchmarks.ldm_vs_pixel`.", ""]
    mem = "cuda_peak_mb" if r["device"] == "cuda" else "peak_rss_mb"
    n = r["images_per_run"]
    compared = r.get("compared", "ldm")
    ldm_budget = r.get("ldm_training", {}).get("max_images")
    cols = [("ldm", f"LDM, pipeline ({ldm_budget:,} images)" if ldm_budget else "LDM (8x8x4 latents)")]
    if "ldm_matched" in r:
        cols.append(("ldm_matched", f"LDM at the pixel model's class consistency ({r['ldm_matched']['max_images']:,} images)"))
    cols.append(("pixel", f"pixel (32x32, {r['pixel_training']['max_images']:,} images)"))

    def row(name: str, cell) -> str:
        return f"| {name} | " + " | ".join(cell(r[k]) for k, _ in cols) + " |"

    sweep = r.get("ldm_sweep") or []
    comp = r[compared]
    return [
        "## Latent vs pixel space (per sample)",
        "",
        f"Device: {r['device']} ({r['threads']} threads). {n} images a run, {r['sampler']} {r['steps']} steps, "
        f"guidance {r['guidance']} for every model; median of {r['repeats']} runs, each in a fresh process. The LDM's time includes "
        f"decoding. Pixel model: channels {r['pixel_training']['channels']}, trained on {r['pixel_training']['max_images']:,} images "
        f"({r['pixel_training']['train_seconds']} s){_pixel_schedule(r['pixel_training'])}"
        f"{_clip_note(r.get('pixel_clip_sample'))}. "
        "Class consistency is the share of samples the project's classifier (`models/classifier`) labels as the class asked "
        "for; ± is its standard error.",
        "",
        "| | " + " | ".join(title for _, title in cols) + " |",
        "|---|" + "---|" * len(cols),
        row("U-Net parameters", lambda m: f"{m['parameters']:,}"),
        row("MACs per U-Net forward", lambda m: f"{m['macs_per_forward']:,}"),
        row("class consistency", lambda m: _with_se(m["class_consistency"], n)),
        row("sampling images/s", lambda m: f"{m['img_s']:.2f}"),
        row(f"peak memory (MB, {mem}; process baseline {r['baseline_rss_mb']:.0f})", lambda m: f"{m[mem]:.0f}"),
        "",
        *([("LDM training budgets tried for equal class consistency (the pipeline's stage, same autoencoder): "
            + ", ".join(f"{s['max_images']:,} images → {s['class_consistency']:.3f}" for s in sweep)
            + f". The LDM reached the pixel model's class consistency with {r['pixel_training']['max_images'] / comp['max_images']:.0f}x "
            "fewer training images; sampling cost does not depend on the training budget, so the speed-up holds for any "
            "level the pixel model reaches with this architecture."), ""] if sweep else []),
        f"**Speed-up per sample: {r['speedup_per_sample']:.1f}x** ({compared} vs pixel; MACs ratio {r['macs_ratio']:.1f}x); class "
        f"consistency gap (LDM - pixel) {r['class_consistency_gap']:+.3f}. Pipeline LDM vs pixel: "
        f"{r['ldm']['img_s'] / r['pixel']['img_s']:.1f}x at class consistency {r['ldm']['class_consistency']:.3f} vs "
        f"{r['pixel']['class_consistency']:.3f}.",
        "",
        *([f"**Not at equal class consistency** (gap {r['class_consistency_gap']:+.3f}): give the pixel model a larger training "
           "budget (`--pixel-max-images`) or the LDM smaller ones (`--ldm-budgets`); the MACs ratio above does not depend on it."]
          if not _equal_consistency(comp["class_consistency"], r["pixel"]["class_consistency"], n) else []),
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
