"""Head-parallel (Ulysses) DiT forward: each process computes a share of the tokens outside attention
and a share of the heads inside it.

Outside attention (norms, modulation, Q/K/V and output projections, cross-attention, FFN, head) every
token is independent, so rank r computes the r-th run of tokens of every latent frame (frames padded
with zero rows to a multiple of the rank count; the padding never reaches attention). Keeping the
frame structure keeps the per-frame modulation as it is. Before self-attention one all-to-all turns
[its tokens, all heads] of q, k, v (and the un-rotated q the top-k needs) into [all tokens, its heads];
the wrapped attention context (PackedCache, a re-cache pass, a compressor pass) attends with its own
share of the K/V cache, and a second all-to-all turns the output back. After the head, an all-gather
gives every rank the whole velocity, so the sampler's state (latents, noise, positions) stays the same
on every rank.
"""
from __future__ import annotations

import torch

from ..model.rope import Rotation
from .group import HeadGroup, check_heads


class TokenSplit:
    """Which tokens of a pass a rank computes: in every latent frame, the rank-th of `size` equal runs."""

    def __init__(self, frames: int, per_frame: int, size: int, rank: int):
        self.frames, self.per_frame, self.size, self.rank = frames, per_frame, size, rank
        self.part = -(-per_frame // size)          # tokens of a frame on each rank
        self.padded = self.part * size

    def pad(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """x with frames at dim and their tokens at dim + 1: tokens padded with zeros to `padded`."""
        extra = self.padded - self.per_frame
        if not extra:
            return x
        shape = list(x.shape)
        shape[dim + 1] = extra
        return torch.cat([x, x.new_zeros(shape)], dim + 1)

    def local(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's tokens of x, whose dimension `dim` holds frames x per_frame tokens."""
        x = self.pad(x.unflatten(dim, (self.frames, self.per_frame)), dim)
        x = x.unflatten(dim + 1, (self.size, self.part)).select(dim + 1, self.rank)
        return x.flatten(dim, dim + 1)

    def gather(self, x: torch.Tensor, group: HeadGroup) -> torch.Tensor:
        """Every rank's tokens (B, frames * part, C) -> all of them (B, frames * per_frame, C), on every rank."""
        b, _, c = x.shape
        parts = group.all_gather(x.unflatten(1, (self.frames, 1, self.part)), 2)     # (B, F, size, part, C)
        return parts.reshape(b, self.frames, self.padded, c)[:, :, :self.per_frame].reshape(b, -1, c)


class HeadExchange:
    """AttentionContext of the blocks on one rank's tokens: hands the wrapped context all tokens of
    this rank's heads (all-to-all), and gives back this rank's tokens of all heads."""

    def __init__(self, inner, split: TokenSplit, group: HeadGroup):
        self.inner, self.split, self.group = inner, split, group

    def attend(self, layer: int, q, k, v, q_raw) -> torch.Tensor:
        s, n = self.split, self.group.size
        b, _, heads, d = q.shape
        h = heads // n
        x = torch.stack((q, k, v, q_raw)).view(4, b, s.frames, s.part, n, h, d)
        x = self.group.all_to_all(x.permute(4, 0, 1, 2, 3, 5, 6))           # part i: rank i's tokens, my heads
        x = x.permute(1, 2, 3, 0, 4, 5, 6).reshape(4, b, s.frames, s.padded, h, d)[:, :, :, :s.per_frame]
        q, k, v, q_raw = x.flatten(2, 3).unbind(0)
        y = self.inner.attend(layer, q, k, v, q_raw)                           # (B, F * per_frame, h, d)
        y = s.pad(y.unflatten(1, (s.frames, s.per_frame)), 1).reshape(b, s.frames, n, s.part, h, d)
        y = self.group.all_to_all(y.permute(2, 0, 1, 3, 4, 5))                # part i: my tokens, rank i's heads
        return y.permute(1, 2, 3, 0, 4, 5).reshape(b, s.frames * s.part, heads, d)


class HeadParallel:
    """`CausalWanModel.parallel`: this process's share of a DiT whose heads are split over a group.

    The weights are whole on every rank (Q/K/V projections see every channel of a token); the K/V
    cache holds `local_heads` heads: those from `first_head` on. `announce` (the root of a ComfyUI
    worker pool) tells the workers that a collective outside a forward pass follows (a state save)."""

    def __init__(self, group: HeadGroup, heads: int, announce=None, name: str = "GPUs"):
        check_heads(heads, group.size, name)
        self.group, self.heads = group, heads
        self.local_heads = heads // group.size
        self.first_head = group.rank * self.local_heads
        self.announce = announce

    @property
    def size(self) -> int:
        return self.group.size

    @property
    def is_root(self) -> bool:
        return self.group.is_root

    def run_tokens(self, model, tokens: torch.Tensor, e, e6, frames: int, ctx, text_kv) -> torch.Tensor:
        """CausalWanModel.run_tokens after the timestep embedding, on this rank's tokens."""
        split = TokenSplit(frames, tokens.shape[1] // frames, self.group.size, self.group.rank)
        rope = object.__new__(Rotation)
        rope.cos, rope.sin = split.local(ctx.rope.cos, 0), split.local(ctx.rope.sin, 0)
        out = model.transform(split.local(tokens, 1).float(), e, e6, frames, HeadExchange(ctx, split, self.group),
                              rope, text_kv)
        return split.gather(out, self.group)

    # ------------------------------------------------------------------ the heads of cached tensors
    def gather_heads(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's heads of x (at dim), on every rank."""
        return self.group.all_gather(x, dim)

    def gather_heads_to_root(self, x: torch.Tensor, dim: int) -> torch.Tensor | None:
        return self.group.gather_to_root(x, dim)

    def own_heads(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's heads of a tensor that holds all of them at dim."""
        return x.narrow(dim, self.first_head, self.local_heads)

    def before_collective(self) -> None:
        if self.announce is not None:
            self.announce()


def attach(model, group: HeadGroup | None, announce=None, name: str = "GPUs"):
    """Share `model`'s heads with the group (None or a group of one: the model runs alone)."""
    model.parallel = None if group is None or group.size == 1 else \
        HeadParallel(group, model.cfg.num_heads, announce, name)
    return model
