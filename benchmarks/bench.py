"""GPU benchmark: full-size Wan2.1-T2V-1.3B DiT + a decoder with random weights, 832x480.

Random weights give honest timings (the same kernels run as with trained weights). For each
precision, cache configuration, video length and decoder it reports the time of every chunk, the
steady state (median of chunks >= 20: top-k is full from chunk 16 on), flatness = median(last 20) /
median(chunks 20-40), output frames per second, KV bytes and peak GPU memory. With
--deviation-seconds it also generates that long a video in each precision (DiT only) and reports
the relative L2 distance of the latents from bf16's, per chunk and over the whole video.

  python benchmarks/bench.py --compile --graphs --overlap --seconds 120 600 --modes kv_pool \
      --precisions bf16 fp8 --decoders none wan tiny --out benchmarks/results/run.json

Decoding on a second GPU, as `generate --decode-device cuda:1` does (end to end should equal DiT only):

  python benchmarks/bench.py --compile --graphs --bank-device same --seconds 120 --modes kv_pool \
      --decoders none wan --decode-device cuda:1 --out benchmarks/results/two_gpus_120s.json

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

from packforcing_core.cache.compressor import make_compressor  # noqa: E402
from packforcing_core.cache.config import CacheConfig  # noqa: E402
from packforcing_core.cache.packed import PackedCache  # noqa: E402
from packforcing_core.model.dit import CausalWanModel, WanConfig  # noqa: E402
from packforcing_core.model.fp8 import quantize_dit  # noqa: E402
from packforcing_core.sampling.sampler import Generation  # noqa: E402
from packforcing_core.vae.decode_worker import DecodeWorker  # noqa: E402
from packforcing_core.vae.model import WanVAE  # noqa: E402
from packforcing_core.vae.taehv import TinyWanDecoder  # noqa: E402

FPS = 16
CHUNK = 4
STEADY_FROM = 20


def random_init_(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights drawn so activations stay O(1): timings are the same as with trained weights."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 1 / max(1, p[0].numel()) ** 0.5, generator=g)
            elif "norm" in name or name.endswith("gamma"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)


def on_cuda(cls, *args, seed: int = 0, device: str = "cuda"):
    with torch.device("meta"):
        m = cls(*args)
    m = m.to_empty(device=device)
    with torch.cuda.device(m.parameters().__next__().device):
        random_init_(m, seed)
    return m


def build_dit(precision: str, compile_: bool, graphs: bool) -> CausalWanModel:
    model = on_cuda(CausalWanModel, WanConfig(), seed=0).set_compute_dtype(torch.bfloat16).eval()
    if precision == "fp8":
        quantize_dit(model)
    if compile_:
        model.compile_blocks()
    if graphs:
        model.enable_cuda_graphs()
    return model


def build_decoder(kind: str, device: str = "cuda"):
    """wan: the Wan2.1 VAE (channels-last weights); tiny: the TAEHV tiny decoder."""
    if kind == "tiny":
        return on_cuda(TinyWanDecoder, seed=2, device=device).to(torch.bfloat16).eval().channels_last()
    return on_cuda(WanVAE, seed=1, device=device).to(torch.bfloat16).eval().channels_last()


def configs(mode: str, bank_device: str) -> CacheConfig:
    if mode == "full":
        return CacheConfig(mode="full")
    if mode == "none":
        return CacheConfig(mode="none", sink_frames=4, recent_frames=8)
    # the reference: sink 4, recent 4, mid 16 / top-14, ~21.6k attended tokens per layer
    return CacheConfig(mode=mode, bank_device=bank_device)


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


class WorkerDecoder:
    """The decode of `generate --decode-device`: a worker thread decodes on the decoder's device (its
    own side stream there) and hands uint8 frames to a consumer that keeps only the latest."""

    def __init__(self, vae, chunk_size):
        self.out = []
        self.worker = DecodeWorker(vae, self._keep, chunk_size)

    def _keep(self, frames: torch.Tensor) -> None:
        self.out = [frames]

    @property
    def frames(self) -> int:
        return self.worker.frames

    def add(self, latent_cpu: torch.Tensor) -> None:
        self.worker.put(latent_cpu)

    def finish(self) -> None:
        self.worker.close()


def decoder_spec(text: str) -> str:
    """none | wan | tiny, optionally with :worker (decoded on a DecodeWorker thread, as generate does)."""
    base, *flags = text.split(":")
    if base not in ("none", "wan", "tiny") or not set(flags) <= {"worker"}:
        raise argparse.ArgumentTypeError(f"'{text}': use none, wan or tiny, optionally with :worker")
    return text


def chunk_stats(times: list[float]) -> dict:
    med = lambda xs: statistics.median(xs) if xs else None
    steady = med(times[STEADY_FROM:]) if len(times) > STEADY_FROM else med(times[1:] or times)
    window = med(times[STEADY_FROM:STEADY_FROM + 20])
    last = med(times[-20:])
    return {"first": times[0], "steady_median": steady, "median_20_40": window, "median_last_20": last,
            "mean": sum(times) / len(times), "max": max(times),
            "flatness": last / window if window and len(times) >= STEADY_FROM + 40 else None}


def run_one(model, decoder, text_kv, mode: str, seconds: float, overlap: bool, decode_chunk,
            bank_device: str, keep_latents: bool = False, worker: bool = False) -> dict:
    """worker: decode as `generate` does (DecodeWorker on the decoder's device), else on this thread."""
    cfg = configs(mode, bank_device)
    total = latent_frames_for(seconds)
    gen = Generation(model, PackedCache(cfg, make_compressor(mode, model)), 60, 104, seed=0, chunk_frames=CHUNK)
    dec = None if decoder is None else WorkerDecoder(decoder, decode_chunk) if worker else \
        Decoder(decoder, overlap, decode_chunk)
    devices = {model.device} | ({decoder.device} if decoder is not None else set())
    for d in devices:
        torch.cuda.synchronize(d)
        torch.cuda.reset_peak_memory_stats(d)
    times, frames_out, latents = [], 0, []
    t_start = time.perf_counter()
    for r in gen.run(text_kv, total):
        times.append(time.perf_counter() - t_start - sum(times))   # chunk to chunk, decode included
        if dec is not None:
            dec.add(r.latent)
        frames_out += 4 * r.latent.shape[2] - (3 if r.index == 0 else 0)
        if keep_latents:
            latents.append(r.latent)
        gen.latents.clear()               # keep host memory flat over 10-minute videos
    if dec is not None:
        dec.finish()
        assert dec.frames == frames_out
    wall = time.perf_counter() - t_start
    stats = chunk_stats(times)
    out = {
        "mode": mode, "seconds": seconds, "latent_frames": total, "chunks": len(times),
        "overlap": overlap, "decode_chunk": decode_chunk, "cache": cfg.to_dict(),
        "chunk_s": stats,
        "steady_fps": CHUNK * 4 / stats["steady_median"],
        "video_frames": frames_out,
        "end_to_end_fps": frames_out / wall,
        "wall_s": wall,
        "kv_bytes": gen.cache.nbytes(),
        "kv_gib_device": gen.cache.nbytes()["device_bytes"] / 2 ** 30,
        "peak_gib": torch.cuda.max_memory_allocated(model.device) / 2 ** 30,
        "decode_device": str(decoder.device) if decoder is not None else None,
        "decode_peak_gib": (torch.cuda.max_memory_allocated(decoder.device) / 2 ** 30
                            if decoder is not None and decoder.device != model.device else None),
        "decode_thread": worker,
        "graphs_captured": model.graphs.captures if model.graphs is not None else 0,
        "chunk_times": [round(t, 4) for t in times],
    }
    if keep_latents:
        out["latents"] = torch.cat(latents, 2)
    if model.graphs is not None:
        model.graphs._drop(None, None)    # this video's graph and its memory go with it
    del gen
    torch.cuda.empty_cache()
    return out


def deviation(latents: dict[str, torch.Tensor]) -> dict:
    """Relative L2 distance of each precision's latents from bf16's, per chunk and overall."""
    ref = latents["bf16"].double()
    out = {}
    for name, lat in latents.items():
        if name == "bf16":
            continue
        d = lat.double() - ref
        per_chunk = [float(d[:, :, i:i + CHUNK].norm() / ref[:, :, i:i + CHUNK].norm())
                     for i in range(0, ref.shape[2], CHUNK)]
        out[name] = {"overall": float(d.norm() / ref.norm()), "per_chunk": [round(x, 5) for x in per_chunk]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 120])
    ap.add_argument("--modes", nargs="+", default=["kv_pool", "full"])
    ap.add_argument("--full-max-seconds", type=float, default=30, help="dense cache only up to this length")
    ap.add_argument("--precisions", nargs="+", choices=("bf16", "fp8"), default=["bf16"])
    ap.add_argument("--decoders", nargs="+", type=decoder_spec, default=["none", "wan"],
                    help="runs without decode, with the Wan VAE stream decode, with the tiny decoder")
    ap.add_argument("--decoder-for", nargs="*", default=[],
                    help="limit decoders to runs of these lengths (seconds); default: every length")
    ap.add_argument("--decode-chunk", type=int, default=1,
                    help="latent frames per decoder pass (0: the whole chunk at once)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    ap.add_argument("--graphs", action="store_true", help="CUDA graphs for the steady-state forward")
    ap.add_argument("--overlap", action="store_true", help="decode on a side stream, overlapping the DiT")
    ap.add_argument("--decode-device", help="decode as `generate --decode-device` does: a worker thread on this "
                                            "device (cuda:1: a second GPU; cuda:0: a side stream of the DiT's)")
    ap.add_argument("--bank-device", choices=("cpu", "same"), default="cpu", help="where the mid bank waits")
    ap.add_argument("--deviation-seconds", type=float, default=0,
                    help="also generate this long a video per precision (DiT only) and compare the latents")
    ap.add_argument("--reference-only", nargs="*", default=[],
                    help="precisions used only as the deviation reference (no timed runs)")
    ap.add_argument("--out", default="benchmarks/results/bench.json")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    results, dev_latents = [], {}
    decoders = {}
    for precision in a.precisions:
        model = build_dit(precision, a.compile, a.graphs)
        g = torch.Generator(device="cuda").manual_seed(0)
        text_kv = model.encode_text(torch.randn(1, 512, 4096, device="cuda", generator=g, dtype=torch.bfloat16))
        for kind in a.decoders:
            base = kind.split(":")[0]
            if base != "none" and base not in decoders:
                decoders[base] = build_decoder(base, a.decode_device or "cuda")
        chunk = lambda kind: a.decode_chunk or None
        dec_of = lambda kind: decoders.get(kind.split(":")[0])
        how = lambda kind: dict(worker=bool(a.decode_device) or ":worker" in kind)
        for kind in (["none"] if precision in a.reference_only else a.decoders):     # warm-up: compile, kernels
            run_one(model, dec_of(kind), text_kv, "kv_pool", 6, a.overlap, chunk(kind), a.bank_device, **how(kind))
        if a.deviation_seconds:
            r = run_one(model, None, text_kv, "kv_pool", a.deviation_seconds, False, None, a.bank_device, True)
            dev_latents[precision] = r["latents"]
        for mode in ([] if precision in a.reference_only else a.modes):
            for sec in a.seconds:
                if mode == "full" and sec > a.full_max_seconds:
                    continue
                for kind in a.decoders:
                    if kind != "none" and a.decoder_for and f"{sec:g}" not in a.decoder_for:
                        continue
                    if mode == "full" and kind != "none":
                        continue
                    r = run_one(model, dec_of(kind), text_kv, mode, sec, a.overlap and kind != "none",
                                chunk(kind), a.bank_device, **how(kind))
                    r.update(precision=precision, decoder=kind)
                    print(json.dumps({k: v for k, v in r.items() if k != "chunk_times"}), flush=True)
                    results.append(r)
                    write(a, results, dev_latents)      # after every run: a cut-short session keeps what ran
        del model, text_kv
        torch.cuda.empty_cache()
    print(markdown(write(a, results, dev_latents)))


def write(a, results: list, dev_latents: dict) -> dict:
    doc = {
        "command": "python " + " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "size": "832x480", "chunk_frames": CHUNK,
        "steps": [1000, 750, 500, 250], "compile": a.compile, "graphs": a.graphs, "bank_device": a.bank_device,
        "results": results,
        "deviation": {"seconds": a.deviation_seconds, **deviation(dev_latents)} if len(dev_latents) > 1 else None,
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write(markdown(doc))
    return doc


def markdown(doc: dict) -> str:
    lines = [f"GPU: {doc['gpu']}, torch {doc['torch']}, CUDA {doc['cuda']}, {doc['size']}, chunks of "
             f"{doc['chunk_frames']} latent frames (16 video frames), 4 steps + commit, compiled blocks: "
             f"{doc['compile']}, CUDA graphs: {doc['graphs']}, mid bank: {doc['bank_device']}.", "",
             f"Command: `{doc['command']}`", "",
             "| mode | precision | video | decoder | chunk first / steady (median >= 20) / max (s) | flatness | "
             "steady fps | whole-run fps | KV GiB (device) | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        c = r["chunk_s"]
        flat = f"{c['flatness']:.3f}" if c["flatness"] else "-"
        dec = r["decoder"].split(":")[0] + (" (overlapped)" if r["overlap"] else "")
        if r.get("decode_thread") and r["decoder"] != "none":
            dec = f"{r['decoder'].split(':')[0]} on {r['decode_device']} (worker thread)"
        dec += ", graphs" if r.get("decode_graphs") and r["decoder"] != "none" else ""   # attempt 21's files
        lines.append(f"| {r['mode']} | {r['precision']} | {r['seconds']:.0f} s | {dec} | "
                     f"{c['first']:.3f} / {c['steady_median']:.3f} / {c['max']:.3f} | {flat} | "
                     f"{r['steady_fps']:.1f} | {r['end_to_end_fps']:.1f} | {r['kv_gib_device']:.2f} | "
                     f"{r['peak_gib']:.2f} |")
    if doc.get("deviation"):
        dv = doc["deviation"]
        for name, d in dv.items():
            if name == "seconds":
                continue
            lines += ["", f"Deviation of {name} from bf16 over a {dv['seconds']:.0f} s video (relative L2 of the "
                          f"latents): overall {d['overall']:.4f}; per chunk: "
                          + ", ".join(f"{x:.4f}" for x in d["per_chunk"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
