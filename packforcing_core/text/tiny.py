"""Tiny random UMT5 text-encoder files in ComfyUI's layout, for tests, demos and CI (no download).

The file holds what ComfyUI's own files hold: the encoder tensors under ComfyUI's names, a
sentencepiece model trained here on a small built-in word list (T5's special ids: pad 0, end 1,
unknown 2, no start token) as the uint8 tensor `spiece_model`, and for `fmt="fp8_scaled"` the
linear weights as float8_e4m3fn with a per-tensor `scale_weight` and the empty `scaled_fp8` marker.
"""
from __future__ import annotations

import io
import os
import random

import torch
from safetensors.torch import save_file

from .weights import linear_names

WORDS = ("a red fox running through snow forest river mountain city street night day light dark "
         "cat dog bird fish horse car train boat sky cloud rain sun moon star tree flower grass field "
         "man woman child old young walks runs flies swims jumps slowly quickly under over near far "
         "green blue yellow white black golden silver bright soft warm cold wind fire water stone "
         "camera pans zooms close up wide shot cinematic photo painting style of the and with in on").split()
FP8_MAX = 448.0                     # largest finite float8_e4m3fn


def train_spiece(vocab: int = 200, seed: int = 0) -> bytes:
    """A small unigram sentencepiece model with UMT5's special token ids."""
    import sentencepiece
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    lines += ["Ünïcödé, punctuation: (brackets) 1234567890 !?.;-'\"", "日本語 テキスト 中文 文本 한국어"]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    return out.getvalue()


def random_umt5_tensors(dim: int = 32, layers: int = 2, heads: int = 2, head_dim: int = 8, ffn: int = 64,
                        vocab: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 random weights scaled so that activations stay O(1) through the layers."""
    g = torch.Generator().manual_seed(seed)
    inner = heads * head_dim

    def lin(out_f: int, in_f: int) -> torch.Tensor:
        return torch.randn(out_f, in_f, generator=g) / in_f ** 0.5

    sd = {"shared.weight": torch.randn(vocab, dim, generator=g),
          "encoder.final_layer_norm.weight": 1 + 0.1 * torch.randn(dim, generator=g)}
    for i in range(layers):
        att, ff = f"encoder.block.{i}.layer.0.SelfAttention", f"encoder.block.{i}.layer.1.DenseReluDense"
        # residual branches (o, wo) at a quarter scale, small updates as in trained T5s: a deep random
        # stack with full-size updates amplifies float32 rounding
        sd |= {f"{att}.{p}.weight": lin(inner, dim) for p in "qkv"} | {f"{att}.o.weight": lin(dim, inner) / 4}
        sd[f"{att}.q.weight"] /= head_dim ** 0.5               # T5 folds 1/sqrt(d) into q
        sd[f"{att}.relative_attention_bias.weight"] = 0.5 * torch.randn(32, heads, generator=g)
        sd |= {f"{ff}.wi_0.weight": lin(ffn, dim), f"{ff}.wi_1.weight": lin(ffn, dim),
               f"{ff}.wo.weight": lin(dim, ffn) / 4}
        sd |= {f"encoder.block.{i}.layer.{j}.layer_norm.weight": 1 + 0.1 * torch.randn(dim, generator=g)
               for j in (0, 1)}
    return sd


def to_format(sd: dict[str, torch.Tensor], fmt: str, layers: int,
              other_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """fmt: 'fp32', 'bf16', 'fp16' (every tensor), or 'fp8_scaled' (linear weights float8_e4m3fn with
    a per-tensor scale; the rest in other_dtype, float32 by default)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if fmt in dtypes:
        return {k: v.to(dtypes[fmt]) for k, v in sd.items()}
    if fmt != "fp8_scaled":
        raise ValueError(f"format {fmt!r}: use fp32, bf16, fp16 or fp8_scaled")
    out = {k: v.to(other_dtype or torch.float32) for k, v in sd.items()}
    for layer in linear_names(layers):
        w = sd[f"{layer}.weight"]
        scale = w.abs().max() / FP8_MAX
        out[f"{layer}.weight"] = (w / scale).to(torch.float8_e4m3fn)
        out[f"{layer}.scale_weight"] = scale.reshape(()).float()
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def write_tiny_text_encoder(path: str, fmt: str = "fp32", dim: int = 32, layers: int = 2, heads: int = 2,
                            head_dim: int = 8, ffn: int = 64, seed: int = 0, spiece: bytes | None = None,
                            with_tokenizer: bool = True, other_dtype: torch.dtype | None = None) -> None:
    """Write a random UMT5 file at `path` (see the module docstring)."""
    spiece = spiece if spiece is not None else train_spiece(seed=seed)
    import sentencepiece
    vocab = sentencepiece.SentencePieceProcessor(model_proto=spiece).get_piece_size()
    sd = to_format(random_umt5_tensors(dim, layers, heads, head_dim, ffn, vocab + 8, seed), fmt, layers,
                   other_dtype)          # UMT5 too has a few more embedding rows than pieces
    if with_tokenizer:
        sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
    os.replace(tmp, path)
