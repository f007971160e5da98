"""Prompt text -> Wan prompt embeddings (1, 512, 4096), equal to ComfyUI's CLIPLoader (type wan) +
CLIPTextEncode on the same file, without ComfyUI.

The encoder is loaded, every prompt of a run is encoded, and it is freed before the DiT is loaded,
so its memory (UMT5-XXL: ~6.3 GiB as fp8, ~10.6 GiB as bf16) never adds to the sampling peak.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch

from .tokenizer import MIN_LENGTH, TokenizerError, UMT5Tokenizer
from .umt5 import UMT5Encoder
from .weights import TextEncoderFileError, file_shapes, read_encoder

GIB = 2 ** 30
WORKSPACE = GIB                 # activations and one layer's float32 weights, on top of the file's tensors


class TextEncoder:
    """A UMT5 text encoder and its tokenizer; `encode(text)` gives ComfyUI's conditioning tensor."""

    def __init__(self, model: UMT5Encoder, tokenizer: UMT5Tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu", tokenizer: str | None = None) -> "TextEncoder":
        """`tokenizer`: a sentencepiece model file, for encoder files that do not carry one."""
        weights = read_encoder(path, device)
        if tokenizer is not None:
            tok = UMT5Tokenizer.from_file(tokenizer)
        elif weights.spiece is not None:
            tok = UMT5Tokenizer.from_tensor(weights.spiece, source=f"the 'spiece_model' of '{path}'")
        else:
            raise TokenizerError(f"'{path}' carries no tokenizer (no 'spiece_model' tensor, which ComfyUI's own "
                                 "files have): give UMT5's sentencepiece model, spiece.model of google/umt5-xxl, "
                                 "with --tokenizer spiece.model")
        if tok.vocab_size > weights.cfg.vocab:
            raise TokenizerError(f"the tokenizer has {tok.vocab_size} tokens but '{path}' embeds only "
                                 f"{weights.cfg.vocab}: they do not belong together; give UMT5's spiece.model")
        return cls(UMT5Encoder(weights), tok)

    @property
    def width(self) -> int:
        return self.model.cfg.dim

    def encode(self, text: str) -> torch.Tensor:
        """(1, max(512, tokens), width) float32 on the CPU: the prompt's outputs, then zeros."""
        tokens = self.tokenizer.tokenize(text)
        n = len(tokens.ids)
        z = self.model(torch.tensor([tokens.ids]))[0]
        if tokens.weighted:
            z = self._apply_weights(z, tokens.weights)
        out = torch.zeros(1, max(MIN_LENGTH, n), z.shape[-1])
        out[0, :n] = z.cpu()
        return out

    def _apply_weights(self, z: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """ComfyUI's token weights: each weighted output moves away from the empty prompt's output at its
        position by the weight, (z - empty) * w + empty. The empty prompt is the end token alone, so
        its output is zero past the first position."""
        empty = torch.zeros_like(z)
        empty[0] = self.model(torch.tensor([[self.tokenizer.end_id]]))[0, 0]
        w = torch.tensor(weights, dtype=z.dtype, device=z.device)[:, None]
        return torch.where(w != 1.0, (z - empty) * w + empty, z)

    def close(self) -> None:
        """Drop the weights (on a GPU the memory goes back to the driver)."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class EncodeReport:
    device: str
    weights_bytes: int = 0          # GPU memory the loaded encoder holds
    peak_bytes: int = 0             # GPU peak while loading and encoding, above what was allocated before
    left_bytes: int = 0             # GPU memory still allocated after freeing it, above what was before
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.device.startswith("cuda"):
            return f"text encoder: encoded on {self.device} in {self.seconds:.1f} s, freed before sampling"
        return (f"text encoder: {self.weights_bytes / GIB:.2f} GiB of weights on {self.device}, peak "
                f"{self.peak_bytes / GIB:.2f} GiB, encoded in {self.seconds:.1f} s; freed before sampling "
                f"({self.left_bytes / GIB:.2f} GiB left)")


def choose_device(path: str, device: str) -> tuple[str, str | None]:
    """(device to encode on, a note): the CPU when the GPU has too little free memory for the file."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return device, None
    _, nbytes = file_shapes(path)
    free = torch.cuda.mem_get_info(dev)[0]
    if nbytes + WORKSPACE <= free:
        return device, None
    return "cpu", (f"text encoder: {(nbytes + WORKSPACE) / GIB:.1f} GiB needed on {device} but "
                   f"{free / GIB:.1f} GiB is free; encoding on the CPU (slower)")


def encode_prompts(path: str, texts: list[str], device: str = "cpu",
                   tokenizer: str | None = None) -> tuple[list[torch.Tensor], EncodeReport]:
    """Load the encoder, encode every text, free the encoder; the embeddings and what it cost."""
    import time
    device, note = choose_device(path, device)
    report = EncodeReport(device=device, notes=[note] if note else [])
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    enc = TextEncoder.load(path, device, tokenizer)
    try:
        if cuda:
            report.weights_bytes = torch.cuda.memory_allocated(device) - base
        out = [enc.encode(t) for t in texts]
    finally:
        enc.close()
        del enc
    report.seconds = time.perf_counter() - t0
    if cuda:
        report.peak_bytes = torch.cuda.max_memory_allocated(device) - base
        report.left_bytes = torch.cuda.memory_allocated(device) - base
    return out, report


__all__ = ["TextEncoder", "EncodeReport", "encode_prompts", "choose_device", "TextEncoderFileError", "TokenizerError"]
