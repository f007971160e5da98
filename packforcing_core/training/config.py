"""A compressor-training run's settings (TrainConfig), checked, and the error every training step
raises when a run cannot start or continue."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..cache.config import CacheConfig

BRANCHES = ("hr", "lr", "hr_lr")


class TrainingError(ValueError):
    """A training run that cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    branches: str = "hr"             # hr | lr | hr_lr (the paper's dual branch)
    steps: int = 2000                # optimizer steps
    batch: int = 4                   # clips per step (accumulated one at a time)
    lr: float = 1e-4
    warmup: int = 100                # steps of linear warm-up
    min_lr: float = 0.1              # final LR as a fraction of lr (cosine decay)
    weight_decay: float = 0.01
    clip_grad: float = 1.0           # max gradient norm
    eval_every: int = 100            # steps between held-out evaluations
    save_every: int = 100            # steps between checkpoints
    grad_checkpointing: bool = False
    seed: int = 0
    chunk_frames: int = 4
    cache: CacheConfig = field(default_factory=CacheConfig)   # sizes the compressor is trained for
    shift: float = 5.0
    denoise_steps: tuple[int, ...] = (1000, 750, 500, 250)

    def __post_init__(self):
        if self.branches not in BRANCHES:
            raise TrainingError(f"branches '{self.branches}' unknown: choose hr, lr or hr_lr")
        for name in ("steps", "batch", "eval_every", "save_every", "chunk_frames"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        finite = all(math.isfinite(getattr(self, n)) for n in ("lr", "min_lr", "weight_decay", "clip_grad", "shift"))
        if not (finite and self.lr > 0 and 0 <= self.min_lr <= 1 and self.warmup >= 0 and self.clip_grad > 0
                and self.weight_decay >= 0 and self.shift > 0):
            raise TrainingError("need finite lr > 0, 0 <= min_lr <= 1, warmup >= 0, clip_grad > 0, "
                                "weight_decay >= 0 and shift > 0")

    @property
    def inference_mode(self) -> str:
        """The cache mode the trained file is used in (an LR-only file carries a zero HR branch)."""
        return "hr" if self.branches == "hr" else "hr_lr"

    def identity(self) -> dict:
        """What a checkpoint must agree on to continue (frequencies of evals and saves may change)."""
        d = dataclasses.asdict(self)
        d.pop("eval_every"), d.pop("save_every")
        d["cache"] = self.cache.to_dict()
        d["denoise_steps"] = list(self.denoise_steps)
        return d
