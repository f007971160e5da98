"""The Wan2.1 VAE's building blocks: the causal 3D conv, which carries a stream's last frames in its
`state` from chunk to chunk, the RMS norm (fused with SiLU on CUDA), residual and attention blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import rms_norm_silu

# One stream's cache: module -> tensor (or flag). Plain dict so a fresh one means "new video".
State = dict


class CausalConv3d(nn.Conv3d):
    """3D conv whose temporal padding is all in front, so output frame t only sees frames <= t.

    With a `state`, the last `causal_pad` input frames are remembered and replace the zero
    padding of the next call: chunked calls give the same result as one call on the whole video.
    """

    def __init__(self, in_dim, out_dim, kernel, padding=0):
        kernel = _triple(kernel)
        pad_t, pad_h, pad_w = _triple(padding)
        super().__init__(in_dim, out_dim, kernel, padding=(0, pad_h, pad_w))
        self.causal_pad = 2 * pad_t

    def forward(self, x: torch.Tensor, state: State | None = None, norm: "RMSNorm | None" = None) -> torch.Tensor:
        """With `norm`, the conv's input is silu(norm(x)), written straight into the padded input."""
        if self.causal_pad == 0:
            return super().forward(x if norm is None else norm.silu(x))
        # one buffer of (cached or zero frames, new frames): no concatenation copy of the input
        b, _, t, h, w = x.shape
        pad = self.causal_pad
        padded = torch.empty((b, self.in_channels, pad + t, h, w), dtype=x.dtype, device=x.device,
                             memory_format=_memory_format(x))
        prev = state.get(self) if state is not None else None
        if prev is None:
            padded[:, :, :pad].zero_()
        else:
            padded[:, :, :pad].copy_(prev)
        if norm is None:
            padded[:, :, pad:].copy_(x)
        else:
            norm.silu(x, out=padded[:, :, pad:])
        if state is not None:
            # clone: keep only these frames alive, not the whole padded chunk
            state[self] = padded[:, :, -pad:].clone()
        return super().forward(padded)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Channels-last 3D if x is (outputs keep the layout cuDNN's kernels want), else contiguous."""
    cl = x.is_contiguous(memory_format=torch.channels_last_3d) and x.shape[1] > 1
    return torch.channels_last_3d if cl else torch.contiguous_format


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma (Wan's RMS_norm, no bias)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        # the file stores (C,1,1) for the attention norm (2D in Wan) and (C,1,1,1) elsewhere
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self.scale = dim ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma.view(-1, *([1] * (x.dim() - 2)))
        return F.normalize(x, dim=1) * (gamma * self.scale)

    def silu(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """silu(forward(x)), fused into one pass on CUDA (kernels.py), optionally into `out`."""
        return rms_norm_silu(x, self.gamma, self.scale, out=out)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # indices match the file: 0 norm, 1 SiLU, 2 conv, 3 norm, 4 SiLU, 5 dropout (p=0), 6 conv
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        r = self.residual
        h = r[2](x, state, norm=r[0])
        h = r[6](h, state, norm=r[3])
        return h.add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)
        # the 1x1 convs are per-pixel linear maps: apply them to the token layout directly
        q, k, v = F.linear(tokens, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)
        return x + out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # x first: result keeps x's layout
