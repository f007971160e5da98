"""Few-step flow-matching schedule of the Self-Forcing (DMD) checkpoints.

Flow matching: x_t = (1 - sigma) x0 + sigma eps, the model predicts v = eps - x0, t = 1000 sigma.
The training table has 1000 sigmas 1, 0.999, ..., 0.001, each warped by the shift s:
sigma' = s sigma / (1 + (s - 1) sigma). The few sampling steps are picked from that table
("warped"): step 1000 -> 1000, 750 -> 937.5, 500 -> 833.33, 250 -> 625 at s = 5.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

NUM_TRAIN_TIMESTEPS = 1000
SELF_FORCING_STEPS = (1000, 750, 500, 250)


def shift_sigma(sigma, shift: float):
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass
class FlowSchedule:
    shift: float = 5.0
    steps: tuple[int, ...] = SELF_FORCING_STEPS
    timesteps: torch.Tensor = field(init=False)  # the warped t per step, float64

    def __post_init__(self):
        steps = tuple(int(s) for s in self.steps)
        if not steps or any(not 0 < s <= NUM_TRAIN_TIMESTEPS for s in steps):
            raise ValueError(f"steps must lie in 1..{NUM_TRAIN_TIMESTEPS}, got {steps}")
        if any(a <= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must be strictly decreasing, got {steps}")
        if not 0 < self.shift < float("inf"):       # NaN fails too
            raise ValueError(f"shift must be a finite number > 0, got {self.shift}")
        self.steps = steps
        table = 1.0 - torch.arange(NUM_TRAIN_TIMESTEPS, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
        table = shift_sigma(table, self.shift) * NUM_TRAIN_TIMESTEPS
        self.timesteps = table[[NUM_TRAIN_TIMESTEPS - s for s in steps]]

    def sigma(self, t) -> float:
        return float(t) / NUM_TRAIN_TIMESTEPS

    def to_x0(self, v: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """x0 = x_t - sigma v, in float64 like the reference, returned in float32."""
        return (x_t.double() - self.sigma(t) * v.double()).float()

    def renoise(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        s = self.sigma(t)
        return ((1 - s) * x0.double() + s * eps.double()).float()
