"""Class-conditional U-Net for latent diffusion, assembled from per-level block layouts
(Ronneberger et al. 2015; Ho et al. 2020, appendix B; layouts after seed 004, see ``unet_presets``).

Structure, for levels ``i = 0..L-1`` with widths ``channels[i]``::

    conv_in -> [level_i blocks -> skip_i -> downsample (not after the last)]  (down path)
            -> mid blocks (layout + chnAtn + layout)                          (middle)
            -> [concat(h, skip_i) -> level_i blocks -> upsample (not at i=0)] (up path)
            -> GroupNorm-SiLU-conv_out (C or 2C channels)

Embeddings: sinusoidal time embedding + MLP, plus a learned class embedding, summed and injected
into every ``res`` / ``conv`` block by scale-shift; ``clsAtn`` blocks attend to
``num_class_tokens`` learned tokens of the label. Class ``num_classes`` is the null class of
classifier-free guidance (Ho & Salimans 2022); negative labels map to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from components.errors import ConfigError
from components.models import blocks as block_classes
from components.models.blocks import Downsample, Upsample, group_norm, timestep_embedding
from components.models.text import TextConfig, TextEncoder, Tokenizer
from components.models.unet_presets import BLOCK_NAMES, BLOCK_TYPES, PRESETS, check_block_list, resolve_auto, resolve_layout

_DEFAULT_PRESET = "res-clsAtn-chnAtn"  # params.yaml's default, chosen by benchmarks/unet_layouts.py


class UNetLayoutParams(Protocol):
    """What :meth:`UNetConfig.from_params` reads: the fields of ``train_diffusion.unet``
    (``components.config.UNetParams``; the model does not import the params layer)."""

    preset: str | None
    blocks: tuple[str, ...] | tuple[tuple[str, ...], ...] | None
    channels: tuple[int, ...] | str  # or "auto"
    attention_levels: tuple[bool, ...] | str | None  # or "auto"
    num_heads: int
    num_class_tokens: int
    dropout: float


@dataclass(frozen=True)
class UNetConfig:
    """The fully resolved U-Net: what ``config.json`` stores and :class:`UNet` is rebuilt from.

    ``level_blocks[i]`` is the block list of level ``i`` (used on the down and the up path),
    ``mid_blocks`` the middle's. ``preset`` is only a record of where the layout came from.
    """

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 8
    num_classes: int = 10
    channels: tuple[int, ...] = (64, 96)
    level_blocks: tuple[tuple[str, ...], ...] = (PRESETS[_DEFAULT_PRESET].blocks,) * 2
    mid_blocks: tuple[str, ...] = (*PRESETS[_DEFAULT_PRESET].blocks, "chnAtn", *PRESETS[_DEFAULT_PRESET].blocks)
    num_heads: int = 4
    num_class_tokens: int = 4
    dropout: float = 0.0
    preset: str | None = _DEFAULT_PRESET
    conditioning: str = "class"  # class | text
    text: TextConfig | None = None  # the tokenizer's vocabulary and the text encoder (text conditioning only)
    kind: str = field(default="unet", init=False)

    def __post_init__(self) -> None:
        try:
            if len(self.level_blocks) != len(self.channels):
                raise ValueError(f"level_blocks has {len(self.level_blocks)} levels, channels {len(self.channels)}")
            for i, blocks in enumerate(self.level_blocks):
                check_block_list(blocks, f"level_blocks[{i}]")
            check_block_list(self.mid_blocks, "mid_blocks")
            used = {b for blocks in (*self.level_blocks, self.mid_blocks) for b in blocks}
            if any(BLOCK_TYPES[b].needs_heads for b in used):
                bad = [c for c in self.channels if c % self.num_heads]
                if bad:
                    heads = "/".join(b for b in BLOCK_NAMES if BLOCK_TYPES[b].needs_heads)
                    raise ValueError(f"channels {bad} not divisible by num_heads={self.num_heads} (needed by {heads} blocks)")
            if self.num_class_tokens < 1:
                raise ValueError(f"num_class_tokens must be >= 1, got {self.num_class_tokens}")
            if self.conditioning not in ("class", "text"):
                raise ValueError(f"conditioning must be 'class' or 'text', got {self.conditioning!r}")
            if (self.conditioning == "text") != (self.text is not None):
                raise ValueError("text conditioning needs a text config (vocabulary and encoder), class conditioning none")
        except ValueError as exc:
            raise ConfigError(f"U-Net config: {exc}") from None

    @classmethod
    def from_layout(
        cls,
        *,
        preset: str | None = None,
        blocks=None,
        channels: tuple[int, ...] = (64, 96),
        attention_levels: tuple[bool, ...] | None = None,
        **kwargs,
    ) -> UNetConfig:
        """Resolve a preset or an explicit block list (see :func:`resolve_layout`) into a config."""
        try:
            layout = resolve_layout(preset, blocks, tuple(channels), attention_levels, key="unet")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(channels=layout.channels, level_blocks=layout.level_blocks, mid_blocks=layout.mid_blocks, preset=preset, **kwargs)

    @classmethod
    def from_params(cls, p: UNetLayoutParams, *, in_channels: int, out_channels: int, sample_size: int, num_classes: int,
                    text: TextConfig | None = None) -> UNetConfig:
        """The config of ``train_diffusion.unet`` for data of the given shape and class count; with ``text`` (the
        tokenizer's vocabulary and the text encoder's shape), a text-conditioned U-Net. ``channels: auto`` and
        ``attention_levels: auto`` follow ``sample_size`` (:func:`~components.models.unet_presets.resolve_auto`)."""
        try:
            channels, attention_levels = resolve_auto(p.channels, p.attention_levels, sample_size)
        except ValueError as exc:
            raise ConfigError(f"train_diffusion.unet: {exc}") from None
        return cls.from_layout(
            preset=p.preset,
            blocks=p.blocks,
            channels=channels,
            attention_levels=attention_levels,
            in_channels=in_channels,
            out_channels=out_channels,
            sample_size=sample_size,
            num_classes=num_classes,
            num_heads=p.num_heads,
            num_class_tokens=p.num_class_tokens,
            dropout=p.dropout,
            conditioning="text" if text is not None else "class",
            text=text,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.conditioning == "class":  # a class model's config.json is as before text conditioning existed
            del d["conditioning"], d["text"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        if "level_blocks" not in d:
            raise ConfigError(
                "U-Net config has no level_blocks: it was saved before block layouts (num_res_blocks="
                f"{d.get('num_res_blocks')!r}); retrain it with `dvc repro train_diffusion`"
            )
        d = {k: v for k, v in d.items() if k != "kind"}
        d["channels"] = tuple(d["channels"])
        d["level_blocks"] = tuple(tuple(b) for b in d["level_blocks"])
        d["mid_blocks"] = tuple(d["mid_blocks"])
        if d.get("text") is not None:
            d["text"] = TextConfig.from_dict(d["text"])
        return cls(**d)


class _Stage(nn.Module):
    """One sequence of blocks; passes each block the input it takes (``conditioning``: embedding, class tokens or none)."""

    def __init__(self, blocks: list[nn.Module], conditioning: tuple[str | None, ...]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.conditioning = conditioning

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        for block, cond in zip(self.blocks, self.conditioning, strict=True):
            if cond == "emb":
                x = block(x, emb)
            elif cond == "tokens":
                x = block(x, tokens)
            else:
                x = block(x)
        return x


class UNet(nn.Module):
    """``forward(x_t, t, cond) -> prediction`` with ``config.out_channels`` channels.

    Class conditioning: ``cond`` is class labels ``[B]``. Text conditioning (``config.conditioning == "text"``):
    ``cond`` is token ids ``[B, max_length]`` (:class:`~components.models.text.Tokenizer`); the text encoder's token
    embeddings, projected to the embedding width, replace the class tokens of the ``clsAtn`` blocks, and its pooled
    embedding, projected likewise, replaces the class embedding summed into the time embedding (LDM, sec. 3.3 and
    4.3.1). A row with any negative id is the null condition, the empty caption (as label -1 is the null class).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c0 = config.channels[0]
        self.emb_dim = emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        uses_cls = any(BLOCK_TYPES[b].conditioning == "tokens" for blocks in (*config.level_blocks, config.mid_blocks) for b in blocks)
        if config.conditioning == "text":
            assert config.text is not None
            self.text_encoder = TextEncoder(config.text)
            self.text_pool = nn.Linear(config.text.width, emb_dim)
            self.text_proj = nn.Linear(config.text.width, emb_dim)
            # a plain list, not a buffer: the EMA (AveragedModel with use_buffers) would average an integer buffer
            self.null_ids = tuple(Tokenizer.from_config(config.text).null_ids())
            self.class_emb = self.class_tokens = None
        else:
            self.text_encoder = None
            self.class_emb = nn.Embedding(config.num_classes + 1, emb_dim)
            # num_class_tokens learned tokens per class (null class included) for the clsAtn blocks
            self.class_tokens = nn.Embedding(config.num_classes + 1, config.num_class_tokens * emb_dim) if uses_cls else None
        self.conv_in = nn.Conv2d(config.in_channels, c0, 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = c0
        n = len(config.channels)
        for i, (cout, blocks) in enumerate(zip(config.channels, config.level_blocks, strict=True)):
            self.down.append(self._stage(blocks, ch, cout))
            ch = cout
            self.downsample.append(Downsample(ch) if i < n - 1 else nn.Identity())
        self.mid = self._stage(config.mid_blocks, ch, ch)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(n)):
            cout = config.channels[i]
            self.up.append(self._stage(config.level_blocks[i], ch + cout, cout))
            ch = cout
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, config.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _stage(self, names: tuple[str, ...], cin: int, cout: int) -> _Stage:
        """The blocks ``names`` (validated by :class:`UNetConfig`), each built as :data:`BLOCK_TYPES` says."""
        cfg, mods = self.config, []
        for name in names:
            kind = BLOCK_TYPES[name]
            args = {"in_ch": cin, "out_ch": cout, "emb_dim": self.emb_dim, "num_heads": cfg.num_heads, "dropout": cfg.dropout}
            mods.append(getattr(block_classes, kind.cls)(*(args[a] for a in kind.args)))
            if kind.changes_channels:
                cin = cout
        return _Stage(mods, tuple(BLOCK_TYPES[name].conditioning for name in names))

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]))
        if self.text_encoder is not None:
            emb, tokens = self._text_condition(emb, class_labels, x.shape[0])
        else:
            emb, tokens = self._class_condition(emb, class_labels, x)
        h = self.conv_in(x)
        skips = []
        for stage, down in zip(self.down, self.downsample, strict=True):
            h = stage(h, emb, tokens)
            skips.append(h)
            h = down(h)
        h = self.mid(h, emb, tokens)
        for stage, up in zip(self.up, self.upsample, strict=True):
            h = up(stage(torch.cat([h, skips.pop()], dim=1), emb, tokens))
        return self.conv_out(F.silu(self.norm_out(h)))

    def text_ids(self, ids: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Token ids ``[B, L]`` with the null condition (``None``, or a row with any negative id) as the empty caption."""
        device = self.conv_in.weight.device
        null = torch.tensor(self.null_ids, dtype=torch.long, device=device if ids is None else ids.device)
        if ids is None:
            return null.expand(batch, -1)
        if ids.ndim != 2 or ids.shape[1] != len(null):
            raise ValueError(f"this U-Net is text-conditioned: pass token ids [B, {len(null)}] (its tokenizer's encode), "
                             f"got a tensor of shape {tuple(ids.shape)}")
        return torch.where((ids < 0).any(dim=1, keepdim=True), null[None], ids.long())

    def _text_condition(self, emb: torch.Tensor, ids: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        tok, pooled = self.text_encoder(self.text_ids(ids, batch))
        return emb + self.text_pool(pooled), self.text_proj(tok)

    def _class_condition(self, emb: torch.Tensor, class_labels: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if class_labels is None:
            labels = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
        else:
            labels = torch.where(class_labels < 0, self.null_class, class_labels).long()
        emb = emb + self.class_emb(labels)
        tokens = None
        if self.class_tokens is not None:
            tokens = self.class_tokens(labels).reshape(x.shape[0], self.config.num_class_tokens, self.emb_dim)
        return emb, tokens
