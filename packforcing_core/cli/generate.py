"""`python -m packforcing_core generate`: its options, and the run.

Order: every option is checked, the start frames and prompt files are read and the prompt schedule
is built (the node's rules and words, sampling.prompt_schedule.timed_schedule) and, with --resume,
checked against the schedule the state was made with, all before the DiT is loaded. Then the video
is generated chunk by chunk; DIR/latents.safetensors ("latents": normalised latents (B, 16, T, h, w)
as the DiT sees them, "raw": VAE space), DIR/video.mp4 (h264, 16 fps) and DIR/frames.npy (uint8
(frames, H, W, 3)), decoded as the chunks come unless --no-decode, DIR/chunks.json (per-chunk
seconds), and with --save-state a resumable state file.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import torch

from ..cache.packed import PackedCache
from ..model.checkpoint import load_model
from ..model.fp8 import fp8_unsupported_reason, quantize_dit
from ..parallel.compressor import make_shared_compressor
from ..parallel.group import from_torchrun, is_root, leave, share_from_root, torchrun_ranks
from ..parallel.ulysses import attach
from ..sampling import start as starts
from ..sampling.noise import NoiseBank, RecordingNoise, SeededNoise
from ..sampling.prompt_schedule import CUTS, ScheduleError, TimedPrompt, timed_schedule
from ..sampling.sampler import Generation, NonFiniteError
from ..sampling.schedule import FlowSchedule
from ..sampling.state import StateError, check_schedule, load_state, read_state_meta, save_state
from .frames import FrameWriter, load_decoders
from .options import (OptionError, add_cache_args, cache_config, check_generate, check_gpus, check_memory,
                      latent_frames, number, timesteps, whole, whole_in)
from .prompts import check_texts, encode_texts, file_embeddings, switches

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SCHEDULE_OPTION = {"start": "--prompt-at", "transition": "--transition", "cut": "--cut"}


def add_parser(sub) -> None:
    text = "generate a video chunk by chunk with a causal Wan2.1 DiT and a bounded PackedCache"
    g = sub.add_parser("generate", help=text, description=text[0].upper() + text[1:] + ".")
    g.add_argument("--dit", required=True, help="causal Wan2.1 T2V DiT (.safetensors, or a Self-Forcing .pt read "
                                                "weights-only)")
    g.add_argument("--vae", help="Wan2.1 VAE (.safetensors); needed to decode frames, by a start image or video, and "
                                 "by modes lr/hr_lr")
    pr = g.add_mutually_exclusive_group(required=True)
    pr.add_argument("--prompt-embeds", help="prompt embeddings .safetensors ('prompt_embeds', e.g. from Save Prompt "
                                            "Embeddings): the prompt from the first frame")
    pr.add_argument("--prompt", help="prompt text from the first frame, encoded with --text-encoder (ComfyUI's "
                                     "CLIPTextEncode rules: (word:1.3) weights)")
    g.add_argument("--text-encoder", help="UMT5-XXL text encoder for text prompts: ComfyUI's "
                                          "umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors "
                                          "(models/text_encoders/); freed before sampling")
    g.add_argument("--tokenizer", help="UMT5's sentencepiece model (spiece.model), for a --text-encoder file that "
                                       "does not carry one (ComfyUI's files do)")
    g.add_argument("--compressor", help="trained compressor weights for modes hr/hr_lr")
    st = g.add_mutually_exclusive_group()
    st.add_argument("--start-image", help="begin the video with this image (centre-cropped and resized, "
                                          "VAE-encoded: needs --vae); --frames then counts the image too")
    st.add_argument("--start-video", help="begin the video with this clip's frames (1+4k of them; needs --vae)")
    st.add_argument("--start-latent", help="begin the video with these latent frames, at least one (.safetensors: "
                                           "'latents' from generate, or ComfyUI Save Latent's 'latent_tensor')")
    g.add_argument("--prompt-at", action="append", default=[], metavar="SECONDS=FILE|TEXT",
                   help="switch to another prompt at SECONDS, counted from the first generated frame (after any "
                        "start) and rounded to the nearest chunk boundary; repeatable, in time order, each inside the "
                        "video. A value ending in .safetensors or .sft, or naming an existing file, is a "
                        "prompt-embeddings file; anything else is prompt text (needs --text-encoder)")
    g.add_argument("--transition", type=whole_in(0), default=0,
                   help="chunks over which each switch blends the previous prompt into the new one (0: at once); a "
                        "transition must end before the video does and before the next switch")
    g.add_argument("--no-recache", action="store_true", help="keep the history's K/V at a switch (no re-cache)")
    g.add_argument("--cut", choices=CUTS, default="none",
                   help="scene cut at each switch: sink keeps only the sink, all forgets the whole history")
    g.add_argument("--width", type=whole, help="video width in pixels, a multiple of 16; default 832 (with --resume: "
                                               "the state's)")
    g.add_argument("--height", type=whole, help="video height in pixels, a multiple of 16; default 480 (with "
                                                "--resume: the state's)")
    g.add_argument("--frames", type=whole, default=81, help="video frames in all, start included: 4T-3 (81 = 5 s at "
                                                            "16 fps)")
    g.add_argument("--seed", type=whole, help="noise seed (chunk i's noise comes from (seed, i)); default 0 (with "
                                              "--resume: the state's)")
    g.add_argument("--steps", type=timesteps, help="denoising timesteps per chunk; default 1000,750,500,250 (with "
                                                   "--resume: the state's)")
    g.add_argument("--shift", type=number, help="flow-matching timestep shift; default 5.0 (with --resume: the "
                                                "state's)")
    g.add_argument("--dtype", choices=DTYPES, default="bf16", help="the DiT's compute dtype (the VAE's too, fp32 "
                                                                   "for fp32)")
    g.add_argument("--device", help="cpu, cuda or cuda:N; default cuda when a GPU is usable, else cpu")
    g.add_argument("--decode-device", help="decode frames on this device while the DiT samples the next chunk "
                                           "(cuda:1: a second GPU; cpu); default: the DiT's device, on a CUDA "
                                           "stream of its own")
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
    g.add_argument("--resume", help="continue the video in a state file written by --save-state: options not given "
                                    "come from it; the ones given, the cache options and the prompt schedule up to "
                                    "where it stopped must match it (later switches may change)")
    g.add_argument("--save-state", help="write a resumable state file at the end (cache, latents, settings, prompt "
                                        "schedule)")
    g.add_argument("--no-decode", action="store_true", help="write latents only (no video.mp4, frames.npy)")
    g.add_argument("--out", required=True, help="folder for latents.safetensors, video.mp4, frames.npy, chunks.json "
                                                "(created if missing)")
    add_cache_args(g, resumable=True)
    g.set_defaults(func=cmd_generate)


@dataclass
class Start:
    """The start given, read before anything is loaded: a latent, or frames for the VAE to encode."""
    option: str
    path: str
    frames: int                    # latent frames it gives
    latent: torch.Tensor | None = None
    pixels: torch.Tensor | None = None


def cmd_generate(a) -> None:
    check_generate(a, cache_config)             # every option, before anything is loaded
    ranks = torchrun_ranks()
    check_gpus(a, ranks)
    total = latent_frames(a.frames)
    check_texts(a)
    start = read_start(a)
    first, rest = file_embeddings(a)
    timed_prompt_schedule(a, first, rest, total, start)         # its rules, before the text encoder loads
    first, rest = encode_texts(a, first, rest)                  # the encoder is freed before the DiT loads
    prompts = timed_prompt_schedule(a, first, rest, total, start)
    check_memory(a, cache_config(a), total, DTYPES[a.dtype].itemsize,
                 decode=bool(a.vae or a.tiny_decoder) and not a.no_decode and is_root(), ranks=ranks)
    check_fp8(a)
    group, device = from_torchrun(a.device)     # one process: nothing to join
    try:
        generate(a, group, device, total, start, first, prompts)
    finally:
        leave()


def generate(a, group, device, total: int, start, first: torch.Tensor, prompts) -> None:
    """The run, on this process's share of the heads when torchrun started several (`group`): every
    rank computes; the root alone loads the VAE, prints and writes the outputs."""
    root = group is None or group.is_root
    # fp8: quantized block by block on the way to the device, which never holds the bf16 weights whole
    model = load_model(a.dit, device="cpu" if a.fp8 else device, dtype=DTYPES[a.dtype])
    attach(model, group, name="--nproc-per-node")
    if a.fp8:
        quantize_dit(model, device=device)
    if a.compile and model.device.type == "cuda":
        model.compile_blocks()
    if a.cuda_graphs and model.device.type == "cuda":
        model.enable_cuda_graphs()               # (not used with several processes: model/graphs.py)
    vae = decoder = None
    if root:
        vae, decoder = load_decoders(a, device, torch.float32 if a.dtype == "fp32" else DTYPES[a.dtype],
                                     encodes=start is not None and start.pixels is not None)
    text_kv = model.encode_text(first.to(device))
    noise = NoiseBank(a.noise_bank) if a.noise_bank else SeededNoise(a.seed)
    if a.save_noise:
        noise = RecordingNoise(noise)
    cfg = cache_config(a)
    compressor = make_shared_compressor(cfg.mode, model, vae, a.compressor)
    if a.resume:
        gen = load_state(a.resume, model, compressor, cfg, noise)
    else:
        gen = Generation(model, PackedCache(cfg, compressor), a.height // 8, a.width // 8, seed=a.seed,
                         chunk_frames=a.chunk_frames, noise=noise,
                         schedule=FlowSchedule(shift=a.shift, steps=a.steps))
    if start is not None and gen.frames_done == 0:      # encoded by the root (the VAE is there), shared
        latent = share_from_root(encode(start, vae, a) if root else None, group, model.device)
        gen.commit_start(latent.to(model.device), text_kv, total)
    run(a, gen, prompts, total, decoder, root)


def read_start(a) -> Start | None:
    """The start of --start-image / --start-video / --start-latent, read and checked (frames, NaN)."""
    option = next((o for o in ("--start-image", "--start-video", "--start-latent")
                   if getattr(a, o[2:].replace("-", "_"))), None)
    if option is None:
        return None
    path = getattr(a, option[2:].replace("-", "_"))
    try:
        if option == "--start-latent":
            latent = starts.check_start_latent(starts.read_latent(path), f"'{path}'")
            return Start(option, path, latent.shape[2], latent=latent)
        if not a.vae:
            raise ValueError("start frames are VAE-encoded: give --vae (the Wan2.1 VAE)")
        pixels = starts.read_image(path) if option == "--start-image" else starts.read_video(path)
        return Start(option, path, starts.clip_latent_frames(pixels.shape[0]), pixels=pixels)
    except ValueError as e:
        raise OptionError(option, str(e)) from None


def encode(start: Start, vae, a) -> torch.Tensor:
    if start.latent is not None:
        return start.latent
    return starts.check_finite(starts.encode_start(vae, start.pixels, a.width, a.height),
                               f"{start.option}: the VAE encoding of '{start.path}'")


def timed_prompt_schedule(a, first: torch.Tensor | None, rest: list[torch.Tensor | None], total: int,
                          start: Start | None):
    """The first prompt from 0 s, then each --prompt-at: the schedule, by the rules the node follows;
    with --resume, the one the state was made with up to where it stopped. A text prompt not encoded
    yet (None) stands in as another prompt's embeddings: its timing is checked all the same."""
    stand_in = next((e for e in [first, *rest] if e is not None), torch.zeros(1, 1, 1))
    embeds = [stand_in if e is None else e for e in [first, *rest]]
    prompts = [TimedPrompt(embeds[0])] + [
        TimedPrompt(e, s.seconds, a.transition, not a.no_recache, a.cut) for e, s in zip(embeds[1:], switches(a))]
    start_frames = start.frames if start else 0
    if a.resume:
        stored = read_state_meta(a.resume)["generation"].get("start_frames", 0)
        if start is not None and start.frames != stored:
            raise OptionError(start.option, f"gives {start.frames} start latent frames, the state file's video "
                                            f"began with {stored}: give the same start, or none")
        start_frames = stored
    chunks = -(-max(0, total - start_frames) // a.chunk_frames)
    try:
        schedule = timed_schedule(prompts, chunks, a.chunk_frames)
    except ScheduleError as e:
        raise OptionError(SCHEDULE_OPTION[e.part], str(e)) from None
    if a.resume and all(e is not None for e in [first, *rest]):
        try:
            check_schedule(a.resume, schedule)
        except StateError as e:
            raise OptionError("--resume", str(e)) from None
    return schedule


def check_fp8(a) -> None:
    """--fp8 needs fp8 tensor cores and a bf16/fp16 DiT: refused before the model is loaded."""
    if not a.fp8:
        return
    if a.dtype == "fp32":
        raise ValueError("--fp8 replaces the DiT's bf16/fp16 linear layers: use --dtype bf16 (or fp16)")
    reason = fp8_unsupported_reason(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if reason:
        raise ValueError(f"--fp8: {reason}")


def run(a, gen: Generation, prompts, total: int, decoder, root: bool = True) -> None:
    if root:
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
            if root:
                print(f"chunk {r.index}: latent frames {r.first_frame}-{r.first_frame + r.latent.shape[2] - 1} "
                      f"in {r.seconds:.2f}s", file=sys.stderr)
    except NonFiniteError:
        _write_outputs(a, gen, writer, log, time.perf_counter() - t0, root)      # keep the good chunks
        raise
    except BaseException:
        if writer:
            writer.abort()          # no half-written video
        raise
    _write_outputs(a, gen, writer, log, time.perf_counter() - t0, root)


def _write_outputs(a, gen, writer, log, seconds, root: bool = True) -> None:
    from safetensors.torch import save_file
    from ..vae.latents import denormalize_latent
    if not root:            # the other ranks only hand the root their heads of the state
        if a.save_state:
            save_state(gen, None)
        return
    lat = gen.latent()
    save_file({"latents": lat.contiguous(), "raw": denormalize_latent(lat).contiguous()},
              os.path.join(a.out, "latents.safetensors"))
    frames = writer.close() if writer else 0
    with open(os.path.join(a.out, "chunks.json"), "w") as f:
        json.dump({"chunks": log, "seconds": seconds, "latent_frames": lat.shape[2], "video_frames": frames,
                   "kv": gen.cache.nbytes(), "gpus": torchrun_ranks()}, f, indent=1)     # kv: per GPU
    if a.save_state:
        save_state(gen, a.save_state)
    if a.save_noise:
        gen.noise.save(a.save_noise)
    print(f"wrote {lat.shape[2]} latent frames, {frames} video frames to {a.out}"
          + (f"; play {writer.video_path}" if writer and writer.video else ""))
