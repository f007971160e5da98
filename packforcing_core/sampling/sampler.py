"""The autoregressive sampler: chunk by chunk, few-step denoising against the cache, then commit.

For chunk i (latent frames [i*c, i*c + c)):
    x = noise_i[0]
    for step j with timestep t_j:   x0 = x - sigma_j * model(x, t_j | cache)      (float64)
                                    x  = (1 - sigma_{j+1}) x0 + sigma_{j+1} noise_i[j+1]
    model(x0, t = 0 | cache) once more writes the clean chunk's K/V into the cache ("commit").
No classifier-free guidance (the DMD-distilled checkpoints need none).

A video can begin with given frames (a start image, clip or latent): they are committed as history
by t=0 passes, the first frame alone and then chunk-sized groups (the way ComfyUI's ARVideoI2V and
Self-Forcing's `initial_latent` commit a start image: one t=0 pass at temporal position 0), and
generation continues after them. Chunk indices (and so the noise of each chunk) count generated
chunks only: chunk 0 is the first chunk after the start frames.

The prompt can follow a schedule (`prompt_schedule.py`): switches, transitions, KV re-cache of the
history under the new prompt, and scene cuts, all decided by the chunk index.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..cache.packed import PackedCache
from .noise import SeededNoise
from .prompt_schedule import PromptSchedule, Switch, schedule_record
from .schedule import FlowSchedule

LATENT_MODES = ("lr", "hr", "hr_lr")     # compressors that build mid blocks from latents


class NonFiniteError(ValueError):
    """A chunk came out NaN/inf; the chunks before it are intact (it was never committed)."""


def check_finite(x0: torch.Tensor, index: int, first_frame: int) -> None:
    if not bool(torch.isfinite(x0).all()):            # one sync per chunk
        raise NonFiniteError(f"chunk {index} (latent frames {first_frame}-{first_frame + x0.shape[2] - 1}) came "
                             f"out NaN/inf, so it was not kept; the {first_frame} latent frames before it are "
                             "intact. Causes: NaN in the weights or the prompt, or fp16 overflow (use bf16 or fp32)")


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
    start_frames: int = 0                     # latent frames given as the start (committed, not generated)
    prompt_record: list | None = None         # the prompt schedule the latest run followed (state files keep it)

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
        """Generated chunks so far (the start frames are not a chunk)."""
        return -(-max(0, self.frames_done - self.start_frames) // self.chunk_frames)

    def commit_starts(self, end: int) -> list[int]:
        """First frames of the commit passes that wrote frames [0, end): the start's first frame alone,
        then chunk-sized groups of the start, then the generated chunks."""
        c, s = self.chunk_frames, self.start_frames
        starts = ([0] + list(range(1, s, c))) if s else []
        return starts + list(range(s, end, c))

    def latent(self) -> torch.Tensor:
        """All committed latent frames (B, 16, T, h, w)."""
        if not self.latents:
            return torch.zeros(self.batch, self.model.cfg.out_dim, 0, self.latent_h, self.latent_w)
        return torch.cat(self.latents, dim=2)

    def run(self, prompts, total_frames: int, on_step: Callable[[int, int, int], None] | None = None,
            on_switch: Callable[[int, Switch], None] | None = None) -> Iterator[ChunkResult]:
        """Generate chunks until `total_frames` latent frames exist (start frames included).
        `prompts`: a PromptSchedule, or the text K/V of one prompt (model.encode_text).
        on_step(chunk, step, steps) runs after every forward pass (steps + 1 per chunk); it may raise
        to cancel. on_switch(chunk, switch) runs after a prompt switch was applied."""
        if total_frames < self.frames_done:
            raise ValueError(f"the video already has {self.frames_done} latent frames; asked for {total_frames}")
        self.setup(total_frames)
        if isinstance(prompts, PromptSchedule):
            self.prompt_record = schedule_record(prompts)
        text = _Conditioner(self.model, prompts)
        while self.frames_done < total_frames:
            n = min(self.chunk_frames, total_frames - self.frames_done)
            i, first = self.chunk_index, self.frames_done
            t0 = time.perf_counter()
            switch = text.switch_before(i)
            if switch:
                self.apply_switch(switch, text(i))
                if on_switch:
                    on_switch(i, switch)
            x0 = self.chunk(text(i), i, n, on_step)
            self.latents.append(x0)
            if on_step:  # after the chunk is kept: a cancel here loses nothing
                on_step(i, len(self.schedule.steps), len(self.schedule.steps) + 1)
            yield ChunkResult(i, first, x0, time.perf_counter() - t0)

    def setup(self, total_frames: int) -> None:
        self.cache.setup(self.model, self.latent_h, self.latent_w, self.chunk_frames, self.batch, total_frames)

    @torch.no_grad()
    def commit_start(self, latent: torch.Tensor, text_kv, total_frames: int) -> None:
        """Begin the video with given latent frames (B, C, S, h, w), normalised as the DiT sees them:
        t=0 passes commit them as history, the first frame alone, then chunk-sized groups."""
        if self.frames_done:
            raise ValueError("start frames begin a new video; this one already has "
                             f"{self.frames_done} latent frames")
        want = (self.batch, self.model.cfg.in_dim, self.latent_h, self.latent_w)
        got = (*latent.shape[:2], *latent.shape[3:]) if latent.dim() == 5 else None
        if got != want:
            raise ValueError(f"start latent has shape {tuple(latent.shape)}; this video needs (batch, channels, "
                             f"frames, height, width) = ({want[0]}, {want[1]}, F, {want[2]}, {want[3]})")
        self.start_frames = latent.shape[2]
        self.setup(total_frames)
        bounds = self.commit_starts(self.start_frames) + [self.start_frames]
        for a, b in zip(bounds, bounds[1:]):
            part = latent[:, :, a:b].float()
            self.commit_frames(part.to(self.model.device), text_kv)
            self.latents.append(part.cpu())

    def commit_frames(self, x0: torch.Tensor, text_kv, prepared: bool = False) -> None:
        """The t=0 pass that writes clean frames' K/V into the cache, then the cache's commit.
        prepared: the chunk's attention is already laid out (begin_chunk ran for its denoising)."""
        model, frames = self.model, x0.shape[2]
        if not prepared:
            self.cache.begin_chunk(frames)
        self.cache.begin_commit()
        model(x0, torch.zeros(self.batch, frames, device=model.device), self.cache, text_kv)
        self.cache.commit(x0, text_kv)

    def resize_cache(self, config, text_kv) -> None:
        """Continue the video with new PackedCache sizes (PackedCache.resized, which refuses what cannot
        change). `full` keeps everything, so sizes do not apply to it."""
        if self.cache.cfg.mode == "full":
            self.cache.cfg = config.with_chunk(self.cache.cfg.block_frames)
        else:
            self.cache = self.cache.resized(config, text_kv)

    # ------------------------------------------------------------------ prompt switches
    def apply_switch(self, switch: Switch, text_kv) -> None:
        if switch.cut != "none":
            self.cache.cut(keep_sink=switch.cut == "sink")
        if switch.recache:
            self.recache(text_kv)

    def recache(self, text_kv) -> None:
        """Recompute the cached history's K/V under `text_kv` from the clean latents: sink and recent
        by t=0 passes in their original commit groups; mid blocks re-compressed where the mode builds
        them from latents. kv_pool blocks keep their K/V: they were pooled from K/V that no pass over
        the block alone can reproduce (that would need the block's whole history at the time)."""
        cache = self.cache
        frames, _ = cache.history_frames()
        video = self.latent() if frames or cache.blocks else None
        if frames:
            cache.recache(self.model, video[:, :, frames], self._groups(frames), text_kv)
        if cache.cfg.mode in LATENT_MODES and cache.blocks:
            cache.recompress(lambda first, n: video[:, :, first:first + n].to(cache.device), text_kv)

    def _groups(self, frames: list[int]) -> list[int]:
        """Sizes of the runs of `frames` that were committed together (split where frames are not
        consecutive, e.g. between sink and recent, and at commit boundaries)."""
        starts = set(self.commit_starts(frames[-1] + 1))
        groups: list[int] = []
        for k, f in enumerate(frames):
            if k == 0 or f != frames[k - 1] + 1 or f in starts:
                groups.append(1)
            else:
                groups[-1] += 1
        return groups

    @torch.no_grad()
    def chunk(self, text_kv, index: int, frames: int, on_step=None) -> torch.Tensor:
        model, cache, sched = self.model, self.cache, self.schedule
        dev = model.device
        shape = (self.batch, model.cfg.in_dim, frames, self.latent_h, self.latent_w)
        steps = sched.timesteps.tolist()
        noise = self._noise_on(dev, index, len(steps), shape)
        x = noise[0].to(dev)
        self.cache.begin_chunk(frames)
        for j, t in enumerate(steps):
            v = model(x, torch.full((self.batch, frames), t, device=dev), cache, text_kv)
            x0 = sched.to_x0(v, x, t)
            if j + 1 < len(steps):
                x = sched.renoise(x0, noise[j + 1].to(dev), steps[j + 1])
            if on_step:
                on_step(index, j, len(steps) + 1)
        check_finite(x0, index, self.frames_done)      # before the commit: the cache stays clean
        kept = x0.cpu()             # x0 is ready (check_finite waited): no wait for the commit pass below
        self.commit_frames(x0, text_kv, prepared=True)
        self._draw_ahead(dev, index + 1, len(steps), shape)    # while the GPU still works on this chunk
        return kept

    def _noise_on(self, dev, index: int, count: int, shape) -> list[torch.Tensor]:
        """The chunk's noise, on a GPU uploaded without a host sync; drawn during the previous chunk
        when it could be (seeded noise depends on (seed, chunk) only)."""
        ahead, self._ahead = getattr(self, "_ahead", None), None
        if ahead is not None and ahead[0] == (index, count, tuple(shape)):
            return ahead[1]
        noise = self.noise.draw(index, count, shape)
        if torch.device(dev).type != "cuda":
            return noise
        return list(torch.stack(noise).pin_memory().to(dev, non_blocking=True).unbind(0))

    def _draw_ahead(self, dev, index: int, count: int, shape) -> None:
        if type(self.noise) is SeededNoise and torch.device(dev).type == "cuda":
            self._ahead = ((index, count, tuple(shape)), self._noise_on(dev, index, count, shape))


class _Conditioner:
    """The text K/V of each chunk: one prompt, or a PromptSchedule (blends encoded once each)."""

    def __init__(self, model, prompts):
        self.model = model
        self.schedule = prompts if isinstance(prompts, PromptSchedule) else None
        self.fixed = None if self.schedule else prompts
        self.memo: dict = {}

    def __call__(self, chunk: int):
        if self.schedule is None:
            return self.fixed
        key = self.schedule.weight(chunk)
        if key not in self.memo:
            self.memo = {key: self.model.encode_text(self.schedule.embeds(chunk).to(self.model.device))}
        return self.memo[key]

    def switch_before(self, chunk: int) -> Switch | None:
        return self.schedule.switch_before(chunk) if self.schedule else None
