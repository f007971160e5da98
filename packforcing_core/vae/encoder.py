"""The Wan2.1 VAE encoder: causal conv -> residual stages with 3 spatial downsamples (the last two
also halve time) -> middle (residual, per-frame attention, residual) -> head."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionBlock, CausalConv3d, RMSNorm, ResidualBlock, State
from .resample import Resample


class Encoder3d(nn.Module):
    def __init__(self, dim, out_dim, dim_mult, num_res_blocks, temporal_downsample):
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(d_in, d_out))
                d_in = d_out
            if i < len(dim_mult) - 1:
                layers.append(Resample(d_out, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        top = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(top, top), AttentionBlock(top), ResidualBlock(top, top))
        self.head = nn.Sequential(RMSNorm(top), nn.SiLU(), CausalConv3d(top, out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, state)
        return self.head[2](x, state, norm=self.head[0])
