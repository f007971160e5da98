"""Option types, the help format and the checks of the `generate` command's options, all before
anything is loaded.

Each problem is one line that names the option and says what to do; argparse `type=` functions
refuse what Python's int()/float() would quietly accept ("6_4", "nan"). A run that cannot fit in
memory is refused up front from the file's header sizes and the cache plan, instead of being
killed by the kernel after minutes. With --resume, the options not given are taken from the state
file, and the ones given must match it. Every option's help shows its default (HelpFormatter).
"""
from __future__ import annotations

import argparse
import math
import os
import re

import torch

from ..cache.config import MODES, SELECTIONS, CacheConfig, Geometry, latent_frames_in, plan
from ..io.files import InputPathError, check_output_file, check_output_folder, input_file
from ..model.checkpoint import CheckpointError, detect_config, read_shapes, strip_prefixes
from ..model.fp8 import weight_bytes
from ..parallel.group import check_heads
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


# ----------------------------------------------------------------------------- help and argparse types

class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, written as one would type it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if (not text or "%(default)" in text or default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, (list, tuple)) and not default)):
            return text
        return f"{text} (default: {shown_default(default).replace('%', '%%')})"


def shown_default(value) -> str:
    """A default as one types it: timesteps comma-separated, a list of values space-separated."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def frames_or_seconds(text: str) -> int:
    """argparse type of --sink / --recent: latent frames (a whole number), or seconds ending in s, as the
    PackedCache node takes them (1s = 4 latent frames at 16 fps)."""
    body = text.strip()
    if body[-1:].lower() == "s":
        if not NUMBER.fullmatch(body[:-1].strip()):
            raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds (e.g. 1s) or of latent frames")
        try:
            return latent_frames_in(float(body[:-1]))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if not WHOLE.fullmatch(body):
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of latent frames; for seconds add s "
                                         "(e.g. 1s = 4 latent frames)")
    if int(body) < 0:
        raise argparse.ArgumentTypeError(f"{int(body)} is out of range: use latent frames >= 0 (or seconds, e.g. 1s)")
    return int(body)


def add_cache_args(p: argparse.ArgumentParser, resumable: bool = False) -> None:
    """The PackedCache options of generate and plan (with --resume the chunk length is the state's)."""
    d = CacheConfig()
    p.add_argument("--cache-mode", choices=MODES, default=d.mode,
                   help="what the mid history holds: full (nothing dropped; grows with the video), none (sink + "
                        "recent only), kv_pool or lr (training-free), hr or hr_lr (trained --compressor weights)")
    p.add_argument("--sink", type=frames_or_seconds, default=d.sink_frames,
                   help="the first frames, kept forever: latent frames (1 = 0.25 s), or seconds ending in s (1s = 4)")
    p.add_argument("--recent", type=frames_or_seconds, default=d.recent_frames,
                   help="the last frames at full resolution: latent frames, or seconds ending in s (1s = 4)")
    p.add_argument("--mid-blocks", type=whole, default=d.mid_blocks, help="compressed mid bank capacity (blocks)")
    p.add_argument("--top-k", type=whole, default=d.top_k, help="mid blocks attended per chunk")
    p.add_argument("--selection", choices=SELECTIONS, default=d.selection,
                   help="which mid blocks are attended: affinity (query-key score) or recency (the newest)")
    p.add_argument("--no-rope-adjust", action="store_true", help="keep absolute positions (gaps stay)")
    p.add_argument("--bank-device", choices=("same", "cpu"), default=d.bank_device,
                   help="where the mid bank waits: same (on the compute device: faster, uses its memory) or cpu "
                        "(host memory; only the attended blocks are uploaded)")
    p.add_argument("--chunk-frames", type=whole, default=None if resumable else 4,
                   help="latent frames per chunk: 4 for PackForcing, 3 for stock Self-Forcing, 1 frame-wise"
                        + ("; default 4 (with --resume: the state's)" if resumable else ""))


def cache_config(a) -> CacheConfig:
    return CacheConfig(mode=a.cache_mode, sink_frames=a.sink, recent_frames=a.recent, mid_blocks=a.mid_blocks,
                       top_k=a.top_k, selection=a.selection, rope_adjust=not a.no_rope_adjust,
                       bank_device=a.bank_device)


def latent_frames(video_frames: int) -> int:
    """T latent frames decode to 4T-3 video frames."""
    if video_frames < 1 or (video_frames - 1) % 4:
        lo = max(1, (video_frames - 1) // 4 * 4 + 1)
        raise ValueError(f"--frames {video_frames}: video lengths are 4T-3 (1, 5, 9, ...): try {lo} or {lo + 4}")
    return (video_frames - 1) // 4 + 1


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
                      ("--text-encoder", a.text_encoder), ("--tokenizer", a.tokenizer),
                      ("--compressor", a.compressor), ("--noise-bank", a.noise_bank), ("--resume", a.resume),
                      ("--tiny-decoder", a.tiny_decoder),
                      *((o, getattr(a, o[2:].replace("-", "_"), None)) for o in START_OPTIONS),
                      *(("--prompt-at", v) for _, v in prompt_at_items(a) if is_embeddings_file(v))):
        if path is not None:
            input_path(opt, path)
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


def input_path(option: str, path: str) -> str:
    """An input file named by `option`: missing, a folder or unreadable is one line naming the option."""
    try:
        return input_file(option, path)
    except InputPathError as e:
        raise OptionError(option, str(e).removeprefix(f"{option}: ")) from None


EMBEDDINGS_SUFFIXES = (".safetensors", ".sft")


def is_embeddings_file(value: str) -> bool:
    """A --prompt-at value is a prompt-embeddings file when it ends in .safetensors / .sft or names a
    file (or a folder: then the error says so); anything else is prompt text."""
    return value.lower().endswith(EMBEDDINGS_SUFFIXES) or os.path.exists(value)


def prompt_at_items(a) -> list[tuple[float, str]]:
    """--prompt-at SECONDS=FILE|TEXT, parsed: [(seconds, file or text)]."""
    items = []
    for item in a.prompt_at:
        seconds, sep, value = item.partition("=")
        t = float(seconds) if NUMBER.fullmatch(seconds.strip()) else float("nan")
        if not sep or not value or not 0 < t < float("inf"):
            raise OptionError("--prompt-at", f"{item!r}: use SECONDS=FILE or SECONDS=TEXT with SECONDS > 0, e.g. "
                                             "10=second.safetensors or '10=a fox in the snow'")
        items.append((t, value))
    return items


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

def _header(a):
    """(state dict shapes, config) from the DiT file's header; None for a legacy .pt (sizes need a full load)."""
    try:
        sd, meta = read_shapes(a.dit)
        sd = strip_prefixes(sd)
        return sd, detect_config(sd, meta, source=a.dit)
    except CheckpointError:
        return None


def check_gpus(a, ranks: int) -> None:
    """Each process computes whole heads: a process count that does not divide them is refused before
    anything is loaded (a legacy .pt is refused after its load, by parallel/ulysses.py)."""
    found = _header(a) if ranks > 1 else None
    if found is not None:
        check_heads(found[1].num_heads, ranks, "--nproc-per-node")


def check_memory(a, cfg: CacheConfig, total_frames: int, dtype_bytes: int, decode: bool, ranks: int = 1) -> None:
    """Refuse a run whose cache, activations, weights and decoded frames exceed the free memory,
    from the DiT file's header (a legacy .pt, whose sizes need a full load, is not checked). With
    `ranks` processes (torchrun), each holds its share of the heads' K/V on its own GPU."""
    found = _header(a)
    if found is None:
        return
    sd, mc = found
    geo = Geometry(mc.num_layers, mc.num_heads // ranks, mc.head_dim, a.height // 8 // mc.patch[1],
                   a.width // 8 // mc.patch[2], a.chunk_frames)
    p = plan(cfg, geo, dtype_bytes, total_frames=total_frames)
    parts = {"K/V": p["total_bytes"], "activations": mc.activation_bytes(a.chunk_frames * geo.frame_tokens),
             "weights": weight_bytes(sd, dtype_bytes, fp8=bool(getattr(a, "fp8", False))),
             "latents": total_frames * mc.out_dim * (a.height // 8) * (a.width // 8) * 4}
    if decode:
        parts["decoded frames"] = (4 * total_frames - 3) * a.height * a.width * 3   # frames.npy is built in RAM
    device = torch.device(a.device)
    if device.type == "cuda" and ranks > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        on_gpu = p["device_bytes"] + parts["activations"] + parts["weights"]
        free = torch.cuda.mem_get_info(device)[0]
        if on_gpu > free:
            raise OptionError(_culprit(a, cfg, parts), f"the run needs {_gib(on_gpu)} on {device} but "
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
