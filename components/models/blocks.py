"""Building blocks shared by the U-Net and the autoencoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels at each position of ``[B, C, H, W]`` (ConvNeXt's channels-first LayerNorm, Liu et
    al. 2022), with a learned per-channel scale and shift. No statistic spans positions, so a network cannot plant one
    high-magnitude spot to steer the normalisation of the whole feature map: the "droplet" artifact that GroupNorm /
    instance normalisation invites (Karras et al. 2020, StyleGAN2 sec. 2.1)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


NORMS = {"group": group_norm, "layer": ChannelLayerNorm}


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation ``kind`` names: ``group`` (:func:`group_norm`) or ``layer`` (:class:`ChannelLayerNorm`)."""
    try:
        return NORMS[kind](channels)
    except KeyError:
        raise ValueError(f"unknown norm {kind!r}; expected one of {sorted(NORMS)}") from None


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, sec. 3.5; as used by Ho et al. 2020).

    ``emb[:, i] = cos(t * f_i)`` for the first half and ``sin(t * f_i)`` for the second,
    with ``f_i = max_period ** (-i / half)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Residual block: GroupNorm-SiLU-conv twice; optional embedding injected as scale and shift
    (``h = norm(h) * (1 + scale) + shift``, the adaptive GroupNorm of Dhariwal & Nichol 2021). ``norm="layer"``
    normalises each position over its channels instead (:class:`ChannelLayerNorm`)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0, norm: str = "group"):
        super().__init__()
        self.norm1 = norm_layer(norm, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2 = norm_layer(norm, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022, fig. 4): depthwise 7x7 conv, channel norm, pointwise MLP
    (expansion ``mult``, GELU), residual. The embedding is injected after the norm by scale-shift
    like :class:`ResBlock`; the expansion is 2 (seed 004's choice, half the paper's 4) to save CPU."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0, mult: int = 2):
        super().__init__()
        self.dwconv = nn.Conv2d(in_ch, in_ch, 7, padding=3, groups=in_ch)
        self.norm = nn.GroupNorm(1, in_ch, eps=1e-6)  # LayerNorm over (C, H, W) per sample
        self.emb = nn.Linear(emb_dim, 2 * in_ch) if emb_dim else None
        self.pw1 = nn.Conv2d(in_ch, mult * out_ch, 1)
        self.dropout = nn.Dropout(dropout)
        self.pw2 = nn.Conv2d(mult * out_ch, out_ch, 1)
        nn.init.zeros_(self.pw2.weight)
        nn.init.zeros_(self.pw2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(self.dwconv(x))
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.pw2(self.dropout(F.gelu(self.pw1(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over spatial positions (scaled dot-product, Vaswani et al. 2017 eq. 1),
    through ``F.scaled_dot_product_attention``; residual, output projection zero-initialised."""

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ClassCrossAttention(nn.Module):
    """Class cross-attention: every pixel (query) attends to a set of learned class tokens
    (keys and values), ``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017 eq. 1; the cross-attention
    conditioning of Rombach et al. 2022, sec. 3.3, with class tokens as the context). Seed 004's
    ``clsAtn``. Residual; the output projection is zero-initialised so the block starts as identity.

    ``context`` is ``[B, num_tokens, context_dim]``; with more than one token the attention weights,
    and so the injected class features, vary from pixel to pixel.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int = 4):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"class attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.context_norm = nn.LayerNorm(context_dim)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(self.norm(x)).reshape(b, heads, d, h * w).transpose(-1, -2)  # [B, heads, HW, d]
        k, v = self.kv(self.context_norm(context)).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)  # [B, heads, T, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ChannelAttention(nn.Module):
    """Efficient channel attention (ECA-Net, Wang et al. 2020, sec. 3.2-3.3): global average pool
    (the squeeze of Hu et al. 2018), a 1D convolution across channels with adaptive kernel size
    ``k = |log2(C)/gamma + b/gamma|_odd`` instead of SE's bottleneck MLP, a sigmoid gate, and
    ``x * gate`` per channel. Seed 004's ``chnAtn``."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1):
        super().__init__()
        k = int(abs(math.log2(channels) / gamma + b / gamma))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate in (0, 1), shape ``[B, C, 1, 1]``."""
        pooled = x.mean(dim=(2, 3))[:, None, :]  # [B, 1, C]
        return torch.sigmoid(self.conv(pooled))[:, 0, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class Downsample(nn.Module):
    """Halves the resolution: a stride-2 3x3 convolution, or (``with_conv=False``) 2x2 average pooling, as LDM's
    ``resamp_with_conv`` (Rombach et al. 2022, the first-stage models' code)."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (``with_conv=False``: the upsampling alone, as LDM's
    ``resamp_with_conv``; the convolution runs at the doubled resolution, so it is the costliest layer of a decoder)."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x
