"""Captions for text conditioning: measured image attributes, caption templates with a held-out set, and the
``captions.jsonl`` file (one line per image: ``{"image": "<split>/<index>", "captions": [...]}``).

MNIST has labels, not captions, so they are generated from the label and from attributes measured on the pixels
(stroke thickness and slant), in several phrasings (number words and digits). The templates are split in two:
:data:`SEEN_TEMPLATES` make the training captions, :data:`HELD_OUT_TEMPLATES` are never trained on and serve to
test that the model follows phrasings it has not seen (their words are in the vocabulary, in new orders and
combinations, plus one unknown word). Everything is a pure function of the pixels, the labels and a seed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.io import atomic_write_bytes

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {word}: number word, {digit}: numeral, {thick}: "thin"/"thick"/"" (measured), {slant}: "slanted left"/"slanted right"/
# "upright" ("" when neither). An empty attribute drops out of the caption (and its spaces with it).
SEEN_TEMPLATES = (
    "{digit}",
    "{word}",
    "the digit {digit}",
    "a handwritten {word}",
    "a {thick} {word}",
    "the number {word} written by hand",
    "a {thick} handwritten digit {digit}",
    "a {word} {slant}",
    "an image of the number {digit}",
    "{digit} drawn with a {thick} stroke",
)
HELD_OUT_TEMPLATES = (
    "handwritten number {digit}",            # known words, new order
    "a {slant} {thick} digit {word}",       # attributes together, new order
    "the {word} digit written {slant}",     # new combination
    "a sketch of a {word}",                 # 'sketch' is not in the training vocabulary: an <unk>
)

THICKNESS_WORDS = ("thin", "", "thick")
SLANT_WORDS = ("slanted left", "upright", "slanted right")
SLANT_THRESHOLDS = (-0.2, 0.2)  # shear (about 11 degrees): a fixed meaning; MNIST: ~10% left, ~40% right


@dataclass(frozen=True)
class Attributes:
    """Per-image measurements and their words (index into :data:`THICKNESS_WORDS` / :data:`SLANT_WORDS`)."""

    thickness: np.ndarray  # float [N], pixels
    slant: np.ndarray  # float [N], horizontal shift per row (positive: top leans right)
    thickness_class: np.ndarray  # int [N] in {0, 1, 2}
    slant_class: np.ndarray  # int [N] in {0, 1, 2}
    thresholds: dict


def stroke_thickness(images: np.ndarray, level: int = 128) -> np.ndarray:
    """Mean stroke width in pixels of uint8 ``[N, H, W, C]`` images: ``2 * area / boundary``, where ``area`` counts ink
    pixels (``>= level``) and ``boundary`` the ink pixels with a 4-neighbour outside the ink. A stroke of width ``w``
    and length ``L`` has area ``wL`` and about ``2L`` boundary pixels, so the ratio is ``w``."""
    ink = np.asarray(images).max(axis=-1) >= level
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    interior = padded[:, 1:-1, 1:-1] & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    area = ink.sum(axis=(1, 2)).astype(np.float64)
    boundary = (ink & ~interior).sum(axis=(1, 2)).astype(np.float64)
    return np.where(boundary > 0, 2.0 * area / np.maximum(boundary, 1.0), 0.0)


def slant(images: np.ndarray) -> np.ndarray:
    """Slant of uint8 ``[N, H, W, C]`` images from the ink's second moments (the shear used to deskew MNIST):
    ``-cov(x, y) / var(y)`` with intensity weights and ``y`` the row index (downwards), so positive means the top
    leans right."""
    w = np.asarray(images, dtype=np.float64).max(axis=-1)
    _, h, wd = w.shape
    ys, xs = np.mgrid[0:h, 0:wd].astype(np.float64)
    mass = np.maximum(w.sum(axis=(1, 2)), 1e-9)
    my = (w * ys).sum(axis=(1, 2)) / mass
    mx = (w * xs).sum(axis=(1, 2)) / mass
    dy, dx = ys[None] - my[:, None, None], xs[None] - mx[:, None, None]
    var_y = np.maximum((w * dy * dy).sum(axis=(1, 2)) / mass, 1e-9)
    cov = (w * dx * dy).sum(axis=(1, 2)) / mass
    return -cov / var_y


def measure_attributes(images: np.ndarray, thresholds: dict | None = None) -> Attributes:
    """Thickness and slant of each image and their classes. Thickness is relative: thin and thick are the lower and
    upper thirds of these images' values (``thresholds`` computed here unless given, e.g. the training split's for the
    validation split). Slant is absolute: left below -0.2, right above 0.2 (:data:`SLANT_THRESHOLDS`), else upright."""
    th, sl = stroke_thickness(images), slant(images)
    if thresholds is None:
        thresholds = {"thickness": [float(v) for v in np.quantile(th, [1 / 3, 2 / 3])], "slant": list(SLANT_THRESHOLDS)}
    return Attributes(th, sl, np.digitize(th, thresholds["thickness"]), np.digitize(sl, thresholds["slant"]), thresholds)


def render(template: str, label: int, thick: str = "", slant_words: str = "") -> str:
    """One caption: the template filled in for a digit ``label`` (0-9), empty attributes dropped, "a" before a vowel
    sound made "an" ("an eight", but "a one": its first sound is a consonant)."""
    text = template.format(digit=str(label), word=NUMBER_WORDS[label], thick=thick, slant=slant_words)
    return re.sub(r"\ba (?=[aeiou])(?!one\b)", "an ", " ".join(text.split()))


def generate_captions(labels: np.ndarray, attributes: Attributes, *, seed: int, per_image: int = 3,
                      templates: tuple[str, ...] = SEEN_TEMPLATES) -> list[list[str]]:
    """``per_image`` distinct captions per image from ``templates`` (drawn without replacement by a seeded generator),
    with the image's label and its measured thickness and slant words. Deterministic in ``seed``."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"caption generation knows the digits 0-9; got labels {sorted(set(labels.tolist()))[:10]}")
    per_image = min(per_image, len(templates))
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for i, y in enumerate(labels.tolist()):
        pick = rng.choice(len(templates), size=per_image, replace=False)
        thick, sl = THICKNESS_WORDS[attributes.thickness_class[i]], SLANT_WORDS[attributes.slant_class[i]]
        caps: list[str] = []
        for k in pick:
            c = render(templates[k], y, thick, sl)
            if c not in caps:
                caps.append(c)
        out.append(caps)
    return out


def caption_key(split: str, index: int) -> str:
    """The ``image`` key of an artifact image in ``captions.jsonl``: ``<split>/<index>``."""
    return f"{split}/{index}"


def captions_jsonl_bytes(captions: dict[str, list[str]]) -> bytes:
    """``{"image": key, "captions": [...]}`` lines, UTF-8."""
    lines = [json.dumps({"image": k, "captions": list(v)}, ensure_ascii=False) for k, v in captions.items()]
    return ("\n".join(lines) + "\n").encode()


def write_captions_jsonl(path: str | Path, captions: dict[str, list[str]]) -> None:
    """Write ``{"image": key, "captions": [...]}`` lines, atomically."""
    atomic_write_bytes(path, captions_jsonl_bytes(captions))


def read_captions_jsonl(path: str | Path) -> dict[str, list[str]]:
    """Read ``captions.jsonl``: a ``ValueError`` names the line of any malformed entry (not JSON, no ``image`` string,
    ``captions`` not a non-empty list of strings, or an image given twice)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: captions are one JSON object a line, "
                                '{"image": "<class>/<file>.png", "captions": ["a caption", ...]}')
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
        caps = obj.get("captions") if isinstance(obj, dict) else None
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
            raise ValueError(f'{path}:{n}: expected {{"image": "<path>", "captions": [...]}}, got {line[:80]!r}')
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise ValueError(f"{path}:{n}: 'captions' of {obj['image']!r} must be a non-empty list of non-empty strings")
        if obj["image"] in out:
            raise ValueError(f"{path}:{n}: image {obj['image']!r} appears twice; put all its captions in one line")
        out[obj["image"]] = caps
    return out


def captions_for_images(setting: str, *, images: np.ndarray, labels: np.ndarray, names: list[str] | None, class_names: list[str],
                        seed: int, per_image: int) -> tuple[list[list[str]], dict]:
    """Captions of every image of a source, and a record of how they were made (for the dataset manifest).

    ``setting`` is ``ingest.captions``: ``"generate"`` makes them from the labels and measured attributes
    (:func:`generate_captions`; digit classes ``0``-``9`` only), anything else is the path of a ``captions.jsonl``
    whose ``image`` keys are the source's image names (image folder: ``<class>/<file>``; MNIST: the index). Every
    image needs captions and every key must name an image: a ``ValueError`` lists the first few that do not."""
    if setting == "generate":
        if sorted(class_names) != [str(i) for i in range(10)]:
            raise ValueError(f"ingest.captions: generate knows the digits 0-9 (MNIST); this source's classes are {class_names[:10]}: "
                             "give a captions.jsonl path instead")
        digits = np.asarray([int(class_names[y]) for y in labels])
        att = measure_attributes(images)
        caps = generate_captions(digits, att, seed=seed, per_image=per_image)
        return caps, {"source": "generate", "per_image": per_image, "seed": seed, "seen_templates": list(SEEN_TEMPLATES),
                      "held_out_templates": list(HELD_OUT_TEMPLATES), "attribute_thresholds": att.thresholds}
    if names is None:
        raise ValueError("ingest.captions: this source has no image names to match a captions.jsonl against")
    by_key = read_captions_jsonl(setting)
    missing = [n for n in names if n not in by_key]
    if missing:
        raise ValueError(f"{setting}: no captions for {len(missing)} of {len(names)} images, e.g. {missing[:3]}; every image needs "
                         "a line {\"image\": \"<class>/<file>\", \"captions\": [...]}")
    unknown = sorted(set(by_key) - set(names))
    if unknown:
        raise ValueError(f"{setting}: {len(unknown)} keys name no image of the source, e.g. {unknown[:3]} (expected <class>/<file> "
                         "as under ingest.root); fix or remove those lines")
    return [by_key[n] for n in names], {"source": str(setting)}
