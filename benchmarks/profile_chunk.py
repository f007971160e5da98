"""Where the time of one steady-state chunk goes (torch.profiler, CUDA kernels), 1.3B at 832x480,
and one streaming decode of a chunk (Wan VAE, the tiny decoder), 1, 2 or 4 latent frames per pass.

  python benchmarks/profile_chunk.py [--mode kv_pool] [--chunks 24] [--compile] [--graphs] [--fp8]
      [--bank-device same]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import build_decoder, build_dit, configs  # noqa: E402

from packforcing_core.cache.compressor import make_compressor  # noqa: E402
from packforcing_core.cache.packed import PackedCache  # noqa: E402
from packforcing_core.sampling.sampler import Generation  # noqa: E402


def timed_chunks(gen, text_kv, n: int) -> list[float]:
    out = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        list(gen.run(text_kv, gen.frames_done + 4))
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
        gen.latents.clear()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="kv_pool")
    ap.add_argument("--chunks", type=int, default=24)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--graphs", action="store_true")
    ap.add_argument("--fp8", action="store_true")
    ap.add_argument("--bank-device", choices=("cpu", "same"), default="cpu")
    ap.add_argument("--decoders", nargs="*", choices=("wan", "tiny"), default=["wan", "tiny"])
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    model = build_dit("fp8" if a.fp8 else "bf16", a.compile, a.graphs)
    text_kv = model.encode_text(torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16))
    gen = Generation(model, PackedCache(configs(a.mode, a.bank_device), make_compressor(a.mode, model)),
                     60, 104, seed=0)
    list(gen.run(text_kv, 4 * a.chunks))
    gen.latents.clear()
    wall = timed_chunks(gen, text_kv, 5)
    print("steady chunks, wall (s, synchronised):", " ".join(f"{t:.3f}" for t in wall))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        timed_chunks(gen, text_kv, 1)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    print(f"one chunk under the profiler: {kernel_us / 1e3:.0f} ms of GPU kernel time")
    lat = torch.randn(1, 16, 8, 60, 104, device="cuda")
    del gen
    for kind in a.decoders:
        dec = build_decoder(kind)
        for chunk_size in (1, 2, None):
            stream = dec.stream_decoder(chunk_size)
            stream.decode(lat[:, :, :4].to(dec.dtype))       # the first chunk primes the causal cache
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                stream.decode(lat[:, :, 4:8].to(dec.dtype))
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            print(f"decode {kind} ({chunk_size or 'all'} latent frames per pass): {min(times) * 1e3:.0f} ms per "
                  f"16 frames, peak {(torch.cuda.max_memory_allocated() - base) / 2 ** 30:.2f} GiB above the weights")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dec.stream_decoder().decode(lat[:, :, :1].to(dec.dtype))
            stream.decode(lat[:, :, 4:8].to(dec.dtype))
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=70))
        del dec
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
