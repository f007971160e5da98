"""The command line (`python -m packforcing_core COMMAND`): the parser and generate, plan, tiny-assets.

  python -m packforcing_core tiny-assets --out DIR      tiny random DiT, VAE and prompt embeddings
  python -m packforcing_core plan [cache options]       KV memory and attention budget, nothing allocated
  python -m packforcing_core generate --dit F --vae F --prompt-embeds F --out DIR [options]
  python -m packforcing_core report VIDEO [--out DIR] [--chunk-frames N] [--switches S1,S2]   health report

`generate` writes DIR/latents.safetensors ("latents": normalised latents (B, 16, T, h, w) as the DiT
sees them, "raw": the VAE-space latents), DIR/video.mp4 (h264, 16 fps) and DIR/frames.npy (uint8
(frames, H, W, 3)), decoded chunk by chunk as they are generated, unless --no-decode, DIR/chunks.json
(per-chunk seconds), and with --save-state a resumable state file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..cache.compressor import make_compressor
from ..cache.config import CacheConfig, Geometry, MODES, SELECTIONS, plan
from ..cache.packed import PackedCache
from ..model.checkpoint import CheckpointError, load_model, save_model
from ..model.fp8 import fp8_unsupported_reason, quantize_dit
from ..sampling.noise import NoiseBank, RecordingNoise, SeededNoise
from ..sampling.prompt_schedule import CUTS, PromptEntry, PromptSchedule
from ..sampling.prompts import load_prompt_embeds, save_prompt_embeds
from ..sampling.sampler import Generation, NonFiniteError
from ..sampling.schedule import FlowSchedule
from ..sampling.state import StateError, load_state, save_state
from . import report as report_cli
from .frames import FrameWriter, load_decoders
from .options import check_generate, check_memory, number, timesteps, whole, whole_in

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_cache_args(p: argparse.ArgumentParser) -> None:
    d = CacheConfig()
    p.add_argument("--cache-mode", choices=MODES, default=d.mode)
    p.add_argument("--sink", type=whole, default=d.sink_frames, help="sink latent frames")
    p.add_argument("--recent", type=whole, default=d.recent_frames, help="recent latent frames")
    p.add_argument("--mid-blocks", type=whole, default=d.mid_blocks, help="compressed mid bank capacity (blocks)")
    p.add_argument("--top-k", type=whole, default=d.top_k, help="mid blocks attended per chunk")
    p.add_argument("--selection", choices=SELECTIONS, default=d.selection)
    p.add_argument("--no-rope-adjust", action="store_true", help="keep absolute positions (gaps stay)")
    p.add_argument("--bank-device", choices=("same", "cpu"), default=d.bank_device)
    p.add_argument("--chunk-frames", type=whole, default=4, help="latent frames per chunk (3 for stock Self-Forcing)")


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


def cmd_plan(a) -> None:
    geo = Geometry(a.layers, a.heads, a.head_dim, a.height // 16, a.width // 16, a.chunk_frames)
    frames = latent_frames(a.frames)
    out = plan(cache_config(a), geo, total_frames=frames)
    out["gib"] = round(out["device_bytes"] / 2 ** 30, 3)
    print(json.dumps(out, indent=1))


def cmd_tiny_assets(a) -> None:
    from ..model.tiny import random_model, random_prompt, tiny_config
    from ..vae.model import WanVAE
    os.makedirs(a.out, exist_ok=True)
    model = random_model(tiny_config(), seed=a.seed)
    save_model(model, os.path.join(a.out, "tiny_dit.safetensors"))
    torch.manual_seed(a.seed)
    vae = WanVAE(dim=8)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(a.out, "tiny_vae.safetensors"))
    save_prompt_embeds(os.path.join(a.out, "tiny_prompt.safetensors"), random_prompt(model.cfg, seed=a.seed),
                       "a tiny random prompt")
    print(f"wrote tiny_dit.safetensors, tiny_vae.safetensors, tiny_prompt.safetensors to {a.out} "
          "(random weights: the video is noise-like, for testing the pipeline)")


def cmd_generate(a) -> None:
    check_generate(a, cache_config)             # every option, before anything is loaded
    total = latent_frames(a.frames)
    check_memory(a, cache_config(a), total, DTYPES[a.dtype].itemsize,
                 decode=bool(a.vae or a.tiny_decoder) and not a.no_decode)
    device = a.device
    check_fp8(a)
    # fp8: quantized block by block on the way to the device, which never holds the bf16 weights whole
    model = load_model(a.dit, device="cpu" if a.fp8 else device, dtype=DTYPES[a.dtype])
    if a.fp8:
        quantize_dit(model, device=device)
    if a.compile and model.device.type == "cuda":
        model.compile_blocks()
    if a.cuda_graphs and model.device.type == "cuda":
        model.enable_cuda_graphs()
    vae_dtype = torch.float32 if a.dtype == "fp32" else DTYPES[a.dtype]
    vae, decoder = load_decoders(a, device, vae_dtype)
    embeds, _ = load_prompt_embeds(a.prompt_embeds)
    text_kv = model.encode_text(embeds.to(device))
    noise = NoiseBank(a.noise_bank) if a.noise_bank else SeededNoise(a.seed)
    if a.save_noise:
        noise = RecordingNoise(noise)
    cfg = cache_config(a)
    compressor = make_compressor(cfg.mode, model, vae, a.compressor)
    if a.resume:
        gen = load_state(a.resume, model, compressor, cfg, noise)
    else:
        gen = Generation(model, PackedCache(cfg, compressor), a.height // 8, a.width // 8, seed=a.seed,
                         chunk_frames=a.chunk_frames, noise=noise,
                         schedule=FlowSchedule(shift=a.shift, steps=a.steps))
    start = start_latent(a, vae)
    if start is not None and gen.frames_done == 0:
        gen.commit_start(start.to(model.device), text_kv, total)
    elif start is not None and gen.start_frames != start.shape[2]:
        raise ValueError(f"--resume: the state file's video began with {gen.start_frames} start latent frames, "
                         f"the start given has {start.shape[2]}: give the same start, or none")
    prompts = prompt_schedule(a, embeds, text_kv)
    os.makedirs(a.out, exist_ok=True)
    writer = FrameWriter(decoder, a.out) if decoder is not None else None
    if writer and gen.latents:
        writer.add(gen.latent())
    log = []
    t0 = time.perf_counter()
    try:
        for r in gen.run(prompts, total):
            if writer:
                writer.add(r.latent)
            log.append({"chunk": r.index, "first_frame": r.first_frame, "seconds": round(r.seconds, 4)})
            print(f"chunk {r.index}: latent frames {r.first_frame}-{r.first_frame + r.latent.shape[2] - 1} "
                  f"in {r.seconds:.2f}s", file=sys.stderr)
    except NonFiniteError:
        _write_outputs(a, gen, writer, log, time.perf_counter() - t0)      # keep the good chunks
        raise
    except BaseException:
        if writer:
            writer.abort()          # no half-written video
        raise
    _write_outputs(a, gen, writer, log, time.perf_counter() - t0)


def check_fp8(a) -> None:
    """--fp8 needs fp8 tensor cores and a bf16/fp16 DiT: refused before the model is loaded."""
    if not a.fp8:
        return
    if a.dtype == "fp32":
        raise ValueError("--fp8 replaces the DiT's bf16/fp16 linear layers: use --dtype bf16 (or fp16)")
    reason = fp8_unsupported_reason(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if reason:
        raise ValueError(f"--fp8: {reason}")


def start_latent(a, vae) -> torch.Tensor | None:
    """The normalised start latent of --start-image / --start-video / --start-latent, or None."""
    from ..sampling import start
    if a.start_latent:
        return start.check_finite(start.read_latent(a.start_latent), f"--start-latent: '{a.start_latent}'")
    path = a.start_image or a.start_video
    if not path:
        return None
    option = "--start-image" if a.start_image else "--start-video"
    if vae is None:
        raise ValueError(f"{option}: start frames are VAE-encoded: give --vae (the Wan2.1 VAE)")
    frames = start.read_image(path) if a.start_image else start.read_video(path)
    return start.check_finite(start.encode_start(vae, frames, a.width, a.height),
                              f"{option}: the VAE encoding of '{path}'")


def prompt_schedule(a, embeds: torch.Tensor, text_kv):
    """--prompt-embeds from the start, then each --prompt-at SECONDS=FILE: a PromptSchedule (or the
    single prompt's K/V when there is no switch)."""
    if not a.prompt_at:
        return text_kv
    entries = [PromptEntry(embeds)]
    for item in a.prompt_at:
        seconds, sep, path = item.partition("=")
        try:
            seconds = float(seconds)
        except ValueError:
            seconds = float("nan")
        if not sep or not 0 < seconds < float("inf"):
            raise ValueError(f"--prompt-at {item!r}: use SECONDS=FILE with SECONDS > 0, e.g. 10=second.safetensors")
        chunk = round(seconds * 16 / (4 * a.chunk_frames))
        entries.append(PromptEntry(load_prompt_embeds(path)[0], start_chunk=chunk, transition=a.transition,
                                   recache=not a.no_recache, cut=a.cut))
    return PromptSchedule(entries)


def _write_outputs(a, gen, writer, log, seconds) -> None:
    from safetensors.torch import save_file
    from ..vae.latents import denormalize_latent
    lat = gen.latent()
    save_file({"latents": lat.contiguous(), "raw": denormalize_latent(lat).contiguous()},
              os.path.join(a.out, "latents.safetensors"))
    frames = writer.close() if writer else 0
    with open(os.path.join(a.out, "chunks.json"), "w") as f:
        json.dump({"chunks": log, "seconds": seconds, "latent_frames": lat.shape[2], "video_frames": frames,
                   "kv": gen.cache.nbytes()}, f, indent=1)
    if a.save_state:
        save_state(gen, a.save_state)
    if a.save_noise:
        gen.noise.save(a.save_noise)
    print(f"wrote {lat.shape[2]} latent frames, {frames} video frames to {a.out}"
          + (f"; play {writer.video_path}" if writer and writer.video else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m packforcing_core")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate a video")
    g.add_argument("--dit", required=True, help="causal Wan2.1 T2V DiT (.safetensors or Self-Forcing .pt)")
    g.add_argument("--vae", help="Wan2.1 VAE (.safetensors); needed to decode frames and by modes lr/hr_lr")
    g.add_argument("--prompt-embeds", required=True, help="prompt embeddings .safetensors ('prompt_embeds')")
    g.add_argument("--compressor", help="trained compressor weights for modes hr/hr_lr")
    st = g.add_mutually_exclusive_group()
    st.add_argument("--start-image", help="begin the video with this image (centre-cropped and resized, "
                                          "VAE-encoded: needs --vae); --frames then counts the image too")
    st.add_argument("--start-video", help="begin the video with this clip's frames (1+4k of them; needs --vae)")
    st.add_argument("--start-latent", help="begin the video with these latent frames (.safetensors: 'latents' "
                                           "from generate, or ComfyUI Save Latent's 'latent_tensor')")
    g.add_argument("--prompt-at", action="append", default=[], metavar="SECONDS=FILE",
                   help="switch to the prompt embeddings in FILE at SECONDS (from the first generated frame; "
                        "nearest chunk boundary); repeatable")
    g.add_argument("--transition", type=int, default=0, help="chunks over which each switch blends the prompts")
    g.add_argument("--no-recache", action="store_true", help="keep the history's K/V at a switch (no re-cache)")
    g.add_argument("--cut", choices=CUTS, default="none", help="scene cut at each switch: keep the sink, or nothing")
    g.add_argument("--width", type=whole, help="default 832 (with --resume: the state's)")
    g.add_argument("--height", type=whole, help="default 480 (with --resume: the state's)")
    g.add_argument("--frames", type=whole, default=81, help="video frames, 4T-3 (81 = 5 s at 16 fps)")
    g.add_argument("--seed", type=whole, help="default 0 (with --resume: the state's)")
    g.add_argument("--steps", type=timesteps, help="default 1000,750,500,250 (with --resume: the state's)")
    g.add_argument("--shift", type=number, help="default 5.0 (with --resume: the state's)")
    g.add_argument("--dtype", choices=DTYPES, default="bf16")
    g.add_argument("--device")
    g.add_argument("--decode-device", help="decode frames on this device while the DiT samples the next chunk "
                                           "(cuda:1: a second GPU; cpu); default: the DiT's device, on a side "
                                           "stream")
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (CUDA; ~1.5x faster chunks)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay the steady-state forward as a CUDA graph (CUDA; 0.60 -> 0.43 s per chunk with "
                        "--compile on an H200)")
    g.add_argument("--fp8", action="store_true",
                   help="fp8 (e4m3) matmuls in the DiT blocks (Ada/Hopper GPUs): ~10%% faster chunks, latents "
                        "~3%% (relative L2) from bf16's")
    g.add_argument("--tiny-decoder", help="decode frames with the tiny Wan2.1 decoder (taew2_1 / lighttaew2_1 "
                                          ".safetensors) instead of --vae: ~12x faster, lower fidelity")
    g.add_argument("--noise-bank", help="replay initial noise and re-noise epsilons from this safetensors file")
    g.add_argument("--save-noise", help="write the noise used to this safetensors file (a noise bank)")
    g.add_argument("--resume", help="continue from a state file written by --save-state")
    g.add_argument("--save-state", help="write a resumable state file at the end")
    g.add_argument("--no-decode", action="store_true", help="latents only")
    g.add_argument("--out", required=True)
    add_cache_args(g)
    g.set_defaults(chunk_frames=None)          # 4, or the state's with --resume
    pl = sub.add_parser("plan", help="KV memory of a cache configuration (nothing is allocated)")
    add_cache_args(pl)
    pl.add_argument("--width", type=whole_in(16), default=832, help="video width (default 832)")
    pl.add_argument("--height", type=whole_in(16), default=480, help="video height (default 480)")
    pl.add_argument("--frames", type=whole_in(1), default=1921, help="video frames, for mode full (default 1921)")
    pl.add_argument("--layers", type=whole_in(1), default=30, help="DiT layers (default 30, Wan2.1-1.3B)")
    pl.add_argument("--heads", type=whole_in(1), default=12, help="attention heads (default 12)")
    pl.add_argument("--head-dim", type=whole_in(1), default=128, help="head dimension (default 128)")
    report_cli.add_parser(sub)
    t = sub.add_parser("tiny-assets", help="write tiny random model files for a test run")
    t.add_argument("--out", required=True, help="folder for the three files")
    t.add_argument("--seed", type=whole_in(0, 2 ** 32 - 1), default=0, help="seed of the random weights")
    from .compressor import add_commands as add_compressor_commands
    add_compressor_commands(sub)            # train-compressor, evaluate-compressor
    a = p.parse_args(argv)
    try:
        (getattr(a, "func", None)
         or {"generate": cmd_generate, "plan": cmd_plan, "tiny-assets": cmd_tiny_assets, "report": report_cli.run}[a.cmd])(a)
    except (CheckpointError, StateError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

