"""GPU benchmark of the ComfyUI path, in-process: from queueing the PackForcing Sampler with "save
video as it goes" to the finished mp4 (DiT, streaming decode on its own CUDA stream, h264 encode on
a thread), as the node runs it (`nodes.generation.run`, ComfyUI's model management, Load PackForcing
Model's `compile` = compiled blocks + CUDA graphs). Full-size Wan2.1-1.3B DiT and decoders with random
weights (the kernels are those of trained weights), 832x480, reference kv_pool cache.

  PACKFORCING_COMFYUI=/path/to/ComfyUI python benchmarks/bench_comfy.py --compile --seconds 120 \
      --decoders wan tiny --out benchmarks/results/h200_comfy_120s.json

Reports per decoder: seconds from the call to the closed mp4, output fps (frames in the file / that
time), the steady chunk time (median of chunks >= 20, chunk to chunk), flatness, peak GPU memory, and
the frames the mp4 holds. The tiny decoder needs a ComfyUI that loads TAEHV files (0.3.75 does).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench import CHUNK, chunk_stats, latent_frames_for, on_cuda  # noqa: E402
from comfy_harness import comfy_in_process, pack_module  # noqa: E402

W, H = 832, 480


def comfy_vae(kind: str):
    """A ComfyUI VAE object with random full-size weights: the Wan2.1 VAE, or the tiny decoder in
    the published taew2_1 layout (ComfyUI detects the kind from the keys, as VAELoader does)."""
    import comfy.sd
    if kind == "tiny":
        from test_taehv import published_state_dict
        sd = published_state_dict(seed=2)
    else:
        sd = {k: v.cpu() for k, v in on_cuda(pack_module("packforcing_core.vae.model").WanVAE, seed=1)
              .to(torch.bfloat16).state_dict().items()}
    vae = comfy.sd.VAE(sd=sd)
    torch.cuda.empty_cache()
    return vae


def dit_handle(compile_: bool, fp8: bool):
    """What Load PackForcing Model returns: the DiT on ComfyUI's offload device, in a ModelPatcher."""
    mm = sys.modules["comfy.model_management"]
    model_mod = pack_module("packforcing_core.model.dit")
    dit = on_cuda(model_mod.CausalWanModel, model_mod.WanConfig(), seed=0).set_compute_dtype(torch.bfloat16).eval()
    if fp8:
        pack_module("packforcing_core.model.fp8").quantize_dit(dit)
    dit = dit.to(mm.unet_offload_device())
    torch.cuda.empty_cache()
    return pack_module("nodes.model_handle").OwnedModel(dit, name="random-1.3B", compile=compile_)


class ChunkClock:
    """Times chunk to chunk inside the node's loop: it wraps the per-chunk autosave hook."""

    def __init__(self):
        self.times: list[float] = []
        self.last = None
        generation = pack_module("nodes.generation")
        base = generation.Autosave
        clock = self

        class Timed(base):
            def __call__(self):
                now = time.perf_counter()
                clock.times.append(now - clock.last)
                clock.last = now
                return super().__call__()

        generation.Autosave = Timed

    def start(self) -> None:
        self.times, self.last = [], time.perf_counter()


def frames_in(path: str) -> int:
    import av
    with av.open(path) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def run_once(model, vae, seconds: float, prefix: str, clock: ChunkClock, bank: str) -> dict:
    generation, request, spec = (pack_module(f"nodes.{m}") for m in ("generation", "request", "spec"))
    config = pack_module("packforcing_core.cache.config")
    cache = spec.new_cache_spec(config.CacheConfig(mode="kv_pool", bank_device=bank))
    prompt = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(0))
    length = 4 * latent_frames_for(seconds) - 3
    req = request.check_request(cache, [[prompt, {}]], W, H, length, 0, "1000,750,500,250", 5.0, CHUNK)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    clock.start()
    t0 = time.perf_counter()
    video = pack_module("nodes.streaming").LiveVideo(prefix, W, H)        # the sampler's "save video as it goes"
    _, _, timeline = generation.run(model, req, vae, prefix, False, video)
    wall = time.perf_counter() - t0
    out_dir = sys.modules["folder_paths"].get_output_directory()
    video = os.path.join(out_dir, timeline["video"]["subfolder"], timeline["video"]["filename"])
    stats = chunk_stats(clock.times)
    frames = frames_in(video)
    return {"seconds": seconds, "video_frames": length, "frames_in_mp4": frames, "wall_s": wall,
            "queue_to_mp4_fps": frames / wall, "chunk_s": stats, "steady_fps": 4 * CHUNK / stats["steady_median"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "mp4_bytes": os.path.getsize(video),
            "chunk_times": [round(t, 4) for t in clock.times]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, nargs="+", default=[120])
    ap.add_argument("--decoders", nargs="+", choices=("wan", "tiny"), default=["wan", "tiny"])
    ap.add_argument("--compile", action="store_true", help="Load PackForcing Model's compile option")
    ap.add_argument("--fp8", action="store_true", help="Load PackForcing Model's fp8 option")
    ap.add_argument("--mid-bank", choices=("cpu", "same"), default="cpu",
                    help="PackedCache's mid bank: host memory (the node's default) or the GPU ('same')")
    ap.add_argument("--out", default="benchmarks/results/comfy.json")
    a = ap.parse_args()
    command = "python " + " ".join(sys.argv)          # before ComfyUI takes sys.argv over
    comfy_in_process(Path(tempfile.mkdtemp(prefix="pf-bench-comfy-")))
    torch.backends.cudnn.benchmark = True
    model, clock = dit_handle(a.compile, a.fp8), ChunkClock()
    doc = {"command": command, "gpu": torch.cuda.get_device_name(),
           "torch": torch.__version__, "python": platform.python_version(), "comfyui": comfyui_version(),
           "size": f"{W}x{H}", "compile_and_graphs": a.compile, "fp8": a.fp8, "mid_bank": a.mid_bank,
           "results": []}
    for kind in a.decoders:
        vae = comfy_vae(kind)
        run_once(model, vae, 6, f"warmup/{kind}", clock, a.mid_bank)       # compile, cuDNN kernels, the VAE's first load
        for sec in a.seconds:
            r = run_once(model, vae, sec, f"bench/{kind}", clock, a.mid_bank) | {"decoder": kind}
            print(json.dumps({k: v for k, v in r.items() if k != "chunk_times"}), flush=True)
            doc["results"].append(r)
            write(a.out, doc)
        del vae
        torch.cuda.empty_cache()


def comfyui_version() -> str:
    try:
        import comfyui_version
        return comfyui_version.__version__
    except ImportError:
        return "unknown"


def write(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    lines = [f"GPU: {doc['gpu']}, torch {doc['torch']}, ComfyUI {doc['comfyui']}, {doc['size']}, compiled blocks + "
             f"CUDA graphs: {doc['compile_and_graphs']}, fp8: {doc['fp8']}, mid bank: {doc['mid_bank']}.", "", f"Command: `{doc['command']}`", "",
             "| video | decoder | queue to mp4 (s) | fps | chunk steady / max (s) | flatness | peak GiB | frames in mp4 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        c = r["chunk_s"]
        flat = f"{c['flatness']:.3f}" if c["flatness"] else "-"
        lines.append(f"| {r['seconds']:.0f} s | {r['decoder']} | {r['wall_s']:.1f} | {r['queue_to_mp4_fps']:.1f} | "
                     f"{c['steady_median']:.3f} / {c['max']:.3f} | {flat} | {r['peak_gib']:.2f} | "
                     f"{r['frames_in_mp4']} |")
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
