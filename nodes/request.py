"""The inputs of a sampler run, checked, with messages that name the input and the fix."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from ..packforcing_core.schedule import FlowSchedule
from ..packforcing_core.state import model_fingerprint
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

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def target(self) -> int:
        return self.spec.frames + self.new_frames

    def key(self, dit, compressor_path: str | None) -> str:
        """Identity of this run's result: every input that changes it, weights and prompt included."""
        return digest({"input": self.spec.key, "model": model_fingerprint(dit), "prompt": _tensor_digest(self.prompt),
                       "size": [self.width, self.height], "frames": self.new_frames, "seed": self.seed,
                       "steps": list(self.schedule.steps), "shift": self.schedule.shift,
                       "chunk": self.chunk_frames, "compressor": os.path.basename(compressor_path or "")})


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:20] + str(tuple(t.shape))


def prompt_tensor(positive) -> torch.Tensor:
    """The (B, n, width) embeddings of a native CONDITIONING [[tensor, dict]]."""
    if not isinstance(positive, (list, tuple)) or not positive or not torch.is_tensor(positive[0][0]):
        raise InputError("positive", "expected a CONDITIONING from CLIPTextEncode or Load Prompt Embeddings")
    if len(positive) > 1:
        raise InputError("positive", f"got {len(positive)} conditionings (Conditioning Combine / Concat?): "
                                     "PackForcing takes one prompt per sampler; chain samplers to change prompts")
    cond = positive[0][0]
    if cond.dim() != 3:
        raise InputError("positive", f"expected prompt embeddings (batch, tokens, width), got {tuple(cond.shape)}")
    return cond.detach().float().cpu()


def _schedule(steps: str, shift: float) -> FlowSchedule:
    parsed = parse_steps(steps)
    try:
        return FlowSchedule(shift=shift, steps=parsed)
    except ValueError as e:
        raise InputError("shift" if "shift" in str(e) else "steps", str(e)) from e


def check_request(spec: PackedCacheSpec, positive, width: int, height: int, length: int, seed: int,
                  steps: str, shift: float, chunk_frames: int) -> Request:
    for name, value in (("width", width), ("height", height)):
        if err := size_error(value):
            raise InputError(name, err)
    if spec.started and (spec.width, spec.height, spec.chunk_frames) != (width, height, chunk_frames):
        raise InputError("cache", f"this PACKED_CACHE continues {spec.describe()}; set width {spec.width}, height "
                                  f"{spec.height} and chunk_frames {spec.chunk_frames} (got {width}x{height}, "
                                  f"chunks of {chunk_frames}) or start a new video from a PackedCache node")
    schedule = _schedule(steps, shift)
    frames = new_latent_frames(length, chunk_frames, first_segment=not spec.started)
    return Request(spec, prompt_tensor(positive), width, height, frames, seed, schedule, chunk_frames)
