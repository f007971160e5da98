"""Where the time of one steady-state chunk goes (torch.profiler, CUDA kernels), 1.3B at 832x480.

  python benchmarks/profile_chunk.py [--mode kv_pool] [--chunks 12]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import build, configs  # noqa: E402

from packforcing_core.cache import PackedCache  # noqa: E402
from packforcing_core.compressor import make_compressor  # noqa: E402
from packforcing_core.sampler import Generation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="kv_pool")
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    model, vae = build(torch.bfloat16)
    if a.compile:
        model.compile_blocks()
    text_kv = model.encode_text(torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16))
    gen = Generation(model, PackedCache(configs(a.mode), make_compressor(a.mode, model, vae)), 60, 104, seed=0)
    list(gen.run(text_kv, 4 * a.chunks))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        list(gen.run(text_kv, 4 * (a.chunks + 1)))
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))
    print(f"one chunk: wall {wall * 1e3:.0f} ms (under the profiler)")
    dec = vae.stream_decoder()
    dec.decode(gen.latent()[:, :, :4].to("cuda", vae.dtype))      # the first chunk primes the causal cache
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec.decode(gen.latent()[:, :, 4:8].to("cuda", vae.dtype))
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=70))


if __name__ == "__main__":
    main()
