"""GPU benchmark: full-size Wan2.1-T2V-1.3B DiT + Wan VAE with random weights, 832x480.

Random weights give honest timings (the same kernels run as with real weights). For each cache
configuration and video length it reports per-chunk time (first, median of chunks 5-15, last),
output frames per second with and without the streaming VAE decode, KV bytes and peak GPU memory.

  python benchmarks/bench.py --seconds 10 120 --modes kv_pool full --out benchmarks/results/run.json

Writes the JSON (and a Markdown table beside it) with the GPU name and the exact command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from packforcing_core.cache import CacheConfig, PackedCache  # noqa: E402
from packforcing_core.compressor import make_compressor  # noqa: E402
from packforcing_core.model import CausalWanModel, WanConfig  # noqa: E402
from packforcing_core.sampler import Generation  # noqa: E402
from packforcing_core.vae import WanVAE  # noqa: E402

FPS = 16
CHUNK = 4


def random_init_(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights drawn so activations stay O(1): timings are the same as with trained weights."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 1 / max(1, p[0].numel()) ** 0.5, generator=g)
            elif "norm" in name or name.endswith("gamma"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)


def build(dtype):
    with torch.device("meta"):
        model = CausalWanModel(WanConfig())
        vae = WanVAE()
    model = model.to_empty(device="cuda")
    vae = vae.to_empty(device="cuda")
    random_init_(model, 0)
    random_init_(vae, 1)
    return model.set_compute_dtype(dtype).eval(), vae.to(dtype).eval()


def configs(mode: str) -> CacheConfig:
    if mode == "full":
        return CacheConfig(mode="full")
    if mode == "none":
        return CacheConfig(mode="none", sink_frames=4, recent_frames=8)
    return CacheConfig(mode=mode)   # the reference: sink 4, recent 4, mid 16 / top-14, ~21.6k tokens


def latent_frames_for(seconds: float) -> int:
    frames = int(seconds * FPS) + 1                       # 4T-3 >= seconds * 16 + 1
    t = -(-(frames + 3) // 4)
    return -(-t // CHUNK) * CHUNK


class Decoder:
    """Streaming decode of each chunk to uint8 frames in host memory, optionally on a side CUDA
    stream so that it overlaps the next chunk's DiT work."""

    def __init__(self, vae, overlap: bool, chunk_size):
        self.dec, self.vae = vae.stream_decoder(chunk_size), vae
        self.stream = torch.cuda.Stream() if overlap else torch.cuda.current_stream()
        self.frames, self.out = 0, []

    def add(self, latent_cpu: torch.Tensor) -> None:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            px = self.dec.decode(latent_cpu.to("cuda", self.vae.dtype, non_blocking=True))
            u8 = ((px[0].clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
            host = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(u8, non_blocking=True)
            self.frames += u8.shape[1]
            self.out = [host]           # a writer would consume it; keep only the latest

    def finish(self) -> None:
        self.stream.synchronize()


def run_one(model, vae, text_kv, mode: str, seconds: float, decode: bool, overlap: bool = False,
            decode_chunk: int | None = 1) -> dict:
    cfg = configs(mode)
    total = latent_frames_for(seconds)
    comp = make_compressor(mode, model, vae)
    gen = Generation(model, PackedCache(cfg, comp), 60, 104, seed=0, chunk_frames=CHUNK)
    dec = Decoder(vae, overlap, decode_chunk) if decode else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, frames_out = [], 0
    t_start = time.perf_counter()
    for r in gen.run(text_kv, total):
        times.append(time.perf_counter() - t_start - sum(times))   # chunk to chunk, decode included
        if dec is not None:
            dec.add(r.latent)
        frames_out += 4 * r.latent.shape[2] - (3 if r.index == 0 else 0)
        gen.latents.clear()               # keep host memory flat over 10-minute videos
    if dec is not None:
        dec.finish()
        assert dec.frames == frames_out
    wall = time.perf_counter() - t_start
    kv = gen.cache.nbytes()
    dit = sum(times)
    mid = times[5:16] if len(times) > 16 else times[1:]
    out = {
        "mode": mode, "seconds": seconds, "latent_frames": total, "chunks": len(times), "decode": decode,
        "overlap": overlap, "decode_chunk": decode_chunk,
        "cache": cfg.to_dict(),
        "chunk_s": {"first": times[0], "median_5_15": statistics.median(mid), "last": times[-1],
                    "mean": dit / len(times), "max": max(times)},
        "last_over_median": times[-1] / statistics.median(mid),
        "video_frames": frames_out,
        "end_to_end_fps": frames_out / wall,
        "wall_s": wall,
        "kv_bytes": kv,
        "kv_gib_device": kv["device_bytes"] / 2 ** 30,
        "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
        "chunk_times": [round(t, 4) for t in times],
    }
    del gen
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 120])
    ap.add_argument("--modes", nargs="+", default=["kv_pool", "full"])
    ap.add_argument("--full-max-seconds", type=float, default=60, help="dense cache only up to this length")
    ap.add_argument("--decode", choices=("no", "yes", "both"), default="both",
                    help="runs without / with the streaming decode")
    ap.add_argument("--decode-chunk", type=int, default=1,
                    help="latent frames per VAE decoder pass (0: the whole chunk at once)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    ap.add_argument("--overlap", action="store_true", help="decode on a side stream, overlapping the DiT")
    ap.add_argument("--vae-channels-last", action="store_true", help="VAE weights in channels_last_3d")
    ap.add_argument("--out", default="benchmarks/results/bench.json")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16
    model, vae = build(dtype)
    if a.compile:
        model.compile_blocks()
    if a.vae_channels_last:
        vae.channels_last()
    g = torch.Generator(device="cuda").manual_seed(0)
    text_kv = model.encode_text(torch.randn(1, 512, 4096, device="cuda", generator=g, dtype=dtype))
    # warm-up: kernels, allocator
    run_one(model, vae, text_kv, "kv_pool", 2, decode=True, overlap=a.overlap, decode_chunk=a.decode_chunk or None)
    results = []
    for mode in a.modes:
        for sec in a.seconds:
            if mode == "full" and sec > a.full_max_seconds:
                continue
            for decode in {"no": [False], "yes": [True], "both": [False, True]}[a.decode]:
                r = run_one(model, vae, text_kv, mode, sec, decode, overlap=a.overlap and decode,
                            decode_chunk=a.decode_chunk or None)
                print(json.dumps({k: v for k, v in r.items() if k != "chunk_times"}), flush=True)
                results.append(r)
    doc = {
        "command": "python " + " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "dtype": str(dtype), "size": "832x480", "chunk_frames": CHUNK,
        "steps": [1000, 750, 500, 250], "compile": a.compile, "vae_channels_last": a.vae_channels_last,
        "results": results,
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    lines = [f"GPU: {doc['gpu']}, torch {doc['torch']}, CUDA {doc['cuda']}, {doc['dtype']}, {doc['size']}, "
             f"chunks of {doc['chunk_frames']} latent frames, 4 steps + commit, compiled blocks: {doc['compile']}.", "",
             f"Command: `{doc['command']}`", "",
             "| mode | video | decode | chunk first / median 5-15 / last (s) | last/median | fps | KV GiB (device) | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    label = lambda r: "no" if not r["decode"] else ("overlapped" if r["overlap"] else "yes") + \
        f", {r.get('decode_chunk') or 'all'}/pass"
    for r in doc["results"]:
        c = r["chunk_s"]
        lines.append(f"| {r['mode']} | {r['seconds']:.0f} s | {label(r)} | "
                     f"{c['first']:.3f} / {c['median_5_15']:.3f} / {c['last']:.3f} | {r['last_over_median']:.3f} | "
                     f"{r['end_to_end_fps']:.1f} | {r['kv_gib_device']:.2f} | {r['peak_gib']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
