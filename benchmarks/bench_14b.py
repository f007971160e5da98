"""GPU benchmark of a 14B-sized causal Wan DiT (Wan2.1-14B shapes: dim 5120, 40 heads x 128, 40 layers,
ffn 13824; e.g. Krea Realtime 14B) with random weights, on one GPU, 832x480, the reference kv_pool
cache (sink 4, recent 4, mid 16 / top-14), DiT only.

  python benchmarks/bench_14b.py --chunks 24 --out benchmarks/results/h100_14b.json

Steps: the random weights are written to a safetensors file (bf16, plain Wan names, tensor by
tensor from the GPU); `load_model` (the loader of `generate` and Load PackForcing Model) reads it onto
the GPU and is timed (the file was just written, so it is read from the page cache: a cold disk adds
its read time); then a video of --chunks chunks in bf16, then the same model quantized to fp8
(timed) and the video again. Steady state = median of the chunks from --steady-from on (top-k is full
from chunk 16; the CUDA graph is captured at chunk 17). Reports load time, the detected config, KV
bytes (plan and allocated), peak GPU memory, and the steady chunk time and DiT frames per second.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from bench import CHUNK, latent_frames_for, run_one  # noqa: E402
from packforcing_core.cache.config import CacheConfig, Geometry, plan  # noqa: E402
from packforcing_core.model.checkpoint import load_model  # noqa: E402
from packforcing_core.model.dit import CausalWanModel, WanConfig  # noqa: E402
from packforcing_core.model.fp8 import quantize_dit  # noqa: E402

WAN14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


def write_random_weights(cfg: WanConfig, path: str) -> int:
    """Random bf16 weights of `cfg` under Wan's names, made on the GPU one tensor at a time."""
    from safetensors.torch import save_file
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CausalWanModel(cfg).state_dict().items()}
    g = torch.Generator(device="cuda").manual_seed(0)
    sd = {}
    for name, shape in shapes.items():
        t = torch.empty(shape, device="cuda", dtype=torch.float32)
        if len(shape) >= 2:
            t.normal_(0, 1 / max(1, t[0].numel()) ** 0.5, generator=g)
        elif "norm" in name:
            t.fill_(1.0)
        else:
            t.normal_(0, 0.02, generator=g)
        sd[name] = t.to(torch.bfloat16).cpu()
    save_file(sd, path)
    return sum(t.numel() for t in sd.values())


def measure(model, text_kv, chunks: int, steady_from: int) -> dict:
    seconds = (4 * chunks * CHUNK - 3) / 16 - 0.01
    assert latent_frames_for(seconds) == chunks * CHUNK
    r = run_one(model, None, text_kv, "kv_pool", seconds, False, None, "same")
    steady = statistics.median(r["chunk_times"][steady_from:])
    return {"chunks": r["chunks"], "first_chunk_s": r["chunk_times"][0], "steady_chunk_s": steady,
            "steady_dit_fps": CHUNK * 4 / steady, "kv_gib_device": r["kv_gib_device"], "kv_bytes": r["kv_bytes"],
            "peak_gib": r["peak_gib"], "graphs_captured": r["graphs_captured"], "chunk_times": r["chunk_times"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=24)
    ap.add_argument("--steady-from", type=int, default=18)
    ap.add_argument("--precisions", nargs="+", choices=("bf16", "fp8"), default=["bf16", "fp8"])
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the weights file is written")
    ap.add_argument("--out", default="benchmarks/results/bench_14b.json")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    doc = {"command": "python " + " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(), "size": "832x480",
           "cache": CacheConfig(mode="kv_pool", bank_device="same").to_dict(), "compile": not a.no_compile,
           "results": {}}
    path = os.path.join(a.dir, "random_wan14b_causal.safetensors")
    t0 = time.perf_counter()
    doc["parameters"] = write_random_weights(WAN14B, path)
    doc["file_gib"] = os.path.getsize(path) / 2 ** 30
    doc["write_s"] = time.perf_counter() - t0
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model = load_model(path, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    doc["load_s"] = time.perf_counter() - t0
    os.remove(path)
    doc["detected"] = model.cfg.to_dict()
    doc["weights_gib_bf16"] = torch.cuda.memory_allocated() / 2 ** 30
    geo = Geometry(model.cfg.num_layers, model.cfg.num_heads, model.cfg.head_dim, 30, 52, CHUNK)
    doc["kv_plan"] = plan(CacheConfig(mode="kv_pool", bank_device="same"), geo, 2)
    model.eval()
    if not a.no_compile:
        model.compile_blocks()
    model.enable_cuda_graphs()
    g = torch.Generator(device="cuda").manual_seed(0)
    text_kv = model.encode_text(torch.randn(1, 512, 4096, device="cuda", generator=g, dtype=torch.bfloat16))
    for precision in a.precisions:
        if precision == "fp8":
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            quantize_dit(model)
            torch.cuda.synchronize()
            doc["quantize_fp8_s"] = time.perf_counter() - t0
            torch.cuda.empty_cache()
            doc["weights_gib_fp8"] = torch.cuda.memory_allocated() / 2 ** 30 - sum(
                t.numel() * t.element_size() for layer in text_kv for t in layer) / 2 ** 30
        r = measure(model, text_kv, a.chunks, a.steady_from)
        doc["results"][precision] = r
        print(json.dumps({precision: {k: v for k, v in r.items() if k != "chunk_times"}}), flush=True)
        write(a.out, doc)
    print(markdown(write(a.out, doc)))


def write(out: str, doc: dict) -> dict:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(doc))
    return doc


def markdown(doc: dict) -> str:
    d = doc.get("detected", {})
    lines = [f"GPU: {doc['gpu']}, torch {doc['torch']}, CUDA {doc['cuda']}; 14B-sized causal Wan DiT with random "
             f"weights (detected from the file: dim {d.get('dim')}, {d.get('num_heads')} heads, {d.get('num_layers')} "
             f"layers, ffn {d.get('ffn_dim')}; {doc.get('parameters', 0) / 1e9:.2f} B parameters), 832x480, "
             "kv_pool reference cache (mid bank on the GPU), "
             + ("compiled blocks" if doc.get("compile", True) else "blocks not compiled (--no-compile)")
             + ", CUDA graphs, DiT only.", "",
             f"Command: `{doc['command']}`", "",
             f"Weights file {doc.get('file_gib', 0):.1f} GiB (bf16), loaded by `load_model` onto the GPU in "
             f"{doc.get('load_s', 0):.1f} s (from the page cache); bf16 weights {doc.get('weights_gib_bf16', 0):.1f} GiB"
             + (f"; fp8 quantization {doc['quantize_fp8_s']:.1f} s, weights then {doc['weights_gib_fp8']:.1f} GiB"
                if "quantize_fp8_s" in doc else "") + ".", "",
             "| precision | chunks | first chunk (s) | steady chunk (s) | steady DiT fps | KV GiB (device) | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for name, r in doc["results"].items():
        lines.append(f"| {name} | {r['chunks']} | {r['first_chunk_s']:.2f} | {r['steady_chunk_s']:.3f} | "
                     f"{r['steady_dit_fps']:.2f} | {r['kv_gib_device']:.2f} | {r['peak_gib']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
