"""GPU benchmark of the Wan2.1 VAE stream decode alone (832x480, bf16, channels-last, random weights):
milliseconds per 16-frame chunk (4 latent frames), for several versions of the decoder code in one
process, so that each attempt is measured against the one before it on the same card.

  python benchmarks/bench_decode.py --versions current=packforcing_core.vae.model \\
      old=v18.vae --path versions --chunks 12 --out benchmarks/results/decode.json

Each version is a module exposing WanVAE (the package's `vae.model`, or an older single-file
`vae.py` copied under --path). Variants per version: one latent frame per decoder pass (`piece 1`,
what the sampler's decode uses), the whole chunk per pass (`piece 4`), and, where the version has
them, CUDA graphs of the pieces. Reports the median chunk time after the first two chunks, the peak
memory above the weights, and the largest difference of the uint8 frames from the first variant.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import on_cuda  # noqa: E402


def time_stream(vae, z: torch.Tensor, chunk_size, graphs: bool) -> dict:
    kw = {"graphs": True} if graphs else {}
    stream = vae.stream_decoder(chunk_size, **kw)
    times, frames = [], []
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    parts = [z[:, :, :1]] + list(z[:, :, 1:].split(4, dim=2))
    with torch.no_grad():
        for part in parts:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            px = stream.decode(part)
            end.record()
            frames.append(((px[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
            times.append(start.elapsed_time(end))           # .cpu() above waited for the GPU
    steady = times[3:]                                       # after the first frame and two chunks
    return {"ms_per_chunk": statistics.median(steady), "ms_min": min(steady), "ms_max": max(steady),
            "peak_gib_above_weights": (torch.cuda.max_memory_allocated() - base) / 2 ** 30,
            "captures": getattr(getattr(stream, "piece", None), "captures", 0),
            "frames": torch.cat(frames, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", nargs="+", required=True, help="NAME=module.path (a module with WanVAE)")
    ap.add_argument("--path", action="append", default=[], help="folder to import the versions from")
    ap.add_argument("--chunks", type=int, default=12, help="16-frame chunks per decoded video")
    ap.add_argument("--repeat", type=int, default=2, help="videos per variant (the first is a warm-up)")
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    a = ap.parse_args()
    sys.path[:0] = a.path
    torch.backends.cudnn.benchmark = True
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(1, 16, 1 + 4 * a.chunks, 60, 104, device="cuda", generator=g).to(torch.bfloat16)
    rows, ref = [], None
    for spec in a.versions:
        name, module = spec.split("=")
        WanVAE = importlib.import_module(module).WanVAE
        vae = on_cuda(WanVAE, seed=1).to(torch.bfloat16).eval().channels_last()
        has_graphs = "graphs" in inspect.signature(vae.stream_decoder).parameters
        for chunk_size, graphs in [(1, False), (None, False)] + ([(1, True)] if has_graphs else []):
            for _ in range(a.repeat):
                r = time_stream(vae, z, chunk_size, graphs)
            frames = r.pop("frames")
            ref = frames if ref is None else ref
            r.update(version=name, module=module, piece=chunk_size or 4, graphs=graphs,
                     max_u8_diff_from_first=int((frames.int() - ref.int()).abs().max()))
            print(json.dumps(r), flush=True)
            rows.append(r)
        del vae
        torch.cuda.empty_cache()
    doc = {"command": "python " + " ".join(sys.argv), "gpu": torch.cuda.get_device_name(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "size": "832x480", "dtype": "bf16",
           "chunks": a.chunks, "results": rows}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    lines = [f"GPU: {doc['gpu']}, torch {doc['torch']}, Wan2.1 VAE stream decode, 832x480 bf16, median of chunks "
             f"3-{a.chunks} of a {a.chunks}-chunk video.", "", f"Command: `{doc['command']}`", "",
             "| version | latent frames per pass | graphs | ms per 16 frames (min / max) | peak GiB above weights "
             "| max uint8 diff from first row |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['version']} | {r['piece']} | {'yes' if r['graphs'] else 'no'} | {r['ms_per_chunk']:.1f} "
                     f"({r['ms_min']:.1f} / {r['ms_max']:.1f}) | {r['peak_gib_above_weights']:.2f} | "
                     f"{r['max_u8_diff_from_first']} |")
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
