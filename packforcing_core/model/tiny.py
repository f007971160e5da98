"""Tiny random models with the real architectures, for tests, demos and CI (no weights needed)."""
from __future__ import annotations

import torch

from .dit import CausalWanModel, WanConfig


def tiny_config(**overrides) -> WanConfig:
    base = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=16, freq_dim=32)
    base.update(overrides)
    return WanConfig(**base)


def random_model(cfg: WanConfig | None = None, seed: int = 0, dtype=torch.float32, device="cpu") -> CausalWanModel:
    """A model with random weights scaled so activations stay O(1) through the layers."""
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    model = CausalWanModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
            elif "norm" in name:
                p.normal_(1, 0.1)
            elif "modulation" in name:
                p.normal_(0, 0.1)
            elif p.dim() >= 2:
                p.normal_(0, 1 / p[0].numel() ** 0.5)
    return model.to(device).set_compute_dtype(dtype)


def random_prompt(cfg: WanConfig, tokens: int = 8, seed: int = 0, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, cfg.text_dim, generator=g)
