"""3D rotary position embedding of Wan2.1, with arbitrary (and fractional) positions.

Wan splits each head's 128 channels into 64 complex pairs (x[2i], x[2i+1]); the first 22 pairs
rotate with the latent frame index, the next 21 with the token row, the last 21 with the token
column (theta 10000). Wan reads the angles from a 1024-entry table; we compute them from the
positions directly, so positions can be fractional (compressed tokens sit between full-resolution
ones) and re-packed freely. Because the rotation is multiplicative, a key already rotated to
position p moves to p + d by one more rotation by d (`shift_time`).
"""
from __future__ import annotations

import torch


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (time, height, width): 22/21/21 for head_dim 128."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def inverse_frequencies(head_dim: int, theta: float = 10000.0) -> list[torch.Tensor]:
    """Per-axis inverse frequencies (float64), as Wan builds each axis' table."""
    out = []
    for pairs in axis_pairs(head_dim):
        axis_dim = 2 * pairs
        out.append(1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim))
    return out


def angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """positions (L, 3) float (time, row, column) -> angles (L, head_dim/2) in float64."""
    pos = positions.to(torch.float64)
    freqs = inverse_frequencies(head_dim, theta)
    return torch.cat([pos[:, i, None] * f.to(pos.device)[None] for i, f in enumerate(freqs)], dim=1)


def time_angles(delta: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles (L, head_dim/2) of a pure temporal shift by delta (L,): the row/column pairs stay put."""
    d = delta.to(torch.float64)
    zeros = torch.zeros(d.shape[0], 3, dtype=torch.float64, device=d.device)
    zeros[:, 0] = d
    return angles(zeros, head_dim, theta)


class Rotation:
    """cos/sin of a set of angles, ready to rotate (B, L, heads, head_dim) tensors."""

    def __init__(self, ang: torch.Tensor, dtype: torch.dtype = torch.float32):
        # (L, 1, head_dim/2): broadcast over heads.
        self.cos = ang.cos().to(dtype)[:, None, :]
        self.sin = ang.sin().to(dtype)[:, None, :]

    @classmethod
    def at(cls, positions: torch.Tensor, head_dim: int, theta: float = 10000.0,
           dtype: torch.dtype = torch.float32) -> "Rotation":
        return cls(angles(positions, head_dim, theta), dtype)

    @classmethod
    def time_shift(cls, delta: torch.Tensor, head_dim: int, theta: float = 10000.0,
                   dtype: torch.dtype = torch.float32) -> "Rotation":
        return cls(time_angles(delta, head_dim, theta), dtype)

    def to(self, device) -> "Rotation":
        self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        return self

    def inverse(self) -> "Rotation":
        inv = object.__new__(Rotation)
        inv.cos, inv.sin = self.cos, -self.sin
        return inv

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return rotate(x, self.cos, self.sin)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[2i], x[2i+1]) of x (B, L, heads, head_dim) by angles given as cos/sin
    (L, 1, head_dim/2); computed in cos's dtype, returned in x's."""
    xr = x.to(cos.dtype).unflatten(-1, (-1, 2))
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


def grid_positions(frames: int, rows: int, cols: int, t0: float = 0.0,
                   t_step: float = 1.0, hw_step: float = 1.0, hw_offset: float = 0.0,
                   device=None) -> torch.Tensor:
    """Positions (frames*rows*cols, 3) of a token grid in (frame, row, column) order.

    The defaults give the full-resolution grid starting at frame t0; a coarse grid of compressed
    tokens uses t_step/hw_step > 1 and offsets to land on the centres of the regions it covers.
    """
    t = t0 + t_step * torch.arange(frames, dtype=torch.float64, device=device)
    h = hw_offset + hw_step * torch.arange(rows, dtype=torch.float64, device=device)
    w = hw_offset + hw_step * torch.arange(cols, dtype=torch.float64, device=device)
    grid = torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)
