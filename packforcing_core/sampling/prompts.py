"""Prompt-embeddings files: the text encoder's output saved once, reused without loading it.

Format (safetensors): tensor "prompt_embeds" float (B, tokens, text_dim) — for Wan2.1 the umt5-xxl
output, text_dim 4096, at most 512 tokens — and optional metadata "prompt" (the text).
"""
from __future__ import annotations

import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io.files import input_file

KEY = "prompt_embeds"


def save_prompt_embeds(path: str, embeds: torch.Tensor, prompt: str | None = None) -> None:
    if embeds.dim() != 3:
        raise ValueError(f"prompt embeddings must be (batch, tokens, width), got shape {tuple(embeds.shape)}")
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({KEY: embeds.detach().float().contiguous().cpu()}, tmp,
              metadata={"prompt": prompt} if prompt else None)
    os.replace(tmp, path)


def load_prompt_embeds(path: str) -> tuple[torch.Tensor, str | None]:
    input_file("prompt embeddings file", path)
    try:
        with safe_open(path, "pt") as f:
            if KEY not in f.keys():
                raise ValueError(f"'{path}' has no '{KEY}' tensor: it is not a prompt-embeddings file")
            embeds, prompt = f.get_tensor(KEY), (f.metadata() or {}).get("prompt")
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"prompt embeddings file '{path}' is corrupt or not safetensors ({e})") from e
    if bad := int((~torch.isfinite(embeds.float())).sum()):
        raise ValueError(f"prompt embeddings file '{path}' holds {bad} NaN/inf values: save the embeddings again")
    return embeds, prompt
