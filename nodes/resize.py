"""Change the sizes of the PackedCache of a video under way (Set PackedCache Sizes -> next sampler).

WORKAROUND: packforcing_core has no public way to re-size a PackedCache yet (requested as
`PackedCache.resize(cfg, text_kv)`, see the pack's report). Until it has, this module re-packs the
history with the cache's own eviction and copies the partitions into a cache of the new sizes:
  recent  shrinking: the oldest frames beyond the new size are evicted the usual way (compressed
          into mid, or dropped by `none`); growing: room for more frames from now on.
  mid     the newest blocks that fit the new capacity are kept; top-k applies from the next chunk.
  sink    cannot change once a video has started (its frames are the global anchor at positions 0..).
"""
from __future__ import annotations

import dataclasses

from ..packforcing_core.cache import CacheConfig, PackedCache
from ..packforcing_core.sampler import Generation
from .spec import InputError


def apply_sizes(gen: Generation, config: CacheConfig, compressor, text_kv) -> Generation:
    old = gen.cache
    new_cfg = config.with_chunk(old.cfg.block_frames)
    if new_cfg == old.cfg:
        return gen
    if new_cfg.sink_frames != old.cfg.sink_frames and old.cfg.mode != "full":
        raise InputError("sink_seconds", f"the sink of a video under way cannot change (it holds the first "
                                         f"{old.sink_count} latent frames): keep {old.cfg.sink_frames / 4} s, or "
                                         "start a new video")
    if old.cfg.mode == "full":      # full keeps everything: sizes do not apply
        old.cfg = new_cfg
        return gen
    _evict_to(old, new_cfg.recent_frames, text_kv)
    new = PackedCache(new_cfg, compressor)
    new.setup(gen.model, gen.latent_h, gen.latent_w, gen.chunk_frames, gen.batch, total_frames=old.frames_done)
    _copy_history(old, new)
    _copy_bank(old, new)
    gen.cache = new
    return gen


def _evict_to(cache: PackedCache, recent_frames: int, text_kv) -> None:
    """Let the cache evict its oldest recent frames (compress into mid / drop) down to the new size."""
    cache.cfg = dataclasses.replace(cache.cfg, recent_frames=recent_frames)
    cache._make_room(0, None, text_kv)


def _copy_history(old: PackedCache, new: PackedCache) -> None:
    """Sink and recent sit at the same offsets in both buffers (same chunk and sink sizes)."""
    a, b = old._cur_end, old._mid_start
    for src, dst in ((old.k, new.k), (old.v, new.v)):
        for s, d in zip(src, dst):
            d[:, a:b] = s[:, a:b]
    for name in ("frames_done", "sink_count", "recent_first", "recent_count", "next_block",
                 "mean_q", "pending_latent"):
        setattr(new, name, getattr(old, name))
    new.recent_pos = list(old.recent_pos)


def _copy_bank(old: PackedCache, new: PackedCache) -> None:
    if not new.cfg.compresses or new.cfg.mid_blocks == 0:
        return
    size = new.geo.block_tokens(new.cfg.block_frames)
    kept = old.blocks[-new.cfg.mid_blocks:]
    for j, blk in enumerate(kept):
        for src, dst in ((old.bank_k, new.bank_k), (old.bank_v, new.bank_v)):
            for s, d in zip(src, dst):
                d[:, j * size:j * size + blk.tokens] = s[:, blk.slot:blk.slot + blk.tokens].to(d.device)
    new.blocks = [dataclasses.replace(blk, slot=j * size) for j, blk in enumerate(kept)]
