"""U-Net block layouts: the registry of block types, seed 004's five named presets, and the layout resolution.

Pure Python (no torch), so ``components.config`` can validate ``params.yaml`` without importing torch.

A *layout* is the list of blocks that makes one U-Net level, e.g. ``[res, res, clsAtn, chnAtn]``.
As in seed 004 (gmongaras' "Diffusion models from scratch", ImageNet 64x64), the same list builds
every level of the down path, every level of the up path and, twice around a channel attention,
the middle: ``mid = layout + [chnAtn] + layout``. The block names are the keys of :data:`BLOCK_TYPES`,
the one registry that the params validation, the presets and :class:`~components.models.unet.UNet` read:
a new block type is a class in ``components/models/blocks.py`` plus one entry there.

The first block of a level must change the channel count (``res`` or ``conv``).

``channels: auto`` and ``attention_levels: auto`` make the levels follow the latent size (:func:`auto_channels`,
:func:`auto_attention_levels`): one level per halving down to 4x4, self-attention only at 8x8 and below, as the
LDM U-Nets place it at their lowest resolutions (Rombach et al. 2022, appendix E.2, ``attention_resolutions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# the constructor arguments a block type may take, in the U-Net's terms
BLOCK_ARGS: tuple[str, ...] = ("in_ch", "out_ch", "emb_dim", "num_heads", "dropout")


@dataclass(frozen=True)
class BlockType:
    """One U-Net block type.

    ``cls``: the class name in ``components.models.blocks``; ``args``: its positional constructor arguments, each
    one of :data:`BLOCK_ARGS`; ``conditioning``: what ``forward`` takes besides ``x`` -- the time+class embedding
    (``"emb"``), the class tokens (``"tokens"``) or nothing (``None``).
    """

    cls: str
    args: tuple[str, ...]
    conditioning: Literal["emb", "tokens"] | None
    doc: str

    @property
    def changes_channels(self) -> bool:
        """Takes ``out_ch``: may change the channel count (so may start a level)."""
        return "out_ch" in self.args

    @property
    def needs_heads(self) -> bool:
        """Takes ``num_heads``: the channels must be divisible by it."""
        return "num_heads" in self.args


BLOCK_TYPES: dict[str, BlockType] = {
    "res": BlockType("ResBlock", ("in_ch", "out_ch", "emb_dim", "dropout"), "emb",
                     "residual block, GroupNorm-SiLU-conv twice, time+class embedding by scale-shift"),
    "conv": BlockType("ConvNeXtBlock", ("in_ch", "out_ch", "emb_dim", "dropout"), "emb",
                      "ConvNeXt block (depthwise 7x7, norm, pointwise MLP), embedding by scale-shift"),
    "clsAtn": BlockType("ClassCrossAttention", ("in_ch", "emb_dim", "num_heads"), "tokens",
                        "class cross-attention: pixels attend to learned class tokens"),
    "atn": BlockType("SelfAttention", ("in_ch", "num_heads"), None, "multi-head self-attention over pixels"),
    "chnAtn": BlockType("ChannelAttention", ("in_ch",), None, "efficient channel attention (squeeze-excitation style channel gates)"),
}
BLOCK_NAMES: tuple[str, ...] = tuple(BLOCK_TYPES)
CHANNEL_CHANGING: tuple[str, ...] = tuple(name for name, block in BLOCK_TYPES.items() if block.changes_channels)


@dataclass(frozen=True)
class Preset:
    """A named layout: the per-level block list and a width multiplier applied to ``channels``."""

    blocks: tuple[str, ...]
    width_mult: float = 1.0
    note: str = ""


# Seed 004's five U-Net block layouts. "res-large" is res-clsAtn-chnAtn with 192 instead of 128
# top-level channels (1.5x); here it multiplies the configured channels by 1.5.
PRESETS: dict[str, Preset] = {
    "res-conv-clsAtn-chnAtn": Preset(("res", "conv", "clsAtn", "chnAtn"), note="Res-Conv"),
    "res-clsAtn-chnAtn": Preset(("res", "clsAtn", "chnAtn"), note="Res"),
    "res-res-clsAtn-chnAtn": Preset(("res", "res", "clsAtn", "chnAtn"), note="Res-Res"),
    "res-res-clsAtn-atn-chnAtn": Preset(("res", "res", "clsAtn", "atn", "chnAtn"), note="Res-Res-Atn"),
    "res-large": Preset(("res", "clsAtn", "chnAtn"), width_mult=1.5, note="Res Large: 1.5x channels (seed: 192 vs 128)"),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


AUTO = "auto"
# widths of the levels chosen by ``channels: auto``, top level first; the MNIST default's 8x8 latents get (64, 96)
CHANNEL_LADDER: tuple[int, ...] = (64, 96, 128, 160, 192, 224, 256)
MIN_LEVEL_SIZE = 4  # ``channels: auto`` halves the latent down to this side (the MNIST default ends at 4x4)
MAX_ATTENTION_SIZE = 8  # ``attention_levels: auto`` keeps atn blocks only at levels this small or smaller


def level_sizes(latent_size: int, levels: int | None = None) -> tuple[int, ...]:
    """The side of each U-Net level for ``latent_size`` x ``latent_size`` latents: each level halves the previous.

    With ``levels=None`` (``channels: auto``), as many levels as halve the side down to :data:`MIN_LEVEL_SIZE` while
    it stays even (8 -> (8, 4), 16 -> (16, 8, 4), 6 -> (6, 3)). With a level count, raises ``ValueError`` when the
    side is not divisible by ``2 ** (levels - 1)`` (the up path could not restore the down path's sizes).
    """
    if latent_size < 1:
        raise ValueError(f"latent size must be >= 1, got {latent_size}")
    if levels is None:
        sizes = [latent_size]
        while sizes[-1] > MIN_LEVEL_SIZE and sizes[-1] % 2 == 0:
            sizes.append(sizes[-1] // 2)
        return tuple(sizes)
    if latent_size % 2 ** (levels - 1):
        raise ValueError(
            f"{levels} U-Net levels need a latent side divisible by {2 ** (levels - 1)}, and {latent_size} is not; use fewer "
            "train_diffusion.unet.channels levels, channels: auto, or another ingest.image_size"
        )
    return tuple(latent_size // 2**i for i in range(levels))


def auto_channels(latent_size: int) -> tuple[int, ...]:
    """``channels: auto``: one level per entry of :func:`level_sizes`, widths from :data:`CHANNEL_LADDER`
    (8x8 latents: (64, 96); 16x16: (64, 96, 128); 32x32: (64, 96, 128, 160))."""
    n = len(level_sizes(latent_size))
    return tuple(CHANNEL_LADDER[min(i, len(CHANNEL_LADDER) - 1)] for i in range(n))


def auto_attention_levels(latent_size: int, levels: int) -> tuple[bool, ...]:
    """``attention_levels: auto``: keep the ``atn`` blocks of the levels whose side is at most
    :data:`MAX_ATTENTION_SIZE` and below the top level (self-attention costs the square of the pixel count; the
    middle always keeps them). 8x8 latents: (False, True), the MNIST default; 16x16: (False, True, True)."""
    sizes = level_sizes(latent_size, levels)
    return tuple(i > 0 and size <= MAX_ATTENTION_SIZE for i, size in enumerate(sizes))


def resolve_auto(channels, attention_levels, latent_size: int) -> tuple[tuple[int, ...], tuple[bool, ...] | None]:
    """``channels`` and ``attention_levels`` with ``auto`` replaced for ``latent_size`` latents; checks that the
    latent side fits the level count (:func:`level_sizes`)."""
    channels = auto_channels(latent_size) if channels == AUTO else tuple(channels)
    level_sizes(latent_size, len(channels))
    if attention_levels == AUTO:
        attention_levels = auto_attention_levels(latent_size, len(channels))
    return channels, attention_levels


@dataclass(frozen=True)
class Layout:
    """A fully resolved U-Net layout: what ``UNetConfig`` stores and the U-Net is built from."""

    channels: tuple[int, ...]
    level_blocks: tuple[tuple[str, ...], ...]
    mid_blocks: tuple[str, ...]


def check_block_list(blocks, where: str | None) -> tuple[str, ...]:
    """Validate one level's block list; raise ``ValueError`` naming ``where`` (if given) and the valid names."""
    pre = f"{where}: " if where else ""
    if isinstance(blocks, str) or not isinstance(blocks, list | tuple):
        raise ValueError(f"{pre}expected a list of block names such as [res, res, clsAtn, chnAtn], got {blocks!r}")
    blocks = tuple(blocks)
    if not blocks:
        raise ValueError(f"{pre}empty block list; start it with one of {', '.join(CHANNEL_CHANGING)}")
    for name in blocks:
        if name not in BLOCK_NAMES:
            raise ValueError(f"{pre}unknown block {name!r}; valid block names: {', '.join(BLOCK_NAMES)}")
    if blocks[0] not in CHANNEL_CHANGING:
        raise ValueError(
            f"{pre}the first block must be one of {', '.join(CHANNEL_CHANGING)} (it changes the channel count), got {blocks[0]!r}"
        )
    return blocks


def scale_channels(channels: tuple[int, ...], mult: float, multiple: int = 8) -> tuple[int, ...]:
    """``channels * mult`` rounded to a multiple of ``multiple`` (unchanged when ``mult == 1``)."""
    if mult == 1.0:
        return tuple(channels)
    return tuple(max(multiple, int(round(c * mult / multiple)) * multiple) for c in channels)


def resolve_layout(
    preset: str | None,
    blocks,
    channels: tuple[int, ...],
    attention_levels: tuple[bool, ...] | None,
    key: str = "train_diffusion.unet",
) -> Layout:
    """Resolve ``preset`` / ``blocks`` / ``channels`` / ``attention_levels`` into a :class:`Layout`.

    ``blocks`` is one list (used at every level) or one list per level; it is exclusive with
    ``preset``. ``attention_levels[i] == False`` drops the ``atn`` blocks of level ``i`` (the middle
    keeps them). Raises ``ValueError`` naming the offending key.
    """
    if preset is not None and blocks is not None:
        raise ValueError(f"{key}: set either preset ({preset!r}) or blocks, not both (set preset: null to give blocks)")
    if preset is None and blocks is None:
        raise ValueError(f"{key}: set a preset ({', '.join(PRESET_NAMES)}) or an explicit blocks list")
    n = len(channels)
    if n < 1:
        raise ValueError(f"{key}.channels: give at least one level")
    if attention_levels is not None and len(attention_levels) != n:
        raise ValueError(f"{key}.attention_levels must have one entry per channels level ({n}), got {len(attention_levels)}")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"{key}.preset: unknown preset {preset!r}; valid presets: {', '.join(PRESET_NAMES)}")
        per_level = [PRESETS[preset].blocks] * n
        channels = scale_channels(channels, PRESETS[preset].width_mult)
    elif isinstance(blocks, list | tuple) and blocks and all(isinstance(b, list | tuple) for b in blocks):
        if len(blocks) != n:
            raise ValueError(f"{key}.blocks: {len(blocks)} per-level lists for {n} channels levels; give one list per level or one list for all")
        per_level = [check_block_list(b, f"{key}.blocks[{i}]") for i, b in enumerate(blocks)]
    else:
        per_level = [check_block_list(blocks, f"{key}.blocks")] * n
    levels = tuple(
        tuple(b for b in blk if b != "atn" or attention_levels is None or attention_levels[i]) for i, blk in enumerate(per_level)
    )
    mid = (*per_level[-1], "chnAtn", *per_level[-1])
    return Layout(channels=tuple(int(c) for c in channels), level_blocks=levels, mid_blocks=mid)
