"""Class-conditional U-Net for latent diffusion (Ronneberger et al. 2015; Ho et al. 2020, appendix B).

Time embedding (sinusoidal + MLP) plus a learned class embedding, summed and injected into every
residual block by scale-shift; self-attention on the levels that ask for it. Class ``num_classes``
is the null class of classifier-free guidance (Ho & Salimans 2022); negative labels map to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from components.models.blocks import Downsample, ResBlock, SelfAttention, Upsample, group_norm, timestep_embedding


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 8
    num_classes: int = 10
    channels: tuple[int, ...] = (64, 128)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (False, True)
    num_heads: int = 4
    dropout: float = 0.0
    kind: str = field(default="unet", init=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = {k: v for k, v in d.items() if k != "kind"}
        d["channels"] = tuple(d["channels"])
        d["attention_levels"] = tuple(d["attention_levels"])
        return cls(**d)


class _Level(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, emb) if isinstance(block, ResBlock) else block(x)
        return x


class UNet(nn.Module):
    """``forward(x_t, t, class_labels) -> prediction`` of the same shape as ``x_t``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c0 = config.channels[0]
        emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(config.num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(config.in_channels, c0, 3, padding=1)

        def unit(cin: int, cout: int, attn: bool) -> list[nn.Module]:
            mods: list[nn.Module] = [ResBlock(cin, cout, emb_dim, config.dropout)]
            if attn:
                mods.append(SelfAttention(cout, config.num_heads))
            return mods

        self.down = nn.ModuleList()
        skip_ch = [c0]
        ch = c0
        for i, (cout, attn) in enumerate(zip(config.channels, config.attention_levels, strict=True)):
            for _ in range(config.num_res_blocks):
                self.down.append(_Level(unit(ch, cout, attn)))
                ch = cout
                skip_ch.append(ch)
            if i < len(config.channels) - 1:
                self.down.append(_Level([Downsample(ch)]))
                skip_ch.append(ch)
        self.mid = _Level([ResBlock(ch, ch, emb_dim), SelfAttention(ch, config.num_heads), ResBlock(ch, ch, emb_dim)])
        self.up = nn.ModuleList()
        for i in reversed(range(len(config.channels))):
            cout, attn = config.channels[i], config.attention_levels[i]
            for j in range(config.num_res_blocks + 1):
                mods = unit(ch + skip_ch.pop(), cout, attn)
                ch = cout
                if i > 0 and j == config.num_res_blocks:
                    mods.append(Upsample(ch))
                self.up.append(_Level(mods))
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, config.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]))
        if class_labels is None:
            labels = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
        else:
            labels = torch.where(class_labels < 0, self.null_class, class_labels).long()
        emb = emb + self.class_emb(labels)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            h = level(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for level in self.up:
            h = level(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
