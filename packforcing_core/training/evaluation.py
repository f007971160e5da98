"""Student-teacher gap of cache modes over a long video, through the real PackedCache.

The teacher generates the video with the `full` cache (dense history) and records, for every
chunk and denoising step, its input x_j and its predicted x0_j. Each mode then replays the same
video teacher-forced: the same inputs at every step, and after each chunk the teacher's clean
chunk committed into the mode's own cache (sink / mid / recent as inference builds it, with the
mode's compressor). The gap of a chunk is the relative L2 distance ||x0_mode - x0_teacher|| /
||x0_teacher||, averaged over its denoising steps and the videos. Errors do not compound (the
history's content is the teacher's), so the number isolates what the cache loses.

Modes compared: none, kv_pool, lr (with a VAE), the untrained compressor (its initialisation)
and the trained one (a compressor file, loaded as the model loader loads it).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace

import torch
from safetensors import safe_open

from ..cache.compressor import make_compressor
from ..cache.config import CacheConfig
from ..cache.packed import PackedCache
from ..io.files import write_files
from ..io.plot import line_plot
from ..sampling.noise import SeededNoise
from ..sampling.schedule import FlowSchedule
from .distill import target_frames


def compressor_metadata(path: str) -> dict:
    """The `training` metadata of a compressor file ({} for a file without it)."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ValueError(f"compressor weights '{path}' are not a readable safetensors file ({e})") from e
    out = json.loads(meta.get("training", "{}") or "{}")
    out["mode"] = meta.get("mode", "hr_lr" if out.get("branches") in ("lr", "hr_lr") else "hr")
    return out


@torch.no_grad()
def teacher_run(model, text_kv, latent_h: int, latent_w: int, frames: int, chunk: int, seed: int,
                sched: FlowSchedule) -> list[dict]:
    """The full-cache video, with each chunk's per-step inputs and x0 predictions (CPU).
    Noise as Generation draws it, so this is `generate --cache-mode full` with the same seed."""
    dev = model.device
    cache = PackedCache(CacheConfig(mode="full"))
    cache.setup(model, latent_h, latent_w, chunk, 1, frames)
    noise, steps, out = SeededNoise(seed), sched.timesteps.tolist(), []
    for i in range(frames // chunk):
        eps = noise.draw(i, len(steps), (1, model.cfg.in_dim, chunk, latent_h, latent_w))
        x = eps[0].to(dev)
        cache.begin_chunk(chunk)
        xs, x0s = [], []
        for j, t in enumerate(steps):
            x0 = sched.to_x0(model(x, torch.full((1, chunk), t, device=dev), cache, text_kv), x, t)
            xs.append(x.cpu())
            x0s.append(x0.cpu())
            if j + 1 < len(steps):
                x = sched.renoise(x0, eps[j + 1].to(dev), steps[j + 1])
        _commit(model, cache, x0, text_kv)
        out.append({"inputs": xs, "x0": x0s})
    cache.release()
    return out


def _commit(model, cache, x0, text_kv) -> None:
    cache.begin_commit()
    model(x0, torch.zeros(x0.shape[0], x0.shape[2], device=model.device), cache, text_kv)
    cache.commit(x0, text_kv)


@torch.no_grad()
def forced_gaps(model, cache: PackedCache, text_kv, teacher: list[dict], sched: FlowSchedule,
                latent_h: int, latent_w: int, chunk: int) -> list[float]:
    """Per chunk: mean over steps of the relative L2 gap of x0, teacher-forced (module docstring)."""
    dev = model.device
    cache.setup(model, latent_h, latent_w, chunk, 1, len(teacher) * chunk)
    gaps = []
    for rec in teacher:
        cache.begin_chunk(chunk)
        g = []
        for j, t in enumerate(sched.timesteps.tolist()):
            x = rec["inputs"][j].to(dev)
            x0 = sched.to_x0(model(x, torch.full((1, chunk), t, device=dev), cache, text_kv), x, t)
            want = rec["x0"][j].to(dev)
            g.append(float((x0 - want).norm() / want.norm().clamp_min(1e-12)))
        gaps.append(sum(g) / len(g))
        _commit(model, cache, rec["x0"][-1].to(dev), text_kv)
    cache.release()
    return gaps


def mode_table(model, vae, cfg: CacheConfig, trained: str | None, untrained: str | None, mode: str,
               names=("none", "kv_pool", "lr", "untrained", "trained")) -> dict:
    """name -> (CacheConfig, compressor) of every mode that can run with what was given."""
    out = {}
    for name in names:
        m = {"untrained": mode, "trained": mode}.get(name, name)
        weights = {"untrained": untrained, "trained": trained}.get(name)
        if m in ("lr", "hr_lr") and vae is None:
            continue                                   # no VAE: the lr rows are left out
        if name in ("untrained", "trained") and not weights:
            continue
        out[name] = (CacheConfig(**{**cfg.to_dict(), "mode": m}), make_compressor(m, model, vae, weights))
    return out


def evaluate(model, modes: dict, prompts: list[torch.Tensor], seeds: list[int], frames: int, latent_h: int,
             latent_w: int, chunk: int, sched: FlowSchedule | None = None, progress=None) -> dict:
    """Per-chunk gaps of every mode, averaged over videos (seed i with prompt i % len(prompts))."""
    sched = sched or FlowSchedule()
    per = {name: [] for name in modes}
    for i, seed in enumerate(seeds):
        text_kv = model.encode_text(prompts[i % len(prompts)].to(model.device))
        teacher = teacher_run(model, text_kv, latent_h, latent_w, frames, chunk, seed, sched)
        for name, (cfg, comp) in modes.items():
            per[name].append(forced_gaps(model, PackedCache(cfg, comp), text_kv, teacher, sched,
                                         latent_h, latent_w, chunk))
            if progress:
                progress(f"video {i + 1}/{len(seeds)}: {name} done")
    sizes = next(iter(modes.values()))[0] if modes else CacheConfig()
    first = target_frames(replace(sizes, mode="kv_pool").with_chunk(chunk), chunk, frames)
    first_chunk = first[0] // chunk if first else frames // chunk
    result = {"frames": frames, "chunk": chunk, "seeds": list(seeds), "first_mid_chunk": first_chunk, "modes": {}}
    for name, runs in per.items():
        curve = [sum(r[c] for r in runs) / len(runs) for c in range(len(runs[0]))]
        tail = curve[first_chunk:] or curve
        result["modes"][name] = {"per_chunk": curve, "mean": sum(tail) / len(tail), "last": curve[-1],
                                 "max": max(tail)}
    return result


def write_report(result: dict, out_dir: str, title: str = "", option: str = "--out") -> list[str]:
    """gap.json, gap.csv (per chunk), gap.md (table), gap.png (plot), all or none. Returns the paths."""
    modes = result["modes"]
    n_chunks = len(next(iter(modes.values()))["per_chunk"]) if modes else 0
    csv = ["chunk,first_frame," + ",".join(modes)]
    csv += [f"{c},{c * result['chunk']}," + ",".join(f"{m['per_chunk'][c]:.6g}" for m in modes.values())
            for c in range(n_chunks)]
    seconds = (4 * result["frames"] - 3) / 16
    k = result["first_mid_chunk"]
    lines = [f"Student-teacher gap: relative L2 of the predicted x0, teacher-forced, per chunk of a "
             f"{seconds:.1f} s video ({result['frames']} latent frames, {len(result['seeds'])} video(s)); "
             f"mean and max over chunks {k}..{n_chunks - 1} (those with mid history).", "",
             "| mode | mean gap | last chunk | max |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {m['mean']:.4f} | {m['last']:.4f} | {m['max']:.4f} |" for name, m in modes.items()]
    series = {name: (list(range(n_chunks)), m["per_chunk"]) for name, m in modes.items()}
    png = line_plot(series, title or "student-teacher gap per chunk (teacher-forced)", "chunk", "relative L2 of x0")
    files = {"gap.json": json.dumps(result, indent=1).encode(), "gap.csv": ("\n".join(csv) + "\n").encode(),
             "gap.md": ("\n".join(lines) + "\n").encode(), **({"gap.png": png} if png else {})}
    return write_files({os.path.join(out_dir, n): data for n, data in files.items()}, option)


def untrained_file(meta: dict, model, directory: str) -> str | None:
    """The initialisation a training run started from (same branches and seed), as a file."""
    from .trainer import Compressor
    if "branches" not in meta:
        return None
    path = os.path.join(directory, "untrained.safetensors")
    Compressor(meta["branches"], model, int(meta.get("init_seed", 0))).export(path, model)
    return path


def run_evaluation(model, vae, trained: str | None, prompts, seeds, frames: int, latent_h: int, latent_w: int,
                   cfg: CacheConfig, chunk: int, out_dir: str, sched: FlowSchedule | None = None,
                   names=("none", "kv_pool", "lr", "untrained", "trained"), progress=None,
                   option: str = "--out") -> dict:
    """Everything `evaluate-compressor` does, for a loaded model: modes, gaps, report."""
    meta = compressor_metadata(trained) if trained else {}
    mode = meta.get("mode", "hr")
    if mode == "hr_lr" and vae is None and any(n in names for n in ("trained", "untrained")):
        raise ValueError("this compressor is used in mode hr_lr, which re-encodes history with the VAE: pass --vae")
    with tempfile.TemporaryDirectory() as tmp:
        untrained = untrained_file(meta, model, tmp) if "untrained" in names else None
        modes = mode_table(model, vae, cfg, trained, untrained, mode, names)
        result = evaluate(model, modes, prompts, seeds, frames, latent_h, latent_w, chunk, sched, progress)
    result["compressor"] = {"file": os.path.basename(trained) if trained else None, "mode": mode,
                            "training": meta}
    result["files"] = write_report(result, out_dir, option=option)
    return result
