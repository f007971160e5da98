"""HTTP route of the pack: the cache budget the frontend shows on the PackedCache node.

    GET /packforcing/plan?mode=kv_pool&sink_seconds=1&recent_seconds=1&mid_blocks=16&top_k=14
        &mid_bank=cpu&width=832&height=480&chunk_frames=4&length=77&dit_name=...&dtype=bf16

(also under /api/packforcing/plan, like every ComfyUI route). Every parameter is optional and has
the node's default; every one is validated (type, range, known choices) and anything else (an
unknown or repeated parameter, a value out of range, a size that is not a multiple of 16) gets
HTTP 400 with {"error": message}. The numbers come from `packforcing_core.cache.config.plan`, the same
accounting the sampler uses to size its buffers, so the readout is what a run allocates.

The model: `dit_name` (a file in models/diffusion_models, as the loader widget names it) is read
for its sizes - only the safetensors header, or a memory-mapped .pt, never the weights; or
`layers` / `heads` / `head_dim` give them; otherwise Wan2.1-1.3B (30 layers x 12 heads x 128).
Free memory: torch.cuda.mem_get_info on ComfyUI's device when it is a CUDA device (plus what
torch's allocator holds unused, plus the models ComfyUI would unload for the run), else null ("CPU":
no warning). When the DiT file was read, its weights (in the chosen dtype, or fp8 with `fp8=true`)
and one chunk's activations are taken off that before the cache is compared with it: for a 14B
model (40 layers x 40 heads, ~28 GB in bf16) they decide whether the run fits.

Pure functions (`parse_query`, `budget`) are importable without ComfyUI; `register()` adds the
route to `server.PromptServer.instance.routes` when the pack loads.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from typing import Callable, Mapping

from ..packforcing_core.cache.config import MODES, CacheConfig, Geometry, plan
from .server_routes import once_on_server
from .spec import FPS, FRAMES_PER_LATENT, InputError, seconds_to_latent_frames, size_error

log = logging.getLogger("packforcing")

ROUTE = "/packforcing/plan"
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
BANK = {"gpu": "same", "cpu": "cpu"}
DEFAULT_MODEL = {"layers": 30, "heads": 12, "head_dim": 128, "patch": [2, 2], "name": "Wan2.1-1.3B"}
MODEL_PARAMS = ("layers", "heads", "head_dim")


INTEGER = re.compile(r"[+-]?[0-9]+")


class QueryError(ValueError):
    """A bad query parameter: HTTP 400 with this message."""


def _int(lo: int, hi: int, multiple: int = 1):
    def parse(name: str, text: str) -> int:
        if not INTEGER.fullmatch(text.strip()):       # int() would take "6_4" and "٦٤" too
            raise QueryError(f"{name}: '{text}' is not an integer")
        value = int(text.strip())
        if not lo <= value <= hi:
            raise QueryError(f"{name}: {value} is out of range [{lo}, {hi}]")
        if multiple > 1 and (err := size_error(value)):
            raise QueryError(f"{name}: {err}")
        return value
    return parse


def _seconds(name: str, text: str) -> int:
    """Seconds of video, as the node widgets take them -> latent frames (must be whole)."""
    try:
        if "_" in text or not text.isascii():          # float() would take "1_0" and "١"
            raise ValueError(text)
        value = float(text.strip())
    except ValueError:
        raise QueryError(f"{name}: '{text}' is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= 600:
        raise QueryError(f"{name}: {text} is out of range [0, 600] seconds")
    try:
        return seconds_to_latent_frames(name, value)
    except InputError as e:
        raise QueryError(str(e)) from None


def _choice(options):
    def parse(name: str, text: str) -> str:
        if text not in options:
            raise QueryError(f"{name}: '{text}' is not one of {', '.join(options)}")
        return text
    return parse


def _name(name: str, text: str) -> str:
    if not text or len(text) > 512 or "\x00" in text:
        raise QueryError(f"{name}: expected a file name of 1 to 512 characters")
    return text


# name -> (parser, default of the parsed value); seconds parse to latent frames (1 s = 4).
PARAMS: dict[str, tuple[Callable[[str, str], object], object]] = {
    "mode": (_choice(MODES), "kv_pool"),
    "sink_seconds": (_seconds, 4),
    "recent_seconds": (_seconds, 4),
    "mid_blocks": (_int(0, 4096), 16),
    "top_k": (_int(0, 4096), 14),
    "mid_bank": (_choice(tuple(BANK)), "cpu"),
    "width": (_int(16, 4096, 16), 832),
    "height": (_int(16, 4096, 16), 480),
    "chunk_frames": (_int(1, 64), 4),
    "length": (_int(1, 16 * 3600), 77),
    "batch": (_int(1, 64), 1),
    "dtype": (_choice(tuple(DTYPE_BYTES)), None),
    "fp8": (_choice(("true", "false")), "false"),
    "dit_name": (_name, None),
    "layers": (_int(1, 1024), None),
    "heads": (_int(1, 1024), None),
    "head_dim": (_int(1, 4096), None),
}


def parse_query(query: Mapping[str, str], getall: Callable[[str], list] | None = None) -> dict:
    """Validated parameters with defaults. `getall` (aiohttp's MultiDict.getall) detects repeats."""
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        raise QueryError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"known: {', '.join(PARAMS)}")
    out = {}
    for name, (parse, default) in PARAMS.items():
        if name not in query:
            out[name] = default
            continue
        if getall is not None and len(getall(name)) > 1:
            raise QueryError(f"{name}: given more than once")
        out[name] = parse(name, query[name])
    given = [n for n in MODEL_PARAMS if out[n] is not None]
    if given and len(given) != len(MODEL_PARAMS):
        raise QueryError(f"give all of {', '.join(MODEL_PARAMS)} or none (got {', '.join(given)})")
    if given and out["dit_name"] is not None:
        raise QueryError("give either dit_name or layers/heads/head_dim, not both")
    return out


def latent_frames_of(length: int) -> int:
    """Latent frames of a new video of `length` frames (4T-3 frames), rounded up."""
    return -(-(length + FRAMES_PER_LATENT - 1) // FRAMES_PER_LATENT)


def video_seconds(latent_frames: int) -> float:
    return max(0, FRAMES_PER_LATENT * latent_frames - (FRAMES_PER_LATENT - 1)) / FPS


def longest_full(cfg: CacheConfig, geo: Geometry, dtype_bytes: int, free: int) -> int:
    """Most latent frames (a whole number of chunks) whose `full` cache fits in `free` bytes (0: none)."""
    at = lambda t: plan(cfg, geo, dtype_bytes, total_frames=t)["device_bytes"]
    base, slope = at(0), at(1) - at(0)
    if free < base + slope:
        return 0
    t = (free - base) // slope
    while t > 0 and at(t) > free:          # plan is the oracle; the formula only starts the search
        t -= 1
    return (t // geo.chunk_frames) * geo.chunk_frames


def budget(params: dict, model: dict, memory: dict) -> dict:
    """The readout: plan() of the configuration plus what it means for this machine.

    model: {"layers", "heads", "head_dim", "patch": [ph, pw], "name", "source", "dtype"?}
    memory: {"device": "cuda:0" | "cpu", "device_name", "free_bytes": int | None, "host_free_bytes": int | None}
    """
    if params["mode"] != "full" and params["recent_seconds"] < 1:
        raise QueryError(f"recent_seconds: the {params['mode']} cache needs at least 0.25 s (1 latent frame) of "
                         "recent context for the chunk being generated")
    try:
        cfg = CacheConfig(mode=params["mode"], sink_frames=params["sink_seconds"],
                          recent_frames=params["recent_seconds"], mid_blocks=params["mid_blocks"],
                          top_k=params["top_k"], bank_device=BANK[params["mid_bank"]])
    except ValueError as e:
        raise QueryError(str(e).replace("recent_frames", "recent_seconds").replace("sink_frames", "sink_seconds")) \
            from None
    dtype = params["dtype"] or model.get("dtype") or "bf16"
    dtype_bytes = DTYPE_BYTES[dtype]
    ph, pw = model["patch"]
    lh, lw = params["height"] // 8, params["width"] // 8
    if lh % ph or lw % pw:
        raise QueryError(f"width/height: the latent {lw}x{lh} is not a multiple of the model's patch {pw}x{ph}")
    geo = Geometry(model["layers"], model["heads"], model["head_dim"], lh // ph, lw // pw,
                   params["chunk_frames"], params["batch"])
    total = latent_frames_of(params["length"])
    p = plan(cfg, geo, dtype_bytes, total_frames=total)
    cfg = cfg.with_chunk(geo.chunk_frames)
    on_gpu = memory["free_bytes"] is not None
    weights, activations = run_bytes(model, dtype, params["fp8"] == "true", geo)
    # what the cache may take: free memory, plus the models ComfyUI unloads to make room, less this
    # run's weights and activations (known when the DiT file was read; a 14B model's are ~28 GB)
    free = memory["free_bytes"] + memory.get("loaded_bytes", 0) - weights - activations if on_gpu \
        else memory.get("host_free_bytes")
    if cfg.mode == "full":
        longest = longest_full(cfg, geo, dtype_bytes, free) if free is not None else None
    else:
        longest = None                       # bounded: the cache does not grow
    host_bank = p["bank_bytes"] if cfg.bank_device == "cpu" and on_gpu else 0
    return {
        "plan": p,
        "config": cfg.to_dict(),
        "geometry": {"layers": geo.layers, "heads": geo.heads, "head_dim": geo.head_dim, "rows": geo.rows,
                     "cols": geo.cols, "frame_tokens": geo.frame_tokens, "chunk_frames": geo.chunk_frames,
                     "batch": geo.batch, "width": params["width"], "height": params["height"]},
        "model": {k: model[k] for k in ("name", "source", "layers", "heads", "head_dim")} | {"dtype": dtype},
        "total_latent_frames": total,
        "bounded": cfg.mode != "full",
        "kv_bytes": p["total_bytes"],                     # K/V of every layer, buffer + mid bank
        "device_bytes": p["device_bytes"] if on_gpu else 0,   # what must fit in free GPU memory
        "host_bytes": p["total_bytes"] - (p["device_bytes"] if on_gpu else 0),
        "attended_tokens": p["attended_tokens"],
        "longest": None if longest is None else {
            "latent_frames": longest, "frames": max(0, FRAMES_PER_LATENT * longest - 3),
            "seconds": video_seconds(longest), "limit": "gpu" if on_gpu else "host"},
        "memory": memory,
        "weights_bytes": weights or None, "activation_bytes": activations or None,
        "free_for_kv_bytes": free if on_gpu else None,
        "exceeds_free": bool(on_gpu and p["device_bytes"] > free),
        "exceeds_host": bool(host_bank and memory.get("host_free_bytes") is not None
                             and host_bank > memory["host_free_bytes"]),
    }


def run_bytes(model: dict, dtype: str, fp8: bool, geo: Geometry) -> tuple[int, int]:
    """(weights, activations of one chunk) on the device, where the model's file was read; else (0, 0)."""
    weights = (model.get("weights") or {}).get(f"{DTYPE_BYTES[dtype]}{'+fp8' if fp8 else ''}", 0)
    per_token = model.get("activation_bytes_per_token", 0)
    return weights, per_token * geo.chunk_frames * geo.frame_tokens * geo.batch


# ----------------------------------------------------------------------------- the model's sizes

_MODEL_CACHE: dict[tuple, dict] = {}


def model_from_file(path: str) -> dict:
    """Sizes of a DiT file without loading its weights (safetensors header / memory-mapped .pt)."""
    import torch

    from ..packforcing_core.model.checkpoint import CheckpointError, detect_config, read_shapes, strip_prefixes
    from ..packforcing_core.model.fp8 import weight_bytes

    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    name = os.path.basename(path)
    try:
        sd, meta = read_shapes(path)             # by content: a header, or a memory-mapped .pt
        sd = strip_prefixes(sd)
        mc = detect_config(sd, meta, source=name)
    except (CheckpointError, OSError, ValueError, RuntimeError) as e:
        out = dict(DEFAULT_MODEL, source=f"assumed: {name} could not be read ({str(e)[:200]})")
    else:
        dt = sd["patch_embedding.weight"].dtype
        out = {"layers": mc.num_layers, "heads": mc.num_heads, "head_dim": mc.head_dim,
               "patch": [mc.patch[1], mc.patch[2]], "name": name, "source": "file",
               "dtype": {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dt),
               "weights": {"2": weight_bytes(sd, 2), "4": weight_bytes(sd, 4), "2+fp8": weight_bytes(sd, 2, fp8=True)},
               "activation_bytes_per_token": mc.activation_bytes(1)}
    if len(_MODEL_CACHE) > 64:
        _MODEL_CACHE.clear()
    _MODEL_CACHE[key] = out
    return out


def resolve_model(params: dict) -> dict:
    if params["layers"] is not None:
        return {"layers": params["layers"], "heads": params["heads"], "head_dim": params["head_dim"],
                "patch": [2, 2], "name": f"{params['layers']} layers x {params['heads']} heads x "
                                         f"{params['head_dim']}", "source": "given"}
    name = params["dit_name"]
    if name is None:
        return dict(DEFAULT_MODEL, source="default")
    import folder_paths
    if name not in folder_paths.get_filename_list("diffusion_models"):
        return dict(DEFAULT_MODEL, source=f"assumed: {name} is not in models/diffusion_models")
    return model_from_file(folder_paths.get_full_path("diffusion_models", name))


def machine_memory() -> dict:
    """Free memory of ComfyUI's compute device (CUDA only) and of the host."""
    import torch

    import comfy.model_management as mm

    host = None
    try:
        import psutil
        host = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - an estimate only
        pass
    device = mm.get_torch_device()
    if getattr(device, "type", None) == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return {"device": str(device), "device_name": torch.cuda.get_device_name(device),
                "free_bytes": int(free), "total_bytes": int(total), "host_free_bytes": host,
                "loaded_bytes": loaded_model_bytes(mm, device)}
    return {"device": "cpu", "device_name": "CPU", "free_bytes": None, "total_bytes": None,
            "host_free_bytes": host}


def loaded_model_bytes(mm, device) -> int:
    """GPU memory of the models ComfyUI holds loaded on `device`: it unloads them to make room for a run."""
    total = 0
    for lm in list(getattr(mm, "current_loaded_models", [])):
        try:
            if lm.device == device:
                total += int(lm.model_loaded_memory())
        except Exception:  # noqa: BLE001 - an estimate only: a model being unloaded counts nothing
            pass
    return total


# ----------------------------------------------------------------------------- aiohttp

@once_on_server
def register(web, server) -> None:
    """Add the route to ComfyUI's PromptServer (once; nothing outside a running ComfyUI)."""

    async def plan_route(request):
        query = request.rel_url.query
        try:
            params = parse_query(query, query.getall)
            model = await asyncio.get_running_loop().run_in_executor(None, resolve_model, params) \
                if params["dit_name"] else resolve_model(params)
            body = budget(params, model, machine_memory())
        except QueryError as e:
            return web.json_response({"error": str(e)}, status=400)
        except Exception as e:  # noqa: BLE001 - answer, and keep the details in the log
            log.exception("PackForcing: %s failed", ROUTE)
            return web.json_response({"error": f"internal error: {e}"}, status=500)
        return web.json_response(body)

    server.routes.get(ROUTE)(plan_route)
