"""Where the time of one steady-state chunk goes (torch.profiler, CUDA kernels), 1.3B at 832x480.

  python benchmarks/profile_chunk.py [--mode kv_pool] [--chunks 12]
"""
from __future__ import annotations

import argparse
import os
import sys

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
    a = ap.parse_args()
    model, vae = build(torch.bfloat16)
    text_kv = model.encode_text(torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16))
    gen = Generation(model, PackedCache(configs(a.mode), make_compressor(a.mode, model, vae)), 60, 104, seed=0)
    list(gen.run(text_kv, 4 * a.chunks))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        list(gen.run(text_kv, 4 * (a.chunks + 1)))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
