"""The UMT5 encoder (the text encoder of Wan2.1: umt5-xxl, 24 layers, width 4096), in plain PyTorch.

Per layer: RMS norm -> self-attention with a learned relative-position bias (every UMT5 layer has its
own; T5 shares layer 0's) -> residual; RMS norm -> gated-GELU feed-forward -> residual. A final RMS
norm. T5 attention has no 1/sqrt(head_dim) factor (it is folded into the weights at training).

Arithmetic is float32 whatever the file's dtype, as in ComfyUI (its UMT5 casts every weight to the
float32 activations): weights stay in their storage dtype on the device (fp8, bf16, fp16 or fp32)
and are cast, and fp8 ones scaled, one layer at a time.

Only the prompt's own tokens run through the model. ComfyUI pads to 512 tokens and masks the padding
out of every attention, so the prompt's outputs do not depend on the padding (the position bias
depends only on distances), and it zeroes the padding's outputs; the caller pads with zeros.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .weights import EncoderWeights, UMT5Config, linear_names, norm_names

COMPUTE = torch.float32


def relative_buckets(n: int, buckets: int, max_distance: int, device) -> torch.Tensor:
    """(n, n) bucket index of key position j seen from query position i (T5, bidirectional).

    Half the buckets for j > i, half for j <= i; within a half, distances below a quarter of the
    buckets get one bucket each, larger ones share logarithmically wider buckets up to max_distance.
    The float32 log is computed in the same order as in T5 / ComfyUI so that the integer buckets agree."""
    pos = torch.arange(n, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]
    half = buckets // 2
    exact = half // 2
    dist = rel.abs()
    far = exact + (torch.log(dist.float() / exact) / math.log(max_distance / exact) * (half - exact)).to(torch.long)
    far = torch.min(far, torch.full_like(far, half - 1))
    return (rel > 0).to(torch.long) * half + torch.where(dist < exact, dist, far)


class UMT5Encoder(torch.nn.Module):
    def __init__(self, weights: EncoderWeights):
        super().__init__()
        self.cfg: UMT5Config = weights.cfg
        self._names = {n.replace(".", "__"): n for n in weights.tensors}
        for key, name in self._names.items():
            self.register_buffer(key, weights.tensors[name], persistent=False)
        for layer, scale in weights.scales.items():
            self.register_buffer(f"scale__{layer.replace('.', '__')}", scale, persistent=False)
        self.scaled = set(weights.scales)
        assert set(self.scaled) <= set(linear_names(self.cfg.layers))
        assert all(n in weights.tensors for n in norm_names(self.cfg.layers))

    @property
    def device(self) -> torch.device:
        return self.get_buffer("shared__weight").device

    def _w(self, name: str) -> torch.Tensor:
        return self.get_buffer(name.replace(".", "__"))

    def linear(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        w = self._w(f"{layer}.weight").to(x.dtype)
        if layer in self.scaled:
            w = w * self.get_buffer(f"scale__{layer.replace('.', '__')}").to(x.dtype)
        return F.linear(x, w)

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.eps)
        return self._w(name).to(x.dtype) * x

    def attention(self, x: torch.Tensor, i: int, buckets: torch.Tensor) -> torch.Tensor:
        cfg, pre = self.cfg, f"encoder.block.{i}.layer.0.SelfAttention"
        b, n, _ = x.shape
        q, k, v = (self.linear(x, f"{pre}.{p}").view(b, n, cfg.heads, -1).transpose(1, 2) for p in "qkv")
        bias = F.embedding(buckets, self._w(f"{pre}.relative_attention_bias.weight")).to(x.dtype)
        bias = bias.permute(2, 0, 1).unsqueeze(0)                   # (1, heads, n, n)
        out = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v     # prompts are short: plain math
        return self.linear(out.transpose(1, 2).reshape(b, n, cfg.inner), f"{pre}.o")

    def feed_forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        pre = f"encoder.block.{i}.layer.1.DenseReluDense"
        gate = F.gelu(self.linear(x, f"{pre}.wi_0"), approximate="tanh")
        return self.linear(gate * self.linear(x, f"{pre}.wi_1"), f"{pre}.wo")

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, n) -> the last layer's normed hidden states (B, n, dim), float32."""
        table = self._w("shared.weight")
        x = F.embedding(ids.to(table.device), table).to(COMPUTE)
        if table.element_size() == 1:
            x = torch.nan_to_num(x)                                 # fp8 tables can hold NaN codes
        buckets = relative_buckets(ids.shape[1], self.cfg.buckets, self.cfg.max_distance, x.device)
        for i in range(self.cfg.layers):
            x = x + self.attention(self.norm(x, f"encoder.block.{i}.layer.0.layer_norm.weight"), i, buckets)
            x = x + self.feed_forward(self.norm(x, f"encoder.block.{i}.layer.1.layer_norm.weight"), i)
        return self.norm(x, "encoder.final_layer_norm.weight")
