"""Which judge of class consistency reads *decoded* images right: the pipeline's classifier or the EfficientNet-Lite0
linear probe (``evaluate.judge``), on a finished run's real val images, on the reconstructions of them by one or more
autoencoders (decoded images whose class is known) and on samples of one or more trained models. For a KL
autoencoder also on decodings of one draw from each val image's posterior: the latents the U-Net is trained on, so
the judge's accuracy there is what a U-Net that learnt its training distribution exactly would score, with the
posterior's variance against the variance of the means per latent channel.

A latent diffusion model's samples are decoded images, so the judge that should score them is the one that reads
decoded images of known class right, not the one that reads the real val images better: ``evaluate.judge: auto``
picks on the reconstructions (``components.evaluation.ceiling.judges_on_reconstructions``). This script shows what
that rule and the old one (val accuracy on real images) pick, with each judge's confusion matrices:

    .venv/bin/python -m benchmarks.judges_decoded --run /tmp/s64 --autoencoders group=/tmp/s64/models/autoencoder \\
        --generators g120k=/tmp/fr_s64/<variant>/models --out reports/benchmarks/judges_decoded_shapes64.json

The probe is trained as ``reference_stats`` trains it (the run's ``evaluate.probe`` params, ``base.seed``); samples are
the run's ``sample`` settings (sampler, steps, guidance and its interval/rescale), ``--num-per-class`` per class, seed
``base.seed + 2`` (the frontier's). Runs on the CPU with ``--num-threads`` torch threads.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from components.io import atomic_write_json


def _named(items: list[str], what: str, marker: str, ap: argparse.ArgumentParser) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not (Path(path) / marker).exists():
            ap.error(f"{what} wants NAME=DIR with {marker} inside DIR, got {item!r}")
        out.append((name, Path(path)))
    return out


@torch.no_grad()
def posterior_samples(autoencoder: torch.nn.Module, images: np.ndarray, batch_size: int = 100, seed: int = 0) -> tuple[np.ndarray, dict]:
    """uint8 decodings ``D(z)`` of one draw ``z = mean + std * n`` of each image's posterior q(z|x): the latents
    train_diffusion trains on (LDM, sec. 3.3), so a U-Net that learnt them exactly would draw images like these. The
    ``n`` are drawn for all images at once from a ``seed``-ed generator (the images do not depend on ``batch_size``).
    Also, per latent channel, the variance of the posterior means over the images and latent positions, and the mean
    posterior variance:
    ``{"mean_variance": [...], "posterior_variance": [...], "noise_to_signal": total posterior variance / total
    variance of the means}``."""
    from components.data.loader import iter_batches, to_model
    from components.images import to_uint8

    noise = torch.randn((len(images), *autoencoder.config.latent_shape), generator=torch.Generator().manual_seed(seed))
    out, means, variances = [], [], []
    for i, batch in enumerate(iter_batches(images, batch_size, device=torch.device("cpu"))):
        q = autoencoder.encode(to_model(batch, torch.device("cpu")))
        std = torch.exp(0.5 * q.logvar)
        out.append(to_uint8(autoencoder.decode(q.mean + std * noise[i * batch_size:i * batch_size + len(batch)]).float()))
        means.append(q.mean.transpose(0, 1).flatten(1))
        variances.append((std ** 2).transpose(0, 1).flatten(1))
    mean_var = torch.cat(means, 1).var(1)
    post_var = torch.cat(variances, 1).mean(1)
    stats = {"mean_variance": [round(float(v), 4) for v in mean_var], "posterior_variance": [round(float(v), 4) for v in post_var],
             "noise_to_signal": float(post_var.sum() / mean_var.sum())}
    return np.concatenate(out), stats


def score(judges: dict, images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Each judge's accuracy on ``images`` of class ``labels``, its confusion matrix (rows: true class) and how often
    the judges agree."""
    preds = {name: predict(images) for name, predict in judges.items()}
    out: dict = {}
    for name, pred in preds.items():
        confusion = np.zeros((num_classes, num_classes), dtype=int)
        np.add.at(confusion, (labels, pred), 1)
        out[name] = {"accuracy": float((pred == labels).mean()), "confusion": confusion.tolist()}
    names = list(preds)
    if len(names) == 2:
        out["agreement"] = float((preds[names[0]] == preds[names[1]]).mean())
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a run folder: params.yaml, data/dataset, models/classifier")
    ap.add_argument("--autoencoders", nargs="+", default=[], metavar="NAME=DIR", help="models/autoencoder folders")
    ap.add_argument("--generators", nargs="+", default=[], metavar="NAME=DIR", help="models folders (autoencoder + diffusion)")
    ap.add_argument("--num-per-class", type=int, default=50)
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    autoencoders = _named(args.autoencoders, "--autoencoders", "config.json", ap)
    generators = _named(args.generators, "--generators", "diffusion", ap)

    from components.config import load_params
    from components.data.artifact import read_dataset
    from components.evaluation.ceiling import reconstruct
    from components.evaluation.classifier import ClassifierExtractor, load_classifier
    from components.evaluation.features import get_extractor
    from components.evaluation.probe import ProbeJudge, choose_judge, train_probe_judge
    from components.generation import LatentDiffusionGenerator
    from components.models.checkpoint import load_autoencoder

    params = load_params(args.run / "params.yaml")
    ds = read_dataset(args.run / "data/dataset")
    val, val_labels = np.asarray(ds.images["val"]), np.asarray(ds.labels["val"])
    num_classes = len(ds.class_names)
    classifier = ClassifierExtractor(load_classifier(args.run / "models/classifier"))
    t0 = time.perf_counter()
    pc = params.evaluate.probe
    probe, selection = train_probe_judge(get_extractor("effnet_lite0"), ds.images["train"], ds.labels["train"], num_classes,
                                         max_train_images=pc.max_train_images, weight_decays=pc.weight_decays,
                                         holdout_fraction=pc.holdout_fraction, seed=params.base.seed, max_iter=pc.max_iter)
    probe_seconds = time.perf_counter() - t0
    effnet = ProbeJudge(get_extractor("effnet_lite0"), probe)
    judges = {"classifier": lambda x: classifier.predict(x, 500), "effnet_probe": lambda x: effnet.predict(x, 16)}

    result: dict = {"command": "python -m benchmarks.judges_decoded " + shlex.join(argv if argv is not None else sys.argv[1:]),
                    "run": str(args.run), "class_names": list(ds.class_names), "probe_selection": selection,
                    "probe_seconds": round(probe_seconds, 1), "real_val": score(judges, val, val_labels, num_classes),
                    "reconstructions": {}, "samples": {}}
    real = {j: result["real_val"][j]["accuracy"] for j in judges}
    print(f"real val images ({len(val)}): {real}", flush=True)
    for name, path in autoencoders:
        ae, _ = load_autoencoder(path)
        r = score(judges, reconstruct(ae.eval(), val, 100), val_labels, num_classes)
        r["path"] = str(path)
        result["reconstructions"][name] = r
        print(f"reconstructions by {name}: {({j: r[j]['accuracy'] for j in judges})}", flush=True)
        if ae.config.regularizer == "kl":  # the other autoencoders' latents are deterministic: the same images
            decoded, stats = posterior_samples(ae, val, 100, seed=params.base.seed)
            r = score(judges, decoded, val_labels, num_classes)
            r.update(path=str(path), posterior=stats)
            result.setdefault("posterior_samples", {})[name] = r
            print(f"decoded posterior samples of {name}: {({j: r[j]['accuracy'] for j in judges})}, posterior variance / "
                  f"variance of the means {stats['noise_to_signal']:.2f}", flush=True)
    s = params.sample
    labels = np.repeat(np.arange(num_classes), args.num_per_class)
    for name, path in generators:
        generator = LatentDiffusionGenerator.from_dir(path, device="cpu")
        images = generator.generate(labels.tolist(), seed=params.base.seed + 2, sampler=s.sampler, steps=s.steps, guidance=s.guidance,
                                    eta=s.eta, timestep_spacing=s.timestep_spacing, batch_size=s.batch_size,
                                    **s.guidance_options())
        r = score(judges, images, labels, num_classes)
        r["path"] = str(path)
        result["samples"][name] = r
        print(f"samples of {name} ({len(labels)}): class consistency {({j: r[j]['accuracy'] for j in judges})}", flush=True)
    result["auto_picks"] = {"on_real_val": choose_judge("auto", real)}
    for name, r in result["reconstructions"].items():
        result["auto_picks"][f"on_reconstructions_{name}"] = choose_judge("auto", {j: r[j]["accuracy"] for j in judges})
    result["sample_settings"] = {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance, "guidance_interval": s.guidance_interval,
                                 "num_per_class": args.num_per_class, "seed": params.base.seed + 2}
    result["provenance"] = provenance()
    print(f"auto picks: {result['auto_picks']}")
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
