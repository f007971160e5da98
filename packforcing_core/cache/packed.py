"""PackedCache: the bounded three-partition KV cache of PackForcing.

History is split into
  sink    the first `sink_frames` latent frames, full resolution, kept forever;
  mid     older frames, compressed ~32x per block (`compressor.py`), kept in a bank of
          `mid_blocks` blocks; a dynamic top-k of them is attended by each chunk;
  recent  the last `recent_frames` frames, full resolution; when they age they move to mid.
Temporal RoPE adjustment: the attended history is re-packed to contiguous temporal positions
[sink | selected mid | recent | current chunk], so positions stay bounded however long the video.

Per layer, K and V live in one preallocated buffer, laid out so that what a chunk attends to is
one contiguous slice (no masks, no concatenation per step):
    [ current chunk | sink | recent | selected mid ]
Order inside the slice does not matter to attention; only the RoPE positions carry time.
Keys are stored rotated to their packed position; when the packing moves a frame by d, its keys
get one more rotation by d (once per chunk, never per step). The mid bank keeps un-rotated
(canonical) keys, and each chunk's selection is rotated from them into the buffer, so a block
that is selected many times never accumulates rounding.

Mode `full` keeps everything (the reference: memory grows), `none` drops what leaves recent.

PackedCache is built from three modules: this one (partitions, buffer layout, attention, commit),
mid.py (the mid bank: top-k selection, staging and uploads into the buffer, compressing blocks
into it) and switches.py (prompt switches: re-cache, re-compress, cuts).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..model.rope import Rotation, grid_positions
from .config import CacheConfig, Geometry, MidBlock, plan, recent_capacity
from .mid import MidBank
from .switches import PromptSwitches


class PackedCache(MidBank, PromptSwitches):
    """Implements the model's AttentionContext for chunk-by-chunk generation."""

    def __init__(self, cfg: CacheConfig, compressor=None):
        self.cfg = cfg
        self.compressor = compressor
        if cfg.compresses and compressor is None:
            raise ValueError(f"cache mode '{cfg.mode}' needs a compressor (see compressor.make_compressor)")
        self.geo: Geometry | None = None
        self.frames_done = 0              # latent frames committed so far (absolute time)
        self.sink_first = 0               # absolute frame index of the first sink frame (moves on a cut)
        self.sink_count = 0
        self.sink_cap = 0                 # frames the buffer's sink region holds (plan(): at most the video)
        self.recent_first = 0             # absolute frame index of the oldest recent frame
        self.recent_count = 0
        self.recent_pos: list[float] = []  # packed time position each recent frame's keys are rotated to
        self.blocks: list[MidBlock] = []
        self.selected: list[MidBlock] = []
        self.next_block = 0
        self.mean_q: torch.Tensor | None = None   # (layers, heads, head_dim) of the last committed chunk
        self.pending_latent: torch.Tensor | None = None  # latent frames of recent, for lr/hr compressors
        self.k = self.v = None            # lists per layer of (B, tokens, heads, head_dim)
        self.bank_k = self.bank_v = None
        self._chunk = None                # state of the chunk being generated
        self._staged = None               # CUDA event: the last upload from the pinned staging buffers
        self._stage: dict = {}
        self._bank_written = None         # CUDA event: the last asynchronous write into a host bank
        self._offsets: dict = {}          # block grid -> (device, host) offsets: they depend on the grid only
        self._mid_rot = None              # (positions key, Rotation) of the selected blocks, reused while it holds
        self._static: dict = {}           # buffers a captured forward reads: RoPE of the chunk, query sums

    # ------------------------------------------------------------------ allocation
    def setup(self, model, latent_h: int, latent_w: int, chunk_frames: int, batch: int = 1,
              total_frames: int | None = None) -> None:
        """Allocate buffers for this model, resolution and chunk length (once)."""
        mc = model.cfg
        geo = Geometry(mc.num_layers, mc.num_heads, mc.head_dim, latent_h // mc.patch[1],
                       latent_w // mc.patch[2], chunk_frames, batch)
        if self.geo is not None:
            if geo != self.geo:
                raise ValueError(f"this cache was built for {self.describe_geometry(self.geo)}, "
                                 f"not {self.describe_geometry(geo)}: use a new PackedCache")
            self._ensure_capacity(total_frames)
            return
        self.cfg = self.cfg.with_chunk(chunk_frames)
        self._allocate(geo, model.device, model.dtype, mc.rope_theta, total_frames)

    def _allocate(self, geo: Geometry, device, dtype, theta: float, total_frames: int | None) -> None:
        self.geo, self.device, self.dtype, self.theta = geo, device, dtype, theta
        p = plan(self.cfg, geo, total_frames=total_frames)
        self.sink_cap = p["sink_frames"]
        self.k, self.v = self._alloc(p["buffer_tokens"], self.device), self._alloc(p["buffer_tokens"], self.device)
        if self.cfg.compresses:
            bank_dev = "cpu" if self.cfg.bank_device == "cpu" else self.device
            self.bank_k, self.bank_v = self._alloc(p["bank_tokens"], bank_dev), self._alloc(p["bank_tokens"], bank_dev)

    @staticmethod
    def describe_geometry(g: Geometry) -> str:
        return (f"a {g.layers}-layer model at {g.rows * 2}x{g.cols * 2} latent "
                f"({g.cols * 16}x{g.rows * 16} px), chunks of {g.chunk_frames} frames, batch {g.batch}")

    def _alloc(self, tokens: int, device) -> list[torch.Tensor]:
        g = self.geo
        pin = str(device) == "cpu" and torch.cuda.is_available() and str(self.device) != "cpu"
        return [torch.zeros(g.batch, tokens, g.heads, g.head_dim, dtype=self.dtype, device=device,
                            pin_memory=pin) for _ in range(g.layers)]

    def _ensure_capacity(self, total_frames: int | None) -> None:
        """A longer video than the buffers were planned for: `full` needs room for every frame, and a
        sink sized down to a short video grows towards `sink_frames`. Sink and recent move over."""
        if total_frames is None:
            return
        p = plan(self.cfg, self.geo, total_frames=total_frames)
        if p["buffer_tokens"] <= self.k[0].shape[1]:
            return
        sink_end = self._cur_end + self.sink_count * self._t
        old_recent, recent = self._recent_start, self.recent_count * self._t
        self.sink_cap = p["sink_frames"]
        new_k, new_v = self._alloc(p["buffer_tokens"], self.device), self._alloc(p["buffer_tokens"], self.device)
        for src, dst in ((self.k, new_k), (self.v, new_v)):
            for s, d in zip(src, dst):
                d[:, :sink_end] = s[:, :sink_end]
                d[:, self._recent_start:self._recent_start + recent] = s[:, old_recent:old_recent + recent]
        self.k, self.v = new_k, new_v

    def release(self) -> None:
        """Drop the buffers now (after a cancel a kept traceback must not hold GPU memory)."""
        self.k = self.v = self.bank_k = self.bank_v = self.pending_latent = None
        self._chunk, self._stage, self._static, self._mid_rot = None, {}, {}, None

    def resized(self, cfg: CacheConfig, text_kv=None) -> "PackedCache":
        """A cache with new sizes that holds this video's history, to continue it (e.g. with a
        second sampler). recent shrinking evicts the oldest frames the usual way (compressed into
        mid, or dropped by `none`); mid keeps its newest blocks that fit; top-k applies from the next
        chunk. The sink cannot change once the video has started: its frames sit at positions 0.."""
        cfg = cfg.with_chunk(self.cfg.block_frames)
        if cfg == self.cfg:
            return self
        if self.cfg.mode == "full" or cfg.mode != self.cfg.mode:
            raise ValueError(f"a '{self.cfg.mode}' cache cannot be re-sized into mode '{cfg.mode}': "
                             "the mode must stay the same (and `full` has no sizes)")
        if cfg.sink_frames != self.cfg.sink_frames and self.frames_done:
            raise ValueError(f"the sink of a video under way cannot change (it holds the first {self.sink_count} "
                             f"latent frames): keep {self.cfg.sink_frames} frames, or start a new video")
        self.cfg = replace(self.cfg, recent_frames=cfg.recent_frames)
        self._make_room(0, None, text_kv)           # shrink recent the way aging does
        new = PackedCache(cfg, self.compressor)
        new._allocate(self.geo, self.device, self.dtype, self.theta, self.frames_done)
        a, b = self._cur_end, self._mid_start      # sink and recent sit at the same offsets
        for src, dst in ((self.k, new.k), (self.v, new.v)):
            for s, d in zip(src, dst):
                d[:, a:b] = s[:, a:b]
        for name in ("frames_done", "sink_first", "sink_count", "recent_first", "recent_count", "next_block", "mean_q",
                     "pending_latent"):
            setattr(new, name, getattr(self, name))
        new.recent_pos = list(self.recent_pos)
        if new.cfg.compresses and new.cfg.mid_blocks:
            size = self.geo.block_tokens(cfg.block_frames)
            kept = self.blocks[-cfg.mid_blocks:]
            if self._bank_written is not None:
                self._bank_written.synchronize()
            for j, blk in enumerate(kept):
                for src, dst in ((self.bank_k, new.bank_k), (self.bank_v, new.bank_v)):
                    for s, d in zip(src, dst):
                        d[:, j * size:j * size + blk.tokens] = s[:, blk.slot:blk.slot + blk.tokens].to(d.device)
            new.blocks = [replace(blk, slot=j * size) for j, blk in enumerate(kept)]
        return new

    # ------------------------------------------------------------------ accounting
    def nbytes(self) -> dict:
        size = lambda bufs: sum(b.numel() * b.element_size() for b in bufs or [])
        buf, bank = size(self.k) + size(self.v), size(self.bank_k) + size(self.bank_v)
        dev = buf + (bank if self.cfg.bank_device == "same" else 0)
        return {"buffer_bytes": buf, "bank_bytes": bank, "device_bytes": dev, "total_bytes": buf + bank}

    # ------------------------------------------------------------------ layout of a chunk
    @property
    def _t(self) -> int:
        return self.geo.frame_tokens

    @property
    def _cur_end(self) -> int:          # the current chunk slot is [_cur_end - L*T, _cur_end)
        return self.geo.chunk_frames * self._t

    @property
    def _recent_start(self) -> int:
        return self._cur_end + self.sink_cap * self._t

    @property
    def _recent_cap(self) -> int:
        if self.cfg.mode == "full":
            return (self.k[0].shape[1] - self._recent_start) // self._t
        return recent_capacity(self.cfg, self.geo.chunk_frames)

    @property
    def _mid_start(self) -> int:
        # recent only fills once the sink is full; until then history ends after the sink frames
        if not self.recent_count:
            return self._cur_end + self.sink_count * self._t
        return self._recent_start + self.recent_count * self._t

    def _layout(self):
        """Packed temporal positions of sink, selected mid, recent and the current chunk."""
        on_device = self._sel_pending is not None     # uniform blocks: positions follow from the count
        if not self.cfg.rope_adjust:
            pos_sel = None if on_device else [float(b.first_frame) for b in self.selected]
            pos_recent = [float(self.recent_first + i) for i in range(self.recent_count)]
            return pos_sel, pos_recent, float(self.frames_done)
        p = float(self.sink_count)
        pos_sel = []
        for frames in ([self.cfg.block_frames] * self._sel_pending.numel() if on_device
                       else [b.frames for b in self.selected]):
            pos_sel.append(p)
            p += frames
        pos_recent = [p + i for i in range(self.recent_count)]
        return pos_sel, pos_recent, p + self.recent_count

    def begin_chunk(self, chunk_len: int) -> None:
        """Prepare attention for a chunk of `chunk_len` latent frames: select, re-pack, re-rotate."""
        if self.geo is None:
            raise RuntimeError("PackedCache.setup() must run before the first chunk")
        if not 0 < chunk_len <= self.geo.chunk_frames:
            raise ValueError(f"chunk of {chunk_len} frames does not fit the cache's {self.geo.chunk_frames}")
        if not (self.cfg.compresses and self._select_on_device()):
            self.selected = self.select() if self.cfg.compresses else []
        pos_sel, pos_recent, p_cur = self._layout()
        self._rerotate_recent(pos_recent)
        mid_tokens = self._place_selected(pos_sel)
        g = self.geo
        cur = grid_positions(chunk_len, g.rows, g.cols, t0=p_cur, device=self.device)
        self._chunk = {
            "len": chunk_len, "pos": p_cur,
            "rot": self._static_rope(Rotation.at(cur, g.head_dim, self.theta).to(self.device)),
            "start": self._cur_end - chunk_len * self._t,
            "end": self._mid_start + mid_tokens,
            "commit": False, "q_sum": self._query_sums(),
        }

    def graph_key(self):
        """What a captured forward (model/graphs.py) depends on besides its inputs: this cache's buffers and
        the attended span. While the key stays the same, a replay computes what an eager forward would."""
        c = self._chunk
        if c is None or self.k is None:
            return None
        return (self.k[0].data_ptr(), self._static["rope"][0].data_ptr(), c["start"], c["end"], c["len"])

    def _static_rope(self, rot: Rotation) -> Rotation:
        """The chunk's RoPE, copied into buffers that live as long as the cache: a captured forward
        reads it at fixed addresses."""
        n, bufs = rot.cos.shape[0], self._static.get("rope")
        if bufs is None or bufs[0].shape[0] < n or bufs[0].dtype != rot.cos.dtype:
            cap = self.geo.chunk_frames * self._t
            bufs = self._static["rope"] = tuple(r.new_empty(cap, *r.shape[1:]) for r in (rot.cos, rot.sin))
        out = object.__new__(Rotation)
        out.cos, out.sin = bufs[0][:n].copy_(rot.cos), bufs[1][:n].copy_(rot.sin)
        return out

    def _query_sums(self) -> torch.Tensor:
        """(layers, heads, head_dim): each forward writes its per-layer query sums here (the commit
        pass's are the ones kept), at a fixed address."""
        if "q_sum" not in self._static:
            g = self.geo
            self._static["q_sum"] = torch.zeros(g.layers, g.heads, g.head_dim, device=self.device)
        return self._static["q_sum"]

    def _upload(self, t: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the model's device without a host sync (pinned, asynchronous copy)."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def _rerotate_recent(self, new_pos: list[float]) -> None:
        """Give each recent frame one more rotation by (new - old) position: once per chunk."""
        deltas = [n - o for n, o in zip(new_pos, self.recent_pos)]
        if not any(deltas):
            return
        t = self._t
        delta = self._upload(torch.tensor(deltas, dtype=torch.float64)).repeat_interleave(t)
        rot = Rotation.time_shift(delta, self.geo.head_dim, self.theta).to(self.device)
        a, b = self._recent_start, self._recent_start + self.recent_count * t
        for kb in self.k:
            kb[:, a:b] = rot(kb[:, a:b])
        self.recent_pos = list(new_pos)

    # ------------------------------------------------------------------ AttentionContext
    @property
    def rope(self) -> Rotation:
        return self._chunk["rot"]

    @torch.compiler.disable
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_raw: torch.Tensor) -> torch.Tensor:
        c = self._chunk
        c["q_sum"][layer] = q_raw.float().mean(1).sum(0)      # every pass, so a captured pass does it too
        s, e, cur_end = c["start"], c["end"], self._cur_end
        self.k[layer][:, s:cur_end] = k
        self.v[layer][:, s:cur_end] = v
        out = F.scaled_dot_product_attention(q.transpose(1, 2), self.k[layer][:, s:e].transpose(1, 2),
                                             self.v[layer][:, s:e].transpose(1, 2))
        return out.transpose(1, 2)

    def begin_commit(self) -> None:
        """The next forward is the t=0 pass of the clean chunk: its K/V are the ones to keep."""
        self._chunk["commit"] = True

    # ------------------------------------------------------------------ commit
    def commit(self, latent: torch.Tensor | None = None, text_kv=None) -> None:
        """Move the committed chunk from the current slot into sink / recent; age recent into mid.

        latent (B, C, F, H, W): the clean chunk, needed by the lr/hr compressors."""
        c = self._chunk
        if not c or not c["commit"]:
            raise RuntimeError("commit() needs a t=0 forward after begin_commit()")
        n, t = c["len"], self._t
        self.mean_q = c["q_sum"] / self.geo.batch
        to_sink = 0 if self.cfg.mode == "full" else min(n, self.cfg.sink_frames - self.sink_count)
        if self.sink_count + to_sink > self.sink_cap:
            raise RuntimeError("sink out of room: setup() was given a shorter total length")
        if to_sink:
            if self.sink_count == 0:
                self.sink_first = self.frames_done
            dst = self._cur_end + self.sink_count * t
            self._copy_current(c["start"], dst, to_sink * t)
            self.sink_count += to_sink
        rest = n - to_sink
        if rest:
            if self.recent_count == 0:
                self.recent_first = self.frames_done + to_sink
            self._make_room(rest, latent, text_kv)
            self._copy_current(c["start"] + to_sink * t, self._mid_start, rest * t)
            self.recent_pos += [c["pos"] + to_sink + i for i in range(rest)]
            self.recent_count += rest
            if self.cfg.mode in ("lr", "hr", "hr_lr") and latent is not None:
                fresh = latent[:, :, to_sink:].detach()
                self.pending_latent = fresh if self.pending_latent is None else torch.cat([self.pending_latent, fresh], 2)
        self.frames_done += n
        self._chunk = None

    def _copy_current(self, src: int, dst: int, tokens: int) -> None:
        for kb, vb in zip(self.k, self.v):
            kb[:, dst:dst + tokens] = kb[:, src:src + tokens]
            vb[:, dst:dst + tokens] = vb[:, src:src + tokens]

    def _make_room(self, incoming: int, latent, text_kv) -> None:
        """Evict whole blocks of the oldest recent frames until `incoming` frames fit."""
        cap = self._recent_cap
        if self.cfg.mode == "full":
            if self.recent_count + incoming > cap:
                raise RuntimeError("full cache out of room: setup() was given a shorter total length")
            return
        bf = self.cfg.block_frames
        while self.recent_count + incoming > cap:
            n = min(bf, self.recent_count)
            if self.cfg.compresses and self.cfg.mid_blocks:
                self._compress_oldest(n, text_kv)
            self._drop_oldest(n)

    def _drop_oldest(self, n: int) -> None:
        """Shift the remaining recent frames to the front of the recent region."""
        t, a = self._t, self._recent_start
        keep = (self.recent_count - n) * t
        for kb, vb in zip(self.k, self.v):
            kb[:, a:a + keep] = kb[:, a + n * t:a + n * t + keep].clone()
            vb[:, a:a + keep] = vb[:, a + n * t:a + n * t + keep].clone()
        self.recent_pos = self.recent_pos[n:]
        self.recent_count -= n
        self.recent_first += n
        if self.pending_latent is not None:
            self.pending_latent = self.pending_latent[:, :, n:]

    # ------------------------------------------------------------------ introspection
    def timeline(self) -> dict:
        """What the UI draws: partitions in absolute frames and the blocks the last chunk attended."""
        return {
            "frames_done": self.frames_done,
            "sink": [self.sink_first, self.sink_first + self.sink_count],
            "recent": [self.recent_first, self.recent_first + self.recent_count],
            "mid": [[b.index, b.first_frame, b.frames] for b in self.blocks],
            "selected": [b.index for b in self.selected],
        }
