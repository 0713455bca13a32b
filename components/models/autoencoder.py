"""KL-regularised convolutional autoencoder (Rombach et al. 2022, sec. 3 and appendix G).

The encoder outputs the mean and log-variance of a diagonal Gaussian posterior q(z|x); training
minimises reconstruction error plus ``kl_weight * KL(q(z|x) || N(0, I))``. The downsampling factor is
``f = 2 ** (len(channels) - 1)``. ``scale_factor`` (1 / std of training latents) is stored with
the weights so the diffusion model sees latents of unit variance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from components.models.blocks import Downsample, ResBlock, Upsample, group_norm


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 1
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    kind: str = field(default="kl_autoencoder", init=False)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.downsampling_factor
        return (self.latent_channels, s, s)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        d = {k: v for k, v in d.items() if k != "kind"}
        d["channels"] = tuple(d["channels"])
        return cls(**d)


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar)))."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example: 0.5 * sum(mean^2 + var - 1 - logvar) (Kingma & Welling 2014, appendix B)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar, dim=(1, 2, 3))


class _Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.channels[0], 3, padding=1)]
        ch = cfg.channels[0]
        for i, cout in enumerate(cfg.channels):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, cout))
                ch = cout
            if i < len(cfg.channels) - 1:
                layers.append(Downsample(ch))
        layers += [ResBlock(ch, ch), group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1), ResBlock(ch, ch)]
        for i, cout in reversed(list(enumerate(cfg.channels))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, cout))
                ch = cout
            if i > 0:
                layers.append(Upsample(ch))
        layers += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class KLAutoencoder(nn.Module):
    """Images in [-1, 1] ``[B, C, H, W]`` <-> latents ``[B, latent_channels, H/f, W/f]``."""

    def __init__(self, config: AutoencoderConfig, scale_factor: float = 1.0):
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config)
        self.decoder = _Decoder(config)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    def loss(self, x: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Per-pixel MSE reconstruction + ``kl_weight`` * per-example KL (summed over latent dims)."""
        recon, posterior = self(x, generator)
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean()
        return mse + kl_weight * kl, {"mse": mse.detach(), "kl": kl.detach()}
