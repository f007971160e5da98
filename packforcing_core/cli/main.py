"""The command line (`python -m packforcing_core COMMAND`): the parser, plan and tiny-assets.

  python -m packforcing_core tiny-assets --out DIR      tiny random DiT, VAE, prompt embeddings, text encoder
  python -m packforcing_core plan [cache options]       KV memory and attention budget, nothing allocated
  python -m packforcing_core generate --dit F --vae F --prompt-embeds F --out DIR [options]   (generate.py)
  python -m packforcing_core generate --dit F --vae F --prompt TEXT --text-encoder F --out DIR [options]
  python -m packforcing_core report VIDEO [--out DIR] [--chunk-frames N] [--switches S1,S2]   health report
  python -m packforcing_core train-compressor / evaluate-compressor ...                         (compressor.py)

Every option's help says what it is and shows its default (`--help` of each command).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from ..cache.config import Geometry, plan
from ..model.checkpoint import CheckpointError, save_model
from ..sampling.prompts import save_prompt_embeds
from ..sampling.state import StateError
from . import generate, report as report_cli
from .compressor import add_commands as add_compressor_commands
from .options import HelpFormatter, add_cache_args, cache_config, latent_frames, whole_in


def cmd_plan(a) -> None:
    geo = Geometry(a.layers, a.heads, a.head_dim, a.height // 16, a.width // 16, a.chunk_frames)
    frames = latent_frames(a.frames)
    out = plan(cache_config(a), geo, total_frames=frames)
    out["gib"] = round(out["device_bytes"] / 2 ** 30, 3)
    print(json.dumps(out, indent=1))


def cmd_tiny_assets(a) -> None:
    from ..model.tiny import random_model, random_prompt, tiny_config
    from ..vae.model import WanVAE
    os.makedirs(a.out, exist_ok=True)
    model = random_model(tiny_config(), seed=a.seed)
    save_model(model, os.path.join(a.out, "tiny_dit.safetensors"))
    torch.manual_seed(a.seed)
    vae = WanVAE(dim=8)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(a.out, "tiny_vae.safetensors"))
    save_prompt_embeds(os.path.join(a.out, "tiny_prompt.safetensors"), random_prompt(model.cfg, seed=a.seed),
                       "a tiny random prompt")
    from ..text.tiny import write_tiny_text_encoder
    write_tiny_text_encoder(os.path.join(a.out, "tiny_text_encoder.safetensors"), dim=model.cfg.text_dim, seed=a.seed)
    print(f"wrote tiny_dit.safetensors, tiny_vae.safetensors, tiny_prompt.safetensors, tiny_text_encoder.safetensors "
          f"to {a.out} (random weights: the video is noise-like, for testing the pipeline)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m packforcing_core", formatter_class=HelpFormatter,
                                description="PackForcing: long videos with causal Wan2.1 models and a bounded KV cache.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    generate.add_parser(sub)
    text = "print the KV memory and attention budget of a cache configuration (nothing is allocated)"
    pl = sub.add_parser("plan", help=text, description=text[0].upper() + text[1:] + ".")
    add_cache_args(pl)
    pl.add_argument("--width", type=whole_in(16), default=832, help="video width in pixels")
    pl.add_argument("--height", type=whole_in(16), default=480, help="video height in pixels")
    pl.add_argument("--frames", type=whole_in(1), default=1921, help="video frames, for mode full")
    pl.add_argument("--layers", type=whole_in(1), default=30, help="DiT layers (30: Wan2.1-1.3B)")
    pl.add_argument("--heads", type=whole_in(1), default=12, help="attention heads")
    pl.add_argument("--head-dim", type=whole_in(1), default=128, help="head dimension")
    pl.set_defaults(func=cmd_plan)
    report_cli.add_parser(sub)
    text = "write a tiny random DiT, VAE and prompt embeddings for a test run (the video is noise-like)"
    t = sub.add_parser("tiny-assets", help=text, description=text[0].upper() + text[1:] + ".")
    t.add_argument("--out", required=True, help="folder for the three files (created if missing)")
    t.add_argument("--seed", type=whole_in(0, 2 ** 32 - 1), default=0, help="seed of the random weights")
    t.set_defaults(func=cmd_tiny_assets)
    add_compressor_commands(sub)            # train-compressor, evaluate-compressor
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        (a.func if hasattr(a, "func") else report_cli.run)(a)
    except (CheckpointError, StateError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
