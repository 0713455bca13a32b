"""Text prompts on MNIST: train the text-conditioned U-Net (with its text encoder) at the default budget on the default
autoencoder's latents, then judge prompt-generated samples with the pipeline's classifier.

    .venv/bin/python -m benchmarks.text_prompts --run /tmp/runlock/main   # a finished default run: data/, models/

Captions come from :mod:`components.data.captions` (the labels plus the measured thickness and slant, three seen
phrasings per image, seed ``base.seed``). Training is ``train_diffusion`` of params.yaml with ``conditioning: text``
(every other key as the default pipeline's), on the run's autoencoder and dataset. Then, for every class:

- **seen phrasings**: every training template, ``--seen-per-prompt`` samples each;
- **held-out phrasings**: every template of ``HELD_OUT_TEMPLATES`` (never trained on), ``--held-out-per-prompt`` each;
- **attributes**: "a thin ..." vs "a thick ..." prompts, and the stroke thickness measured on the samples.

Class consistency is the share the run's classifier (``models/classifier``, the evaluate stage's) labels as the
prompt's digit. Cost of the text encoder: parameters, MACs per caption, and its share of a training step's time
(forward + backward of the encoder and its two projections vs the whole step, timed here on the same batch).
Results: ``reports/benchmarks/text_prompts.json`` (with provenance) and a prompt grid ``reports/text_prompts.png``.
The trained model is written to ``--model-out`` (autoencoder copied beside it) for ``latentflow sample --prompt``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from components.config import load_params, params_dict
from components.data.artifact import read_dataset
from components.data.captions import HELD_OUT_TEMPLATES, NUMBER_WORDS, SEEN_TEMPLATES, generate_captions, measure_attributes, render
from components.evaluation.classifier import classify, load_classifier
from components.generation import LatentDiffusionGenerator
from components.images import to_model_range
from components.io import atomic_write_bytes, atomic_write_json
from components.models.checkpoint import load_autoencoder, save_checkpoint
from components.models.text import count_parameters, text_encoder_macs


def prompts_for(templates: tuple[str, ...], digit: int) -> list[str]:
    """Each template once for ``digit``, the attributes cycled through thin/thick and left/upright/right."""
    out = []
    for i, tpl in enumerate(templates):
        out.append(render(tpl, digit, ("thin", "thick")[(i + digit) % 2], ("slanted left", "upright", "slanted right")[(i + digit) % 3]))
    return out


def consistency(generator, clf, templates, per_prompt: int, seed: int, sample_kw: dict, batch_size: int) -> dict:
    """Class consistency of ``per_prompt`` samples of every (digit, template) prompt, overall and per template."""
    prompts, digits, tpl_idx = [], [], []
    for d in range(10):
        for i, p in enumerate(prompts_for(templates, d)):
            prompts += [p] * per_prompt
            digits += [d] * per_prompt
            tpl_idx += [i] * per_prompt
    images = generator.generate(None, prompts=prompts, seed=seed, batch_size=batch_size, **sample_kw)
    pred = classify(clf, images)[1]
    ok = pred == np.asarray(digits)
    tpl_idx = np.asarray(tpl_idx)
    return {
        "class_consistency": float(ok.mean()),
        "num_images": len(prompts),
        "per_template": {t: float(ok[tpl_idx == i].mean()) for i, t in enumerate(templates)},
        "per_digit": {str(d): float(ok[np.asarray(digits) == d].mean()) for d in range(10)},
        "example_prompts": sorted(set(prompts))[:12],
    }


def step_cost(unet, mean, logvar, caption_ids, cfg, steps: int = 5) -> dict:
    """Seconds per training step (forward + backward, batch ``cfg.batch_size``) of the whole U-Net and of the text
    encoder with its projections alone, best of ``steps`` after a warm-up."""
    from components.diffusion import diffusion_loss, make_betas

    unet = unet.train()
    betas = make_betas(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
    g = torch.Generator().manual_seed(0)
    b = cfg.batch_size
    idx = torch.randperm(len(mean), generator=g)[:b]
    z0 = mean[idx] + torch.exp(0.5 * logvar[idx]) * torch.randn(mean[idx].shape, generator=g)
    ids = caption_ids[idx, 0]

    def whole():
        unet.zero_grad(set_to_none=True)
        diffusion_loss(unet, z0, ids, betas, cfg.prediction_type, t=torch.randint(0, cfg.num_timesteps, (b,), generator=g),
                       noise=torch.randn(z0.shape, generator=g)).backward()

    def text_only():
        unet.zero_grad(set_to_none=True)
        tok, pooled = unet.text_encoder(ids)
        (unet.text_proj(tok).square().mean() + unet.text_pool(pooled).square().mean()).backward()

    out = {}
    for name, fn in (("step_seconds", whole), ("text_encoder_seconds", text_only)):
        fn()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = min(times)
    unet.zero_grad(set_to_none=True)
    unet.eval()
    out["text_encoder_share_of_step"] = out["text_encoder_seconds"] / out["step_seconds"]
    return out


def thickness_check(generator, per_prompt: int, seed: int, sample_kw: dict, batch_size: int) -> dict:
    """Mean stroke thickness of samples of "a thin handwritten digit d" vs "a thick handwritten digit d" (a seen
    template) and of the held-out "a <slant> thin/thick digit <word>", all digits."""
    from components.data.captions import stroke_thickness

    res = {}
    for name, tpl in (("seen", "a {thick} handwritten digit {digit}"), ("held_out", "a {thick} digit {word}")):
        for thick in ("thin", "thick"):
            prompts = [tpl.format(thick=thick, digit=d, word=NUMBER_WORDS[d]) for d in range(10) for _ in range(per_prompt)]
            images = generator.generate(None, prompts=prompts, seed=seed, batch_size=batch_size, **sample_kw)
            res[f"{name}_{thick}_mean_thickness_px"] = float(stroke_thickness(images).mean())
    return res


def grid(generator, seed: int, sample_kw: dict, per_row: int = 8) -> tuple[bytes, list[str]]:
    """A PNG with one row per prompt (held-out phrasings, with attributes), ``per_row`` samples each."""
    from benchmarks.editing import figure

    prompts = ["handwritten number 3", "a slanted right thick digit seven", "a thin digit two",
               "the five digit written upright", "a sketch of a nine", "a slanted left thin digit four",
               "the zero digit written slanted right", "handwritten number 8"]
    rows = []
    for i, p in enumerate(prompts):
        rows.append((p, generator.generate(None, prompts=[p] * per_row, seed=seed + i, **sample_kw)))
    return figure(rows, upscale=3, title_w=240), prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=".", help="a finished default run: data/dataset, models/autoencoder, models/classifier")
    parser.add_argument("--params", default="params.yaml", help="train_diffusion (conditioning set to text) and sample sections")
    parser.add_argument("--model-out", default="models_text", help="where the trained text model goes (autoencoder/ + diffusion/)")
    parser.add_argument("--seen-per-prompt", type=int, default=10)
    parser.add_argument("--held-out-per-prompt", type=int, default=20)
    parser.add_argument("--max-images", type=int, default=None, help="override the training budget (default: params.yaml's)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="reports/benchmarks/text_prompts.json")
    parser.add_argument("--figure", default="reports/text_prompts.png")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from components.training.autoencoder import encode_dataset
    from components.training.diffusion import tokenize_captions, train_diffusion

    params = load_params(args.params)
    overrides = {"conditioning": "text"} | ({"max_images": args.max_images} if args.max_images else {})
    cfg = params.train_diffusion.model_copy(update=overrides)
    run = Path(args.run)
    ds = read_dataset(run / "data" / "dataset")
    seed = params.base.seed
    att = measure_attributes(ds.images["train"])
    captions = generate_captions(ds.labels["train"], att, seed=seed, per_image=params.ingest.captions_per_image)
    autoencoder, _ = load_autoencoder(run / "models" / "autoencoder")
    mean, logvar = encode_dataset(autoencoder, to_model_range(ds.images["train"]), torch.device("cpu"))
    scale = float(autoencoder.scale_factor)
    mean, logvar = mean * scale, logvar + 2 * np.log(scale)
    t0 = time.perf_counter()
    unet, result = train_diffusion(mean, logvar, torch.from_numpy(ds.labels["train"]), ds.num_classes, cfg, seed=seed,
                                   progress=True, captions=captions)
    train_seconds = time.perf_counter() - t0
    text_cfg, caption_ids, _ = tokenize_captions(captions, len(captions), cfg.text_encoder)

    out = Path(args.model_out)
    shutil.rmtree(out / "autoencoder", ignore_errors=True)
    shutil.copytree(run / "models" / "autoencoder", out / "autoencoder")
    cfg_dict = params_dict(params)["train_diffusion"] | {"conditioning": "text"}
    save_checkpoint(out / "diffusion", unet, unet.config.to_dict(), {
        "schedule": {"schedule": cfg.schedule, "num_timesteps": cfg.num_timesteps, "beta_start": cfg.beta_start, "beta_end": cfg.beta_end,
                     "zero_terminal_snr": cfg.zero_terminal_snr, "prediction_type": cfg.prediction_type, "variance_type": cfg.variance_type},
        "class_names": ds.class_names, "training": cfg_dict, "dataset_digest": ds.manifest["dataset_digest"], "weights": "ema",
        "metrics": {"images_seen": result.images_seen, "train_seconds": result.train_seconds},
    })
    cost = step_cost(unet, mean, logvar, caption_ids, cfg)

    clf = load_classifier(run / "models" / "classifier")
    generator = LatentDiffusionGenerator.from_dir(out, device="cpu")
    s = params.sample
    sample_kw = {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance, "eta": s.eta, "timestep_spacing": s.timestep_spacing}
    t1 = time.perf_counter()
    held = consistency(generator, clf, HELD_OUT_TEMPLATES, args.held_out_per_prompt, seed + 1, sample_kw, s.batch_size)
    seen = consistency(generator, clf, SEEN_TEMPLATES, args.seen_per_prompt, seed + 2, sample_kw, s.batch_size)
    thick = thickness_check(generator, 5, seed + 3, sample_kw, s.batch_size)
    sample_seconds = time.perf_counter() - t1
    png, grid_prompts = grid(generator, seed + 4, sample_kw)
    if args.figure:
        atomic_write_bytes(args.figure, png)
    unet_params = count_parameters(unet)
    enc_params = count_parameters(unet.text_encoder) + count_parameters(unet.text_proj) + count_parameters(unet.text_pool)
    real_thickness = {"thin": float(np.asarray(att.thickness)[att.thickness_class == 0].mean()),
                      "thick": float(np.asarray(att.thickness)[att.thickness_class == 2].mean())}
    result_json = {
        "held_out": held,
        "seen": seen,
        "thickness": {**thick, "real_train_thin_mean_px": real_thickness["thin"], "real_train_thick_mean_px": real_thickness["thick"],
                      "thresholds": att.thresholds},
        "text_encoder": {
            "parameters": count_parameters(unet.text_encoder),
            "parameters_with_projections": enc_params,
            "unet_parameters_total": unet_params,
            "share_of_parameters": enc_params / unet_params,
            "macs_per_caption": text_encoder_macs(text_cfg),
            "vocab_size": len(text_cfg.vocab),
            "config": {k: v for k, v in text_cfg.to_dict().items() if k != "vocab"},
            **cost,
        },
        "training": {"images_seen": result.images_seen, "train_seconds": round(train_seconds, 1), "final_loss": result.history[-1]["loss"],
                     "captions_per_image": params.ingest.captions_per_image, "seen_templates": list(SEEN_TEMPLATES),
                     "held_out_templates": list(HELD_OUT_TEMPLATES)},
        "sampling": {**sample_kw, "seconds": round(sample_seconds, 1)},
        "grid_prompts": grid_prompts,
        "arguments": {k: v for k, v in vars(args).items()},
        "model_out": str(out),
        "class_model_class_consistency": "reports/benchmarks/pipeline_run.json evaluate.class_consistency (the class-conditioned default)",
        "provenance": provenance(),
    }
    atomic_write_json(args.out, result_json)
    print(f"held-out phrasings: class consistency {held['class_consistency']:.3f} ({held['num_images']} images); "
          f"seen: {seen['class_consistency']:.3f}; text encoder {enc_params:,} params, "
          f"{cost['text_encoder_share_of_step']:.1%} of a step; thickness {thick}")


if __name__ == "__main__":
    main()
