"""The latent diffusion generator: decoder of the autoencoder + EMA U-Net + sampler settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from components.device import autocast, resolve_device
from components.diffusion import DEFAULT_GUIDANCE, make_betas, sample
from components.images import to_uint8
from components.models.checkpoint import CheckpointError, load_autoencoder, load_unet

SCHEDULE_KEYS = ("schedule", "num_timesteps", "beta_start", "beta_end", "prediction_type")


def check_pair(autoencoder, unet, diffusion_meta: dict, model_dir: Path) -> None:
    """The two checkpoints of a model folder belong together: the U-Net works on the autoencoder's latents
    (channels and size) and ``diffusion/config.json`` holds the noise schedule. A :class:`CheckpointError` names
    the mismatch otherwise (two folders from different runs, or a hand-edited config)."""
    cfg = diffusion_meta.get("schedule")
    missing = [k for k in SCHEDULE_KEYS if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise CheckpointError(f"{model_dir}/diffusion/config.json lacks schedule {'/'.join(missing)} (the 'schedule' section "
                              "train_diffusion writes); re-run train_diffusion or restore the folder (dvc checkout)")
    latent, ucfg = autoencoder.config.latent_shape, unet.config
    if (ucfg.in_channels, ucfg.sample_size) != (latent[0], latent[1]):
        raise CheckpointError(
            f"{model_dir}: the diffusion U-Net takes {ucfg.in_channels}x{ucfg.sample_size}x{ucfg.sample_size} latents but the autoencoder "
            f"makes {latent[0]}x{latent[1]}x{latent[2]}: autoencoder/ and diffusion/ come from different runs; re-run train_diffusion"
        )


class LatentDiffusionGenerator:
    """Generates class-conditional images from a model folder holding ``autoencoder/`` and ``diffusion/``."""

    def __init__(self, autoencoder, unet, diffusion_meta: dict, device: torch.device):
        self.autoencoder = autoencoder
        self.unet = unet
        self.meta = diffusion_meta
        self.device = device
        sched = diffusion_meta["schedule"]
        self.betas = make_betas(sched["schedule"], sched["num_timesteps"], sched["beta_start"], sched["beta_end"],
                                zero_terminal_snr=sched.get("zero_terminal_snr", False))
        self.prediction_type = sched["prediction_type"]
        cfg = autoencoder.config
        self.image_shape = (cfg.image_size, cfg.image_size, cfg.in_channels)
        self.latent_shape = cfg.latent_shape
        self.num_classes = unet.config.num_classes
        self.class_names: list[str] = list(diffusion_meta.get("class_names") or range(self.num_classes))

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> LatentDiffusionGenerator:
        """Load ``model_dir/autoencoder`` and ``model_dir/diffusion`` checkpoints (safetensors + JSON) onto ``device``
        (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, or a ``torch.device``; see :func:`components.device.resolve_device`)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise CheckpointError(f"model folder {model_dir} not found: pass a folder holding autoencoder/ and diffusion/ (`models` "
                                  "after dvc repro) or an MLflow URI such as models:/latentflow@champion")
        dev = resolve_device(device, key="device")
        autoencoder, _ = load_autoencoder(model_dir / "autoencoder", dev)
        unet, meta = load_unet(model_dir / "diffusion", dev)
        check_pair(autoencoder, unet, meta, model_dir)
        return cls(autoencoder, unet, meta, dev)

    @torch.no_grad()
    def generate(
        self,
        class_labels: Sequence[int],
        *,
        seed: int,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = DEFAULT_GUIDANCE,
        eta: float = 0.0,
        timestep_spacing: str = "leading",
        batch_size: int = 500,
    ) -> np.ndarray:
        """uint8 images ``[N, H, W, C]`` for ``class_labels``; the same seed gives the same images.

        ``batch_size`` bounds how many images one sampler call generates (memory), never which images come out:
        the initial noise of all N images is drawn first from one generator seeded with ``seed``, and every later
        draw of a stochastic sampler (DDPM, DDIM with eta > 0) for image i comes from image i's own generator
        (:func:`image_seed`), as diffusers' ``randn_tensor`` takes one generator per image. The random numbers are
        therefore the same for any batch size; so are the images wherever the network's per-image output does not
        depend on the batch it is in (the CPU's GEMM kernels for fewer than 12 rows round differently from the
        larger ones, which can move a pixel by one level; tests/test_device.py measures it). On CUDA the U-Net and
        the decoder run under bf16 autocast (:func:`components.device.autocast`), on the CPU in fp32.
        """
        labels = torch.as_tensor(list(class_labels), dtype=torch.long)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"class labels must be in [0, {self.num_classes - 1}], got {labels.tolist()}")
        noise = torch.randn((len(labels), *self.latent_shape), generator=torch.Generator().manual_seed(seed))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (images per sampler call), got {batch_size}")
        out = []
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            with autocast(self.device):
                z = self._sample_batch(noise[start:stop], labels[start:stop], seed=seed, first_index=start, sampler=sampler, steps=steps,
                                       guidance=guidance, eta=eta, timestep_spacing=timestep_spacing)
                # Undo the latent scale; ``decode`` is each kind's path: KL and plain decode z, VQ quantises z to
                # its nearest codes first (the diffusion model generates pre-quantisation latents, as LDM's VQ-reg).
                x = self.autoencoder.decode(z / self.autoencoder.scale_factor)
            out.append(to_uint8(x.float()))
        if not out:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        return np.concatenate(out)

    def _sample_batch(self, noise: torch.Tensor, labels: torch.Tensor, *, seed: int, first_index: int, sampler: str, steps: int,
                      guidance: float, eta: float, timestep_spacing: str) -> torch.Tensor:
        """Latents of one batch: images ``first_index ..`` of the call, each with its own generator."""
        generators = [torch.Generator().manual_seed(image_seed(seed, first_index + i)) for i in range(len(labels))]
        return sample(
            self.unet,
            noise.to(self.device),
            betas=self.betas,
            sampler=sampler,
            num_steps=steps,
            eta=eta,
            timestep_spacing=timestep_spacing,
            prediction_type=self.prediction_type,
            generator=generators,
            class_labels=labels.to(self.device),
            guidance_scale=guidance,
        )


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s own generator in a ``generate(seed=seed)`` call: a SplitMix64-style hash of the pair
    (Steele et al. 2014, the SplitMix64 finaliser: a bijection of 64-bit integers), so neighbouring seeds and indices give
    unrelated streams and no two images of one call share one."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)  # torch.Generator.manual_seed takes 0 .. 2**64 - 1
