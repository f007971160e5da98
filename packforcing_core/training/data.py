"""Clips for compressor training: the model's own rollouts, or a folder of the user's videos.

Either way a clip is a clean normalised latent (1, 16, T, h, w) of T latent frames (5 s = 20) and
the index of the prompt it is conditioned on. Both sources are computed once and cached as
safetensors in a cache folder (keyed by everything that determines them), so resuming or
re-running a training never repeats a rollout or a VAE encode.

  rollouts  generated with the `full` cache (the teacher's exact history), one seed per clip,
            prompts taken in turn from the prompt-embeddings files.
  videos    every .mp4/.mov/.mkv/.webm/.avi/.m4v in a folder, resampled to 16 fps, scaled to cover
            width x height and centre-cropped, cut into non-overlapping windows of 4T-3 frames,
            each VAE-encoded on its own. The prompts are taken in turn, as for rollouts (the
            objective compares the model with itself, so any fitting prompt does).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save

from ..cache.config import CacheConfig
from ..cache.packed import PackedCache
from ..io.files import InputPathError, input_folder, write_file
from ..sampling.prompts import load_prompt_embeds
from ..sampling.sampler import Generation
from ..sampling.state import model_fingerprint

FPS = 16
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class DataError(ValueError):
    """Training data that cannot be used; the message names it and says what to do."""


@dataclass
class Clip:
    latent: torch.Tensor      # (1, 16, T, h, w) float32, CPU, normalised
    prompt: int               # index into the prompt list
    name: str


def load_prompts(paths: list[str]) -> list[torch.Tensor]:
    """Every prompt of every prompt-embeddings file, one (1, tokens, width) tensor each."""
    out = []
    for path in paths:
        emb, _ = load_prompt_embeds(path)
        out += [emb[i:i + 1].float() for i in range(emb.shape[0])]
    if not out:
        raise DataError("no prompt embeddings given: pass --prompt-embeds with at least one file")
    return out


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.numpy().tobytes() if torch.is_tensor(p) else str(p).encode())
    return h.hexdigest()[:16]


def _save(path: str, tensors: dict, meta: dict) -> None:
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={k: str(v) for k, v in meta.items()})
    write_file(path, data, "--work-dir")


def _load(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        return None            # a broken cache entry is recomputed


# ----------------------------------------------------------------------------- rollouts
def rollout_clips(model, prompts: list[torch.Tensor], seeds: list[int], frames: int, latent_h: int,
                  latent_w: int, chunk: int, cache_dir: str, prompt_ids: list[int] | None = None,
                  progress=None) -> list[Clip]:
    """One clip per seed, prompt i % len(prompts) (or prompt_ids[i]), generated with the full cache."""
    os.makedirs(cache_dir, exist_ok=True)
    fp = model_fingerprint(model)
    ids = prompt_ids or [i % len(prompts) for i in range(len(seeds))]
    clips = []
    for i, (seed, pid) in enumerate(zip(seeds, ids)):
        name = f"rollout-{_digest(fp, prompts[pid], frames, latent_h, latent_w, chunk, seed, str(model.dtype))}"
        path = os.path.join(cache_dir, name + ".safetensors")
        got = _load(path)
        if got is None:
            gen = Generation(model, PackedCache(CacheConfig(mode="full")), latent_h, latent_w, seed=seed,
                             chunk_frames=chunk)
            list(gen.run(model.encode_text(prompts[pid].to(model.device)), frames))
            got = {"latent": gen.latent()}
            _save(path, got, {"seed": seed, "frames": frames})
        clips.append(Clip(got["latent"].float(), pid, name))
        if progress:
            progress(i + 1, len(seeds))
    return clips


# ----------------------------------------------------------------------------- videos
def list_videos(folder: str) -> list[str]:
    try:
        input_folder("clip folder", folder)
    except InputPathError as e:
        raise DataError(str(e)) from None
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(VIDEO_EXTS))
    if not files:
        raise DataError(f"clip folder '{folder}' holds no videos ({', '.join(VIDEO_EXTS)}): put the clips to "
                        "train on there, or leave --clips-dir out to train on the model's own rollouts")
    return files


def _fit(frame: np.ndarray, width: int, height: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, height, width) in [-1, 1]: scaled to cover, centre-cropped."""
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    h, w = x.shape[2:]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return (x[0, :, top:top + height, left:left + width] / 127.5 - 1).clamp(-1, 1)


def video_windows(path: str, window: int, width: int, height: int):
    """Yield (3, window, height, width) float pieces of a video at 16 fps, non-overlapping;
    returns the number of 16 fps frames the video has (through StopIteration.value)."""
    import av
    try:
        container = av.open(path)
    except Exception as e:
        raise DataError(f"cannot read video '{path}' ({e}): remove it from the clip folder or re-encode it") from e
    frames, total, next_t = [], 0, 0.0
    with container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.time if frame.time is not None else total / FPS)
            while next_t <= t + 1e-6:                  # the frame shown at each 1/16 s tick
                frames.append(_fit(frame.to_ndarray(format="rgb24"), width, height))
                total += 1
                next_t = total / FPS
                if len(frames) == window:
                    yield torch.stack(frames, 1)
                    frames = []
    return total


def video_clips(folder: str, vae, frames: int, width: int, height: int, cache_dir: str, n_prompts: int,
                progress=None) -> list[Clip]:
    """Every window of 4*frames-3 video frames of every video in `folder`, VAE-encoded once."""
    if vae is None:
        raise DataError("training on a clip folder needs --vae (the clips are VAE-encoded once)")
    files = list_videos(folder)
    os.makedirs(cache_dir, exist_ok=True)
    window = 4 * frames - 3
    clips, short = [], []
    vae_fp = _digest(*[p.detach().float().flatten()[:4096].cpu() for p in list(vae.parameters())[:2]])
    for i, path in enumerate(files):
        st = os.stat(path)
        name = f"video-{_digest(os.path.abspath(path), st.st_size, st.st_mtime_ns, width, height, frames, vae_fp)}"
        cached = os.path.join(cache_dir, name + ".safetensors")
        got = _load(cached)
        if got is None:
            got, it = {}, video_windows(path, window, width, height)
            while True:
                try:
                    px = next(it)
                except StopIteration as stop:
                    seen = stop.value or 0
                    break
                got[f"window.{len(got)}"] = vae.encode(px[None].to(vae.device, vae.dtype)).float().cpu()
            if not got:
                short.append((path, seen))
                continue
            _save(cached, got, {"source": os.path.basename(path), "frames": frames})
        for k in sorted(got, key=lambda s: int(s.split(".")[1])):
            clips.append(Clip(got[k], len(clips) % n_prompts, f"{name}-{k}"))
        if progress:
            progress(i + 1, len(files))
    if not clips:
        lst = ", ".join(f"'{os.path.basename(p)}' ({n / FPS:.1f} s)" for p, n in short[:5])
        raise DataError(f"every video in '{folder}' is shorter than a training clip of {window} frames "
                        f"({window / FPS:.1f} s at {FPS} fps): {lst}. Use longer videos or fewer "
                        "--clip-frames (with a smaller --sink / --recent)")
    return clips


def check_clip_length(cfg: CacheConfig, chunk: int, frames: int) -> None:
    """A clip must reach at least one chunk whose history holds a mid block."""
    from .distill import min_clip_frames, target_frames
    if frames % chunk:
        raise DataError(f"a clip of {frames} latent frames is not a whole number of {chunk}-frame chunks")
    if not target_frames(cfg, chunk, frames):
        need = min_clip_frames(cfg, chunk)
        raise DataError(f"clips of {frames} latent frames ({(4 * frames - 3) / FPS:.1f} s) are too short for sink "
                        f"{cfg.sink_frames} + recent {cfg.recent_frames} frames with chunks of {chunk}: no chunk "
                        f"has a mid block to compress. Use at least {need} latent frames "
                        f"(--clip-frames {need}, {(4 * need - 3) / FPS:.1f} s) or a smaller --sink / --recent")
