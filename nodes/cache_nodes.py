"""PackedCache nodes: choose the partitions (sink / mid / recent) and the mid compression."""
from __future__ import annotations

from comfy_api.latest import io

from ..packforcing_core.cache.config import MODES, SELECTIONS, CacheConfig
from .common import CATEGORY, PackedCacheType, check_choice
from .spec import FRAMES_PER_LATENT, SECONDS_PER_LATENT, InputError, new_cache_spec, seconds_to_latent_frames, \
    with_sizes

MODE_HELP = ("full: keep everything (the reference; memory grows with the video). none: sink + recent only, "
             "older frames are dropped. kv_pool: training-free, mid K/V pooled 32x. lr: training-free "
             "Pool > VAE > Patch branch (needs the VAE on the sampler). hr / hr_lr: the paper's trained "
             "compressor (needs compressor weights in the model loader).")
BANK = {"gpu": "same", "cpu": "cpu"}
UNIT = f"1 latent frame = {FRAMES_PER_LATENT} frames = {SECONDS_PER_LATENT} s at 16 fps"


def _seconds(name: str, label: str, default: float, help_: str) -> io.Float.Input:
    frames = round(default / SECONDS_PER_LATENT)
    return io.Float.Input(name, display_name=f"{label} (s; x4 = latent frames)", default=default, min=0.0,
                          max=600.0, step=SECONDS_PER_LATENT,
                          tooltip=f"{help_} In seconds of video: {UNIT}; default {default} s = {frames} latent frames.")


def _size_inputs() -> list:
    return [
        _seconds("sink_seconds", "sink", 1.0, "Sink: the first frames, kept at full resolution forever "
                                             "(the global anchor)."),
        _seconds("recent_seconds", "recent", 1.0, "Recent: the last frames at full resolution (local "
                                                 "coherence); when they age they move to mid. At least 1 latent frame."),
        io.Int.Input("mid_blocks", display_name="mid capacity (blocks)", default=16, min=0, max=4096,
                     tooltip="How many compressed blocks the mid bank keeps (one block = one chunk, ~32x fewer "
                             "tokens). The oldest block is dropped when it is full. Ignored by full and none."),
        io.Int.Input("top_k", default=14, min=0, max=4096,
                     tooltip="Mid blocks each chunk attends to (dynamic top-k), which fixes the attention budget. "
                             "Ignored by full and none."),
    ]


def _sizes(sink_seconds: float, recent_seconds: float, mid_blocks: int, top_k: int) -> dict:
    return {"sink_frames": seconds_to_latent_frames("sink_seconds", sink_seconds),
            "recent_frames": seconds_to_latent_frames("recent_seconds", recent_seconds),
            "mid_blocks": mid_blocks, "top_k": top_k}


def _config(**fields) -> CacheConfig:
    try:
        return CacheConfig(**fields)
    except ValueError as e:
        name = next((f for f in ("recent_frames", "sink_frames", "mode", "selection") if f in str(e)), "cache")
        raise InputError(name.replace("_frames", "_seconds"), str(e)) from e


class PackedCacheNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingPackedCache",
            display_name="PackedCache",
            category=CATEGORY,
            description="The bounded KV cache of PackForcing: sink + compressed mid (top-k) + recent. "
                        "Reference configuration: kv_pool, sink 1 s, recent 1 s, 16 mid blocks, top-k 14.",
            inputs=[
                io.Combo.Input("mode", options=list(MODES), default="kv_pool", tooltip=MODE_HELP),
                *_size_inputs(),
                io.Combo.Input("selection", options=list(SELECTIONS), default="affinity",
                               tooltip="How the top-k mid blocks are picked: affinity = query-key score of the "
                                       "last chunk (the paper's); recency = the newest blocks."),
                io.Boolean.Input("rope_adjust", default=True,
                                 tooltip="Temporal RoPE adjustment: re-pack positions of the attended history so "
                                         "they stay contiguous and bounded (needed past ~4 minutes). Off = "
                                         "absolute positions with gaps."),
                io.Combo.Input("mid_bank", options=list(BANK), default="cpu",
                               tooltip="Where the compressed mid bank lives: gpu (fast) or cpu (saves VRAM; the "
                                       "top-k blocks are copied to the GPU once per chunk)."),
            ],
            outputs=[PackedCacheType.Output(display_name="cache")],
        )

    @classmethod
    def execute(cls, mode: str, sink_seconds: float, recent_seconds: float, mid_blocks: int, top_k: int,
                selection: str, rope_adjust: bool, mid_bank: str) -> io.NodeOutput:
        for name, value, options in (("mode", mode, MODES), ("selection", selection, SELECTIONS),
                                     ("mid_bank", mid_bank, BANK)):
            check_choice(name, value, options)
        config = _config(mode=mode, selection=selection, rope_adjust=rope_adjust, bank_device=BANK[mid_bank],
                         **_sizes(sink_seconds, recent_seconds, mid_blocks, top_k))
        return io.NodeOutput(new_cache_spec(config))


class SetPackedCacheSizes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingSetCacheSizes",
            display_name="Set PackedCache Sizes",
            category=CATEGORY,
            description="Changes the sink / recent / mid sizes of a PACKED_CACHE between two samplers. On a "
                        "video under way the next sampler re-packs the history: recent frames beyond the new "
                        "size move to mid, mid blocks beyond the new capacity are dropped (oldest first).",
            inputs=[PackedCacheType.Input("cache", tooltip="A PACKED_CACHE from PackedCache or a sampler."),
                    *_size_inputs()],
            outputs=[PackedCacheType.Output(display_name="cache")],
        )

    @classmethod
    def execute(cls, cache, sink_seconds: float, recent_seconds: float, mid_blocks: int,
                top_k: int) -> io.NodeOutput:
        sizes = _sizes(sink_seconds, recent_seconds, mid_blocks, top_k)
        _config(**{**cache.config.to_dict(), **sizes})     # validate with the message naming the input
        return io.NodeOutput(with_sizes(cache, **sizes))
