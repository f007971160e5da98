"""The prompts of `generate`: --prompt TEXT or --prompt-embeds FILE, then --prompt-at SECONDS=FILE|TEXT.

A --prompt-at value is a prompt-embeddings file when it ends in .safetensors or .sft, or names an
existing file; anything else is prompt text, encoded with --text-encoder (UMT5-XXL, text/). Every
text of the run is encoded before the DiT is loaded and the encoder is freed before sampling, so its
memory (~6.3 GiB as fp8, ~10.6 GiB as bf16) never adds to the sampling peak.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .options import OptionError
from .prompts import load_prompt_embeds

EMBEDDINGS_SUFFIXES = (".safetensors", ".sft")


@dataclass(frozen=True)
class Switch:
    """One --prompt-at: from `seconds` (after the first generated frame) on, this prompt."""
    seconds: float
    value: str              # a file path or prompt text
    is_file: bool


def is_embeddings_file(value: str) -> bool:
    return value.lower().endswith(EMBEDDINGS_SUFFIXES) or os.path.isfile(value)


def parse_switch(item: str) -> Switch:
    seconds, sep, value = item.partition("=")
    try:
        t = float(seconds)
    except ValueError:
        t = math.nan
    if not sep or not 0 < t < math.inf:
        raise OptionError("--prompt-at", f"{item!r}: use SECONDS=FILE or SECONDS=TEXT with SECONDS > 0, e.g. "
                                         "10=second.safetensors or '10=a fox in the snow'")
    return Switch(t, value, is_embeddings_file(value))


def check_prompts(a) -> None:
    """Parse --prompt-at into a.switches and refuse what cannot work, before anything is loaded."""
    a.switches = [parse_switch(item) for item in a.prompt_at]
    for s in a.switches:
        if s.is_file and not os.path.isfile(s.value):
            raise OptionError("--prompt-at", f"'{s.value}' does not exist (a value ending in .safetensors / .sft "
                                             "is a prompt-embeddings file)")
    texts = (["--prompt"] if a.prompt is not None else []) + [f"--prompt-at {s.seconds:g}=..." for s in a.switches
                                                               if not s.is_file]
    if texts and not a.text_encoder:
        raise OptionError("--text-encoder", f"{texts[0]} is prompt text: give the text encoder file "
                                            "(umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors "
                                            "from ComfyUI's models/text_encoders/), or prompt-embeddings files")
    if a.tokenizer and not a.text_encoder:
        raise OptionError("--tokenizer", "is the text encoder's tokenizer: give --text-encoder too")


def texts_of(a) -> list[str]:
    return ([a.prompt] if a.prompt is not None else []) + [s.value for s in a.switches if not s.is_file]


def prompt_embeddings(a) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the first prompt's embeddings, one per --prompt-at), encoding the texts first, then freeing the
    encoder; prints what the encoder cost."""
    texts = texts_of(a)
    encoded = []
    if texts:
        from .text import encode_prompts
        encoded, report = encode_prompts(a.text_encoder, texts, device=a.device, tokenizer=a.tokenizer)
        for line in report.notes + [report.line()]:
            print(line, flush=True)
    encoded = iter(encoded)
    first = next(encoded) if a.prompt is not None else load_prompt_embeds(a.prompt_embeds)[0]
    return first, [load_prompt_embeds(s.value)[0] if s.is_file else next(encoded) for s in a.switches]


def chunk_of(seconds: float, chunk_frames: int) -> int:
    """The chunk boundary nearest to `seconds` (16 fps, 4 frames per latent frame)."""
    return round(seconds * 16 / (4 * chunk_frames))
