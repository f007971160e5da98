"""Encode time and GPU memory of the UMT5-XXL text encoder (packforcing_core/text) at the real sizes.

Random weights at UMT5-XXL's shapes (24 layers, width 4096, 64 heads of 64, gated feed-forward 10240,
256384 embedding rows) are built on the GPU in the two layouts of ComfyUI's files:
  fp8:  linear weights float8_e4m3fn with a per-tensor scale, the rest bf16 (umt5_xxl_fp8_e4m3fn_scaled)
  bf16: every tensor bf16 (umt5_xxl_fp16 / bf16)
and run through the same encoder class as `generate --prompt`. The tokenizer is a small one trained
here (no download); only the token count matters for the time. Reported per layout: the GPU memory
of the weights, the peak while encoding, what is left after the encoder is freed (all above what was
allocated before), and the median encode time of a short and a long prompt. With --from-file DIR the
weights are also written as a ComfyUI-layout file and run through encode_prompts (what `generate
--prompt` does: read the file onto the GPU, encode, free), timed from the file to the embeddings.

    python benchmarks/bench_text_encoder.py [--formats fp8 bf16] [--from-file DIR] [--log FILE]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from packforcing_core.text.encoder import TextEncoder  # noqa: E402
from packforcing_core.text.tiny import train_spiece  # noqa: E402
from packforcing_core.text.tokenizer import UMT5Tokenizer  # noqa: E402
from packforcing_core.text.umt5 import UMT5Encoder  # noqa: E402
from packforcing_core.text.weights import EncoderWeights, UMT5Config, expected_shapes, linear_names  # noqa: E402

XXL = UMT5Config(vocab=256384, dim=4096, inner=4096, heads=64, ffn=10240, layers=24)
GIB = 2 ** 30
SHORT = "a red fox running through snow"
LONG = ("a red fox running through snow in a golden forest at dawn, cinematic wide shot, the camera slowly "
        "follows the fox as it jumps over a frozen river, soft warm light, mist between the trees, ") * 3


def random_weights(cfg: UMT5Config, fmt: str, device) -> EncoderWeights:
    """Tensors of the file's layout, built one at a time on the GPU (no host copy)."""
    shapes = expected_shapes(cfg) | {"shared.weight": (cfg.vocab, cfg.dim)}
    linears = {f"{n}.weight" for n in linear_names(cfg.layers)}
    tensors, scales = {}, {}
    g = torch.Generator(device).manual_seed(0)
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16)
        if name in linears:
            t /= shape[1] ** 0.5
            if fmt == "fp8":
                scale = t.abs().max().float() / 448.0
                tensors[name] = (t.float() / scale).to(torch.float8_e4m3fn)
                scales[name[: -len(".weight")]] = scale
                continue
        elif "norm" in name:
            t = 1 + 0.1 * t
        tensors[name] = t
    return EncoderWeights(cfg, tensors, scales, spiece=None)


def measure(fmt: str, tokenizer: UMT5Tokenizer, device, repeats: int) -> dict:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    weights = random_weights(XXL, fmt, device)
    enc = TextEncoder(UMT5Encoder(weights), tokenizer)
    del weights
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_allocated(device) - base
    torch.cuda.reset_peak_memory_stats(device)
    out = {"format": fmt, "weights_gib": held / GIB}
    for label, text in (("short", SHORT), ("long", LONG)):
        enc.encode(text)                                    # warm-up
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            enc.encode(text)                                # ends with the copy to the CPU
            times.append(time.perf_counter() - t0)
        out[f"{label}_tokens"] = len(tokenizer.tokenize(text).ids)
        out[f"{label}_ms"] = 1000 * statistics.median(times)
    out["peak_gib"] = (torch.cuda.max_memory_allocated(device) - base) / GIB
    enc.close()
    del enc
    torch.cuda.synchronize()
    out["after_free_gib"] = (torch.cuda.memory_allocated(device) - base) / GIB
    out["reserved_after_free_gib"] = torch.cuda.memory_reserved(device) / GIB
    return out


def from_file(fmt: str, spiece: bytes, folder: str, device) -> str:
    """Write the random weights as a file of ComfyUI's layout, then load + encode + free it as the CLI does."""
    from safetensors.torch import save_file
    from packforcing_core.text.encoder import encode_prompts
    w = random_weights(XXL, fmt, device)
    sd = {k: v.cpu() for k, v in w.tensors.items()} | {f"{k}.scale_weight": v.cpu() for k, v in w.scales.items()}
    del w
    torch.cuda.empty_cache()
    if fmt == "fp8":
        sd["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    path = os.path.join(folder, f"umt5_xxl_random_{fmt}.safetensors")
    t0 = time.perf_counter()
    save_file(sd, path)
    del sd
    written = time.perf_counter() - t0
    _, r = encode_prompts(path, [SHORT, LONG], device=str(device))
    os.remove(path)
    return (f"{fmt} from file ({os.path.basename(path)}, written in {written:.1f} s): {r.line()} "
            f"[load + 2 prompts + free]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", nargs="+", default=["fp8", "bf16"], choices=["fp8", "bf16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--from-file", metavar="DIR", help="also time encode_prompts on a written file (needs ~12 GB there)")
    p.add_argument("--log", help="also write the report to this file")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_text_encoder needs a CUDA GPU")
    device = torch.device("cuda", 0)
    spiece = train_spiece()
    tokenizer = UMT5Tokenizer(spiece)
    lines = [f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}",
             "# python benchmarks/bench_text_encoder.py --formats " + " ".join(a.formats)
             + (f" --from-file {a.from_file}" if a.from_file else "") + f" --repeats {a.repeats} --log <this file>",
             "# UMT5-XXL shapes, random weights, float32 arithmetic (as ComfyUI); memory above the "
             "allocation before loading",
             "format | weights GiB | peak GiB | after free GiB | short prompt (tokens) ms | long prompt (tokens) ms"]
    emit(lines, a.log, "w")
    for fmt in a.formats:
        r = measure(fmt, tokenizer, device, a.repeats)
        emit([f"{fmt} | {r['weights_gib']:.2f} | {r['peak_gib']:.2f} | {r['after_free_gib']:.2f} "
              f"(reserved {r['reserved_after_free_gib']:.2f}) | {r['short_ms']:.1f} ({r['short_tokens']}) | "
              f"{r['long_ms']:.1f} ({r['long_tokens']})"], a.log)
    for fmt in a.formats if a.from_file else ():
        emit([from_file(fmt, spiece, a.from_file, device)], a.log)


def emit(lines: list[str], log: str | None, mode: str = "a") -> None:
    """Print, and append to the log as results come (a run cut short keeps what it measured)."""
    print("\n".join(lines), flush=True)
    if log:
        with open(log, mode) as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
