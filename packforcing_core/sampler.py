"""The autoregressive sampler: chunk by chunk, few-step denoising against the cache, then commit.

For chunk i (latent frames [i*c, i*c + c)):
    x = noise_i[0]
    for step j with timestep t_j:   x0 = x - sigma_j * model(x, t_j | cache)      (float64)
                                    x  = (1 - sigma_{j+1}) x0 + sigma_{j+1} noise_i[j+1]
    model(x0, t = 0 | cache) once more writes the clean chunk's K/V into the cache ("commit").
No classifier-free guidance (the DMD-distilled checkpoints need none).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .cache import PackedCache
from .noise import SeededNoise
from .schedule import FlowSchedule


@dataclass
class ChunkResult:
    index: int
    first_frame: int
    latent: torch.Tensor          # (B, 16, F, h, w) float32, on the CPU
    seconds: float


@dataclass
class Generation:
    """One video being generated: the cache plus everything needed to continue or resume it."""
    model: object
    cache: PackedCache
    latent_h: int
    latent_w: int
    seed: int
    chunk_frames: int = 4
    schedule: FlowSchedule = field(default_factory=FlowSchedule)
    batch: int = 1
    noise: object = None                      # SeededNoise(seed) unless a noise bank is given
    latents: list[torch.Tensor] = field(default_factory=list)   # committed chunks, CPU float32

    def __post_init__(self):
        if self.noise is None:
            self.noise = SeededNoise(self.seed)
        mc = self.model.cfg
        if self.latent_h % mc.patch[1] or self.latent_w % mc.patch[2]:
            raise ValueError(f"latent size {self.latent_h}x{self.latent_w} must be a multiple of the patch "
                             f"{mc.patch[1:]}: use a width and height that are multiples of 16")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")

    @property
    def frames_done(self) -> int:
        return self.cache.frames_done

    @property
    def chunk_index(self) -> int:
        return -(-self.frames_done // self.chunk_frames)

    def latent(self) -> torch.Tensor:
        """All committed latent frames (B, 16, T, h, w)."""
        if not self.latents:
            return torch.zeros(self.batch, self.model.cfg.out_dim, 0, self.latent_h, self.latent_w)
        return torch.cat(self.latents, dim=2)

    def run(self, text_kv, total_frames: int, on_step: Callable[[int, int, int], None] | None = None
            ) -> Iterator[ChunkResult]:
        """Generate chunks until `total_frames` latent frames exist. on_step(chunk, step, steps) runs
        after every forward pass (steps + 1 per chunk); it may raise to cancel."""
        if total_frames < self.frames_done:
            raise ValueError(f"the video already has {self.frames_done} latent frames; asked for {total_frames}")
        self.cache.setup(self.model, self.latent_h, self.latent_w, self.chunk_frames, self.batch, total_frames)
        while self.frames_done < total_frames:
            n = min(self.chunk_frames, total_frames - self.frames_done)
            i, first = self.chunk_index, self.frames_done
            t0 = time.perf_counter()
            x0 = self.chunk(text_kv, i, n, on_step)
            self.latents.append(x0)
            if on_step:  # after the chunk is kept: a cancel here loses nothing
                on_step(i, len(self.schedule.steps), len(self.schedule.steps) + 1)
            yield ChunkResult(i, first, x0, time.perf_counter() - t0)

    @torch.no_grad()
    def chunk(self, text_kv, index: int, frames: int, on_step=None) -> torch.Tensor:
        model, cache, sched = self.model, self.cache, self.schedule
        dev = model.device
        shape = (self.batch, model.cfg.in_dim, frames, self.latent_h, self.latent_w)
        steps = sched.timesteps.tolist()
        noise = self.noise.draw(index, len(steps), shape)
        x = noise[0].to(dev)
        cache.begin_chunk(frames)
        for j, t in enumerate(steps):
            v = model(x, torch.full((self.batch, frames), t, device=dev), cache, text_kv)
            x0 = sched.to_x0(v, x, t)
            if j + 1 < len(steps):
                x = sched.renoise(x0, noise[j + 1].to(dev), steps[j + 1])
            if on_step:
                on_step(index, j, len(steps) + 1)
        cache.begin_commit()
        model(x0, torch.zeros(self.batch, frames, device=dev), cache, text_kv)
        cache.commit(x0, text_kv)
        return x0.cpu()
