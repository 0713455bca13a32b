"""Convolutional autoencoders for latent diffusion (Rombach et al. 2022, sec. 3 and appendix G).

Three regularisations of the latent space share one encoder/decoder architecture:

* ``kl``   -- the encoder outputs mean and log-variance of a diagonal Gaussian q(z|x); training adds
  ``kl_weight * KL(q(z|x) || N(0, I))`` (LDM's "KL-reg", a slightly regularised VAE).
* ``vq``   -- a vector-quantisation layer, absorbed into the decoder (LDM's "VQ-reg"): the diffusion model
  works on the pre-quantisation encoder output and ``decode`` quantises first
  (:mod:`components.models.vq`; van den Oord et al. 2017).
* ``none`` -- a plain deterministic autoencoder (the MSE baseline of the same size).

The downsampling factor is ``f = 2 ** (len(channels) - 1)``. ``scale_factor`` (1 / std of the training
latents) is stored with the weights so the diffusion model sees latents of unit variance.
Every model exposes the same interface: ``encode(x) -> DiagonalGaussian`` (a point mass for ``vq`` and
``none``), ``decode(z) -> image``, ``forward(x, generator) -> (recon, regulariser loss, parts)`` and
``last_layer()`` (for the adaptive GAN weight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from components.models.blocks import NORMS, Downsample, ResBlock, Upsample, norm_layer
from components.models.vq import VectorQuantizer

KINDS = {"kl": "kl_autoencoder", "vq": "vq_autoencoder", "none": "plain_autoencoder"}


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 1
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    regularizer: str = "kl"  # kl | vq | none
    codebook_size: int = 256  # vq only
    commitment_beta: float = 0.25  # vq only
    vq_ema: bool = True  # vq only: EMA codebook (else learned by the codebook loss term)
    vq_decay: float = 0.99  # vq only
    norm: str = "group"  # group (GroupNorm, LDM's) | layer (per-position LayerNorm over channels); checkpoints without it: group
    resample_with_conv: bool = True  # False: average pooling / nearest upsampling alone (LDM's resamp_with_conv); checkpoints without it: True

    def __post_init__(self) -> None:
        if self.regularizer not in KINDS:
            raise ValueError(f"autoencoder regularizer must be one of {sorted(KINDS)}, got {self.regularizer!r}")
        if self.norm not in NORMS:
            raise ValueError(f"autoencoder norm must be one of {sorted(NORMS)}, got {self.norm!r}")

    @property
    def kind(self) -> str:
        """The checkpoint kind written to ``config.json``: kl_autoencoder | vq_autoencoder | plain_autoencoder."""
        return KINDS[self.regularizer]

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.downsampling_factor
        return (self.latent_channels, s, s)

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        """Inverse of :meth:`to_dict`; checkpoints written before ``regularizer`` existed are KL ones."""
        d = dict(d)
        kind = d.pop("kind", None)
        by_kind = {v: k for k, v in KINDS.items()}
        if kind not in by_kind:
            raise ValueError(f"not an autoencoder config: kind {kind!r} (expected one of {sorted(by_kind)})")
        d.setdefault("regularizer", by_kind[kind])
        if d["regularizer"] != by_kind[kind]:
            raise ValueError(f"inconsistent autoencoder config: kind {kind!r} but regularizer {d['regularizer']!r}")
        d["channels"] = tuple(d["channels"])
        return cls(**d)


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))); ``logvar = -inf`` is a point mass (deterministic encoders)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def point(cls, mean: torch.Tensor) -> DiagonalGaussian:
        return cls(mean, torch.full_like(mean, float("-inf")))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example: 0.5 * sum(mean^2 + var - 1 - logvar) (Kingma & Welling 2014, appendix B)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar, dim=(1, 2, 3))


class _Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig, out_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.channels[0], 3, padding=1)]
        ch = cfg.channels[0]
        for i, cout in enumerate(cfg.channels):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, cout, norm=cfg.norm))
                ch = cout
            if i < len(cfg.channels) - 1:
                layers.append(Downsample(ch, cfg.resample_with_conv))
        layers += [ResBlock(ch, ch, norm=cfg.norm), norm_layer(cfg.norm, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1), ResBlock(ch, ch, norm=cfg.norm)]
        for i, cout in reversed(list(enumerate(cfg.channels))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, cout, norm=cfg.norm))
                ch = cout
            if i > 0:
                layers.append(Upsample(ch, cfg.resample_with_conv))
        layers += [norm_layer(cfg.norm, ch), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    """Base class: images in [-1, 1] ``[B, C, H, W]`` <-> latents ``[B, latent_channels, H/f, W/f]``."""

    encoder_out_factor = 1

    def __init__(self, config: AutoencoderConfig, scale_factor: float = 1.0):
        super().__init__()
        if type(self) is not AUTOENCODERS[config.regularizer]:
            raise ValueError(f"{type(self).__name__} cannot be built from a {config.regularizer!r} config; use build_autoencoder")
        self.config = config
        self.encoder = _Encoder(config, self.encoder_out_factor * config.latent_channels)
        self.decoder = _Decoder(config)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.point(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image of an (unscaled) latent; the diffusion model's output divided by ``scale_factor``."""
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic round trip: decode the posterior mean / encoder output."""
        return self.decode(self.encode(x).mean)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(reconstruction, regulariser loss, parts)``; the plain autoencoder has no regulariser."""
        return self.decoder(self.encoder(x)), torch.zeros((), device=x.device), {}

    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output convolution (the adaptive GAN weight is computed there)."""
        return self.decoder.net[-1].weight


class PlainAutoencoder(Autoencoder):
    """Deterministic autoencoder, no latent regularisation (the MSE baseline)."""


class KLAutoencoder(Autoencoder):
    """The encoder predicts a diagonal Gaussian posterior; the regulariser is its KL to N(0, I)."""

    encoder_out_factor = 2

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Decode a posterior sample; regulariser = per-example KL (summed over latent dims), batch mean."""
        posterior = self.encode(x)
        kl = posterior.kl().mean()
        return self.decoder(posterior.sample(generator)), kl, {"kl": kl.detach()}


class VQAutoencoder(Autoencoder):
    """Encoder -> pre-quantisation latent h; decoder(quantise(h)). ``decode`` quantises, so the diffusion
    model is trained on (and generates) pre-quantisation latents, as in LDM's VQ-reg models."""

    def __init__(self, config: AutoencoderConfig, scale_factor: float = 1.0):
        super().__init__(config, scale_factor)
        self.quantizer = VectorQuantizer(config.codebook_size, config.latent_channels, config.commitment_beta, config.vq_ema, config.vq_decay)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(self.quantizer.indices(z)))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Straight-through reconstruction; regulariser = codebook + beta * commitment loss (EMA: commitment only)."""
        z_q, vq_loss, info = self.quantizer(self.encoder(x), generator)
        parts = {k: info[k] for k in ("perplexity", "codebook", "commitment")}
        return self.decoder(z_q), vq_loss, parts


AUTOENCODERS: dict[str, type[Autoencoder]] = {"kl": KLAutoencoder, "vq": VQAutoencoder, "none": PlainAutoencoder}


def build_autoencoder(config: AutoencoderConfig, scale_factor: float = 1.0) -> Autoencoder:
    """The autoencoder class of ``config.regularizer``."""
    return AUTOENCODERS[config.regularizer](config, scale_factor)
