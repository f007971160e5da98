"""Save and resume a generation: the cache, the counters, the seed and the latents, in one file.

A state file is safetensors (no pickle): tensors for the cache contents and the latents so far,
and JSON metadata for everything else. Loading it and continuing produces chunks bit-identical
to an uninterrupted run. A file from another model, resolution, chunk length or cache mode is
refused with the reason. Files are written to a temporary name and renamed, so a crash never
leaves a half-written state behind.

The file also records the prompt schedule the video was made with (a digest of each prompt's
embeddings, its first chunk, transition, re-cache and cut): `check_schedule` refuses to resume with a
schedule whose switches before the resume point differ; switches still to come may change. Files
written before schedules were recorded are resumed without that check.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from safetensors import safe_open
from safetensors.torch import save_file

from ..cache.config import CacheConfig, MidBlock
from ..cache.packed import PackedCache
from ..io.files import InputPathError, input_file
from .noise import SeededNoise
from .prompt_schedule import PromptSchedule, schedule_differences, seconds_per_chunk
from .sampler import Generation
from .schedule import FlowSchedule

FORMAT = "packforcing-state"
VERSION = 1


class StateError(ValueError):
    pass


def model_fingerprint(model) -> str:
    """Config plus a digest of a few weights: tells a state file which model made it."""
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for t in (model.patch_embedding.weight, model.head.head.weight):
        h.update(t.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def dtype_name(dtype) -> str:
    """bf16 / fp16 / fp32, the names the CLI and the loader node use."""
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    name = str(dtype).replace("torch.", "")
    return short.get(name, name)


def stored_settings(meta: dict) -> dict:
    """The generation settings a state file holds (width/height in pixels: latent x 8)."""
    try:
        g = meta["generation"]
        return {"width": g["latent_w"] * 8, "height": g["latent_h"] * 8, "seed": g["seed"],
                "steps": tuple(g["steps"]), "shift": g["shift"], "chunk_frames": g["chunk_frames"], "batch": g["batch"]}
    except (KeyError, TypeError) as e:
        raise StateError(f"the state file's metadata is incomplete (no {e})") from e


def check_settings(path: str, names: dict[str, str] | None = None, cache_config: CacheConfig | None = None,
                   **wanted) -> dict:
    """Refuse a state file whose stored settings differ from the request, naming both values (reads
    only the header, so nothing needs loading first). Settings as in stored_settings; None = any.
    `names` maps a setting to the caller's word for it (e.g. "--width"); `cache_config`, if given, must
    equal the stored one. Returns the stored settings."""
    meta = read_state_meta(path)
    stored = stored_settings(meta)
    if cache_config is not None:
        _check_cache(meta, cache_config, path)
    names = names or {}
    diffs = [f"{names.get(k, k)} {_show(v)} but the file has {_show(stored[k])}"
             for k, v in wanted.items() if v is not None and _show(stored[k]) != _show(v)]
    if diffs:
        raise StateError(f"state file '{path}' was made with other settings: {'; '.join(diffs)}")
    return stored


def _show(value) -> str:
    return ",".join(str(int(s)) for s in value) if isinstance(value, (tuple, list)) else str(value)


def save_state(gen: Generation, path: str) -> None:
    c = gen.cache
    if c.geo is None:
        raise StateError("nothing to save: the cache has not generated any chunk yet")
    a, b = c._cur_end, c._mid_start
    tensors = {"latents": gen.latent().contiguous()}
    for i, (kb, vb) in enumerate(zip(c.k, c.v)):
        tensors[f"k.{i}"] = kb[:, a:b].contiguous().cpu()
        tensors[f"v.{i}"] = vb[:, a:b].contiguous().cpu()
    if c.bank_k is not None:
        for i, (kb, vb) in enumerate(zip(c.bank_k, c.bank_v)):
            tensors[f"bank_k.{i}"], tensors[f"bank_v.{i}"] = kb.contiguous().cpu(), vb.contiguous().cpu()
    for j, blk in enumerate(c.blocks):
        tensors[f"block.{j}.offsets"] = blk.offsets.contiguous()
        tensors[f"block.{j}.mean_k"] = blk.mean_k.contiguous().cpu()
    if c.mean_q is not None:
        tensors["mean_q"] = c.mean_q.contiguous().cpu()
    if c.pending_latent is not None:
        tensors["pending_latent"] = c.pending_latent.contiguous().cpu()
    meta = {
        "format": FORMAT, "version": VERSION,
        "model": model_fingerprint(gen.model),
        "dtype": dtype_name(gen.model.dtype),
        "cache_config": c.cfg.to_dict(),
        "geometry": dataclasses.asdict(c.geo),
        "counters": {"frames_done": c.frames_done, "sink_first": c.sink_first, "sink_count": c.sink_count, "recent_first": c.recent_first,
                     "recent_count": c.recent_count, "recent_pos": c.recent_pos, "next_block": c.next_block},
        "blocks": [[blk.index, blk.first_frame, blk.frames, blk.tokens, blk.slot] for blk in c.blocks],
        "generation": {"seed": gen.seed, "chunk_frames": gen.chunk_frames, "latent_h": gen.latent_h,
                       "latent_w": gen.latent_w, "batch": gen.batch, "start_frames": gen.start_frames,
                       "shift": gen.schedule.shift,
                       "steps": list(gen.schedule.steps)},
    }
    if gen.prompt_record is not None:
        meta["prompts"] = gen.prompt_record
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={"packforcing": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_schedule(path: str, schedule: PromptSchedule, first_chunk: int = 0) -> None:
    """Refuse to resume the video in `path` with `schedule` when the chunks already made went through
    other prompts or switches (reads only the header). `first_chunk`: the chunk this run's times count
    from (0, or where the continued video stood)."""
    meta = read_state_meta(path)
    stored = meta.get("prompts")
    if stored is None:
        return
    g = meta["generation"]
    chunk = g["chunk_frames"]
    done = -(-max(0, meta["counters"]["frames_done"] - g.get("start_frames", 0)) // chunk)
    diffs = schedule_differences(stored, schedule, done, chunk, first_chunk)
    if diffs:
        at = f"{(done - first_chunk) * seconds_per_chunk(chunk):g} s"
        raise StateError(f"state file '{path}' was made with another prompt schedule: {'; '.join(diffs)}. Its video "
                         f"is made up to {at} (chunk {done}): give the prompts and switches it was made with up to "
                         f"{at}; switches from {at} on may change")


def read_state_meta(path: str) -> dict:
    try:
        input_file("state file", path)
    except InputPathError as e:
        raise StateError(str(e)) from None
    try:
        with safe_open(path, "pt") as f:
            meta = json.loads((f.metadata() or {}).get("packforcing", "{}"))
    except Exception as e:
        raise StateError(f"state file '{path}' is corrupt or not a safetensors file ({e})") from e
    if meta.get("format") != FORMAT:
        raise StateError(f"'{path}' is not a PackForcing state file")
    if meta.get("version") != VERSION:
        raise StateError(f"state file '{path}' has version {meta.get('version')}, this pack reads {VERSION}")
    return meta


def _check_cache(meta: dict, cache_config: CacheConfig | None, path: str) -> CacheConfig:
    cfg = CacheConfig(**meta["cache_config"])
    if cache_config is not None and cache_config.with_chunk(cfg.block_frames) != cfg:
        raise StateError(f"state file '{path}' was made with cache {cfg.to_dict()}, not {cache_config.to_dict()}: "
                         "use the same PackedCache settings to resume")
    return cfg


def load_state(path: str, model, compressor=None, cache_config: CacheConfig | None = None,
               noise=None) -> Generation:
    """Rebuild the Generation saved in `path` on `model`. `cache_config`, if given, must equal the
    saved one (a resume must not silently change the configuration)."""
    meta = read_state_meta(path)
    if meta.get("dtype", dtype_name(model.dtype)) != dtype_name(model.dtype):   # weights cast differ too
        raise StateError(f"state file '{path}' was made with the DiT computing in {meta['dtype']}, this one "
                         f"computes in {dtype_name(model.dtype)}: load the model with dtype {meta['dtype']}")
    if meta["model"] != model_fingerprint(model):
        raise StateError(f"state file '{path}' was made with another model (or other weights): "
                         "load the same DiT checkpoint, or start a new video")
    cfg = _check_cache(meta, cache_config, path)
    g = meta["generation"]
    cache = PackedCache(cfg, compressor)
    gen = Generation(model, cache, g["latent_h"], g["latent_w"], seed=g["seed"], chunk_frames=g["chunk_frames"],
                     schedule=FlowSchedule(shift=g["shift"], steps=tuple(g["steps"])), batch=g["batch"],
                     noise=noise or SeededNoise(g["seed"]), start_frames=g.get("start_frames", 0))
    counters = meta["counters"]
    cache.setup(model, g["latent_h"], g["latent_w"], g["chunk_frames"], g["batch"],
                total_frames=counters["frames_done"])
    if dataclasses.asdict(cache.geo) != meta["geometry"]:
        raise StateError(f"state file '{path}' was made for {meta['geometry']}, this model gives "
                         f"{dataclasses.asdict(cache.geo)}")
    try:
        with safe_open(path, "pt") as f:
            _restore(cache, gen, f, counters, meta["blocks"])
    except StateError:
        raise
    except Exception as e:
        raise StateError(f"state file '{path}' is incomplete or corrupt ({e})") from e
    gen.prompt_record = meta.get("prompts")
    return gen


def _restore(cache: PackedCache, gen: Generation, f, counters: dict, blocks: list) -> None:
    for name, value in counters.items():
        setattr(cache, name, value)
    a, b = cache._cur_end, cache._mid_start
    for i in range(cache.geo.layers):
        cache.k[i][:, a:b] = f.get_tensor(f"k.{i}").to(cache.device)
        cache.v[i][:, a:b] = f.get_tensor(f"v.{i}").to(cache.device)
        if cache.bank_k is not None:
            cache.bank_k[i].copy_(f.get_tensor(f"bank_k.{i}"))
            cache.bank_v[i].copy_(f.get_tensor(f"bank_v.{i}"))
    cache.blocks = [MidBlock(idx, first, frames, tokens, f.get_tensor(f"block.{j}.offsets"),
                             f.get_tensor(f"block.{j}.mean_k").to(cache.device), slot)
                    for j, (idx, first, frames, tokens, slot) in enumerate(blocks)]
    keys = set(f.keys())
    cache.mean_q = f.get_tensor("mean_q").to(cache.device) if "mean_q" in keys else None
    cache.pending_latent = f.get_tensor("pending_latent").to(cache.device) if "pending_latent" in keys else None
    latents = f.get_tensor("latents")
    if latents.shape[2] != cache.frames_done:
        raise StateError(f"latents hold {latents.shape[2]} frames, the cache {cache.frames_done}")
    gen.latents = list(latents.split(gen.chunk_frames, dim=2)) if latents.shape[2] else []
