"""Fused RMS norm + SiLU for the Wan VAE's residual blocks (a Triton kernel on CUDA).

Unfused, `silu(normalize(x, dim=1) * gamma * sqrt(C))` reads and writes the activation four or five
times (the channel norm, the division, the scale, the SiLU); at 832x480 the decoder is memory-bound
there. In channels-last layout the channels of one pixel are contiguous, so one program normalises
a block of pixels in registers and writes the result once. Everywhere else (CPU, other layouts, no
Triton) the eager expression runs: same math, float32 statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:          # CPU-only installs: the eager path
    triton = None

EPS = 1e-12                  # F.normalize's floor on the norm


def rms_norm_silu_eager(x: torch.Tensor, gamma: torch.Tensor, scale: float) -> torch.Tensor:
    return F.silu(F.normalize(x, dim=1) * (gamma.view(-1, *([1] * (x.dim() - 2))) * scale), inplace=True)


def _pixels_by_channels(x: torch.Tensor) -> torch.Tensor | None:
    """(pixels, C) view of a channels-last x (B, C, ...), or None if the channels are not innermost."""
    rows = x.movedim(1, -1)
    return rows.view(-1, x.shape[1]) if rows.is_contiguous() else None


def rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(x / ||x||_channels * gamma * scale) for x (B, C, ...); gamma has C elements. With `out`
    (x's shape, any layout: e.g. a slice of a larger buffer) the result is written there."""
    rows = _pixels_by_channels(x) if triton is not None and x.is_cuda and x.shape[1] <= 1024 else None
    if rows is not None and out is None:
        out = torch.empty_like(x)                       # empty_like keeps the channels-last strides
    out_rows = _pixels_by_channels(out) if rows is not None else None
    if out_rows is None:                                # CPU, another layout, no Triton: eager
        y = rms_norm_silu_eager(x, gamma, scale)
        return y if out is None else out.copy_(y)
    n, c = rows.shape
    block_c = triton.next_power_of_2(c)
    block_r = max(1, 4096 // block_c)
    _norm_silu_kernel[(triton.cdiv(n, block_r),)](
        rows, gamma.reshape(-1).contiguous(), out_rows, n, c, scale, EPS, BLOCK_R=block_r, BLOCK_C=block_c)
    return out


if triton is not None:
    @triton.jit
    def _norm_silu_kernel(x_ptr, g_ptr, y_ptr, n, c, scale, eps, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        k = tl.arange(0, BLOCK_C)[None, :]
        mask = (r < n) & (k < c)
        x = tl.load(x_ptr + r * c + k, mask=mask, other=0.0).to(tl.float32)
        norm = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)[:, None]
        g = tl.load(g_ptr + k, mask=k < c, other=0.0).to(tl.float32)
        y = x / norm * g * scale
        y = y / (1.0 + tl.exp(-y))
        tl.store(y_ptr + r * c + k, y.to(y_ptr.dtype.element_ty), mask=mask)
