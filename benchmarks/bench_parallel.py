"""Benchmark of the DiT over several GPUs (packforcing_core/parallel): launched by torchrun, one
process per GPU, NCCL.

  torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --seconds 60 --compile \
      --out benchmarks/results/h100x2_parallel.json
  torchrun --nproc-per-node 1 benchmarks/bench_parallel.py --seconds 10 --paths plain split   # one GPU

Full-size Wan2.1-T2V-1.3B DiT with random weights (the same kernels run as with trained ones, so the
timings are honest), 832x480, the reference kv_pool cache (mid bank on the GPU), bf16, DiT only.
For each path it reports, per GPU: K/V bytes and peak memory; for the run: seconds per chunk (every
chunk, and the steady state: median of chunks >= 20, or of the second half of a shorter video), output
frames per second, and the time of one all-to-all and of one layer's two all-to-alls (CUDA events around
each call, mean over the run). Paths: `plain` (one process, no parallel code: only with one process) and
`split` (the heads split over all processes; with one process, a group of one: the overhead of the
parallel code path alone). Rank 0 writes the JSON with the GPU name and the exact command.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from packforcing_core.cache.compressor import KVPool  # noqa: E402
from packforcing_core.cache.config import CacheConfig  # noqa: E402
from packforcing_core.cache.packed import PackedCache  # noqa: E402
from packforcing_core.model.dit import CausalWanModel, WanConfig  # noqa: E402
from packforcing_core.parallel.group import HeadGroup, timeout  # noqa: E402
from packforcing_core.parallel.ulysses import HeadParallel  # noqa: E402
from packforcing_core.sampling.sampler import Generation  # noqa: E402

FPS, CHUNK, STEADY_FROM = 16, 4, 20


class TimedGroup(HeadGroup):
    """HeadGroup whose all-to-alls are timed with CUDA events."""

    def __init__(self):
        super().__init__()
        self.events = []

    def all_to_all(self, x):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = super().all_to_all(x)
        end.record()
        self.events.append((start, end))
        return out

    def milliseconds(self) -> list[float]:
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in self.events]


def build_dit(compile_: bool) -> CausalWanModel:
    """The same random weights on every rank (one seed)."""
    with torch.device("meta"):
        m = CausalWanModel(WanConfig())
    m = m.to_empty(device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 1 / max(1, p[0].numel()) ** 0.5, generator=g)
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)
    m = m.set_compute_dtype(torch.bfloat16).eval()
    return m.compile_blocks() if compile_ else m


def run(path: str, a) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build_dit(a.compile)
    group = None
    if path == "split":
        group = TimedGroup()
        model.parallel = HeadParallel(group, model.cfg.num_heads, name="--nproc-per-node")
    frames = -(-(a.seconds * FPS + 4) // (4 * CHUNK)) * CHUNK
    cfg = CacheConfig(mode="kv_pool", bank_device="same")
    gen = Generation(model, PackedCache(cfg, KVPool()), a.height // 8, a.width // 8, seed=0, chunk_frames=CHUNK)
    prompt = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(1))
    text = model.encode_text(prompt.cuda())
    times = [r.seconds for r in gen.run(text, frames)]
    steady = times[STEADY_FROM:] if len(times) > STEADY_FROM + 2 else times[len(times) // 2:]
    s = statistics.median(steady)
    out = {"path": path, "gpus": dist.get_world_size(), "chunks": len(times), "chunk_s": [round(t, 4) for t in times],
           "steady_s_per_chunk": round(s, 4), "fps": round(4 * CHUNK / s, 2),
           "kv_gib_per_gpu": round(gen.cache.nbytes()["device_bytes"] / 2 ** 30, 3),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}
    if group is not None:
        ms = group.milliseconds()
        per_pass = 2 * model.cfg.num_layers
        out |= {"all_to_all_ms": round(statistics.mean(ms), 4), "all_to_all_ms_per_layer": round(2 * statistics.mean(ms), 4),
                "all_to_all_s_per_chunk": round(sum(ms) / 1000 / len(times), 4), "passes": len(ms) // per_pass}
    gen.cache.release()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=30, help="video length (default 30 s)")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (CUDA graphs are not used)")
    p.add_argument("--paths", nargs="+", default=["split"], choices=("plain", "split"))
    p.add_argument("--out", help="JSON file (rank 0)")
    a = p.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", timeout=timeout())
    if "plain" in a.paths and dist.get_world_size() > 1:
        p.error("--paths plain runs one process: launch with --nproc-per-node 1")
    rows = []
    for path in a.paths:
        with torch.no_grad():
            row = run(path, a)
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, {k: row[k] for k in ("kv_gib_per_gpu", "peak_gib")})
        rows.append(row | {"per_gpu": per_rank})
    if dist.get_rank() == 0:
        result = {"command": " ".join(["torchrun", f"--nproc-per-node {dist.get_world_size()}"] + sys.argv),
                  "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": rows}
        print(json.dumps({**result, "runs": [{k: v for k, v in r.items() if k != "chunk_s"} for r in rows]}, indent=1))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
