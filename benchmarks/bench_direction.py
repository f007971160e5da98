"""GPU benchmark of directing: the cost of a prompt switch with KV re-cache, of a scene cut and of
committing a start image, against the steady-state chunk, at full size (random Wan2.1-1.3B DiT and
Wan VAE, 832x480, chunks of 4, bf16).

For each cache mode the video runs `--warm` chunks (caches full), then times, with CUDA syncs:
  chunk          one steady-state chunk (4 steps + commit), median of 5;
  recache        Generation.recache under a new prompt: t=0 passes over sink + recent in their commit
                 groups, plus (lr) re-compressing every mid block from its latents;
  switch_chunk   the chunk after a switch (its prompt's text K/V encoded, the re-cache, then the chunk);
  cut            PackedCache.cut (bookkeeping only);
  start_image    committing one start latent frame (a t=0 pass of 1 frame) at the start of a video.

  python benchmarks/bench_direction.py --modes kv_pool lr --out benchmarks/results/h200_direction.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import on_cuda  # noqa: E402
from packforcing_core.cache.compressor import make_compressor  # noqa: E402
from packforcing_core.cache.config import CacheConfig  # noqa: E402
from packforcing_core.cache.packed import PackedCache  # noqa: E402
from packforcing_core.model.dit import CausalWanModel, WanConfig  # noqa: E402
from packforcing_core.sampling.sampler import Generation  # noqa: E402
from packforcing_core.vae.model import WanVAE  # noqa: E402

REFERENCE = dict(sink_frames=4, recent_frames=4, mid_blocks=16, top_k=14)


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_mode(mode: str, model, vae, warm: int) -> dict:
    cfg = CacheConfig(mode=mode, **REFERENCE)
    g = torch.Generator().manual_seed(0)
    prompt_a, prompt_b = (torch.randn(1, 120, 4096, generator=g) for _ in range(2))
    text_a = model.encode_text(prompt_a.cuda())
    gen = Generation(model, PackedCache(cfg, make_compressor(mode, model, vae)), 60, 104, seed=0, chunk_frames=4)
    total = 4 * (warm + 8)
    runner = gen.run(text_a, total)
    for _ in range(warm):
        next(runner)
    chunks = [timed(lambda: next(runner)) for _ in range(5)]
    text_b = model.encode_text(prompt_b.cuda())
    frames, blocks = len(gen.cache.history_frames()[0]), len(gen.cache.blocks)
    recache = [timed(lambda: gen.recache(text_b)) for _ in range(3)]
    encode = timed(lambda: model.encode_text(prompt_b.cuda()))
    switch_chunk = timed(lambda: (gen.recache(model.encode_text(prompt_b.cuda())), next(runner)))
    cut = timed(lambda: gen.cache.cut(keep_sink=True))
    fresh = Generation(model, PackedCache(cfg, make_compressor(mode, model, vae)), 60, 104, seed=1, chunk_frames=4)
    start = torch.randn(1, 16, 1, 60, 104, generator=g).cuda()
    fresh.commit_start(start, text_a, 8)                  # warm-up of the 1-frame shapes
    fresh = Generation(model, PackedCache(cfg, make_compressor(mode, model, vae)), 60, 104, seed=1, chunk_frames=4)
    start_image = timed(lambda: fresh.commit_start(start, text_a, 8))
    return {"mode": mode, "chunk_s": statistics.median(chunks), "recache_s": statistics.median(recache),
            "recache_over_chunk": statistics.median(recache) / statistics.median(chunks),
            "text_encode_s": encode, "switch_chunk_s": switch_chunk, "cut_s": cut, "start_image_commit_s": start_image,
            "history_frames_recomputed": frames, "mid_blocks_recompressed": blocks if mode == "lr" else 0,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--modes", nargs="+", default=["kv_pool", "lr"])
    p.add_argument("--warm", type=int, default=20, help="chunks before timing (top-k full from chunk 16)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default="benchmarks/results/direction.json")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    with torch.no_grad():
        model = on_cuda(CausalWanModel, WanConfig(), seed=0).set_compute_dtype(torch.bfloat16).eval()
        if a.compile:
            model.compile_blocks()
        vae = on_cuda(WanVAE, seed=1).to(torch.bfloat16).eval()
        rows = []
        for mode in a.modes:
            rows.append(run_mode(mode, model, vae, a.warm))
            print(json.dumps(rows[-1]), flush=True)
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "command": "python " + " ".join(sys.argv), "config": REFERENCE | {"size": "832x480", "chunk_frames": 4},
           "results": rows}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
