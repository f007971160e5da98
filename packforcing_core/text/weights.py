"""Reading a UMT5 text-encoder file as ComfyUI stores it (models/text_encoders/).

Names: `shared.weight` (the token embedding; `encoder.embed_tokens.weight` in some exports),
`encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight`,
`encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight` (every layer: UMT5 learns
a position bias per layer, T5 only in layer 0), `encoder.block.{i}.layer.0.layer_norm.weight`,
`encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight`, `encoder.block.{i}.layer.1.layer_norm.weight`,
`encoder.final_layer_norm.weight`, and `spiece_model` (the sentencepiece model, uint8). Decoder
tensors, if any, are ignored. Sizes come from the shapes; the head count from the position bias.

Weights stay in the file's dtype (fp16, bf16, fp32 or fp8) on the device. fp8 files:
- "scaled" (`umt5_xxl_fp8_e4m3fn_scaled.safetensors`): an empty `scaled_fp8` marker tensor and, per
  linear layer, `{layer}.scale_weight`: the weight is fp8 * scale_weight;
- ComfyUI's newer layout: `{layer}.weight_scale` with `{layer}.comfy_quant` (JSON bytes) or the
  `_quantization_metadata` metadata naming each layer's format; only float8 formats are read.
Input scales (`scale_input`, `input_scale`) only serve fp8 matrix products: ComfyUI does not use
them for text encoders, nor do we.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open

BLOCK = re.compile(r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.q\.weight")
FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
WHERE = ("ComfyUI's umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors "
         "(models/text_encoders/, the file CLIPLoader loads with type 'wan')")
NUM_BUCKETS_KEY = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


class TextEncoderFileError(ValueError):
    """The file is not a UMT5 text encoder we can read; the message names the file and the fix."""


@dataclass(frozen=True)
class UMT5Config:
    vocab: int
    dim: int                # d_model (4096 for UMT5-XXL, the width Wan's DiT expects)
    inner: int              # heads * head_dim
    heads: int
    ffn: int                # gated-GELU hidden width
    layers: int
    buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6


def _attn(i: int, name: str) -> str:
    return f"encoder.block.{i}.layer.0.SelfAttention.{name}.weight"


def _ffn(i: int, name: str) -> str:
    return f"encoder.block.{i}.layer.1.DenseReluDense.{name}.weight"


def linear_names(layers: int) -> list[str]:
    """Names (without '.weight') of every linear layer."""
    out = []
    for i in range(layers):
        out += [_attn(i, n)[:-7] for n in "qkvo"] + [_ffn(i, n)[:-7] for n in ("wi_0", "wi_1", "wo")]
    return out


def norm_names(layers: int) -> list[str]:
    return ([f"encoder.block.{i}.layer.{j}.layer_norm.weight" for i in range(layers) for j in (0, 1)]
            + ["encoder.final_layer_norm.weight"])


def detect_config(shapes: dict[str, tuple], source: str) -> UMT5Config:
    """The encoder's sizes from tensor shapes; a clear error for T5 (not UMT5) and other files."""
    layers = sum(1 for k in shapes if BLOCK.fullmatch(k))
    embed = shapes.get("shared.weight") or shapes.get("encoder.embed_tokens.weight")
    if not layers or embed is None:
        raise TextEncoderFileError(f"'{source}' is not a UMT5 text encoder (no 'encoder.block.N' / 'shared' "
                                   f"tensors): give {WHERE}")
    if _ffn(0, "wi") in shapes:
        raise TextEncoderFileError(f"'{source}' is a T5 v1.0 encoder (no gated feed-forward), not the UMT5 of "
                                   f"Wan: give {WHERE}")
    if _attn(layers - 1, "relative_attention_bias") not in shapes:
        raise TextEncoderFileError(f"'{source}' is a T5 encoder (one position bias, in layer 0) such as "
                                   f"t5xxl for Flux/SD3, not the UMT5 of Wan (a position bias in every "
                                   f"layer): give {WHERE}")
    buckets, heads = shapes[NUM_BUCKETS_KEY]
    inner, dim = shapes[_attn(0, "q")]
    cfg = UMT5Config(vocab=embed[0], dim=dim, inner=inner, heads=heads, ffn=shapes[_ffn(0, "wi_0")][0],
                     layers=layers, buckets=buckets)
    if embed[1] != dim or inner % heads:
        raise TextEncoderFileError(f"'{source}': inconsistent sizes (embedding {embed}, attention "
                                   f"{inner}x{dim}, {heads} heads): the file is damaged; download it again")
    return cfg


def expected_shapes(cfg: UMT5Config) -> dict[str, tuple]:
    out = {"encoder.final_layer_norm.weight": (cfg.dim,)}
    for i in range(cfg.layers):
        out |= {_attn(i, n): (cfg.inner, cfg.dim) for n in "qkv"} | {_attn(i, "o"): (cfg.dim, cfg.inner)}
        out |= {_attn(i, "relative_attention_bias"): (cfg.buckets, cfg.heads)}
        out |= {_ffn(i, "wi_0"): (cfg.ffn, cfg.dim), _ffn(i, "wi_1"): (cfg.ffn, cfg.dim),
                _ffn(i, "wo"): (cfg.dim, cfg.ffn)}
        out |= {f"encoder.block.{i}.layer.{j}.layer_norm.weight": (cfg.dim,) for j in (0, 1)}
    return out


def quant_formats(f, keys: set[str], meta: dict[str, str], source: str) -> dict[str, torch.dtype]:
    """{linear layer: fp8 dtype} of ComfyUI's newer quantized layout (`.comfy_quant` / metadata)."""
    layers = {}
    if "_quantization_metadata" in meta:
        try:
            layers = dict(json.loads(meta["_quantization_metadata"])["layers"])
        except (ValueError, KeyError, TypeError) as e:
            raise TextEncoderFileError(f"'{source}': unreadable _quantization_metadata ({e})") from e
    for k in keys:
        if k.endswith(".comfy_quant"):
            try:
                layers[k[: -len(".comfy_quant")]] = json.loads(bytes(f.get_tensor(k).to(torch.uint8).tolist()))
            except ValueError as e:
                raise TextEncoderFileError(f"'{source}': unreadable quantization entry '{k}' ({e})") from e
    out = {}
    for layer, conf in layers.items():
        fmt = conf.get("format") if isinstance(conf, dict) else None
        if fmt not in FP8_FORMATS:
            raise TextEncoderFileError(f"'{source}': layer '{layer}' is quantized as {fmt!r}, which this encoder "
                                       f"cannot read (float8 only): use the fp8_e4m3fn_scaled or fp16/bf16 file")
        out[layer] = FP8_FORMATS[fmt]
    return out


@dataclass
class EncoderWeights:
    cfg: UMT5Config
    tensors: dict[str, torch.Tensor]        # storage dtype, on the device
    scales: dict[str, torch.Tensor]         # linear layer -> fp32 scalar (fp8 files)
    spiece: torch.Tensor | None             # the sentencepiece model bytes, if the file has them

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.tensors.values(), *self.scales.values()))


def file_shapes(path: str) -> tuple[dict[str, tuple], int]:
    """({name: shape}, bytes of the tensors) from the header alone, for planning memory."""
    f, _ = _open(path)
    with f:
        shapes, nbytes = {}, 0
        for k in f.keys():
            s = f.get_slice(k)
            shapes[k] = tuple(s.get_shape())
            nbytes += _numel(shapes[k]) * _DTYPE_BYTES.get(s.get_dtype(), 4)
    return shapes, nbytes


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I8": 1, "I64": 8}


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _open(path: str, device: str = "cpu"):
    if not os.path.isfile(path):
        raise TextEncoderFileError(f"'{path}' does not exist" if not os.path.exists(path)
                                   else f"'{path}' is a folder; give the text encoder file")
    try:
        f = safe_open(path, "pt", device=device)
        return f, f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise TextEncoderFileError(f"'{path}' is not a safetensors file or is damaged ({e}): give {WHERE}") from e


def read_encoder(path: str, device: str | torch.device = "cpu") -> EncoderWeights:
    """Every tensor the encoder needs, loaded one by one straight to `device` (no second host copy)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    f, meta = _open(path, str(dev))
    with f:
        keys = set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        cfg = detect_config(shapes, path)
        want = expected_shapes(cfg)
        for k, shape in want.items():
            if k not in keys:
                raise TextEncoderFileError(f"'{path}' lacks '{k}': the file is incomplete; download it again")
            if shapes[k] != shape:
                raise TextEncoderFileError(f"'{path}': '{k}' has shape {list(shapes[k])}, expected {list(shape)}: "
                                           "the file is damaged; download it again")
        embed = "shared.weight" if "shared.weight" in keys else "encoder.embed_tokens.weight"
        tensors = {k: f.get_tensor(k) for k in want} | {"shared.weight": f.get_tensor(embed)}
        fp8 = quant_formats(f, keys, meta, path)
        scales = {}
        for layer in linear_names(cfg.layers):
            for name in ("scale_weight", "weight_scale"):
                if f"{layer}.{name}" in keys:
                    scales[layer] = f.get_tensor(f"{layer}.{name}").float().reshape(())
            if layer in fp8 and tensors[f"{layer}.weight"].dtype != fp8[layer]:
                raise TextEncoderFileError(f"'{path}': '{layer}.weight' is {tensors[f'{layer}.weight'].dtype}, its "
                                           f"quantization entry says {fp8[layer]}: the file is damaged")
        spiece = f.get_tensor("spiece_model").cpu() if "spiece_model" in keys else None
    _check_finite(tensors, scales, path)
    return EncoderWeights(cfg, tensors, scales, spiece)


def _check_finite(tensors: dict, scales: dict, path: str) -> None:
    for k, s in scales.items():
        if not torch.isfinite(s) or s <= 0:
            raise TextEncoderFileError(f"'{path}': '{k}' has the weight scale {s.item()}: the file is damaged")
    for k in ("encoder.final_layer_norm.weight", "shared.weight"):
        t = tensors[k]
        if t.dtype.itemsize > 1 and not bool(torch.isfinite(t).all()):
            raise TextEncoderFileError(f"'{path}': '{k}' holds NaN/inf values: the file is damaged; download it again")
