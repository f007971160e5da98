"""Wan2.1 latents: the per-channel normalisation between the VAE's mean and the latent the DiT
works with, (mu - LATENT_MEAN) / LATENT_STD."""
from __future__ import annotations

import torch

LATENT_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
LATENT_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]
LATENT_CHANNELS = 16


_ON_DEVICE: dict[tuple, torch.Tensor] = {}


def _per_channel(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """values as a tensor that broadcasts over the channel axis (dim -4) of (B,)C,T,H,W. Made once
    per device and dtype: a tensor built from a list is a synchronous host-to-device copy, which
    would stall every decoded piece (and cannot be captured in a CUDA graph)."""
    key = (id(values), like.dtype, like.device)
    t = _ON_DEVICE.get(key)
    if t is None:
        t = _ON_DEVICE[key] = torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)
    return t


def _check_latent_channels(x: torch.Tensor) -> None:
    if x.dim() < 4 or x.shape[-4] != LATENT_CHANNELS:
        raise ValueError(f"expected a Wan2.1 latent of shape (B, {LATENT_CHANNELS}, T, h, w); "
                         f"got {tuple(x.shape)}")


def normalize_latent(mu: torch.Tensor) -> torch.Tensor:
    """VAE mean (B,16,T,H,W) -> the normalised latent the DiT works with."""
    _check_latent_channels(mu)
    return (mu - _per_channel(LATENT_MEAN, mu)) / _per_channel(LATENT_STD, mu)


def denormalize_latent(z: torch.Tensor) -> torch.Tensor:
    """Inverse of normalize_latent."""
    _check_latent_channels(z)
    return z * _per_channel(LATENT_STD, z) + _per_channel(LATENT_MEAN, z)
