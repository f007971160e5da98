"""Prompt text -> UMT5 token ids and per-token weights, as ComfyUI's CLIPTextEncode makes them for Wan.

The rules (ComfyUI's SDTokenizer with the UMT5-XXL settings of its `wan` text encoder type):

- `(text)` multiplies the weight of `text` by 1.1 (nested groups multiply again) and `(text:1.3)`
  sets it to 1.3; `\\(` and `\\)` are literal brackets. Every weighted piece of the prompt is
  tokenized on its own (so a bracket also starts a new word for the tokenizer).
- No start token; the sentencepiece end token (id 1) closes the prompt; no truncation (a prompt
  longer than 511 tokens stays whole); the sequence is padded to 512 tokens. The padding is masked
  out of the attention and its outputs are zero, so padding is never run through the model here.

Textual-inversion embeddings (`embedding:NAME` in the prompt) are not supported: they are refused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

MIN_LENGTH = 512                # ComfyUI pads Wan prompts to 512 tokens (Wan's text_len)
BRACKET_WEIGHT = 1.1            # the weight factor of one pair of brackets
ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))
EMBEDDING = re.compile(r"(^|\s)embedding:")


class TokenizerError(ValueError):
    """A tokenizer model that cannot be read, or a prompt that cannot be tokenized; names the fix."""


@dataclass
class Tokens:
    ids: list[int]              # the prompt's tokens, end token included, no padding
    weights: list[float]        # one per id; 1.0 = unweighted

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


def split_brackets(text: str) -> list[str]:
    """Top-level pieces of `text`: runs of plain text and whole "(...)" groups, nesting kept inside.

    A ")" with no "(" before it drops the depth below zero; the text after it stays in the same piece
    until the depth is back at zero (so unbalanced brackets end up as plain text)."""
    pieces, current, depth = [], "", 0
    for ch in text:
        if ch == "(" and depth == 0:
            if current:
                pieces.append(current)
            current, depth = "(", 1
        elif ch == "(":
            current, depth = current + ch, depth + 1
        elif ch == ")":
            depth -= 1
            current += ch
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def weighted_pieces(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """[(piece, weight)] of a prompt with bracket weights; `(a:1.3)` sets, `(a)` multiplies by 1.1."""
    out = []
    for piece in split_brackets(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner, w = piece[1:-1], weight * BRACKET_WEIGHT
        colon = inner.rfind(":")
        if colon > 0:
            try:
                w = float(inner[colon + 1:])
                inner = inner[:colon]
            except ValueError:
                pass            # "(a:b)": not a weight, the colon is text
        out.extend(weighted_pieces(inner, w))
    return out


def _escape(text: str) -> str:
    for literal, code in ESCAPES:
        text = text.replace(literal, code)
    return text


def _unescape(text: str) -> str:
    for literal, code in ESCAPES:
        text = text.replace(code, literal[1])
    return text


class UMT5Tokenizer:
    """Sentencepiece tokenizer of UMT5 (ComfyUI keeps its model in the text-encoder file, `spiece_model`)."""

    def __init__(self, model_proto: bytes, source: str = "the tokenizer"):
        try:
            import sentencepiece
        except ImportError as e:
            raise TokenizerError("the text encoder's tokenizer needs the sentencepiece package: "
                                 "pip install sentencepiece") from e
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, TypeError, OSError) as e:
            raise TokenizerError(f"{source} is not a sentencepiece model ({e}): give ComfyUI's UMT5 text "
                                 "encoder file, or the spiece.model of google/umt5-xxl with --tokenizer") from e
        self.end_id = self.sp.eos_id()
        if self.end_id < 0:
            raise TokenizerError(f"{source} has no end-of-sequence token: it is not UMT5's sentencepiece model")
        self.vocab_size = self.sp.get_piece_size()

    @classmethod
    def from_file(cls, path: str) -> "UMT5Tokenizer":
        with open(path, "rb") as f:
            return cls(f.read(), source=f"'{path}'")

    @classmethod
    def from_tensor(cls, t: torch.Tensor, source: str) -> "UMT5Tokenizer":
        return cls(t.to(torch.uint8).numpy().tobytes(), source=source)

    def tokenize(self, text: str) -> Tokens:
        ids, weights = [], []
        for piece, weight in weighted_pieces(_escape(text)):
            piece = _unescape(piece)
            if EMBEDDING.search(piece):
                raise TokenizerError(f"prompt {text[:60]!r}: textual-inversion embeddings ('embedding:NAME') "
                                     "are not supported here; remove them from the prompt")
            if not math.isfinite(weight):
                raise TokenizerError(f"prompt {text[:60]!r}: a bracket weight is {weight}; use a finite number")
            if piece:
                pid = self.sp.encode(piece)
                ids += pid
                weights += [weight] * len(pid)
        return Tokens(ids + [self.end_id], weights + [1.0])
