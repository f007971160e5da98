"""The Wan2.1 VAE decoder: the encoder's mirror, with nearest-neighbour upsampling (two upsamples
also double time)."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionBlock, CausalConv3d, RMSNorm, ResidualBlock, State
from .resample import Resample


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temporal_upsample):
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0]))
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                d_in //= 2  # each upsample's conv halves the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(d_in, d_out))
                d_in = d_out
            if i < len(dim_mult) - 1:
                layers.append(Resample(d_out, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, state)
        return self.head[2](x, state, norm=self.head[0])
