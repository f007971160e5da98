"""fp8 compute for the DiT's linear layers (e4m3, Hopper and Ada GPUs); off unless asked for.

Weights are stored in e4m3 with one float32 scale per output channel (amax / 448); activations are
quantized on the fly with one scale per token. `torch._scaled_mm` multiplies them on the fp8 tensor
cores (about twice the bf16 rate) and returns the compute dtype; the bias is added after.

Only the linear layers inside the blocks change: q, k, v, o of self-attention, q and o of
cross-attention, and the FFN. The prompt's K/V projections (run once per prompt), the embeddings,
the head, norms, modulation and attention itself keep the compute dtype. The result deviates from
bf16 by the rounding of two e4m3 operands per product; benchmarks/results says by how much.
"""
from __future__ import annotations

import re

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
MIN_CAPABILITY = (8, 9)          # Ada (sm_89) and Hopper (sm_90) have fp8 tensor cores


def fp8_unsupported_reason(device) -> str | None:
    """Why fp8 compute cannot run on `device`, or None when it can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"fp8 compute needs an NVIDIA GPU (Ada or Hopper); the model runs on {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return (f"fp8 compute needs an NVIDIA GPU with fp8 tensor cores (compute capability 8.9+, Ada or Hopper); "
                f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}")
    return None


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., n) -> (e4m3 values, float32 scale (..., 1)) with x ~= values * scale, row by row."""
    xf = x.float()
    scale = xf.abs().amax(-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(nn.Module):
    """A frozen nn.Linear with e4m3 weights (per output channel scales) and per-token e4m3 inputs."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        if w.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"fp8 layers replace bf16/fp16 linears; this one is {w.dtype}")
        q, scale = quantize_rows(w)                                  # (out, in), (out, 1)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out): the layout _scaled_mm wants
        # `weight` tells the surrounding code the compute dtype and device (model.dtype reads it)
        self.register_buffer("weight", torch.empty(0, dtype=w.dtype, device=w.device), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        q, scale = quantize_rows(rows)
        if rows.is_cuda:
            y = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                                 out_dtype=self.weight.dtype)
        else:   # the same products, dequantized (CPU tests and machines without fp8 units)
            y = ((q.float() * scale) @ (self.weight_fp8.float() * self.weight_scale.t()).t()).to(self.weight.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def block_linears(block) -> dict[str, nn.Linear]:
    """The linears of a DiT block that run per token, by their attribute path."""
    out = {f"self_attn.{n}": getattr(block.self_attn, n) for n in ("q", "k", "v", "o")}
    out.update({f"cross_attn.{n}": getattr(block.cross_attn, n) for n in ("q", "o")})
    out.update({"ffn.0": block.ffn[0], "ffn.2": block.ffn[2]})
    return out


def quantize_dit(model, device=None) -> "torch.nn.Module":
    """Replace the per-token linears of every block of a CausalWanModel by Fp8Linear, in place.
    Call after set_compute_dtype (bf16 or fp16) and before compile_blocks. With `device`, a model in
    host memory goes there block by block, each quantized on arrival: the device never holds more
    than one block in bf16 (a 14B model's 28 GB of bf16 weights need not fit, only its fp8 ones)."""
    if device is not None:
        for name, child in model.named_children():
            if name != "blocks":
                child.to(device)
    for block in model.blocks:
        if device is not None:
            block.to(device)
        for path, linear in block_linears(block).items():
            if isinstance(linear, Fp8Linear):
                continue
            parent_name, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_name)
            if isinstance(parent, nn.Sequential):
                parent[int(name)] = Fp8Linear(linear)
            else:
                setattr(parent, name, Fp8Linear(linear))
    model.fp8 = True
    return model


FP8_WEIGHTS = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qo]|ffn\.[02])\.weight")
FLOAT32_WEIGHTS = re.compile(r".*(norm[^.]*|modulation)(\.weight|\.bias)?|time_(embedding|projection)\..*")


def weight_bytes(shapes: dict[str, torch.Tensor], dtype_bytes: int, fp8: bool = False) -> int:
    """Bytes of a DiT's weights (a state dict, meta tensors will do) once loaded in a compute dtype
    of `dtype_bytes` (norms, modulation and time embedding in float32, as set_compute_dtype keeps
    them); with fp8, the blocks' per-token linears at one byte per weight plus a float32 scale per
    output row (quantize_dit)."""
    total = 0
    for name, t in shapes.items():
        if fp8 and FP8_WEIGHTS.fullmatch(name):
            total += t.numel() + 4 * t.shape[0]
        else:
            total += t.numel() * (4 if FLOAT32_WEIGHTS.fullmatch(name) else dtype_bytes)
    return total
