"""GPU run of compressor training: full-size random Wan2.1-1.3B weights, 832x480, 5 s clips.

Writes random DiT / VAE / prompt files, runs the real command
    python -m packforcing_core train-compressor ... (training, held-out evals, the 20 s evaluation)
then measures peak memory and time per step with and without gradient checkpointing (a few steps
each, in-process, on the same clips), and collects everything in --out:
    run.json (command, timings, memory, gaps), train.log, log.csv, loss.png, gap.md, gap.json, gap.png

  python benchmarks/train_compressor.py --out benchmarks/results/h200_train_compressor --steps 100
  python benchmarks/train_compressor.py --size tiny --device cpu --out /tmp/tc   # a dry run on the CPU
Random weights give honest costs; the gaps they give say that training works, not how good a
compressor for a real checkpoint would be.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from packforcing_core.cache.config import CacheConfig  # noqa: E402
from packforcing_core.model.checkpoint import load_model, save_model  # noqa: E402
from packforcing_core.model.dit import CausalWanModel, WanConfig  # noqa: E402
from packforcing_core.model.tiny import tiny_config  # noqa: E402
from packforcing_core.sampling.prompts import save_prompt_embeds  # noqa: E402
from packforcing_core.vae.model import WanVAE  # noqa: E402

SIZES = {  # model, VAE base dim, width, height, clip / eval latent frames, chunk, sink, recent
    "full": dict(cfg=WanConfig(), vae_dim=96, width=832, height=480, clip=20, eval=80, chunk=4, sink=4, recent=4),
    "tiny": dict(cfg=tiny_config(), vae_dim=8, width=64, height=64, clip=10, eval=12, chunk=2, sink=2, recent=2),
}


def init_(module: torch.nn.Module, seed: int) -> None:
    """Random weights with O(1) activations: normal(0, 1/sqrt(fan_in)) matrices, unit norms."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, p[0].numel() ** -0.5, generator=g)
            elif "norm" in name or name.endswith("gamma"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)


def write_assets(size: dict, d: str, device: str) -> dict:
    os.makedirs(d, exist_ok=True)
    with torch.device("meta"):
        model, vae = CausalWanModel(size["cfg"]), WanVAE(dim=size["vae_dim"])
    model, vae = model.to_empty(device=device), vae.to_empty(device=device)
    init_(model, 0)
    init_(vae, 1)
    paths = {"dit": os.path.join(d, "dit.safetensors"), "vae": os.path.join(d, "vae.safetensors")}
    save_model(model.to(torch.bfloat16), paths["dit"])
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, paths["vae"])
    g = torch.Generator().manual_seed(2)
    paths["prompts"] = []
    for i in range(3):                       # two to train on, the third held out
        p = os.path.join(d, f"prompt{i}.safetensors")
        save_prompt_embeds(p, torch.randn(1, 24, size["cfg"].text_dim, generator=g) * 0.2)
        paths["prompts"].append(p)
    del model, vae
    return paths


def probe(paths: dict, work: str, size: dict, device: str, checkpointing: bool, steps: int = 3) -> dict:
    """Peak memory and time per step of a few training steps on the cached clips."""
    from packforcing_core.training.config import TrainConfig
    from packforcing_core.training.data import load_prompts, rollout_clips
    from packforcing_core.training.trainer import Trainer
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_model(paths["dit"], device=device, dtype=dtype)
    prompts = load_prompts(paths["prompts"])
    clips = rollout_clips(model, prompts, [0, 1], size["clip"], size["height"] // 8, size["width"] // 8,
                          size["chunk"], os.path.join(work, "clips"), [0, 1])
    cfg = TrainConfig(branches="hr", steps=steps, batch=1, chunk_frames=size["chunk"], grad_checkpointing=checkpointing,
                      cache=CacheConfig(sink_frames=size["sink"], recent_frames=size["recent"]))
    tr = Trainer(model, clips, [], prompts, cfg, os.path.join(work, f"probe{int(checkpointing)}"))
    tr.train_step()                                   # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = [tr.train_step()["seconds"] for _ in range(steps - 1)]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
    del tr, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"grad_checkpointing": checkpointing, "seconds_per_step": sorted(times)[len(times) // 2],
            "peak_gib": peak, "branches": "hr"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=SIZES, default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--branches", default="hr_lr")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--train-timeout", type=int, default=480, help="seconds the command may run")
    ap.add_argument("--scratch", default="/tmp/packforcing-train-bench")
    a = ap.parse_args()
    size = SIZES[a.size]
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    paths = write_assets(size, os.path.join(a.scratch, "assets"), a.device)
    t_assets = time.perf_counter() - t0
    work = os.path.join(a.scratch, "work")
    cmd = [sys.executable, "-m", "packforcing_core", "train-compressor", "--dit", paths["dit"], "--vae", paths["vae"],
           "--prompt-embeds", *paths["prompts"], "--out", os.path.join(a.scratch, "compressor.safetensors"),
           "--work-dir", work, "--branches", a.branches, "--width", str(size["width"]), "--height", str(size["height"]),
           "--clip-frames", str(size["clip"]), "--clips", str(a.clips), "--eval-clips", "2", "--steps", str(a.steps),
           "--batch", "1", "--lr", str(a.lr), "--warmup", str(max(1, a.steps // 10)), "--eval-every",
           str(max(1, a.steps // 3)), "--save-every", str(a.steps), "--final-eval-frames", str(size["eval"]),
           "--chunk-frames", str(size["chunk"]), "--sink", str(size["sink"]), "--recent", str(size["recent"]),
           "--device", a.device, "--dtype", "bf16" if a.device == "cuda" else "fp32"]
    t1 = time.perf_counter()
    with open(os.path.join(a.out, "train.log"), "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=a.train_timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    t_cmd = time.perf_counter() - t1
    for src, dst in (("log.csv", "log.csv"), ("loss.png", "loss.png"), ("eval/gap.md", "gap.md"),
                     ("eval/gap.json", "gap.json"), ("eval/gap.png", "gap.png")):
        if os.path.exists(os.path.join(work, src)):
            shutil.copy(os.path.join(work, src), os.path.join(a.out, dst))
    probes = []
    if rc == 0:
        for ck in (True,):                            # without checkpointing: the run's own peak_gib
            try:
                probes.append(probe(paths, work, size, a.device, ck))
            except torch.OutOfMemoryError as e:
                probes.append({"grad_checkpointing": ck, "error": str(e)[:200]})
    rows = json.load(open(os.path.join(work, "log.json")))["rows"] if os.path.exists(os.path.join(work, "log.json")) else []
    secs = sorted(r["seconds"] for r in rows[1:]) or [float("nan")]
    summary = {
        "command": " ".join(["python", "-m", "packforcing_core", *cmd[3:]]),
        "returncode": rc, "device": torch.cuda.get_device_name() if a.device == "cuda" else platform.processor(),
        "torch": torch.__version__, "size": a.size, "steps": len(rows),
        "seconds_assets": round(t_assets, 1), "seconds_command": round(t_cmd, 1),
        "seconds_per_step_median": secs[len(secs) // 2],
        "peak_gib_training": max((r.get("peak_gib", 0) for r in rows), default=None),
        "first_loss": rows[0]["loss"] if rows else None,
        "heldout": [{k: r[k] for k in ("step", "heldout_loss", "heldout_gap")} for r in rows if "heldout_gap" in r],
        "probes": probes,
    }
    if os.path.exists(os.path.join(work, "log.json")):
        summary["baselines"] = json.load(open(os.path.join(work, "log.json")))["baselines"]
    if os.path.exists(os.path.join(a.out, "gap.json")):
        summary["gaps"] = {k: {"mean": v["mean"], "last": v["last"]}
                           for k, v in json.load(open(os.path.join(a.out, "gap.json")))["modes"].items()}
    with open(os.path.join(a.out, "run.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "command"}, indent=1))


if __name__ == "__main__":
    main()
