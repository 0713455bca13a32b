"""The bad-input corpus: one :class:`Case` per bad input, across every stage.

A case edits a copy of a small, complete project (raw digits, dataset, model folder, samples, reference
statistics, metrics; see ``test_corpus.py``) and names the ``latentflow`` command to run. A failing case states
its exit code and the words the one-line error must hold (the file or option and what to do); the test then
checks that the project is byte-identical afterwards (no output written, none moved, no temp file left). A case
that must succeed (odd but valid images) states what the written dataset must hold instead.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.bad_inputs import builders as b
from tests.bad_inputs.builders import RAW, SAMPLE, edit_params


@dataclass(frozen=True)
class Ctx:
    """Session resources the cases share."""

    outside: Path  # a folder outside every project (targets of symlinks that escape the image root)
    tracking_uri: str  # a SQLite store holding registered model `latentflow` (no versions)
    marker: Path  # a planted pickle would create this file when unpickled


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    build: Callable[[Path, Ctx], list[str]]  # edits the project, returns the CLI arguments
    exit_code: int
    says: tuple[str, ...] = ()  # regular expressions (case-insensitive) the error output must match
    check: Callable[[Path], None] | None = field(default=None, compare=False)  # success cases: what the outputs hold


# ---- image-folder cases (ingest) ---------------------------------------------------------------------------------

def _put(name: str, data: bytes, cls: str = "3"):
    def build(p: Path, ctx: Ctx) -> list[str]:
        (p / RAW / cls / name).write_bytes(data)
        return ["ingest"]
    return build


def _dataset(p: Path) -> tuple[np.ndarray, np.ndarray]:
    from components.data.artifact import read_dataset

    ds = read_dataset(p / "data/dataset")
    return np.concatenate([ds.images["train"], ds.images["val"]]), np.concatenate([ds.labels["train"], ds.labels["val"]])


def _holds(expected: np.ndarray, tol: int, label: int | None = None) -> Callable[[Path], None]:
    """The dataset holds an image within ``tol`` grey levels of ``expected`` (32x32), of class ``label``."""
    def check(p: Path) -> None:
        images, labels = _dataset(p)
        diffs = np.abs(images[..., 0].astype(int) - expected.astype(int)).max(axis=(1, 2))
        best = int(diffs.argmin())
        assert diffs[best] <= tol, f"no image within {tol} grey levels of the expected one (closest: {diffs[best]})"
        if label is not None:
            assert labels[best] == label
    return check


def _count(n: int) -> Callable[[Path], None]:
    def check(p: Path) -> None:
        images, _ = _dataset(p)
        assert len(images) == n, f"{len(images)} images in the dataset, expected {n}"
        assert images.shape[1:] == (32, 32, 1)
    return check


def _bomb(p: Path, ctx: Ctx) -> list[str]:
    (p / RAW / "3" / "bomb.png").write_bytes(b.bomb_png(30000))
    return ["ingest"]


def _too_many_pixels(p: Path, ctx: Ctx) -> list[str]:
    edit_params(p, lambda d: d["ingest"].update(max_image_pixels=500))  # the digits are 28x28 = 784 pixels
    return ["ingest"]


def _symlink_out(p: Path, ctx: Ctx) -> list[str]:
    target = ctx.outside / "elsewhere.png"
    target.write_bytes(b.png_bytes(np.full((28, 28), 9, np.uint8)))
    os.symlink(target, p / RAW / "3" / "link.png")
    return ["ingest"]


def _symlink_class_out(p: Path, ctx: Ctx) -> list[str]:
    folder = ctx.outside / "extra_class"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b.png_bytes(np.full((28, 28), 30 * i, np.uint8)))
    os.symlink(folder, p / RAW / "extra")
    return ["ingest"]


def _symlink_inside(p: Path, ctx: Ctx) -> list[str]:
    """Class folder ``3`` moved to a hidden folder inside the root and linked back: a link that stays inside is fine."""
    (p / RAW / ".store").mkdir()
    shutil.move(p / RAW / "3", p / RAW / ".store" / "3")
    os.symlink(Path(".store") / "3", p / RAW / "3")
    return ["ingest"]


def _empty_class(p: Path, ctx: Ctx) -> list[str]:
    (p / RAW / "10").mkdir()
    return ["ingest"]


def _only_readme_class(p: Path, ctx: Ctx) -> list[str]:
    (p / RAW / "notes").mkdir()
    (p / RAW / "notes" / "README.txt").write_text("not an image")
    return ["ingest"]


def _one_image_class(p: Path, ctx: Ctx) -> list[str]:
    for f in sorted((p / RAW / "9").iterdir())[1:]:
        f.unlink()
    return ["ingest"]


def _duplicate_across(p: Path, ctx: Ctx) -> list[str]:
    shutil.copy(sorted((p / RAW / "0").iterdir())[0], p / RAW / "1" / "copied.png")
    return ["ingest"]


def _non_utf8_corrupt(p: Path, ctx: Ctx) -> list[str]:
    name = os.fsencode(p / RAW / "3") + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    with open(name, "wb") as f:
        f.write(b"not a png")
    return ["ingest"]


def _non_utf8_valid(p: Path, ctx: Ctx) -> list[str]:
    name = os.fsencode(p / RAW / "3") + b"/\xff\xfe-digit.png"
    with open(name, "wb") as f:
        f.write(b.png_bytes(np.full((28, 28), 77, np.uint8)))
    return ["ingest"]


def _hidden_files(p: Path, ctx: Ctx) -> list[str]:
    (p / RAW / "3" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")  # macOS resource fork
    (p / RAW / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (p / RAW / ".ipynb_checkpoints").mkdir()
    return ["ingest"]


def _root(kind: str):
    def build(p: Path, ctx: Ctx) -> list[str]:
        raw = p / RAW
        shutil.rmtree(raw)  # kind "missing": nothing more
        if kind == "empty":
            raw.mkdir()
        elif kind == "truncated_tar":
            (p / "data/raw/digits.tar").write_bytes(b.truncated_tar(ctx.outside / "digits_src"))
            edit_params(p, lambda d: d["ingest"].update(root="data/raw/digits.tar"))
        return ["ingest"]
    return build


def _palette(p: Path, ctx: Ctx) -> list[str]:
    (p / RAW / "3" / "palette.png").write_bytes(b.palette_png()[0])
    return ["ingest"]


def _mixed(p: Path, ctx: Ctx) -> list[str]:
    for name, data in b.mixed_modes().items():
        (p / RAW / "5" / name).write_bytes(data)
    return ["ingest"]


_NOISE = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)  # incompressible: cut at 400 bytes, pixels are missing
_exif_expected = np.zeros((32, 32), np.uint8)
_exif_expected[:16] = 255
_gif_expected = np.full((32, 32), 200, np.uint8)

IMAGE_CASES = [
    Case("image-corrupt-bytes", "ingest", _put("noise.png", bytes(range(256)) * 4), 1, ("noise.png", "cannot read image", "not an image", "remove or replace")),
    Case("image-truncated-png", "ingest", _put("cut.png", b.png_bytes(_NOISE)[:400]), 1, ("cut.png", "truncated", "remove or replace")),
    Case("image-zero-bytes", "ingest", _put("empty.png", b""), 1, ("empty.png", "empty|0 bytes|cannot read")),
    Case("image-text-named-jpg", "ingest", _put("notes.jpg", b"just some text\n"), 1, ("notes.jpg", "cannot read image")),
    Case("image-decompression-bomb", "ingest", _bomb, 1, ("bomb.png", "30000x30000", "ingest.max_image_pixels")),
    Case("image-over-max-pixels-param", "ingest", _too_many_pixels, 1, (r"28x28", "ingest.max_image_pixels")),
    Case("image-symlink-out-of-root", "ingest", _symlink_out, 1, ("link.png", "outside", "elsewhere.png")),
    Case("class-folder-symlink-out-of-root", "ingest", _symlink_class_out, 1, ("extra", "outside")),
    Case("class-folder-symlink-inside-root-ok", "ingest", _symlink_inside, 0, check=_count(b.NUM_CLASSES * b.PER_CLASS)),
    Case("image-16-bit-png", "ingest", _put("deep.png", b.png_bytes(b.gradient16())), 0,
         check=_holds((b.gradient16() / 257).round().astype(np.uint8), 1, label=3)),
    Case("image-palette-png", "ingest", _palette, 0, check=_holds(b.palette_png()[1], 0, label=3)),
    Case("image-exif-rotated-jpeg", "ingest", _put("rotated.jpg", b.exif_rotated_jpeg()), 0, check=_holds(_exif_expected, 40, label=3)),
    Case("image-animated-gif", "ingest", _put("anim.gif", b.animated_gif()), 0, check=_holds(_gif_expected, 2, label=3)),
    Case("images-mixed-modes-and-sizes", "ingest", _mixed, 0, check=_count(b.NUM_CLASSES * b.PER_CLASS + 7)),
    Case("class-folder-empty", "ingest", _empty_class, 1, ("10", "no images")),
    Case("class-folder-only-non-images", "ingest", _only_readme_class, 1, ("notes", "no images", "README.txt")),
    Case("class-with-one-image", "ingest", _one_image_class, 1, ("class '9'", "1 image", "at least 2")),
    Case("duplicate-file-across-classes", "ingest", _duplicate_across, 1, ("copied.png", "identical", "classes")),
    Case("non-utf8-name-corrupt", "ingest", _non_utf8_corrupt, 1, (r"caf\\udce9\.png|caf\\xe9\.png|caf.\.png", "cannot read image")),
    Case("non-utf8-name-valid", "ingest", _non_utf8_valid, 0, check=_count(b.NUM_CLASSES * b.PER_CLASS + 1)),
    Case("hidden-files-ignored", "ingest", _hidden_files, 0, check=_count(b.NUM_CLASSES * b.PER_CLASS)),
    Case("image-root-missing", "ingest", _root("missing"), 1, ("data/raw/digits", "does not exist", "ingest.root")),
    Case("image-root-empty", "ingest", _root("empty"), 1, ("data/raw/digits", "no class sub-folders")),
    Case("image-tar-truncated", "ingest", _root("truncated_tar"), 1, ("digits.tar", "truncated|unexpected end|cannot read")),
]


# ---- params cases (any stage validates the whole file first) -----------------------------------------------------

def _params(change=None, text: str | None = None, args: tuple[str, ...] = ("ingest",)):
    def build(p: Path, ctx: Ctx) -> list[str]:
        if text is not None:
            (p / "params.yaml").write_text(text)
        if change is not None:
            edit_params(p, change)
        return list(args)
    return build


PARAMS_CASES = [
    Case("params-inf-float", "params", _params(lambda d: d["train_diffusion"].update(grad_clip=float("inf"))), 2,
         ("train_diffusion.grad_clip", "finite")),
    Case("params-nan-float", "params", _params(lambda d: d["sample"].update(guidance=float("nan"))), 2, ("sample.guidance",)),
    Case("params-unknown-key", "params", _params(lambda d: d["ingest"].update(imagesize=64)), 2, ("ingest.imagesize", "extra")),
    Case("params-wrong-type", "params", _params(lambda d: d["ingest"].update(image_size="big")), 2, ("ingest.image_size", "integer")),
    Case("params-bad-max-image-pixels", "params", _params(lambda d: d["ingest"].update(max_image_pixels=0)), 2, ("ingest.max_image_pixels",)),
    Case("params-not-yaml", "params", _params(text="base: [unclosed\n  seed: 0\n"), 2, ("params.yaml", "not valid YAML")),
    Case("params-top-level-list", "params", _params(text="- base\n- ingest\n"), 2, ("params.yaml", "mapping")),
    Case("params-file-missing", "params", _params(args=("ingest", "--params", "nope.yaml")), 2, ("nope.yaml", "not found")),
    Case("params-invalid-for-sample", "params", _params(lambda d: d["sample"].update(steps=0), args=tuple(SAMPLE)), 2, ("sample.steps",)),
    Case("params-ingest-out-dir-removed", "params", _params(lambda d: d["ingest"].update(out_dir="data/elsewhere")), 2,
         ("ingest.out_dir", "no longer a parameter", "data/dataset", "delete the key")),
    Case("params-unknown-device", "params", _params(lambda d: d["base"].update(device="tpu"), args=tuple(SAMPLE)), 2, ("base.device", "auto", "cuda")),
    Case("params-unknown-conditioning", "params", _params(lambda d: d["train_diffusion"].update(conditioning="words")), 2,
         ("train_diffusion.conditioning", "'class' or 'text'")),
]


# ---- sampler options (sample) --------------------------------------------------------------------------------------

def _sample(*extra: str):
    def build(p: Path, ctx: Ctx) -> list[str]:
        return [*SAMPLE, *extra]
    return build


def _out_file(p: Path, ctx: Ctx) -> list[str]:
    (p / "notes.txt").write_text("my notes\n")
    return [*SAMPLE, "--out", "notes.txt"]


def _grid_dir(p: Path, ctx: Ctx) -> list[str]:
    (p / "reports").mkdir(exist_ok=True)
    return [*SAMPLE, "--grid", "reports"]


SAMPLER_CASES = [
    Case("sample-steps-zero", "sample", _sample("--steps", "0"), 2, ("--steps", "greater than or equal to 1")),
    Case("sample-steps-beyond-schedule", "sample", _sample("--steps", "5000"), 2, ("--steps", "50")),
    Case("sample-num-per-class-zero", "sample", _sample("--num-per-class", "0"), 2, ("--num-per-class", "greater than or equal to 1")),
    Case("sample-num-per-class-negative", "sample", _sample("--num-per-class", "-1"), 2, ("--num-per-class",)),
    Case("sample-guidance-nan", "sample", _sample("--guidance", "nan"), 2, ("--guidance", "finite")),
    Case("sample-guidance-inf", "sample", _sample("--guidance", "inf"), 2, ("--guidance", "finite")),
    Case("sample-guidance-negative", "sample", _sample("--guidance", "-1"), 2, ("--guidance",)),
    Case("sample-eta-negative", "sample", _sample("--eta", "-0.5"), 2, ("--eta",)),
    Case("sample-unknown-sampler", "sample", _sample("--sampler", "euler"), 2, ("--sampler", "ddim")),
    Case("sample-unknown-device", "sample", _sample("--device", "tpu"), 2, ("--device", "'tpu'", "not a device", "auto, cpu, cuda")),
    Case("sample-out-is-a-file", "sample", _out_file, 2, ("notes.txt", "--out", "not a folder|is a file")),
    Case("sample-out-is-a-foreign-folder", "sample", _sample("--out", "data"), 2, ("--out", "data", "not a samples folder")),
    Case("sample-grid-is-a-folder", "sample", _grid_dir, 2, ("--grid", "reports", "folder")),
    Case("sample-prompt-on-a-class-model", "sample", _sample("--prompt", "a thick seven"), 2,
         ("--prompt", "class-conditioned", "drop --prompt", "conditioning: text")),
]


# ---- model folders (sample --model DIR; train_diffusion reading the autoencoder) ----------------------------------

def _model(edit):
    def build(p: Path, ctx: Ctx) -> list[str]:
        return edit(p, ctx) or list(SAMPLE)
    return build


def _truncate(rel: str, keep: int = 100):
    def edit(p: Path, ctx: Ctx):
        f = p / "models" / rel
        f.write_bytes(f.read_bytes()[:keep])
    return edit


def _config_text(rel: str, text: str):
    def edit(p: Path, ctx: Ctx):
        (p / "models" / rel).write_text(text)
    return edit


def _drop_key(key: str):
    def edit(p: Path, ctx: Ctx):
        f = p / "models/diffusion/config.json"
        meta = json.loads(f.read_text())
        del meta[key]
        f.write_text(json.dumps(meta))
    return edit


def _other_width(p: Path, ctx: Ctx):
    b.build_tiny_model(p / "other", unet_channels=(16, 16))
    shutil.copy(p / "other/diffusion/model.safetensors", p / "models/diffusion/model.safetensors")
    shutil.rmtree(p / "other")


def _latent_mismatch(p: Path, ctx: Ctx):
    b.build_tiny_model(p / "other", latent_channels=3)
    shutil.rmtree(p / "models/diffusion")
    shutil.move(p / "other/diffusion", p / "models/diffusion")
    shutil.rmtree(p / "other")


def _autoencoder_as_unet(p: Path, ctx: Ctx):
    shutil.rmtree(p / "models/diffusion")
    shutil.copytree(p / "models/autoencoder", p / "models/diffusion")


def _pickle_planted(p: Path, ctx: Ctx):
    (p / "models/diffusion/model.safetensors").write_bytes(b.pickle_payload(ctx.marker))


def _missing_part(p: Path, ctx: Ctx):
    (p / "models/autoencoder/model.safetensors").unlink()


def _train_on_truncated(p: Path, ctx: Ctx):
    _truncate("autoencoder/model.safetensors")(p, ctx)
    return ["train_diffusion"]


MODEL_CASES = [
    Case("model-folder-missing", "model", _model(lambda p, c: [*SAMPLE, "--model", "no_such_models"]), 1, ("no_such_models", "not found")),
    Case("model-weights-missing", "model", _model(_missing_part), 1, ("autoencoder/model.safetensors", "not found")),
    Case("model-safetensors-truncated", "model", _model(_truncate("diffusion/model.safetensors")), 1,
         ("diffusion/model.safetensors", "not a valid safetensors|corrupt|truncated")),
    Case("model-config-invalid-json", "model", _model(_config_text("autoencoder/config.json", "{not json")), 1,
         ("autoencoder/config.json", "JSON")),
    Case("model-config-missing-key", "model", _model(_drop_key("schedule")), 1, ("diffusion/config.json", "schedule")),
    Case("model-weights-other-width", "model", _model(_other_width), 1, ("models/diffusion", "do not match")),
    Case("model-latent-channels-mismatch", "model", _model(_latent_mismatch), 1, ("latent", "autoencoder", "diffusion")),
    Case("model-other-architecture", "model", _model(_autoencoder_as_unet), 1, ("models/diffusion", "kl_autoencoder", "not a unet")),
    Case("model-pickle-planted-as-safetensors", "model", _model(_pickle_planted), 1, ("diffusion/model.safetensors", "not a valid safetensors")),
    Case("train-on-truncated-autoencoder", "model", _train_on_truncated, 1, ("autoencoder/model.safetensors", "not a valid safetensors")),
]


# ---- registry URIs (sample --model models:/...) -------------------------------------------------------------------

def _uri(uri: str):
    def build(p: Path, ctx: Ctx) -> list[str]:
        edit_params(p, lambda d: d["register"].update(tracking_uri=ctx.tracking_uri))
        return [*SAMPLE, "--model", uri]
    return build


REGISTRY_CASES = [
    Case("registry-model-missing", "registry", _uri("models:/doesnotexist@champion"), 1,
         ("models:/doesnotexist@champion", "not found", "tracking server")),
    Case("registry-alias-missing", "registry", _uri("models:/latentflow@nosuchalias"), 1, ("models:/latentflow@nosuchalias", "alias")),
    Case("registry-version-missing", "registry", _uri("models:/latentflow/99"), 1, ("models:/latentflow/99", "version")),
    Case("registry-run-missing", "registry", _uri("runs:/0123456789abcdef/model"), 1, ("runs:/0123456789abcdef/model",)),
    Case("registry-uri-malformed", "registry", _uri("models:/"), 1, ("models:/", "models:/NAME@alias")),
]


# ---- artifacts of other stages --------------------------------------------------------------------------------------

def _other_reference(p: Path, ctx: Ctx) -> list[str]:
    ref = json.loads((p / "reference_stats/manifest.json").read_text())
    ref["dataset_digest"] = "f" * 64
    b.write_json(p / "reference_stats/manifest.json", ref)
    return ["evaluate"]


def _tampered_dataset(p: Path, ctx: Ctx) -> list[str]:
    np.save(p / "data/dataset/val_labels.npy", np.zeros(20, dtype=np.int64))
    return ["validate"]


ARTIFACT_CASES = [
    Case("reference-from-another-dataset", "evaluate", _other_reference, 1, ("reference", "ffffffffffff", "re-run")),
    Case("dataset-array-tampered", "validate", _tampered_dataset, 1, ("val_labels.npy", "sha256", "re-run ingest")),
]

OPTION_CASES = [
    Case("train-max-time-negative", "options", _params(args=("train_diffusion", "--max-time", "-5")), 2, ("--max-time", "> 0")),
    Case("train-max-time-nan", "options", _params(args=("train_autoencoder", "--max-time", "nan")), 2, ("--max-time", "finite")),
    Case("add-data-source-missing", "options", _params(args=("add-data", "no_such_folder")), 1, ("no_such_folder", "does not exist")),
    Case("add-data-image-size-too-big", "options", _params(args=("add-data", "data/raw/digits", "--image-size", "4096")), 2,
         ("--image-size", "less than or equal to 512")),
]

CASES = OPTION_CASES + IMAGE_CASES + PARAMS_CASES + SAMPLER_CASES + MODEL_CASES + REGISTRY_CASES + ARTIFACT_CASES
