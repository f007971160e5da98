"""The prompts of `generate`: --prompt TEXT or --prompt-embeds FILE, then --prompt-at SECONDS=FILE|TEXT.

A --prompt-at value is a prompt-embeddings file when it ends in .safetensors or .sft, or names an
existing file; anything else is prompt text, encoded with --text-encoder (UMT5-XXL, text/). Every
text of the run is encoded before the DiT is loaded and the encoder is freed before sampling, so its
memory (~6.3 GiB as fp8, ~10.6 GiB as bf16) never adds to the sampling peak.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling.prompts import load_prompt_embeds
from .options import OptionError, is_embeddings_file, prompt_at_items


@dataclass(frozen=True)
class Switch:
    """One --prompt-at: from `seconds` (after the first generated frame) on, this prompt."""
    seconds: float
    value: str              # a file path or prompt text
    is_file: bool


def switches(a) -> list[Switch]:
    return [Switch(t, v, is_embeddings_file(v)) for t, v in prompt_at_items(a)]


def check_texts(a) -> None:
    """Text prompts need the text encoder; a tokenizer belongs to one."""
    texts = (["--prompt"] if a.prompt is not None else []) + [f"--prompt-at {s.seconds:g}=..." for s in switches(a)
                                                               if not s.is_file]
    if texts and not a.text_encoder:
        raise OptionError("--text-encoder", f"{texts[0]} is prompt text: give the text encoder file "
                                            "(umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors "
                                            "from ComfyUI's models/text_encoders/), or prompt-embeddings files")
    if a.tokenizer and not a.text_encoder:
        raise OptionError("--tokenizer", "is the text encoder's tokenizer: give --text-encoder too")


def load_embeds(option: str, path: str) -> torch.Tensor:
    try:
        return load_prompt_embeds(path)[0]
    except ValueError as e:
        raise OptionError(option, str(e)) from None


def file_embeddings(a) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """The embeddings files of the run, read (None where a prompt is text)."""
    first = None if a.prompt is not None else load_embeds("--prompt-embeds", a.prompt_embeds)
    return first, [load_embeds("--prompt-at", s.value) if s.is_file else None for s in switches(a)]


def encode_texts(a, first: torch.Tensor | None, rest: list[torch.Tensor | None]):
    """Fill in the text prompts: encode them all, then free the encoder; prints what it cost."""
    texts = ([a.prompt] if a.prompt is not None else []) + [s.value for s in switches(a) if not s.is_file]
    if not texts:
        return first, rest
    from ..text import encode_prompts
    encoded, report = encode_prompts(a.text_encoder, texts, device=a.device, tokenizer=a.tokenizer)
    for line in report.notes + [report.line()]:
        print(line, flush=True)
    encoded = iter(encoded)
    first = next(encoded) if first is None else first
    return first, [e if e is not None else next(encoded) for e in rest]
