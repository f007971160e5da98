"""Configuration and memory plan of the PackedCache (`packed.py`): sizes, the geometry the buffers
are built for, and the bytes a configuration needs before anything is allocated."""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict, replace

import torch

MODES = ("full", "none", "kv_pool", "lr", "hr", "hr_lr")
SELECTIONS = ("affinity", "recency")
SECONDS_PER_LATENT = 0.25      # 1 latent frame = 4 video frames at 16 fps


def latent_frames_in(seconds: float) -> int:
    """Sink / recent sizes given in seconds (the PackedCache node, the CLI's `--sink 1s`) in latent
    frames; refuses a time that is not a whole number of latent frames."""
    if not 0 <= seconds < float("inf"):             # NaN fails too
        raise ValueError(f"{seconds} s: use a number of seconds >= 0 (1 latent frame = {SECONDS_PER_LATENT} s)")
    frames = round(seconds / SECONDS_PER_LATENT)
    if abs(frames * SECONDS_PER_LATENT - seconds) > 1e-6:
        raise ValueError(f"{seconds} s is not a whole number of latent frames: use a multiple of "
                         f"{SECONDS_PER_LATENT} s (1 latent frame = 4 frames at 16 fps)")
    return frames


@dataclass(frozen=True)
class CacheConfig:
    """Sizes in latent frames (1 latent frame = 4 video frames) and mid blocks."""
    mode: str = "kv_pool"
    sink_frames: int = 4
    recent_frames: int = 4
    mid_blocks: int = 16          # capacity of the compressed bank, in blocks
    top_k: int = 14               # mid blocks attended by each chunk
    block_frames: int = 0         # latent frames per mid block; 0 = the sampler's chunk length
    selection: str = "affinity"   # affinity: query-key score; recency: the newest blocks
    rope_adjust: bool = True      # re-pack positions (False: absolute positions, gaps stay)
    bank_device: str = "cpu"      # "cpu": the mid bank waits in host memory, only the top-k go to the GPU;
                                  # "same": on the model's device

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"cache mode '{self.mode}' unknown; choose one of {', '.join(MODES)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection '{self.selection}' unknown; choose one of {', '.join(SELECTIONS)}")
        for name in ("sink_frames", "recent_frames", "mid_blocks", "top_k", "block_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mode not in ("full",) and self.recent_frames < 1:
            raise ValueError("recent_frames must be >= 1: the chunk being generated needs recent context")
        if self.bank_device not in ("same", "cpu"):
            raise ValueError(f"bank_device must be 'same' or 'cpu', got '{self.bank_device}'")

    @property
    def compresses(self) -> bool:
        return self.mode not in ("full", "none")

    def with_chunk(self, chunk_frames: int) -> "CacheConfig":
        return self if self.block_frames else replace(self, block_frames=chunk_frames)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Geometry:
    """What the buffers are sized for: model, resolution, chunk length."""
    layers: int
    heads: int
    head_dim: int
    rows: int          # tokens per latent frame = rows * cols
    cols: int
    chunk_frames: int
    batch: int = 1

    @property
    def frame_tokens(self) -> int:
        return self.rows * self.cols

    @property
    def mid_rows(self) -> int:     # compressed grid: time /2, space /4 in tokens (= /8 in latent)
        return math.ceil(self.rows / 4)

    @property
    def mid_cols(self) -> int:
        return math.ceil(self.cols / 4)

    def block_tokens(self, block_frames: int) -> int:
        return math.ceil(block_frames / 2) * self.mid_rows * self.mid_cols


def recent_capacity(cfg: CacheConfig, chunk_frames: int) -> int:
    """Frames the recent region holds. A committed chunk must fit after evicting (whole blocks of)
    the oldest frames, so it is at least one chunk; then `recent_frames` - chunk < recent <= capacity."""
    return max(cfg.recent_frames, chunk_frames)


def plan(cfg: CacheConfig, geo: Geometry, dtype_bytes: int = 2, total_frames: int | None = None) -> dict:
    """Memory and attention budget of a configuration, before anything is allocated.

    `full` depends on the video length (`total_frames`); every other mode is bounded. A sink longer
    than the video holds only the video (PackedCache grows it when a continuation needs more).
    Returns token counts per layer and bytes (K and V, all layers, batch included).
    """
    cfg = cfg.with_chunk(geo.chunk_frames)
    t = geo.frame_tokens
    per_token = 2 * geo.layers * geo.batch * geo.heads * geo.head_dim * dtype_bytes
    block = geo.block_tokens(cfg.block_frames)
    if cfg.mode == "full":
        hist_frames = total_frames or 0
        buffer_tokens = geo.chunk_frames * t + hist_frames * t
        bank_tokens, attended, sink = 0, buffer_tokens, 0
    else:
        sel = cfg.top_k if cfg.compresses else 0
        sel = min(sel, cfg.mid_blocks)
        sink = cfg.sink_frames if total_frames is None else min(cfg.sink_frames, total_frames)
        full_frames = geo.chunk_frames + sink + recent_capacity(cfg, geo.chunk_frames)
        buffer_tokens = full_frames * t + sel * block
        bank_tokens = cfg.mid_blocks * block if cfg.compresses else 0
        attended = buffer_tokens
    return {
        "buffer_tokens": buffer_tokens,          # per layer, on the model's device
        "bank_tokens": bank_tokens,              # per layer, on bank_device
        "attended_tokens": attended,             # most keys one query sees, per layer
        "block_tokens": block,
        "sink_frames": sink,                     # frames the buffer's sink region holds
        "buffer_bytes": buffer_tokens * per_token,
        "bank_bytes": bank_tokens * per_token,
        "device_bytes": buffer_tokens * per_token + (bank_tokens * per_token if cfg.bank_device == "same" else 0),
        "total_bytes": (buffer_tokens + bank_tokens) * per_token,
    }


@dataclass
class MidBlock:
    """One compressed block of the mid bank."""
    index: int                 # order of creation (= time order)
    first_frame: int           # absolute latent frame where its source began
    frames: int                # source latent frames
    tokens: int                # compressed tokens actually used
    offsets: torch.Tensor      # (tokens, 3) positions relative to (block start, 0, 0)
    mean_k: torch.Tensor       # (layers, heads, head_dim) float32, for top-k affinity
    slot: int = -1             # slot in the bank tensors
