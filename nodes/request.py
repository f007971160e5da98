"""The inputs of a sampler run, checked, with messages that name the input and the fix."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from ..packforcing_core.sampling.schedule import FlowSchedule
from ..packforcing_core.sampling.state import model_fingerprint
from .directing import digest_fields, scheduled_prompts, start_latent as start_of
from .spec import InputError, PackedCacheSpec, digest, new_latent_frames, parse_steps, size_error


@dataclass(frozen=True)
class Request:
    """The inputs of one sampler run, checked."""
    spec: PackedCacheSpec
    prompt: torch.Tensor          # (B, n, text_dim) float32 on the CPU
    width: int
    height: int
    new_frames: int               # latent frames this run adds
    seed: int
    schedule: FlowSchedule
    chunk_frames: int
    prompts: tuple = ()           # TimedPrompt entries (one without a prompt schedule)
    start: torch.Tensor | None = None   # normalised start latent (B, 16, S, h, w), part of new_frames

    @property
    def start_frames(self) -> int:
        return 0 if self.start is None else self.start.shape[2]

    @property
    def chunks(self) -> int:
        """Chunks this run generates."""
        return (self.new_frames - self.start_frames) // self.chunk_frames

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def target(self) -> int:
        return self.spec.frames + self.new_frames

    def key(self, dit, compressor_path: str | None) -> str:
        """Identity of this run's result: every input that changes it, weights and prompt included."""
        prompts = [[_tensor_digest(p.embeds)] + digest_fields(p) for p in self.prompts]
        return digest(self._inputs(dit, compressor_path) | {"prompts": prompts})

    def resume_key(self, dit, compressor_path: str | None) -> str:
        """Names the progress file of an unfinished run: every input but the prompt schedule after its
        first prompt. The file records the schedule it was made with; a resume must keep the switches the
        saved chunks went through, and may change the ones still to come (state.check_schedule)."""
        return digest(self._inputs(dit, compressor_path) | {"resume": True})

    def _inputs(self, dit, compressor_path: str | None) -> dict:
        start = None if self.start is None else _tensor_digest(self.start)
        return {"input": self.spec.key, "model": model_fingerprint(dit), "prompt": _tensor_digest(self.prompt),
                "start": start, "size": [self.width, self.height], "frames": self.new_frames, "seed": self.seed,
                "steps": list(self.schedule.steps), "shift": self.schedule.shift, "chunk": self.chunk_frames,
                "compressor": os.path.basename(compressor_path or "")}


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:20] + str(tuple(t.shape))


def _schedule(steps: str, shift: float) -> FlowSchedule:
    parsed = parse_steps(steps)
    try:
        return FlowSchedule(shift=shift, steps=parsed)
    except ValueError as e:
        raise InputError("shift" if "shift" in str(e) else "steps", str(e)) from e


def check_request(spec: PackedCacheSpec, positive, width: int, height: int, length: int, seed: int,
                  steps: str, shift: float, chunk_frames: int, start_image=None, start_latent=None,
                  vae=None) -> Request:
    for name, value in (("width", width), ("height", height)):
        if err := size_error(value):
            raise InputError(name, err)
    if spec.started and (spec.width, spec.height, spec.chunk_frames) != (width, height, chunk_frames):
        raise InputError("cache", f"this PACKED_CACHE continues {spec.describe()}; set width {spec.width}, height "
                                  f"{spec.height} and chunk_frames {spec.chunk_frames} (got {width}x{height}, "
                                  f"chunks of {chunk_frames}) or start a new video from a PackedCache node")
    schedule = _schedule(steps, shift)
    prompts = scheduled_prompts(positive)
    batch = prompts[0].embeds.shape[0]
    start = None
    if start_image is not None or start_latent is not None:
        if spec.started:
            raise InputError("start_image" if start_image is not None else "start_latent",
                             "start frames begin a new video, but this PACKED_CACHE continues one: connect a new "
                             "PackedCache, or disconnect the start")
        start = start_of(start_image, start_latent, vae, width, height, batch)
    if start is None:
        frames = new_latent_frames(length, chunk_frames, first_segment=not spec.started)
    else:
        frames = start.shape[2] + new_latent_frames_after_start(length, start.shape[2], chunk_frames)
    return Request(spec, prompts[0].embeds, width, height, frames, seed, schedule, chunk_frames, tuple(prompts), start)


def new_latent_frames_after_start(length: int, start: int, chunk: int) -> int:
    """Latent frames generated after `start` start frames for a video of `length` frames in all
    (4T-3 frames for T latent frames, start included)."""
    total = (length + 3) / 4
    if total == int(total) and (int(total) - start) > 0 and (int(total) - start) % chunk == 0:
        return int(total) - start
    step = 4 * chunk
    first = 4 * (start + chunk) - 3
    below = first + max(0, (length - first) // step) * step
    near = [v for v in (below, below + step) if v != length]
    raise InputError("length", f"{length} frames do not fit: with {start} start latent frame(s) "
                               f"({4 * start - 3} frames) the video has {4 * start - 3} + 4 x (a multiple of "
                               f"{chunk}) frames, start included. Nearest valid lengths: "
                               f"{' or '.join(f'{v} ({v / 16:.2f} s)' for v in near)}")
