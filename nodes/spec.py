"""What flows between the nodes, and the arithmetic of sizes and lengths. No ComfyUI imports here.

Units: the DiT works on latent frames; 1 latent frame = 4 video frames = 0.25 s at 16 fps.
A new video of T latent frames decodes to 4T-3 frames (the first latent frame is one frame);
continuing a video by N latent frames adds 4N frames.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ..packforcing_core.cache.config import CacheConfig, latent_frames_in

FPS = 16
FRAMES_PER_LATENT = 4
SECONDS_PER_LATENT = FRAMES_PER_LATENT / FPS   # 0.25 s
PIXELS_PER_TOKEN = 16                          # VAE stride 8 x patch 2


class InputError(ValueError):
    """A node input that cannot work; the message names the input and the fix."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.input_name = name


@dataclass(frozen=True)
class PackedCacheSpec:
    """The PACKED_CACHE passed between nodes: a configuration plus, after a sampler, a state file.

    It never holds tensors: the cache contents of a finished run live in `state_path` (written by
    packforcing_core.sampling.state.save_state), so a cached node output pins no GPU memory.
    `key` identifies the content (a hash chain over every input that produced it): it names resume
    files deterministically.
    """
    config: CacheConfig
    key: str
    state_path: str | None = None      # None: a new video
    frames: int = 0                    # latent frames generated so far
    width: int = 0
    height: int = 0
    chunk_frames: int = 0
    chunks: int = 0                    # generated chunks so far (start frames are not a chunk)
    resized_from: CacheConfig | None = None   # set by "Set PackedCache Sizes" on a started video

    @property
    def started(self) -> bool:
        return self.state_path is not None

    def describe(self) -> str:
        if not self.started:
            return f"a new {self.config.mode} cache"
        return (f"a {self.config.mode} cache holding {self.frames} latent frames "
                f"({video_frames(self.frames)} frames) of a {self.width}x{self.height} video in chunks of "
                f"{self.chunk_frames}")


def digest(obj) -> str:
    """Stable short hash of JSON-able data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def new_cache_spec(config: CacheConfig) -> PackedCacheSpec:
    return PackedCacheSpec(config=config, key=digest({"cache": config.to_dict()}))


def with_sizes(spec: PackedCacheSpec, **sizes) -> PackedCacheSpec:
    """The same video with other cache sizes (applied by the next sampler when a video is under way)."""
    config = dataclasses.replace(spec.config, **sizes)
    if config == spec.config:
        return spec
    key = digest({"resize": spec.key, "cache": config.to_dict()})
    resized_from = (spec.resized_from or spec.config) if spec.started else None
    return dataclasses.replace(spec, config=config, key=key, resized_from=resized_from)


# ----------------------------------------------------------------------------- time units

def seconds_to_latent_frames(name: str, seconds: float) -> int:
    """The core's rule (and words), shared with the CLI's `--sink 1s`."""
    try:
        return latent_frames_in(seconds)
    except ValueError as e:
        raise InputError(name, str(e)) from None


def video_frames(latent_frames: int, first_segment: bool = True) -> int:
    if latent_frames == 0:
        return 0
    return FRAMES_PER_LATENT * latent_frames - (FRAMES_PER_LATENT - 1 if first_segment else 0)


def latent_frames_for(length: int, first_segment: bool) -> float:
    """Latent frames that give `length` video frames (fractional when none does)."""
    extra = FRAMES_PER_LATENT - 1 if first_segment else 0
    return (length + extra) / FRAMES_PER_LATENT


def valid_lengths_near(length: int, chunk: int, first_segment: bool) -> tuple[int, int | None]:
    """The nearest valid lengths below (or the smallest) and above `length`."""
    step = chunk * FRAMES_PER_LATENT
    smallest = video_frames(chunk, first_segment)
    below = smallest + ((max(length, smallest) - smallest) // step) * step
    above = below + step
    return below, (above if below < length else None)


def _length_hint(length: int, chunk: int, first_segment: bool) -> str:
    below, above = valid_lengths_near(length, chunk, first_segment)
    near = [v for v in (below, above) if v is not None and v != length]
    seconds = lambda v: f"{v} ({v / FPS:.2f} s)"
    return " or ".join(seconds(v) for v in near)


def new_latent_frames(length: int, chunk: int, first_segment: bool) -> int:
    """Latent frames a sampler adds for `length` video frames; refuses lengths that do not fit."""
    if chunk < 1:
        raise InputError("chunk_frames", f"must be >= 1, got {chunk}")
    t = latent_frames_for(length, first_segment)
    if length >= 1 and t == int(t) and int(t) % chunk == 0:
        return int(t)
    if first_segment:
        rule = (f"a new video of T latent frames has 4T-3 frames and T must be a multiple of the chunk "
                f"length ({chunk} latent frames)")
    else:
        rule = (f"continuing a video adds 4 frames per latent frame, in whole chunks of {chunk} latent frames "
                f"({chunk * FRAMES_PER_LATENT} frames)")
    raise InputError("length", f"{length} frames do not fit: {rule}. Nearest valid lengths: "
                               f"{_length_hint(length, chunk, first_segment)}")


def static_length_error(length: int, chunk: int) -> str | None:
    """Before the run it is not known whether the cache is new or a start is connected: accept lengths
    valid any way (with start frames every 4T-3 can be valid; the run checks the rest)."""
    if chunk < 1:
        return f"chunk_frames must be >= 1, got {chunk}"
    if length >= 5 and (length - 1) % FRAMES_PER_LATENT == 0:
        return None
    try:
        new_latent_frames(length, chunk, True)
        return None
    except InputError as first:
        try:
            new_latent_frames(length, chunk, False)
            return None
        except InputError:
            return (f"{first} (new video); when continuing a video: "
                    f"{_length_hint(length, chunk, False)}")


def range_error(name: str, value, lo: int, hi: int) -> str | None:
    """For inputs whose validate_inputs switches off ComfyUI's own type and min/max check."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name}: {value!r} is not a whole number"
    if not lo <= value <= hi:
        return f"{name}: {value} is out of range [{lo}, {hi}]"
    return None


def size_error(value: int) -> str | None:
    if value < PIXELS_PER_TOKEN or value % PIXELS_PER_TOKEN:
        lo = max(PIXELS_PER_TOKEN, value - value % PIXELS_PER_TOKEN)
        return (f"{value} is not a multiple of {PIXELS_PER_TOKEN} (VAE stride 8 x patch 2): "
                f"use {lo} or {lo + PIXELS_PER_TOKEN}")
    return None


def parse_steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in str(text).replace(" ", "").split(",") if s)
    except ValueError:
        steps = ()
    if not steps:
        raise InputError("steps", f"'{text}' is not a comma-separated list of timesteps "
                                  "(e.g. 1000,750,500,250 for the Self-Forcing checkpoints)")
    return steps
