"""Tokenizers for the CLIP text tower.

* ``bytes``: UTF-8 bytes plus start/end/pad ids. Needs no files; vocabulary 259.
* ``bpe``: CLIP's byte-pair encoding (vocabulary 49408). Its merges file ``bpe_simple_vocab_16e6.txt.gz``
  (OpenAI CLIP's, MIT License: ``bpe_simple_vocab_16e6.LICENSE`` beside it) ships in this package, so it
  works offline and needs no open_clip; an explicit path or ``$LOWBIT_BPE_VOCAB`` overrides it.

Both return ``[N, context_length]`` int64 tensors ``[start, ..., end, pad, ...]``; a text that does not fit is
truncated and still ends with the end token, so the text tower can pool at the end token (robust to padding).
"""

from __future__ import annotations

import gzip
import html
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

__all__ = [
    "BPE_VOCAB_FILE",
    "BPE_VOCAB_SIZE",
    "BYTE_VOCAB_SIZE",
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "eot_token_id",
    "find_bpe_vocab",
    "get_tokenizer",
    "vocab_size",
]

BYTE_PAD, BYTE_SOT, BYTE_EOT, BYTE_OFFSET = 0, 1, 2, 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET  # 259
BPE_VOCAB_SIZE = 49408
BPE_SOT, BPE_EOT, BPE_PAD = 49406, 49407, 0
TOKENIZERS = ("bytes", "bpe")


class Tokenizer:
    """Common interface: ``tokenizer(texts) -> LongTensor [N, context_length]``."""

    vocab_size: int
    sot_id: int
    eot_id: int
    pad_id: int

    def __init__(self, context_length: int = 77) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start + end token), got {context_length}")
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        raise NotImplementedError

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = self.context_length
        out = torch.full((len(texts), n), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"tokenizer expects str, got {type(text).__name__} at index {i}")
            ids = [self.sot_id, *self.encode(text)[: n - 2], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted by 3; ids 0/1/2 are pad/start/end. Vocabulary 259."""

    vocab_size = BYTE_VOCAB_SIZE
    sot_id, eot_id, pad_id = BYTE_SOT, BYTE_EOT, BYTE_PAD

    def encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Inverse of ``encode`` (special ids are dropped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(i - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET).decode("utf-8", errors="replace")


BPE_VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")  # shipped with the package (MIT)


def find_bpe_vocab(path: str | os.PathLike | None = None) -> Path | None:
    """Locate CLIP's ``bpe_simple_vocab_16e6.txt.gz``: ``path``, ``$LOWBIT_BPE_VOCAB``, then the shipped copy.

    An explicit ``path`` or ``$LOWBIT_BPE_VOCAB`` that names no file is an error (a typo should not silently fall
    back to the shipped vocabulary)."""
    for given, what in ((path, "vocab_path"), (os.environ.get("LOWBIT_BPE_VOCAB") or None, "$LOWBIT_BPE_VOCAB")):
        if given is not None:
            if not Path(given).is_file():
                raise FileNotFoundError(f"{what} {str(given)!r} is not a file (CLIP's bpe_simple_vocab_16e6.txt.gz)")
            return Path(given)
    return BPE_VOCAB_FILE if BPE_VOCAB_FILE.is_file() else None


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class BPETokenizer(Tokenizer):
    """CLIP's byte-pair-encoding tokenizer (lower-cased, whitespace-normalised; vocabulary 49408)."""

    vocab_size = BPE_VOCAB_SIZE
    sot_id, eot_id, pad_id = BPE_SOT, BPE_EOT, BPE_PAD

    def __init__(self, context_length: int = 77, vocab_path: str | os.PathLike | None = None) -> None:
        super().__init__(context_length)
        found = find_bpe_vocab(vocab_path)
        if found is None:
            raise FileNotFoundError(
                f"tokenizer 'bpe' needs CLIP's BPE vocabulary, shipped as {BPE_VOCAB_FILE}, which is missing "
                "from this installation: reinstall lowbit, or set LOWBIT_BPE_VOCAB=/path/to/bpe_simple_vocab_16e6.txt.gz, "
                "or use tokenizer 'bytes' (needs no files)"
            )
        try:
            import regex  # CLIP's pre-tokenizer needs \p{L}/\p{N} classes
        except ImportError as e:
            raise ImportError("tokenizer 'bpe' needs the 'regex' package: pip install regex") from e

        self.byte_encoder = _bytes_to_unicode()
        with gzip.open(found) as f:
            merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        pairs = [tuple(m.split()) for m in merges]
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(p) for p in pairs]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        if len(self.encoder) != BPE_VOCAB_SIZE:
            raise ValueError(f"BPE vocabulary at {found} has {len(self.encoder)} entries, expected {BPE_VOCAB_SIZE}")
        self.bpe_ranks = {p: i for i, p in enumerate(pairs)}
        self.pat = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._cache: dict[str, str] = {}

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        text = " ".join(html.unescape(html.unescape(text)).split()).strip().lower()
        ids: list[int] = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids


def vocab_size(name: str) -> int:
    """Vocabulary size of tokenizer ``name`` (``bytes``: 259, ``bpe``: 49408)."""
    _check_name(name)
    return BYTE_VOCAB_SIZE if name == "bytes" else BPE_VOCAB_SIZE


def eot_token_id(name: str) -> int:
    """Id of the end-of-text token of tokenizer ``name`` (the text tower pools there)."""
    _check_name(name)
    return BYTE_EOT if name == "bytes" else BPE_EOT


def pad_token_id(name: str) -> int:
    """Id of the padding token of tokenizer ``name``."""
    _check_name(name)
    return BYTE_PAD if name == "bytes" else BPE_PAD


def _check_name(name: str) -> None:
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")


@lru_cache(maxsize=8)
def get_tokenizer(name: str = "bytes", context_length: int = 77) -> Tokenizer:
    """The tokenizer called ``name`` (``bytes`` or ``bpe``) for ``context_length`` tokens."""
    _check_name(name)
    return ByteTokenizer(context_length) if name == "bytes" else BPETokenizer(context_length)
