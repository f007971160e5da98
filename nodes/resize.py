"""Change the sizes of the PackedCache of a video under way (Set PackedCache Sizes -> next sampler).
The re-packing itself is `PackedCache.resized`; this only maps its refusals onto the node's inputs."""
from __future__ import annotations

from ..packforcing_core.cache.config import CacheConfig
from ..packforcing_core.sampling.sampler import Generation
from .spec import InputError


def apply_sizes(gen: Generation, config: CacheConfig, compressor, text_kv) -> Generation:
    if gen.cache.cfg.mode == "full":      # full keeps everything: sizes do not apply
        gen.cache.cfg = config.with_chunk(gen.cache.cfg.block_frames)
        return gen
    try:
        gen.cache = gen.cache.resized(config, text_kv)
    except ValueError as e:
        raise InputError("sink_seconds" if "sink" in str(e) else "mode", str(e)) from e
    return gen
