"""Causal Wan2.1 text-to-video DiT (Self-Forcing family), with Wan2.1's weight names.

The network is Wan2.1's: patchify (1,2,2), text and timestep embeddings, N blocks of
[modulated self-attention with RMS q/k norm and 3D RoPE, cross-attention to the prompt,
modulated FFN], a modulated linear head. The causal variants differ only in how self-attention
sees the past: each latent frame carries its own timestep, and the keys/values of earlier frames
come from a cache. That part is delegated to an `AttentionContext` (see `cache/packed.py`), so the same
model runs the dense reference, the PackedCache and the compressor's side passes.

Precision follows Wan: the residual stream, norms, modulation and timestep embedding stay in
float32; linear layers and attention run in the compute dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .rope import Rotation, rotate


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def activation_bytes(self, tokens: int) -> int:
        """Working memory of a forward pass over `tokens` tokens, roughly: fp32 residual stream + FFN."""
        return tokens * (self.ffn_dim + 12 * self.dim) * 4

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionContext(Protocol):
    """Where a chunk's self-attention finds its history (the KV cache)."""

    rope: Rotation  # RoPE of the current tokens' positions, chosen by the context

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               q_raw: torch.Tensor) -> torch.Tensor:
        """q, k rotated by `rope`, v, and the un-rotated q: (B, L, heads, head_dim) each.
        Returns the attention output (B, L, heads, head_dim)."""
        ...


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked SDPA on (B, L, heads, head_dim) tensors."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (Wan's), affine only where Wan has weights (norm3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)

    def qkv(self, x: torch.Tensor):
        split = lambda t: t.unflatten(-1, (self.heads, -1))
        return split(self.norm_q(self.q(x))), split(self.norm_k(self.k(x))), split(self.v(x))


class CrossAttention(SelfAttention):
    def text_kv(self, context: torch.Tensor):
        """Keys/values of the prompt: computed once per prompt, reused by every chunk and step."""
        split = lambda t: t.unflatten(-1, (self.heads, -1))
        return split(self.norm_k(self.k(context))), split(self.v(context))

    def forward(self, x: torch.Tensor, text_kv) -> torch.Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.heads, -1))
        return self.o(attention(q, *text_kv).flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e, frames: int, layer: int, ctx: AttentionContext, rope: Rotation, text_kv):
        """x (B, L, dim) float32; e (B, frames, 6, dim) float32: one modulation per latent frame."""
        mod = self.modulation.float() + e
        q, k, v, qr, kr = self.attention_inputs(x, mod, frames, rope.cos, rope.sin)
        y = ctx.attend(layer, qr, kr, v, q)
        return self.attention_outputs(x, y, mod, frames, *text_kv[layer])

    # The two halves around the cache lookup are plain tensor code: `compile_blocks` fuses them.
    def attention_inputs(self, x, mod, frames: int, cos, sin):
        shift, scale = mod[:, :, 0, None], mod[:, :, 1, None]
        h = self.norm1(x).unflatten(1, (frames, -1)) * (1 + scale) + shift     # per-frame modulation
        q, k, v = self.self_attn.qkv(h.flatten(1, 2).to(self.self_attn.q.weight.dtype))
        return q, k, v, rotate(q, cos, sin), rotate(k, cos, sin)

    def attention_outputs(self, x, y, mod, frames: int, text_k, text_v):
        dtype = self.self_attn.q.weight.dtype
        per_frame = lambda t: t.unflatten(1, (frames, -1))
        y = self.self_attn.o(y.flatten(2))
        x = x + (per_frame(y.float()) * mod[:, :, 2, None]).flatten(1, 2)
        x = x + self.cross_attn(self.norm3(x).to(dtype), (text_k, text_v)).float()
        h = per_frame(self.norm2(x)) * (1 + mod[:, :, 4, None]) + mod[:, :, 3, None]
        y = self.ffn(h.flatten(1, 2).to(dtype))
        return x + (per_frame(y.float()) * mod[:, :, 5, None]).flatten(1, 2)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e, frames: int):
        shift, scale = (self.modulation.float() + e[:, :, None]).unbind(2)  # e: (B, F, dim)
        h = self.norm(x).unflatten(1, (frames, -1)) * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.head(h.flatten(1, 2).to(self.head.weight.dtype))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] of t * 10000^(-i/half), in float64 then float32."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    arg = t.to(torch.float64)[..., None] * freqs
    return torch.cat([arg.cos(), arg.sin()], dim=-1).float()


class CausalWanModel(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.graphs = None          # a graphs.GraphRunner once enable_cuda_graphs() ran

    # --- helpers --------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].self_attn.q.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def set_compute_dtype(self, dtype: torch.dtype) -> "CausalWanModel":
        """Linear/conv weights in `dtype`; norms, modulation and time embedding stay float32."""
        self.to(dtype)
        for mod in self.modules():
            if isinstance(mod, (RMSNorm, LayerNorm)) and getattr(mod, "weight", None) is not None:
                mod.float()
        for blk in self.blocks:
            blk.modulation.data = blk.modulation.data.float()
        self.head.modulation.data = self.head.modulation.data.float()
        self.time_embedding.float()
        self.time_projection.float()
        return self

    def compile_blocks(self) -> "CausalWanModel":
        """torch.compile each block (GPU): fuses norms, modulation, RoPE and casts around the
        matmuls. The cache's attention stays eager (its shapes change as history grows)."""
        for blk in self.blocks:
            blk.attention_inputs = torch.compile(blk.attention_inputs, dynamic=False)
            blk.attention_outputs = torch.compile(blk.attention_outputs, dynamic=False)
        return self

    # --- the forward, in three parts ------------------------------------------------------
    def encode_text(self, context: torch.Tensor):
        """Prompt embeddings (B, n<=text_len, text_dim) -> per-layer cross-attention K/V.

        Wan pads the umt5 output to text_len tokens with zeros before the text MLP, so we do too.
        """
        cfg = self.cfg
        if context.shape[-1] != cfg.text_dim:
            raise ValueError(f"prompt embeddings have width {context.shape[-1]}, the model expects "
                             f"{cfg.text_dim} (umt5-xxl for Wan2.1): load the umt5 text encoder (CLIPLoader type 'wan')")
        context = context[:, : cfg.text_len]
        pad = cfg.text_len - context.shape[1]
        if pad:
            context = F.pad(context, (0, 0, 0, pad))
        emb = self.text_embedding(context.to(self.device, self.dtype))
        return [blk.cross_attn.text_kv(emb) for blk in self.blocks]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, F, H, W) -> tokens (B, F*h*w, dim) in frame, row, column order."""
        return self.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2)

    def run_tokens(self, tokens: torch.Tensor, t: torch.Tensor, frames: int,
                   ctx: AttentionContext, text_kv) -> torch.Tensor:
        """The transformer on tokens of `frames` latent frames with per-frame timesteps t (B, frames).

        Returns the head's output per token (B, L, out_dim * prod(patch))."""
        cfg = self.cfg
        e = self.time_embedding(sinusoidal_embedding(t, cfg.freq_dim))            # (B, F, dim)
        e6 = self.time_projection(e).unflatten(-1, (6, cfg.dim))                   # (B, F, 6, dim)
        x = tokens.float()
        rope = ctx.rope
        for i, blk in enumerate(self.blocks):
            x = blk(x, e6, frames, i, ctx, rope, text_kv)
        return self.head(x, e, frames)

    def unpatchify(self, out: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
        """(B, F*h*w, C*pt*ph*pw) -> (B, C, F*pt, h*ph, w*pw)."""
        pt, ph, pw = self.cfg.patch
        c = self.cfg.out_dim
        x = out.unflatten(1, (frames, h, w)).unflatten(-1, (pt, ph, pw, c))
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B, c, F, pt, h, ph, w, pw
        return x.reshape(out.shape[0], c, frames * pt, h * ph, w * pw)

    def enable_cuda_graphs(self, on: bool = True) -> "CausalWanModel":
        """Replay the forward as a captured CUDA graph wherever the attention context stays the same
        from chunk to chunk (a bounded cache in steady state): no launch overhead, no idle GPU."""
        from .graphs import GraphRunner
        self.graphs = GraphRunner(self) if on else None
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: AttentionContext, text_kv) -> torch.Tensor:
        """Velocity prediction for latent chunk x (B, C, F, H, W) at per-frame timesteps t (B, F)."""
        if self.graphs is not None:
            return self.graphs(x, t, ctx, text_kv)
        return self.eager_forward(x, t, ctx, text_kv)

    def eager_forward(self, x: torch.Tensor, t: torch.Tensor, ctx: AttentionContext, text_kv) -> torch.Tensor:
        b, _, f, hh, ww = x.shape
        pt, ph, pw = self.cfg.patch
        if hh % ph or ww % pw or f % pt:
            raise ValueError(f"latent size {f}x{hh}x{ww} is not a multiple of the patch {self.cfg.patch}")
        out = self.run_tokens(self.embed(x), t.reshape(b, f // pt), f // pt, ctx, text_kv)
        return self.unpatchify(out.float(), f // pt, hh // ph, ww // pw)


def build_model(cfg: WanConfig, device="cpu", dtype=torch.float32) -> CausalWanModel:
    return CausalWanModel(cfg).to(device).set_compute_dtype(dtype)
