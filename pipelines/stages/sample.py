"""Stage ``sample`` (and ``latentflow sample``): class-conditional images into label folders, plus a grid; with
prompts (text-conditioned models), one folder per prompt."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("latentflow")


def load_generator(model: str | Path, device, tracking_uri: str | None = None):
    """A generator on ``device`` (a ``torch.device`` or ``auto`` | ``cpu`` | ``cuda``) from a model folder
    (``autoencoder/`` + ``diffusion/``) or an MLflow ``models:/`` URI."""
    from components.generation import LatentDiffusionGenerator

    if str(model).startswith(("models:/", "runs:/")):
        from components.registry.mlflow_registry import load_generator_from_uri

        return load_generator_from_uri(str(model), tracking_uri=tracking_uri, device=device)
    return LatentDiffusionGenerator.from_dir(model, device=device)


def run(
    *,
    model: str | Path,
    out_dir: Path,
    num_per_class: int,
    seed: int,
    sampler: str,
    steps: int | None,
    guidance: float,
    eta: float = 0.0,
    timestep_spacing: str = "leading",
    grid_path: Path | None = None,
    device: str = "auto",
    batch_size: int = 250,
    tracking_uri: str | None = None,
    device_key: str = "base.device",
    prompts: list[str] | None = None,
    default_steps: int = 50,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
) -> dict:
    """Generate ``num_per_class`` images of every class into ``out_dir/<label>/<index>.png`` on ``device``
    (``base.device``: ``auto`` | ``cpu`` | ``cuda``), ``batch_size`` images per sampler call (``sample.batch_size``;
    the images do not depend on it). ``steps=None``: a distilled student's step count, else ``default_steps``
    (``sample.steps``). ``device_key`` names where ``device`` came from in the error for a missing CUDA.

    ``prompts`` (``latentflow sample --prompt``, text-conditioned models only): ``num_per_class`` images of each prompt
    into ``out_dir/<k>/<index>.png``, ``k`` the prompt's position; the grid has one row per prompt."""
    from components.data.samples import check_samples_target, write_grid, write_samples
    from components.device import resolve_device
    from components.errors import OptionError

    check_samples_target(Path(out_dir))  # before the work: a bad --out fails fast and nothing is written
    dev = resolve_device(device, key=device_key)  # a CUDA device this machine lacks fails here, before the model is read
    gen = load_generator(model, dev, tracking_uri)
    if steps is None:  # --steps not given: a distilled student's own step count, else sample.steps
        steps = gen.default_steps or default_steps
    if not 1 <= steps <= len(gen.betas):
        raise OptionError(f"--steps {steps}: the model was trained with {len(gen.betas)} timesteps; choose --steps from 1 to {len(gen.betas)}")
    kwargs = {"seed": seed, "sampler": sampler, "steps": steps, "guidance": guidance, "eta": eta, "timestep_spacing": timestep_spacing,
              "batch_size": batch_size, "guidance_rescale": guidance_rescale,
              "guidance_interval": None if guidance_interval is None else tuple(guidance_interval)}
    if prompts:
        check_prompts(gen, prompts, model)
        labels = np.repeat(np.arange(len(prompts)), num_per_class)
        t0 = time.perf_counter()
        images = gen.generate(None, prompts=[prompts[k] for k in labels], **kwargs)
    else:
        labels = np.repeat(np.arange(gen.num_classes), num_per_class)
        t0 = time.perf_counter()
        images = gen.generate(labels, **kwargs)
    seconds = time.perf_counter() - t0
    write_samples(images, labels, Path(out_dir))
    if grid_path is not None:
        write_grid(images, labels, grid_path)
    info = {"images": int(len(labels)), "seconds": round(seconds, 2), "images_per_second": round(len(labels) / max(seconds, 1e-9), 2),
            "sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed, "device": str(dev), "batch_size": batch_size}
    if guidance_rescale or guidance_interval is not None:
        info.update(guidance_rescale=guidance_rescale, guidance_interval=None if guidance_interval is None else list(guidance_interval))
    if prompts:
        info["prompts"] = {str(k): p for k, p in enumerate(prompts)}
    log.info("sample: %s", info)
    return info


def check_prompts(gen, prompts: list[str], model) -> None:
    """``--prompt`` fits the model: a text-conditioned one, prompts within its length. An :class:`OptionError` says what to
    do otherwise; words the model never saw in training are read as ``<unk>``, with a warning naming them."""
    from components.errors import OptionError

    if gen.tokenizer is None:
        raise OptionError(f"--prompt: the model {model} is class-conditioned (train_diffusion.conditioning: class), it takes no "
                          "prompts; drop --prompt (it generates every class), or train with train_diffusion.conditioning: text")
    for p in prompts:
        try:
            gen.tokenizer.check(p)
        except ValueError as exc:
            raise OptionError(f"--prompt: {exc}") from None
        unknown = gen.tokenizer.unknown_words(p)
        if unknown:
            log.warning("sample: --prompt %r: words the model never saw in training, read as <unk>: %s", p, ", ".join(unknown))
