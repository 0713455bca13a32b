"""The latent diffusion generator: decoder of the autoencoder + EMA U-Net + sampler settings."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from components.device import autocast, resolve_device
from components.diffusion import DEFAULT_GUIDANCE, make_betas, sample
from components.diffusion.distilled import DistilledInfo
from components.diffusion.editing import edit_latents, latent_mask, strength_start
from components.images import to_model_range, to_uint8
from components.models.checkpoint import CheckpointError, load_autoencoder, load_unet
from components.models.text import Tokenizer

log = logging.getLogger("latentflow")
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
    """Generates class- or text-conditional images from a model folder holding ``autoencoder/`` and ``diffusion/``.

    A text-conditioned model (``train_diffusion.conditioning: text``) takes ``prompts``; given class labels instead,
    it generates from the class's name as the prompt (``"7"`` for MNIST), so the pipeline's sample and evaluate stages
    work unchanged. A class-conditioned model refuses prompts with an error saying so.
    """

    def __init__(self, autoencoder, unet, diffusion_meta: dict, device: torch.device):
        self.autoencoder = autoencoder
        self.unet = unet
        self.meta = diffusion_meta
        self.device = device
        sched = diffusion_meta["schedule"]
        self.betas = make_betas(sched["schedule"], sched["num_timesteps"], sched["beta_start"], sched["beta_end"],
                                zero_terminal_snr=sched.get("zero_terminal_snr", False))
        self.prediction_type = sched["prediction_type"]
        # the scale the U-Net's latents carry (train_diffusion.latent_scale); checkpoints without it: the autoencoder's
        scale = diffusion_meta.get("latent_scale", float(autoencoder.scale_factor))
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise CheckpointError(f"diffusion/config.json: latent_scale {scale!r} is not a positive number; "
                                  "re-run train_diffusion or restore the folder (dvc checkout)")
        self.latent_scale = float(scale)
        cfg = autoencoder.config
        self.image_shape = (cfg.image_size, cfg.image_size, cfg.in_channels)
        self.latent_shape = cfg.latent_shape
        self.num_classes = unet.config.num_classes
        self.class_names: list[str] = list(diffusion_meta.get("class_names") or range(self.num_classes))
        self.conditioning = getattr(unet.config, "conditioning", "class")
        self.tokenizer = Tokenizer.from_config(unet.config.text) if self.conditioning == "text" else None
        self.distilled = None  # a few-step student (distill stage): its DistilledInfo, read from config.json's "distilled"
        if diffusion_meta.get("distilled") is not None:
            try:
                self.distilled = DistilledInfo.from_dict(diffusion_meta["distilled"])
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"diffusion/config.json: bad 'distilled' section ({exc}); re-run the distill stage") from None

    @property
    def default_steps(self) -> int | None:
        """The step count a distilled student was trained for (None for an ordinary model)."""
        return self.distilled.steps if self.distilled is not None else None

    def sampling_settings(self, sampler: str, steps: int, guidance: float, timestep_spacing: str) -> tuple[float, str]:
        """The ``(guidance, timestep_spacing)`` a run really uses: unchanged for an ordinary model. A distilled student
        (Meng et al. 2023: guidance folded in) runs one pass per step (guidance 1) on the grid it was distilled on; asked
        for another sampler it refuses (``ValueError``), for another step count or guidance it warns and goes on."""
        d = self.distilled
        if d is None:
            return guidance, timestep_spacing
        if sampler != d.sampler:
            raise ValueError(f"this model is a student distilled for the {d.sampler} sampler at {d.steps} steps; "
                             f"sampler {sampler!r} would not follow its training: use --sampler {d.sampler}")
        if steps != d.steps:
            log.warning("this model is a student distilled for %d %s steps; sampling it at %d steps is outside its training "
                        "(expect worse images): use --steps %d", d.steps, d.sampler, steps, d.steps)
        if guidance not in (1.0, d.guidance):
            log.warning("this student has guidance %g folded in (one pass per step); the requested guidance %g is ignored",
                        d.guidance, guidance)
        return 1.0, d.timestep_spacing

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

    def check_labels(self, labels: torch.Tensor) -> None:
        """Class labels are in [0, num_classes); a ``ValueError`` names the bad ones otherwise."""
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"class labels must be in [0, {self.num_classes - 1}], got {labels.tolist()}")

    def condition(self, class_labels: Sequence[int] | None, prompts: Sequence[str] | None) -> torch.Tensor:
        """The U-Net's condition: class labels ``[N]`` (class models) or token ids ``[N, L]`` (text models) of
        ``prompts``, or of the class names of ``class_labels`` when no prompts are given. Errors say what to pass."""
        if prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            if self.tokenizer is None:
                raise ValueError("this model is class-conditioned (trained with train_diffusion.conditioning: class): it takes "
                                 "class labels, not prompts; pass class_label, or use a model trained with conditioning: text")
            if class_labels is not None and len(class_labels):
                raise ValueError("give prompts or class labels, not both")
            for text in prompts:
                self.tokenizer.check(text)
            return self.tokenizer.encode_batch(list(prompts))
        labels = torch.as_tensor(list(class_labels if class_labels is not None else []), dtype=torch.long)
        self.check_labels(labels)
        if self.tokenizer is None:
            return labels
        return self.tokenizer.encode_batch([str(self.class_names[int(y)]) for y in labels])

    def check_image(self, image: np.ndarray, what: str = "image") -> None:
        """``image`` is uint8 ``[H, W, C]`` of the model's image shape; the ``ValueError`` says what differs."""
        h, w, c = self.image_shape
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"{what} must be uint8 [H, W, C], got {image.dtype} of shape {image.shape}")
        if image.shape[:2] != (h, w):
            raise ValueError(f"{what} is {image.shape[1]}x{image.shape[0]} pixels but the model makes {w}x{h} images: resize it to {w}x{h}")
        if image.shape[2] != c:
            kinds = {1: "greyscale (1 channel)", 3: "RGB (3 channels)"}
            raise ValueError(f"{what} is {kinds.get(image.shape[2], f'{image.shape[2]}-channel')} but the model makes "
                             f"{kinds.get(c, f'{c}-channel')} images: convert it")

    @torch.no_grad()
    def edit(
        self,
        images: np.ndarray,
        class_labels: Sequence[int],
        *,
        seed: int,
        strength: float,
        masks: np.ndarray | None = None,
        resample_steps: int = 0,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = DEFAULT_GUIDANCE,
        eta: float = 0.0,
        timestep_spacing: str = "leading",
        paste_pixels: bool = True,
        batch_size: int = 500,
    ) -> np.ndarray:
        """Edit uint8 images ``[N, H, W, C]`` toward ``class_labels``: image-to-image (SDEdit) or, with ``masks``
        (bool ``[N, H, W]``, True = repaint), inpainting; see :func:`components.diffusion.editing.edit_latents`.

        Each image is encoded to its posterior mean (deterministic; for KL models the posterior's std is tiny), times
        the U-Net's latent scale (:attr:`latent_scale`). The random numbers are drawn as in :meth:`generate` (the
        initial noise of all N images from one
        generator seeded with ``seed``, every later draw of image i from its own generator, :func:`image_seed`), so
        strength 1 without a mask gives exactly ``generate``'s images, whatever ``batch_size``.
        Strength 0 (no step) returns the autoencoder's reconstruction, decode(encode(x)). With a mask the latent
        grid's mask is the pixel mask max-pooled (a latent is repainted when any of its pixels is), the kept latents
        are the input's at the end, and ``paste_pixels`` (default) puts the input's own pixels back outside the
        pixel mask: the decoder's GroupNorm and convolutions let every latent touch every output pixel, so only the
        paste keeps the unmasked pixels unchanged (without it they differ from the input by about the
        autoencoder's reconstruction error plus what the decoder carries over from the repainted latents).
        """
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got shape {images.shape}")
        for i, image in enumerate(images):
            self.check_image(image, f"image {i}" if len(images) > 1 else "image")
        labels = torch.as_tensor(list(class_labels), dtype=torch.long)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} class labels")
        labels = self.condition(labels.tolist(), None)
        if masks is not None:
            masks = np.asarray(masks)
            if masks.dtype != np.bool_ or masks.shape != images.shape[:3]:
                raise ValueError(f"masks must be bool [N, H, W] = {images.shape[:3]} (one per image, the image's size), "
                                 f"got {masks.dtype} {masks.shape}")
            if not masks.reshape(len(masks), -1).any(axis=1).all():
                raise ValueError("a mask has no white pixel: nothing to repaint (white = repaint, black = keep)")
        guidance, timestep_spacing = self.sampling_settings(sampler, steps, guidance, timestep_spacing)
        k = strength_start(steps, strength)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (images per sampler call), got {batch_size}")
        noise = torch.randn((len(labels), *self.latent_shape), generator=torch.Generator().manual_seed(seed))
        out = []
        scale = self.latent_scale
        for start in range(0, len(labels), batch_size):
            part = slice(start, start + batch_size)
            generators = image_generators(seed, start, len(labels[part]))
            with autocast(self.device):  # as generate: bf16 on CUDA, fp32 on the CPU
                z_mean = self.autoencoder.encode(to_model_range(images[part]).to(self.device)).mean.float()
                if k == steps:  # strength 0: no step; decode the latent itself (not z * s / s, which may round)
                    z = z_mean
                else:
                    mask = None
                    if masks is not None:
                        mask = latent_mask(torch.from_numpy(masks[part])[:, None].to(self.device), self.latent_shape[1:])
                    z = edit_latents(
                        self.unet, z_mean * scale, noise[part].to(self.device), betas=self.betas, sampler=sampler, num_steps=steps,
                        strength=strength, mask=mask, resample_steps=resample_steps, eta=eta, timestep_spacing=timestep_spacing,
                        prediction_type=self.prediction_type, generator=generators,
                        class_labels=labels[part].to(self.device), guidance_scale=guidance,
                    ) / scale
                x = self.autoencoder.decode(z)
            decoded = to_uint8(x.float())
            if masks is not None and paste_pixels:
                decoded = np.where(masks[part][..., None], decoded, images[part])
            out.append(decoded)
        if not out:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        return np.concatenate(out)

    @torch.no_grad()
    def generate(
        self,
        class_labels: Sequence[int] | None,
        *,
        seed: int,
        prompts: Sequence[str] | None = None,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = DEFAULT_GUIDANCE,
        eta: float = 0.0,
        timestep_spacing: str = "leading",
        batch_size: int = 500,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """uint8 images ``[N, H, W, C]`` for ``class_labels`` (or, on a text-conditioned model, for ``prompts``; see
        :meth:`condition`); the same seed gives the same images.

        ``batch_size`` bounds how many images one sampler call generates (memory), never which images come out:
        the initial noise of all N images is drawn first from one generator seeded with ``seed``, and every later
        draw of a stochastic sampler (DDPM, DDIM with eta > 0) for image i comes from image i's own generator
        (:func:`image_seed`), as diffusers' ``randn_tensor`` takes one generator per image. The random numbers are
        therefore the same for any batch size; so are the images wherever the network's per-image output does not
        depend on the batch it is in (the CPU's GEMM kernels for fewer than 12 rows, and on some CPUs its convolution
        kernels, round a small batch differently from a large one, which can move a pixel by one level;
        tests/test_device.py bounds it). On CUDA the U-Net and
        the decoder run under bf16 autocast (:func:`components.device.autocast`), on the CPU in fp32.
        ``guidance_rescale`` (Lin et al. 2024) and ``guidance_interval`` (Kynkäänniemi et al. 2024, in sigma):
        see :func:`components.diffusion.samplers.guided`.
        """
        labels = self.condition(class_labels, prompts)
        guidance, timestep_spacing = self.sampling_settings(sampler, steps, guidance, timestep_spacing)
        noise = torch.randn((len(labels), *self.latent_shape), generator=torch.Generator().manual_seed(seed))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (images per sampler call), got {batch_size}")
        out = []
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            with autocast(self.device):
                z = self._sample_batch(noise[start:stop], labels[start:stop], seed=seed, first_index=start, sampler=sampler, steps=steps,
                                       guidance=guidance, eta=eta, timestep_spacing=timestep_spacing,
                                       guidance_rescale=guidance_rescale, guidance_interval=guidance_interval)
                # Undo the latent scale; ``decode`` is each kind's path: KL and plain decode z, VQ quantises z to
                # its nearest codes first (the diffusion model generates pre-quantisation latents, as LDM's VQ-reg).
                x = self.autoencoder.decode(z / self.latent_scale)
            out.append(to_uint8(x.float()))
        if not out:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        return np.concatenate(out)

    def _sample_batch(self, noise: torch.Tensor, labels: torch.Tensor, *, seed: int, first_index: int, sampler: str, steps: int,
                      guidance: float, eta: float, timestep_spacing: str, guidance_rescale: float = 0.0,
                      guidance_interval: tuple[float, float] | None = None) -> torch.Tensor:
        """Latents of one batch: images ``first_index ..`` of the call, each with its own generator."""
        generators = image_generators(seed, first_index, len(labels))
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
            guidance_rescale=guidance_rescale,
            guidance_interval=guidance_interval,
        )


def image_generators(seed: int, first_index: int, n: int) -> list[torch.Generator]:
    """The own generators of images ``first_index .. first_index + n - 1`` of a call with ``seed`` (see :func:`image_seed`):
    each image's draws depend only on the call's seed and its index, never on the batch it falls in."""
    return [torch.Generator().manual_seed(image_seed(seed, first_index + i)) for i in range(n)]


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s own generator in a ``generate(seed=seed)`` call: a SplitMix64-style hash of the pair
    (Steele et al. 2014, the SplitMix64 finaliser: a bijection of 64-bit integers), so neighbouring seeds and indices give
    unrelated streams and no two images of one call share one."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)  # torch.Generator.manual_seed takes 0 .. 2**64 - 1
