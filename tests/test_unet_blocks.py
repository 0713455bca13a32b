"""U-Net block zoo and layouts: every preset builds, trains (finite gradients everywhere), round-trips
through safetensors + JSON bit-exactly; the class and channel attentions do what they claim; bad
layouts in params.yaml are ConfigErrors that name the key."""

import itertools
from pathlib import Path

import pytest
import torch
import yaml

from components.config import ConfigError, UNetParams, load_params
from components.models.blocks import ChannelAttention, ClassCrossAttention, ConvNeXtBlock, ResBlock, SelfAttention
from components.models.checkpoint import load_unet, save_checkpoint
from components.models.summary import model_summary
from components.models.unet import UNet, UNetConfig
from components.models.unet_presets import BLOCK_NAMES, PRESET_NAMES, PRESETS, resolve_layout

TINY = dict(in_channels=4, sample_size=8, num_classes=10)


def _randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Zero-initialised output layers would hide bugs; give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _tiny(preset: str, out_channels: int = 4, **kw) -> UNet:
    p = UNetParams(preset=preset, channels=(8, 16), num_heads=2, **kw)
    return UNet(UNetConfig.from_params(p, out_channels=out_channels, **TINY))


def _inputs(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([0, 400, 999][:n]), torch.tensor([1, -1, 7][:n])


def _count(model: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_preset_builds_trains_and_round_trips(preset: str, tmp_path: Path):
    model = _tiny(preset)
    _randomise(model, 1)
    # the layout is what the preset says, at every level, on both paths and twice in the middle
    blocks = PRESETS[preset].blocks
    n_levels = len(model.config.channels)
    assert model.config.level_blocks == (blocks,) * n_levels
    assert model.config.mid_blocks == (*blocks, "chnAtn", *blocks)
    per_stage = {"res": ResBlock, "conv": ConvNeXtBlock, "clsAtn": ClassCrossAttention, "atn": SelfAttention}
    for name, kind in per_stage.items():
        assert _count(model, kind) == blocks.count(name) * (2 * n_levels + 2), name
    assert _count(model, ChannelAttention) == blocks.count("chnAtn") * (2 * n_levels + 2) + 1
    if preset == "res-large":
        assert model.config.channels == (16, 24)  # 1.5x (8, 16), rounded to multiples of 8

    x, t, y = _inputs()
    model.train()
    out = model(x, t, y)
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

    model.eval()
    save_checkpoint(tmp_path / "unet", model, model.config.to_dict())
    loaded, meta = load_unet(tmp_path / "unet")
    assert loaded.config == model.config
    assert meta["model"]["level_blocks"] == [list(b) for b in model.config.level_blocks]
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded(x, t, y))


@pytest.mark.parametrize("preset", ["res-clsAtn-chnAtn", "res-res-clsAtn-atn-chnAtn"])
def test_output_head_c_or_2c(preset: str):
    x, t, y = _inputs()
    for out_ch in (4, 8):
        model = _tiny(preset, out_channels=out_ch)
        _randomise(model)
        assert model(x, t, y).shape == (3, out_ch, 8, 8)


def test_null_class_and_negative_labels():
    model = _tiny("res-res-clsAtn-chnAtn").eval()
    _randomise(model, 2)
    x, t, _ = _inputs()
    null = model(x, t, None)
    assert torch.equal(model(x, t, torch.full((3,), -1)), null)
    assert torch.equal(model(x, t, torch.full((3,), 10)), null)
    assert not torch.allclose(model(x, t, torch.tensor([1, 2, 3])), null, atol=1e-4)


def test_class_tokens_alone_carry_the_label():
    """With the summed class embedding zeroed, the label reaches the output only through clsAtn."""
    model = _tiny("res-clsAtn-chnAtn").eval()
    _randomise(model, 3)
    with torch.no_grad():
        model.class_emb.weight.zero_()
    x, t, _ = _inputs()
    a, b = model(x, t, torch.tensor([1, 2, 3])), model(x, t, torch.tensor([4, 5, 6]))
    assert (a - b).abs().max() > 1e-3
    # and without clsAtn blocks the same zeroing makes the output label-independent
    plain = UNet(UNetConfig.from_layout(blocks=["res", "chnAtn"], channels=(8, 16), num_heads=2, **TINY)).eval()
    _randomise(plain, 3)
    with torch.no_grad():
        plain.class_emb.weight.zero_()
    assert plain.class_tokens is None
    assert torch.equal(plain(x, t, torch.tensor([1, 2, 3])), plain(x, t, torch.tensor([4, 5, 6])))


def test_class_cross_attention_depends_on_tokens_and_pixels():
    torch.manual_seed(0)
    block = ClassCrossAttention(channels=8, context_dim=12, num_heads=2).eval()
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(block(x, torch.randn(2, 3, 12)), x)  # zero-initialised projection: identity at start
    _randomise(block, 4, scale=1.0)  # weights of unit scale: attention logits far from uniform
    c1, c2 = torch.randn(2, 3, 12), torch.randn(2, 3, 12)
    d1 = block(x, c1) - x
    assert not torch.allclose(d1, block(x, c2) - x, atol=1e-4)  # the tokens matter
    assert torch.equal(block(x, c1), block(x, c1))
    # with several tokens the attention weights, and so the added features, differ between pixels
    assert d1.flatten(2).std(dim=2).min() > 1e-2
    # one token: softmax over a single key is 1, every pixel gets the same value vector
    one = block(x, c1[:, :1]) - x
    assert torch.allclose(one, one[:, :, :1, :1].expand_as(one), atol=1e-5)


def test_channel_attention_rescales_channels():
    torch.manual_seed(0)
    block = ChannelAttention(64)
    assert block.conv.kernel_size == (3,)  # ECA: k = |log2(64)/2 + 1/2|_odd = 3
    x = torch.rand(2, 64, 5, 5) + 0.5  # positive, so the ratio is well defined
    ratio = block(x) / x
    # one factor per (sample, channel): constant over space, in (0, 1), different across channels
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert (ratio > 0).all() and (ratio < 1).all()
    assert ratio[:, :, 0, 0].std(dim=1).min() > 1e-4
    # gate = sigmoid(conv1d(global average pool)) computed by hand
    pooled = x.mean(dim=(2, 3))[:, None]
    expected = torch.sigmoid(torch.nn.functional.conv1d(pooled, block.conv.weight, padding=1))[:, 0]
    assert torch.allclose(ratio[:, :, 0, 0], expected, atol=1e-6)


def test_attention_levels_keep_atn_only_where_asked():
    layout = resolve_layout("res-res-clsAtn-atn-chnAtn", None, (8, 16), (False, True))
    assert "atn" not in layout.level_blocks[0] and "atn" in layout.level_blocks[1]
    assert layout.mid_blocks.count("atn") == 2
    model = UNet(UNetConfig.from_layout(preset="res-res-clsAtn-atn-chnAtn", channels=(8, 16), attention_levels=(False, True),
                                        num_heads=2, **TINY))
    assert _count(model, SelfAttention) == 2 + 2  # level 1 down + up, twice in the middle
    per_level = UNetConfig.from_layout(blocks=[["res"], ["conv", "atn"]], channels=(8, 16), num_heads=2, **TINY)
    assert per_level.level_blocks == (("res",), ("conv", "atn")) and per_level.mid_blocks == ("conv", "atn", "chnAtn", "conv", "atn")


@pytest.mark.parametrize(
    ("latent", "channels", "attention"),
    [
        (8, (64, 96), (False, True)),  # the MNIST default's explicit layout is what auto gives 8x8 latents
        (16, (64, 96, 128), (False, True, True)),  # 128x128 at f = 8, 64x64 at f = 4
        (32, (64, 96, 128, 160), (False, False, True, True)),  # 256x256 at f = 8: no atn at 16x16 or above
        (4, (64,), (False,)),  # already at the bottom: one level, attention in the middle only
        (6, (64, 96), (False, True)),  # halved while even: 6, 3
        (128, (64, 96, 128, 160, 192, 224), (False, False, False, False, True, True)),  # 128 .. 4
    ],
)
def test_auto_levels_follow_the_latent_size(latent: int, channels: tuple, attention: tuple):
    from components.models.unet_presets import auto_attention_levels, auto_channels, level_sizes

    assert auto_channels(latent) == channels
    assert auto_attention_levels(latent, len(channels)) == attention
    sizes = level_sizes(latent)
    assert sizes[0] == latent and len(sizes) == len(channels) and all(a == 2 * b for a, b in itertools.pairwise(sizes))
    model = UNet(UNetConfig.from_params(UNetParams(channels="auto", attention_levels="auto", preset="res-res-clsAtn-atn-chnAtn",
                                                   num_heads=2), in_channels=2, out_channels=2, sample_size=latent, num_classes=3))
    assert model.config.channels == channels
    assert [("atn" in b) for b in model.config.level_blocks] == list(attention)
    out = model(torch.zeros(1, 2, latent, latent), torch.tensor([5]), torch.tensor([1]))
    assert out.shape == (1, 2, latent, latent)


def test_image_latent_and_unet_levels_are_checked_together(tmp_path: Path):
    """Params refuses a chain that cannot run (else a shape error in the middle of train_diffusion), naming the keys."""
    path = tmp_path / "params.yaml"

    def load(tree: dict):
        path.write_text(yaml.safe_dump(tree))
        return load_params(path)

    # f = 4 (3 autoencoder levels): 36 -> 9x9 latents, which 2 U-Net levels cannot halve
    with pytest.raises(ConfigError, match=r"9x9 latents \(ingest.image_size 36 / f=4\).*divisible by 2, and 9 is not"):
        load({"ingest": {"image_size": 36}})
    with pytest.raises(ConfigError, match=r"ingest.image_size 30 is not divisible by the autoencoder's f=4"):
        load({"ingest": {"image_size": 30}})
    with pytest.raises(ConfigError, match=r"12x12 latents.*4 U-Net levels need a latent side divisible by 8"):
        load({"ingest": {"image_size": 48}, "train_diffusion": {"unet": {"channels": [8, 16, 32, 64]}}})
    # auto: the level count adapts, then a per-level block list must match it
    p = load({"ingest": {"image_size": 36}, "train_diffusion": {"unet": {"channels": "auto"}}})
    assert p.latent_size == 9 and p.train_diffusion.unet.for_latent(9) == ((64,), None)
    with pytest.raises(ConfigError, match=r"2 per-level lists for 3 channels levels"):
        load({"ingest": {"image_size": 64}, "train_diffusion": {"unet": {"channels": "auto", "preset": None, "blocks": [["res"], ["res"]]}}})
    with pytest.raises(ConfigError, match=r"train_diffusion.unet.channels"):
        load({"train_diffusion": {"unet": {"channels": "deep"}}})


def test_macs_grow_with_the_layout():
    sizes = {}
    for preset in ("res-clsAtn-chnAtn", "res-res-clsAtn-chnAtn", "res-large"):
        model = _tiny(preset)
        x, t, y = _inputs(1)
        sizes[preset] = model_summary(model, x, t, y)
    assert 0 < sizes["res-clsAtn-chnAtn"]["macs_per_forward"] < sizes["res-res-clsAtn-chnAtn"]["macs_per_forward"]
    assert sizes["res-clsAtn-chnAtn"]["parameters"] < sizes["res-large"]["parameters"]


def _params_file(tmp_path: Path, unet: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train_diffusion": {"unet": unet}}))
    return path


@pytest.mark.parametrize(
    "unet,pattern",
    [
        ({"preset": None, "blocks": ["res", "rse", "chnAtn"]}, r"train_diffusion\.unet\.blocks.*unknown block 'rse'.*res, conv, clsAtn, atn, chnAtn"),
        ({"preset": None, "blocks": [["res"], ["res", "selfAtn"]]}, r"train_diffusion\.unet\.blocks.*level 1: unknown block 'selfAtn'"),
        ({"preset": None, "blocks": ["clsAtn", "res"]}, r"train_diffusion\.unet\.blocks.*first block must be one of res, conv"),
        ({"preset": "res-res-clsAtn-chnAtn", "blocks": ["res"]}, r"train_diffusion\.unet.*either preset .* or blocks, not both"),
        ({"preset": None}, r"train_diffusion\.unet.*set a preset"),
        ({"preset": "res-huge"}, r"train_diffusion\.unet\.preset.*res-large"),
        ({"preset": None, "blocks": [["res"], ["res"], ["res"]], "channels": [8, 16]}, r"3 per-level lists for 2 channels levels"),
        ({"channels": [8, 16], "attention_levels": [True]}, r"attention_levels must have one entry per channels level"),
    ],
)
def test_bad_layouts_are_config_errors(tmp_path: Path, unet: dict, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        load_params(_params_file(tmp_path, unet))


def test_explicit_blocks_in_params_build_that_layout(tmp_path: Path):
    p = load_params(_params_file(tmp_path, {"preset": None, "blocks": ["conv", "clsAtn"], "channels": [8, 16], "num_heads": 2}))
    cfg = UNetConfig.from_params(p.train_diffusion.unet, out_channels=4, **TINY)
    assert cfg.preset is None and cfg.level_blocks == (("conv", "clsAtn"),) * 2
    assert set(BLOCK_NAMES) == {"res", "conv", "clsAtn", "atn", "chnAtn"}
    # the Python API: blocks without a preset override the default preset
    assert UNetParams(blocks=["res"]).preset is None


def test_unet_config_rejects_bad_direct_construction():
    with pytest.raises(ConfigError, match="unknown block 'res2'"):
        UNetConfig(channels=(8,), level_blocks=(("res2",),), mid_blocks=("res",))
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        UNetConfig.from_layout(preset="res-clsAtn-chnAtn", channels=(6, 12), num_heads=4)
    with pytest.raises(ConfigError, match="retrain"):
        UNetConfig.from_dict({"channels": [64, 96], "num_res_blocks": 1, "attention_levels": [False, True], "kind": "unet"})


def test_block_registry_is_the_one_source():
    """BLOCK_TYPES names each block's class, constructor arguments and conditioning; the U-Net builds from it."""
    from components.models import blocks
    from components.models.unet_presets import BLOCK_ARGS, BLOCK_TYPES, CHANNEL_CHANGING

    assert BLOCK_NAMES == tuple(BLOCK_TYPES) and CHANNEL_CHANGING == ("res", "conv")
    args = {"in_ch": 8, "out_ch": 16, "emb_dim": 32, "num_heads": 2, "dropout": 0.0}
    x, emb, tokens = torch.randn(2, 8, 4, 4), torch.randn(2, 32), torch.randn(2, 3, 32)
    for name, kind in BLOCK_TYPES.items():
        assert set(kind.args) <= set(BLOCK_ARGS), name
        block = getattr(blocks, kind.cls)(*(args[a] for a in kind.args))
        cond = {"emb": (emb,), "tokens": (tokens,), None: ()}[kind.conditioning]
        assert block(x, *cond).shape == (2, 16 if kind.changes_channels else 8, 4, 4), name
    net = UNet(UNetConfig.from_layout(blocks=list(BLOCK_NAMES), channels=(8, 16), num_heads=2, **TINY))
    built = [type(b).__name__ for stage in net.down for b in stage.blocks][: len(BLOCK_NAMES)]
    assert built == [BLOCK_TYPES[n].cls for n in BLOCK_NAMES]
