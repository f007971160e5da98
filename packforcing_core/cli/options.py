"""Checks of the `generate` command's options, all before anything is loaded.

Each problem is one line that names the option and says what to do; argparse `type=` functions
refuse what Python's int()/float() would quietly accept ("6_4", "nan"). A run that cannot fit in
memory is refused up front from the file's header sizes and the cache plan, instead of being
killed by the kernel after minutes. With --resume, the options not given are taken from the state
file, and the ones given must match it.
"""
from __future__ import annotations

import argparse
import math
import os
import re

import torch

from ..cache.config import CacheConfig, Geometry, plan
from ..io.files import check_output_file, check_output_folder
from ..model.checkpoint import CheckpointError, detect_config, read_shapes, strip_prefixes
from ..model.fp8 import weight_bytes
from ..sampling.schedule import FlowSchedule
from ..sampling.state import StateError, check_settings

WHOLE = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
DEFAULTS = {"width": 832, "height": 480, "seed": 0, "steps": (1000, 750, 500, 250), "shift": 5.0, "chunk_frames": 4}
OPTION = {"width": "--width", "height": "--height", "seed": "--seed", "steps": "--steps", "shift": "--shift",
          "chunk_frames": "--chunk-frames"}
START_OPTIONS = ("--start-image", "--start-video", "--start-latent")
CACHE_OPTION = {"sink_frames": "--sink", "recent_frames": "--recent", "mid_blocks": "--mid-blocks",
                "top_k": "--top-k", "block_frames": "--chunk-frames"}


class OptionError(ValueError):
    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")


# ----------------------------------------------------------------------------- argparse types

def whole(text: str) -> int:
    if not WHOLE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    return int(text)


def number(text: str) -> float:
    if not NUMBER.fullmatch(text.strip()) or not math.isfinite(float(text)):     # 1e999 is inf
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return float(text)


def whole_in(lo: int, hi: int | None = None):
    """argparse type: a whole number from lo to hi (argparse names the option in its message)."""
    def parse(text: str) -> int:
        v = whole(text)
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range: use {lo} or more" if hi is None
                                             else f"{v} is out of range: use {lo} .. {hi}")
        return v
    return parse


def number_in(lo: float | None = None, hi: float | None = None, above: float | None = None):
    """argparse type: a finite number >= lo (or > above) and <= hi."""
    def parse(text: str) -> float:
        v = number(text)
        if (lo is not None and v < lo) or (above is not None and v <= above) or (hi is not None and v > hi):
            low = f"> {above}" if above is not None else f">= {lo}" if lo is not None else ""
            raise argparse.ArgumentTypeError(f"{v:g} is out of range: use a number {low}"
                                             + (f" and <= {hi}" if hi is not None else ""))
        return v
    return parse


def timesteps(text: str) -> tuple[int, ...]:
    parts = text.replace(" ", "").split(",")
    if not all(WHOLE.fullmatch(p) for p in parts):
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of timesteps, e.g. 1000,750,500,250")
    return tuple(int(p) for p in parts)


# ----------------------------------------------------------------------------- the checks

def check_generate(a, cache_config) -> None:
    """Validate (and complete, with --resume) the parsed options of `generate`, in place."""
    for opt, path in (("--dit", a.dit), ("--vae", a.vae), ("--prompt-embeds", a.prompt_embeds),
                      ("--compressor", a.compressor), ("--noise-bank", a.noise_bank), ("--resume", a.resume),
                      *((o, getattr(a, o[2:].replace("-", "_"), None)) for o in START_OPTIONS)):
        if path is not None:
            _input_file(opt, path)
    check_output_folder("--out", a.out)
    for opt, path in (("--save-state", a.save_state), ("--save-noise", a.save_noise)):
        if path is not None:
            check_output_file(opt, path)
    a.device = _device(a.device)
    if a.decode_device is not None:
        a.decode_device = _device(a.decode_device, "--decode-device")
        if a.no_decode or not (a.vae or a.tiny_decoder):
            raise OptionError("--decode-device", "there is nothing to decode: give --vae or --tiny-decoder "
                                                 "(without --no-decode), or leave --decode-device out")
    _settings(a, cache_config)


def _settings(a, cache_config) -> None:
    try:
        _checked_settings(a, cache_config)
    except StateError as e:
        raise OptionError("--resume", str(e)) from None


def _checked_settings(a, cache_config) -> None:
    if a.resume:
        stored = check_settings(a.resume, names=OPTION, **{k: getattr(a, k) for k in OPTION})
        for k in OPTION:
            if getattr(a, k) is None:
                setattr(a, k, stored[k])
    for k, v in DEFAULTS.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for opt, value in (("--width", a.width), ("--height", a.height)):
        if value < 16 or value % 16:
            raise OptionError(opt, f"{value}: width and height must be positive multiples of 16 (VAE stride 8 x "
                                   "patch 2), e.g. 832 x 480")
    if a.chunk_frames < 1:
        raise OptionError("--chunk-frames", f"{a.chunk_frames}: use 1 or more (4 for PackForcing)")
    if not 0 <= a.seed < 2 ** 64:
        raise OptionError("--seed", f"{a.seed}: use 0 .. 2^64-1")
    try:
        FlowSchedule(shift=a.shift, steps=a.steps)
    except ValueError as e:
        raise OptionError("--shift" if "shift" in str(e) else "--steps", str(e)) from None
    try:
        cfg = cache_config(a)
    except ValueError as e:
        name = next((o for k, o in CACHE_OPTION.items() if k in str(e)), "--cache-mode")
        raise OptionError(name, str(e)) from None
    if a.resume:   # the cache options have defaults: compare them now rather than after loading
        check_settings(a.resume, cache_config=cfg)


def _input_file(opt: str, path: str) -> None:
    if not os.path.exists(path):
        raise OptionError(opt, f"'{path}' does not exist")
    if not os.path.isfile(path):
        raise OptionError(opt, f"'{path}' is a folder; give a file")
    if not os.access(path, os.R_OK):
        raise OptionError(opt, f"'{path}' is not readable")


def _device(name: str | None, option: str = "--device") -> str:
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(option, f"'{name}' is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(option, f"{name}: this machine has no usable CUDA GPU; use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(option, f"{name}: there are {torch.cuda.device_count()} CUDA devices (0 .. "
                                      f"{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(option, f"{name}: MPS is not available here; use {option} cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise OptionError(option, f"{name}: use cpu, cuda or cuda:N")
    return name


# ----------------------------------------------------------------------------- memory

def check_memory(a, cfg: CacheConfig, total_frames: int, dtype_bytes: int, decode: bool) -> None:
    """Refuse a run whose cache, activations, weights and decoded frames exceed the free memory,
    from the DiT file's header (a legacy .pt, whose sizes need a full load, is not checked)."""
    try:
        sd, meta = read_shapes(a.dit)
        sd = strip_prefixes(sd)
        mc = detect_config(sd, meta, source=a.dit)
    except CheckpointError:
        return
    geo = Geometry(mc.num_layers, mc.num_heads, mc.head_dim, a.height // 8 // mc.patch[1],
                   a.width // 8 // mc.patch[2], a.chunk_frames)
    p = plan(cfg, geo, dtype_bytes, total_frames=total_frames)
    parts = {"K/V": p["total_bytes"], "activations": mc.activation_bytes(a.chunk_frames * geo.frame_tokens),
             "weights": weight_bytes(sd, dtype_bytes, fp8=bool(getattr(a, "fp8", False))),
             "latents": total_frames * mc.out_dim * (a.height // 8) * (a.width // 8) * 4}
    if decode:
        parts["decoded frames"] = (4 * total_frames - 3) * a.height * a.width * 3   # frames.npy is built in RAM
    device = torch.device(a.device)
    if device.type == "cuda":
        on_gpu = p["device_bytes"] + parts["activations"] + parts["weights"]
        free = torch.cuda.mem_get_info(device)[0]
        if on_gpu > free:
            raise OptionError(_culprit(a, cfg, parts), f"the run needs {_gib(on_gpu)} on {a.device} but "
                                                       f"{_gib(free)} is free: {_hint(a, cfg, parts)}")
        parts = {"K/V": p["total_bytes"] - p["device_bytes"], "latents": parts["latents"],
                 **({"decoded frames": parts["decoded frames"]} if decode else {})}
    need, free = sum(parts.values()), host_available()
    if free is not None and need > free:
        detail = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items())
        raise OptionError(_culprit(a, cfg, parts), f"the run needs {_gib(need)} of host memory ({detail}) but "
                                                   f"{_gib(free)} is available: {_hint(a, cfg, parts)}")


def host_available() -> int | None:
    """MemAvailable of the host (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _culprit(a, cfg: CacheConfig, parts: dict) -> str:
    if parts.get("decoded frames", 0) >= max(parts.values()):
        return "--frames"
    return "--cache-mode" if cfg.mode == "full" else "--width/--height"


def _hint(a, cfg: CacheConfig, parts: dict) -> str:
    if parts.get("decoded frames", 0) >= max(parts.values()):
        return "frames.npy holds every decoded frame in memory: use --no-decode (latents only) or fewer --frames"
    if cfg.mode == "full":
        return "--cache-mode full keeps every frame, so it grows with the video: use a bounded mode (kv_pool)"
    return "lower --width/--height, --sink, --recent or --mid-blocks" + (
        "" if cfg.bank_device == "cpu" else ", or --bank-device cpu")


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n < 2 ** 40 else f"{n / 2 ** 40:.2f} TiB"
