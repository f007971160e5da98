"""Self-distillation objective of the mid compressor (no dataset, no backbone training).

For a clean clip (the model's own rollout, or a user's video), the frames before a target chunk
are its history. The frozen model is run twice on the noised target chunk:

  teacher  attends to the WHOLE history at full resolution (what the `full` cache holds);
  student  attends to [sink | selected mid | recent | chunk], laid out exactly as PackedCache
           would after committing that history chunk by chunk: the frames that aged out of recent
           are mid blocks, each through the compressor (branches -> t=0 DiT pass -> K/V), the
           top-k of the bank picked by the same affinity rule, positions re-packed.

The loss is the mean squared difference of the two velocities. Gradients flow through the frozen
DiT (the chunk's forward and each block's t=0 pass) into the compressor only.

The history's K/V come from one teacher-forced pass over the clean clip (t=0, chunk by chunk, each
chunk attending to the chunks before it): the full cache's contents. Student and teacher share it,
so the only difference between them is the mid: with the compressor replaced by the mid frames'
own full-resolution K/V (`full_resolution_mid`) the student IS the teacher and the loss is zero.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..cache.compressor import DiTCompressor, KVPool
from ..cache.config import CacheConfig, recent_capacity
from ..model.dit import attention
from ..model.rope import Rotation, grid_positions


# ----------------------------------------------------------------------------- cache bookkeeping
@dataclass(frozen=True)
class Partition:
    """Where PackedCache keeps a history of `frames` latent frames (absolute frame indices)."""
    frames: int
    sink: int                                  # frames [0, sink)
    blocks: tuple[tuple[int, int], ...]         # mid bank, oldest first: (first frame, frames)
    recent: tuple[int, int]                    # frames [first, end)


def partition(cfg: CacheConfig, chunk: int, frames: int) -> Partition:
    """Replays PackedCache.commit's bookkeeping for `frames` frames committed in chunks of `chunk`."""
    bf = cfg.block_frames or chunk
    cap = recent_capacity(cfg, chunk)
    sink = recent_first = recent_count = done = 0
    blocks = []
    while done < frames:
        n = min(chunk, frames - done)
        to_sink = min(n, cfg.sink_frames - sink)
        sink += to_sink
        rest = n - to_sink
        if rest:
            if recent_count == 0:
                recent_first = done + to_sink
            while recent_count + rest > cap:          # whole blocks of the oldest recent frames age out
                m = min(bf, recent_count)
                if cfg.compresses and cfg.mid_blocks:
                    blocks.append((recent_first, m))
                recent_first, recent_count = recent_first + m, recent_count - m
            recent_count += rest
        done += n
    kept = tuple(blocks[-cfg.mid_blocks:]) if cfg.mid_blocks else ()
    return Partition(frames, sink, kept, (recent_first, recent_first + recent_count))


def target_frames(cfg: CacheConfig, chunk: int, clip_frames: int) -> list[int]:
    """First frames of the chunks of a clip whose history has at least one mid block: the chunks
    where the compressor matters."""
    return [i * chunk for i in range(clip_frames // chunk) if partition(cfg, chunk, i * chunk).blocks]


def min_clip_frames(cfg: CacheConfig, chunk: int, limit: int = 4096) -> int:
    """The shortest clip (a whole number of chunks) with one target chunk."""
    for n in range(chunk, limit, chunk):
        if target_frames(cfg, chunk, n):
            return n
    raise ValueError("no clip length gives a mid block: does the cache keep mid blocks at all?")


# ----------------------------------------------------------------------------- the clean history
@dataclass
class History:
    """K/V of `frames` clean frames, per layer (B, frames*tokens, heads, head_dim); keys rotated to
    their absolute positions 0..frames-1. mean_q: the last chunk's mean un-rotated query
    (layers, heads, head_dim), which the sampler's top-k affinity uses."""
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mean_q: torch.Tensor | None
    frames: int
    rows: int
    cols: int

    @property
    def tokens(self) -> int:
        return self.rows * self.cols

    def frame_kv(self, first: int, n: int):
        a, b = first * self.tokens, (first + n) * self.tokens
        return [k[:, a:b] for k in self.k], [v[:, a:b] for v in self.v]


class _CommitPass:
    """AttentionContext of one clean chunk at t=0: attends to the history before it and itself."""

    def __init__(self, k, v, rope: Rotation, cfg, device):
        self.k, self.v, self.rope = k, v, rope
        self.new_k, self.new_v = [None] * cfg.num_layers, [None] * cfg.num_layers
        self.mean_q = torch.zeros(cfg.num_layers, cfg.num_heads, cfg.head_dim, device=device)

    def attend(self, layer, q, k, v, q_raw):
        self.new_k[layer], self.new_v[layer] = k, v
        self.mean_q[layer] = q_raw.float().mean(1).sum(0) / q.shape[0]
        keys = k if self.k is None else torch.cat([self.k[layer], k], 1)
        vals = v if self.v is None else torch.cat([self.v[layer], v], 1)
        return attention(q, keys, vals)


@torch.no_grad()
def history_pass(model, latent: torch.Tensor, frames: int, chunk: int, text_kv) -> History:
    """The full cache's K/V after committing latent[:, :, :frames] chunk by chunk."""
    mc = model.cfg
    rows, cols = latent.shape[3] // mc.patch[1], latent.shape[4] // mc.patch[2]
    b = latent.shape[0]
    k = v = mean_q = None
    for first in range(0, frames, chunk):
        n = min(chunk, frames - first)
        pos = grid_positions(n, rows, cols, t0=first, device=model.device)
        ctx = _CommitPass(k, v, Rotation.at(pos, mc.head_dim, mc.rope_theta).to(model.device), mc, model.device)
        model(latent[:, :, first:first + n].to(model.device), torch.zeros(b, n, device=model.device), ctx, text_kv)
        k = ctx.new_k if k is None else [torch.cat([a, c], 1) for a, c in zip(k, ctx.new_k)]
        v = ctx.new_v if v is None else [torch.cat([a, c], 1) for a, c in zip(v, ctx.new_v)]
        mean_q = ctx.mean_q
    return History(k or [], v or [], mean_q, frames, rows, cols)


# ----------------------------------------------------------------------------- mid blocks
@dataclass
class MidEntry:
    """One mid block as the chunk sees it. `offsets` None: full-resolution keys already rotated to
    their absolute frames; else un-rotated keys of coarse tokens at these offsets from the block's start."""
    first: int
    frames: int
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    offsets: torch.Tensor | None
    mean_k: torch.Tensor = field(repr=False, default=None)   # (layers, heads, head_dim), for top-k


def _mean_k(ks) -> torch.Tensor:
    return torch.stack([k.detach().float().mean(1).sum(0) for k in ks]) / ks[0].shape[0]


def _unrotated(hist: History, first: int, n: int, model):
    """A block's full-resolution K (un-rotated) and V, as the cache hands them to a compressor."""
    ks, vs = hist.frame_kv(first, n)
    pos = grid_positions(n, hist.rows, hist.cols, t0=first, device=model.device)
    inv = Rotation.at(pos, model.cfg.head_dim, model.cfg.rope_theta).to(model.device).inverse()
    return [inv(k) for k in ks], vs


def full_resolution_mid(model, hist: History, s: "Sample", first: int, n: int) -> MidEntry:
    """No compression: the block's own full-resolution K/V (the teacher's view of those frames)."""
    ks, vs = hist.frame_kv(first, n)
    return MidEntry(first, n, ks, vs, None, _mean_k(_unrotated(hist, first, n, model)[0]))


def kv_pool_mid(model, hist: History, s: "Sample", first: int, n: int) -> MidEntry:
    """The training-free kv_pool compressor (a baseline in the logs)."""
    ks, vs = _unrotated(hist, first, n, model)
    pk, pv, offsets = KVPool()(list(zip(ks, vs)), None, (n, hist.rows, hist.cols), None)
    return MidEntry(first, n, pk, pv, offsets, _mean_k(pk))


class CompressorMid:
    """Mid blocks through a DiTCompressor, differentiable: branches (under autocast when the
    compute dtype is half precision; the branch weights stay float32), then the t=0 DiT pass.
    The LR branch's VAE round trip has no trainable part, so it is computed once per block."""

    def __init__(self, compressor: DiTCompressor, autocast_dtype: torch.dtype | None):
        self.comp, self.autocast_dtype = compressor, autocast_dtype
        self.lr_cache: dict = {}

    def __call__(self, model, hist: History, s: "Sample", first: int, n: int) -> MidEntry:
        grid = (n, hist.rows, hist.cols)
        block = s.latent[:, :, first:first + n].to(model.device)
        lr_lat = None
        if self.comp.mode in ("lr", "hr_lr"):
            ck = (s.key, first, n)
            lr_lat = self.lr_cache.get(ck) if s.key is not None else None
            if lr_lat is None:
                lr_lat = self.comp.lr_latent(block, grid)
                if s.key is not None:
                    self.lr_cache[ck] = lr_lat
        dev = model.device.type
        with torch.autocast(dev, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            x = self.comp.coarse_tokens(block, grid, lr_lat)
        ks, vs, offsets = self.comp.block_kv(x, grid, s.text_kv)
        return MidEntry(first, n, ks, vs, offsets, _mean_k(ks))


def select(entries: list[MidEntry], mean_q: torch.Tensor | None, cfg: CacheConfig, head_dim: int) -> list[MidEntry]:
    """PackedCache.select's rule: the top-k by mean query-key logit (ties: the newer block), in
    temporal order; `recency` (or no query yet): the k newest."""
    k = min(cfg.top_k, len(entries))
    if k == 0:
        return []
    if cfg.selection == "recency" or mean_q is None:
        return entries[-k:]
    mean_k = torch.stack([e.mean_k for e in entries])
    scores = ((mean_k * mean_q).sum((1, 2, 3)) / math.sqrt(head_dim)).tolist()
    order = sorted(range(len(entries)), key=lambda i: (-scores[i], -i))
    return [entries[i] for i in sorted(order[:k])]


# ----------------------------------------------------------------------------- the chunk's context
class ChunkContext:
    """AttentionContext of the target chunk: fixed history K/V per layer, then the chunk's own.
    A pure function of its inputs, so gradient checkpointing may run it twice."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], rope: Rotation, first_pos: float):
        self.keys, self.values, self.rope, self.first_pos = keys, values, rope, first_pos

    def attend(self, layer, q, k, v, q_raw):
        return attention(q, torch.cat([self.keys[layer], k], 1), torch.cat([self.values[layer], v], 1))


def _chunk_rope(model, hist: History, n: int, p: float) -> Rotation:
    pos = grid_positions(n, hist.rows, hist.cols, t0=p, device=model.device)
    return Rotation.at(pos, model.cfg.head_dim, model.cfg.rope_theta).to(model.device)


def teacher_context(model, hist: History, n: int) -> ChunkContext:
    """The full cache: every history frame at its absolute position, the chunk right after."""
    return ChunkContext(hist.k, hist.v, _chunk_rope(model, hist, n, hist.frames), float(hist.frames))


def _shift(ks: list[torch.Tensor], delta: float, model, tokens: int) -> list[torch.Tensor]:
    """Move rotated keys by `delta` frames (one more rotation), as the cache re-packs recent."""
    if not delta:
        return ks
    rot = Rotation.time_shift(torch.full((tokens,), float(delta), dtype=torch.float64, device=model.device),
                              model.cfg.head_dim, model.cfg.rope_theta).to(model.device)
    return [rot(k) for k in ks]


def student_context(model, hist: History, part: Partition, bank: list[MidEntry], cfg: CacheConfig,
                    n: int) -> tuple[ChunkContext, list[MidEntry]]:
    """[sink | top-k of the bank | recent | chunk] at PackedCache's positions (re-packed when
    cfg.rope_adjust, absolute otherwise). Returns the context and the selected blocks."""
    chosen = select(bank, hist.mean_q, cfg, model.cfg.head_dim)
    t = hist.tokens
    r0, r1 = part.recent
    if cfg.rope_adjust:
        p = float(part.sink)
        pos_mid = []
        for e in chosen:
            pos_mid.append(p)
            p += e.frames
        pos_recent = p
    else:
        pos_mid, pos_recent = [float(e.first) for e in chosen], float(r0)
    sink_k, sink_v = hist.frame_kv(0, part.sink)
    rec_k, rec_v = hist.frame_kv(r0, r1 - r0)
    rec_k = _shift(rec_k, pos_recent - r0, model, (r1 - r0) * t)
    parts_k, parts_v = [sink_k], [sink_v]
    for e, p in zip(chosen, pos_mid):
        if e.offsets is None:
            parts_k.append(_shift(e.k, p - e.first, model, e.frames * t))
        else:
            pos = e.offsets.to(model.device) + torch.tensor([p, 0.0, 0.0], dtype=torch.float64, device=model.device)
            rot = Rotation.at(pos, model.cfg.head_dim, model.cfg.rope_theta).to(model.device)
            parts_k.append([rot(k) for k in e.k])
        parts_v.append(e.v)
    parts_k.append(rec_k)
    parts_v.append(rec_v)
    keys = [torch.cat([pk[layer] for pk in parts_k], 1) for layer in range(model.cfg.num_layers)]
    values = [torch.cat([pv[layer] for pv in parts_v], 1) for layer in range(model.cfg.num_layers)]
    p_cur = pos_recent + (r1 - r0)
    return ChunkContext(keys, values, _chunk_rope(model, hist, n, p_cur), p_cur), chosen


# ----------------------------------------------------------------------------- gradient checkpointing
def _checkpointed(block, *args):
    return checkpoint(type(block).forward, block, *args, use_reentrant=False)


@contextlib.contextmanager
def checkpointed_blocks(model, enabled: bool = True):
    """Recompute each block's activations in the backward pass instead of keeping them (the
    chunk's forward at 832x480 keeps ~0.7 GiB per block otherwise)."""
    if not enabled:
        yield
        return
    for blk in model.blocks:
        blk.forward = functools.partial(_checkpointed, blk)
    try:
        yield
    finally:
        for blk in model.blocks:
            del blk.forward


# ----------------------------------------------------------------------------- one sample
@dataclass
class Sample:
    """One training item: a clean clip, which chunk to denoise, at which timestep, with which noise."""
    latent: torch.Tensor          # (1, 16, T, h, w) normalised clean latents
    target: int                   # first frame of the target chunk (its history is latent[:, :, :target])
    t: float                      # timestep (0..1000), one of the sampler's
    noise: torch.Tensor           # (1, 16, n, h, w)
    text_kv: list
    key: object = None            # identifies the clip, for caching its LR latents


@dataclass
class Prepared:
    hist: History
    part: Partition
    x_t: torch.Tensor
    x0: torch.Tensor


class Distiller:
    """Teacher and student velocities of one sample, and their loss."""

    def __init__(self, model, cfg: CacheConfig, chunk: int, grad_checkpointing: bool = False):
        model.requires_grad_(False)           # frozen: gradients reach the compressor only
        self.model, self.chunk, self.grad_checkpointing = model, chunk, grad_checkpointing
        self.cfg = cfg.with_chunk(chunk)

    def prepare(self, s: Sample, hist: History | None = None) -> Prepared:
        """The clean history (reusable for other timesteps of the same clip and target) and x_t."""
        m = self.model
        n = s.noise.shape[2]
        hist = hist or history_pass(m, s.latent, s.target, self.chunk, s.text_kv)
        x0 = s.latent[:, :, s.target:s.target + n].to(m.device).float()
        sigma = s.t / 1000.0
        x_t = ((1 - sigma) * x0.double() + sigma * s.noise.to(m.device).double()).float()
        return Prepared(hist, partition(self.cfg, self.chunk, s.target), x_t, x0)

    def _velocity(self, ctx: ChunkContext, s: Sample, x_t: torch.Tensor) -> torch.Tensor:
        t = torch.full((x_t.shape[0], x_t.shape[2]), float(s.t), device=self.model.device)
        return self.model(x_t, t, ctx, s.text_kv)

    @torch.no_grad()
    def teacher(self, s: Sample, p: Prepared) -> torch.Tensor:
        return self._velocity(teacher_context(self.model, p.hist, p.x_t.shape[2]), s, p.x_t)

    def student(self, s: Sample, p: Prepared, mid_source) -> torch.Tensor:
        """mid_source(model, hist, sample, first, frames) -> MidEntry, or None: no mid (mode none)."""
        bank = [] if mid_source is None else [mid_source(self.model, p.hist, s, first, n) for first, n in p.part.blocks]
        ctx, _ = student_context(self.model, p.hist, p.part, bank, self.cfg, p.x_t.shape[2])
        with checkpointed_blocks(self.model, self.grad_checkpointing and torch.is_grad_enabled()):
            return self._velocity(ctx, s, p.x_t)

    def loss(self, s: Sample, mid_source, prepared: Prepared | None = None):
        """(MSE of the velocities, relative L2 gap of the predicted x0). The gap is detached."""
        p = prepared or self.prepare(s)
        v_t = self.teacher(s, p)
        v_s = self.student(s, p, mid_source)
        loss = F.mse_loss(v_s.float(), v_t.float())
        sigma = s.t / 1000.0
        with torch.no_grad():
            x0_t = p.x_t - sigma * v_t.float()
            gap = (sigma * (v_s.float() - v_t.float())).norm() / x0_t.norm().clamp_min(1e-12)
        return loss, float(gap)
