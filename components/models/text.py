"""Text conditioning: a word-level tokenizer and a small transformer text encoder, trained jointly with the U-Net
(LDM's text-to-image model, Rombach et al. 2022, sec. 4.3.1: a transformer ``tau_theta`` learned with the U-Net,
whose token embeddings the U-Net's cross-attention attends to, eq. 3).

The tokenizer's vocabulary is built from the training captions and saved in the U-Net's ``config.json``
(:class:`TextConfig`): lower-cased words and numerals, unknown words map to ``<unk>``, every sequence starts with
``<bos>`` and is padded with ``<pad>`` to ``max_length``. The empty caption, ``[<bos>, <pad>, ...]``, is the null
condition of classifier-free guidance.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
SPECIALS = (PAD, UNK, BOS)
PAD_ID, UNK_ID, BOS_ID = 0, 1, 2
_WORD = re.compile(r"[a-z]+|[0-9]")  # words, and each numeral on its own ("12" -> "1", "2")


def words(text: str) -> list[str]:
    """The words of ``text``: lower-cased runs of letters, and single digits; punctuation is dropped."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class TextConfig:
    """The tokenizer's vocabulary and the text encoder's shape; saved in the U-Net's config."""

    vocab: tuple[str, ...] = SPECIALS
    max_length: int = 16
    width: int = 64
    layers: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        if tuple(self.vocab[:3]) != SPECIALS:
            raise ValueError(f"text vocabulary must start with {SPECIALS}, got {tuple(self.vocab[:3])}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("text vocabulary has duplicate words")
        if self.max_length < 2:
            raise ValueError(f"text max_length must be >= 2 (<bos> and a word), got {self.max_length}")
        if self.width % self.heads:
            raise ValueError(f"text encoder width {self.width} is not divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextConfig:
        return cls(**{**d, "vocab": tuple(d["vocab"])})


def build_vocab(captions: Iterable[str], min_count: int = 1) -> tuple[str, ...]:
    """The special tokens, then every word seen at least ``min_count`` times, most frequent first (ties in
    alphabetical order): deterministic for the same captions in any order."""
    counts = Counter(w for c in captions for w in words(c))
    kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w))
    return (*SPECIALS, *kept)


class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary (:class:`TextConfig`)."""

    def __init__(self, vocab: Sequence[str], max_length: int):
        self.vocab = tuple(vocab)
        self.max_length = max_length
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def from_config(cls, cfg: TextConfig) -> Tokenizer:
        return cls(cfg.vocab, cfg.max_length)

    def check(self, text: str) -> None:
        """A ``ValueError`` if ``text`` is not a string or has more words than fit in ``max_length - 1`` tokens."""
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a string, got {type(text).__name__} {text!r}")
        n = len(words(text))
        if n > self.max_length - 1:
            raise ValueError(f"prompt {text!r} has {n} words; this model reads at most {self.max_length - 1} "
                             "(its text max_length minus <bos>): shorten it")

    def encode(self, text: str) -> list[int]:
        """``[<bos>, word ids..., <pad>...]`` of length ``max_length``; unknown words are ``<unk>``."""
        self.check(text)
        ids = [BOS_ID] + [self.ids.get(w, UNK_ID) for w in words(text)]
        return ids + [PAD_ID] * (self.max_length - len(ids))

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Long tensor ``[len(texts), max_length]``."""
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long).reshape(len(texts), self.max_length)

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids`` (``<bos>`` and ``<pad>`` dropped, unknown words as ``<unk>``)."""
        return " ".join(self.vocab[i] for i in ids if i not in (PAD_ID, BOS_ID))

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in words(text) if w not in self.ids]

    def null_ids(self) -> list[int]:
        """The empty caption: the null condition of classifier-free guidance."""
        return self.encode("")


class _Layer(nn.Module):
    """Pre-LN transformer encoder layer (Xiong et al. 2020): ``x + MHA(LN(x))``, then ``x + MLP(LN(x))`` with
    scaled dot-product attention (Vaswani et al. 2017, eq. 1) masked to the non-pad keys."""

    def __init__(self, width: int, heads: int, mult: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mult * width), nn.GELU(), nn.Linear(mult * width, width))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])  # [B, heads, N, d]
        x = x + self.out(a.transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """``ids [B, L] -> (tokens [B, L, width], pooled [B, width])``: token + learned position embeddings, ``layers``
    pre-LN transformer layers and a final LayerNorm. ``pooled`` is the output at ``<bos>`` (always present, so the
    empty caption has one too; BERT's [CLS] pooling, Devlin et al. 2019)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.token = nn.Embedding(len(cfg.vocab), cfg.width)
        self.position = nn.Parameter(torch.zeros(cfg.max_length, cfg.width))
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(_Layer(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.ndim != 2 or ids.shape[1] != self.config.max_length:
            raise ValueError(f"text ids must be [B, {self.config.max_length}], got {tuple(ids.shape)}")
        key_mask = ids != PAD_ID
        x = self.token(ids) + self.position[None]
        for layer in self.layers:
            x = layer(x, key_mask)
        x = self.ln(x)
        return x, x[:, 0]


def text_encoder_macs(cfg: TextConfig) -> int:
    """Multiply-accumulates of one forward pass for one caption (the linear layers and the attention products)."""
    n, w = cfg.max_length, cfg.width
    per_layer = n * (3 * w * w + w * w + 8 * w * w) + 2 * n * n * w
    return cfg.layers * per_layer


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

