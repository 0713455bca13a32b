"""Image editing with a trained model: does inpainting fill a masked half-digit with the requested class, how far does
image-to-image move from its input as the strength grows, and what happens to the unmasked pixels.

    .venv/bin/python -m benchmarks.editing --model models --data data/dataset

For ``--per-class`` real validation digits of every class, the bottom half (rows H/2..H) is masked (white = repaint)
and inpainted toward a requested class: the digit's own class (completion) and a different one (label + 1 + i mod 9,
so every ordered pair of classes appears). The pipeline's own domain classifier (``components.evaluation.classifier``,
the evaluate stage's settings, trained here on the real train split; its val accuracy is recorded) labels the results;
the figure is the share labelled as requested. Baselines: the same classifier on the masked inputs with the bottom
half blacked out, and on plain class-conditional samples (class consistency).

Also: image-to-image at strengths 0 .. 1 toward the other class (mean pixel distance to the input and the share
labelled as requested), and the unmasked region's error without the pixel paste (``paste_pixels=False``) against the
autoencoder's reconstruction error there. Results go to ``reports/benchmarks/editing.json`` (with provenance) and a
picture (inputs, masks, results) to ``reports/editing.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from components.config import load_params
from components.data.artifact import read_dataset
from components.evaluation.classifier import classify, train_classifier
from components.generation import LatentDiffusionGenerator
from components.images import to_model_range, to_uint8
from components.io import atomic_write_bytes, atomic_write_json


def pick(images: np.ndarray, labels: np.ndarray, per_class: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of each class, classes interleaved (0, 1, ..., 9, 0, 1, ...)."""
    idx = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    order = np.stack(idx, axis=1).reshape(-1)
    return images[order], labels[order]


def share(classifier, images: np.ndarray, requested: np.ndarray) -> float:
    return float((classify(classifier, images)[1] == requested).mean())


def figure(rows: list[tuple[str, np.ndarray]], upscale: int = 3, pad: int = 2, title_w: int = 150) -> bytes:
    """A PNG with one row of images per entry (uint8 [N, H, W, C]), each scaled up ``upscale`` times, with its title
    in the first ``title_w`` pixels."""
    from PIL import Image, ImageDraw

    n = max(len(r[1]) for r in rows)
    h, w = rows[0][1].shape[1:3]
    cell_h, cell_w = h * upscale + pad, w * upscale + pad
    canvas = Image.new("L", (title_w + n * cell_w, len(rows) * cell_h), 128)  # grey: a white mask stays visible
    draw = ImageDraw.Draw(canvas)
    for r, (title, images) in enumerate(rows):
        draw.text((4, r * cell_h + cell_h // 2 - 6), title, fill=255)
        for i, img in enumerate(images):
            tile = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).convert("L").resize((w * upscale, h * upscale), Image.NEAREST)
            canvas.paste(tile, (title_w + i * cell_w, r * cell_h))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models", help="model folder (autoencoder/ + diffusion/)")
    parser.add_argument("--data", default="data/dataset", help="dataset artifact (train split: classifier; val split: inputs)")
    parser.add_argument("--per-class", type=int, default=10, help="validation digits per class to edit")
    parser.add_argument("--resample-steps", type=int, nargs="+", default=[0, 1], help="RePaint settings to measure")
    parser.add_argument("--params", default="params.yaml", help="sample section: sampler, steps, guidance; evaluate: classifier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="reports/benchmarks/editing.json")
    parser.add_argument("--figure", default="reports/editing.png", help="picture of inputs, masks, results; '' for none")
    parser.add_argument("--guidance", type=float, default=None, help="override params.yaml's sample.guidance")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(Path(args.params))
    sp, ep = params.sample, params.evaluate  # the pipeline's sampler settings and its classifier training
    gen = LatentDiffusionGenerator.from_dir(args.model)
    ds = read_dataset(Path(args.data))
    t0 = time.perf_counter()
    clf = train_classifier(ds.images["train"], ds.labels["train"], ds.num_classes, epochs=ep.classifier_epochs,
                           batch_size=ep.classifier_batch_size, lr=ep.classifier_lr, seed=args.seed,
                           max_side=ep.classifier_max_side)
    clf_acc = share(clf, ds.images["val"], ds.labels["val"])
    clf_seconds = time.perf_counter() - t0
    print(f"classifier: val accuracy {clf_acc:.4f} ({clf_seconds:.0f} s)", flush=True)

    images, labels = pick(ds.images["val"], ds.labels["val"], args.per_class, ds.num_classes)
    n, (h, w, _) = len(images), images.shape[1:]
    other = (labels + 1 + np.arange(n) % (ds.num_classes - 1)) % ds.num_classes
    masks = np.zeros((n, h, w), dtype=bool)
    masks[:, h // 2 :] = True
    blacked = images.copy()
    blacked[masks] = 0
    guidance = sp.guidance if args.guidance is None else args.guidance
    settings = dict(sampler=sp.sampler, steps=sp.steps, guidance=guidance, eta=sp.eta, timestep_spacing=sp.timestep_spacing)
    with torch.no_grad():
        recon = to_uint8(gen.autoencoder.reconstruct(to_model_range(images)))
    keep = ~masks[..., None]
    recon_err = float(np.abs(recon.astype(float) - images)[np.broadcast_to(keep, images.shape)].mean())

    result: dict = {
        "model": str(args.model), "images": n, "mask": f"bottom half (rows {h // 2}..{h - 1}) of {h}x{w} validation digits",
        "settings": settings, "classifier_val_accuracy": round(clf_acc, 4),
        "baselines": {
            "masked_input_labelled_as_own_class": round(share(clf, blacked, labels), 4),
            "masked_input_labelled_as_other_class": round(share(clf, blacked, other), 4),
        },
        "autoencoder_unmasked_mean_abs_error": round(recon_err, 3),
        "inpainting": [],
    }
    t0 = time.perf_counter()
    samples = gen.generate(labels, seed=args.seed, **settings)
    result["baselines"]["class_conditional_samples_consistency"] = round(share(clf, samples, labels), 4)
    result["baselines"]["sampling_seconds"] = round(time.perf_counter() - t0, 1)
    shown: dict[str, np.ndarray] = {}
    for r in args.resample_steps:
        for target_name, target in (("own", labels), ("other", other)):
            t0 = time.perf_counter()
            raw = gen.edit(images, target, seed=args.seed, strength=1.0, masks=masks, resample_steps=r, paste_pixels=False, **settings)
            seconds = time.perf_counter() - t0
            out = np.where(masks[..., None], raw, images)  # what paste_pixels=True returns (tests/test_editing.py checks it)
            kept_err = float(np.abs(raw.astype(float) - images)[np.broadcast_to(keep, images.shape)].mean())
            row = {"resample_steps": r, "requested": target_name, "labelled_as_requested": round(share(clf, out, target), 4),
                   "masked_mean_abs_change": round(float(np.abs(out.astype(float) - images)[~np.broadcast_to(keep, images.shape)].mean()), 3),
                   "unmasked_mean_abs_error_without_paste": round(kept_err, 3), "seconds": round(seconds, 1)}
            result["inpainting"].append(row)
            print(json.dumps(row), flush=True)
            shown[f"{target_name}, r={r}"] = out
    result["image_to_image"] = []
    for strength in (0.0, 0.25, 0.5, 0.75, 1.0):
        out = gen.edit(images, other, seed=args.seed, strength=strength, **settings)
        row = {"strength": strength, "mean_abs_pixel_distance_to_input": round(float(np.abs(out.astype(float) - images).mean()), 3),
               "labelled_as_requested_other_class": round(share(clf, out, other), 4)}
        result["image_to_image"].append(row)
        print(json.dumps(row), flush=True)
        shown[f"i2i s={strength}"] = out

    k = min(n, 12)
    rows = [("input", images[:k]), ("mask (white)", np.where(masks[:k, ..., None], 255, 0).astype(np.uint8)),
            ("masked input", blacked[:k])]
    for r in args.resample_steps[:1]:
        rows += [(f"inpaint own r={r}", shown[f"own, r={r}"][:k]), (f"inpaint other r={r}", shown[f"other, r={r}"][:k])]
    rows += [(f"img2img s={s}", shown[f"i2i s={s}"][:k]) for s in (0.25, 0.5, 0.75)]
    if args.figure:
        result["figure"] = {"path": args.figure, "rows": [t for t, _ in rows], "other_class_of_columns": other[:k].tolist(),
                            "own_class_of_columns": labels[:k].tolist()}
        atomic_write_bytes(args.figure, figure(rows))
    result["provenance"] = provenance()
    atomic_write_json(args.out, result)
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
