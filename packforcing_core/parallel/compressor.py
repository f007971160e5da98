"""Mid-block compressors when several processes share the heads.

`kv_pool` pools each rank's own heads: nothing to share. `lr`, `hr` and `hr_lr` build coarse tokens
from the block's latents (VAE, HR CNN) and then run a t=0 DiT pass over them: the root alone holds
the VAE and the compressor weights and computes the coarse tokens, broadcasts them, and every rank
runs the t=0 pass on its share (ulysses.py), keeping the K/V of its own heads.
"""
from __future__ import annotations

import math

import torch

from ..cache.compressor import DiTCompressor, make_compressor

LATENT_MODES = ("lr", "hr", "hr_lr")


class SharedCompressor:
    def __init__(self, inner: DiTCompressor, model):
        self.inner, self.model, self.mode = inner, model, inner.mode

    def __call__(self, kv, latent, grid, text_kv):
        if latent is None:
            raise RuntimeError(f"compressor '{self.mode}' needs the latent frames of the block")
        m, par = self.model, self.model.parallel
        n, rows, cols = grid
        shape = (latent.shape[0], m.cfg.dim, math.ceil(n / 2), math.ceil(rows / 4), math.ceil(cols / 4))
        with torch.no_grad():
            if par.is_root:
                x = self.inner.coarse_tokens(latent, grid).to(m.device, m.dtype).contiguous()
                if tuple(x.shape) != shape:
                    raise RuntimeError(f"coarse tokens of shape {tuple(x.shape)}, expected {shape}")
            else:
                x = torch.empty(shape, dtype=m.dtype, device=m.device)
            return self.inner.block_kv(par.group.broadcast(x), grid, text_kv)


def make_shared_compressor(mode: str, model, vae=None, weights: str | None = None):
    """`cache.compressor.make_compressor` for a process of a group (model.parallel): only the root
    needs the VAE and the compressor weights."""
    par = model.parallel
    if par is None or mode not in LATENT_MODES:
        return make_compressor(mode, model, vae, weights)
    inner = make_compressor(mode, model, vae, weights) if par.is_root else DiTCompressor(mode, model)
    return SharedCompressor(inner, model)
