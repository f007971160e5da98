"""Noise of the AR sampler: per chunk, from (seed, chunk index), or replayed from a noise bank.

Chunk i uses its own generator, so chunk i's noise does not depend on how many chunks came
before it in this process: resuming at chunk i, or changing the prompt at chunk i, leaves
chunks < i bit-identical. Each chunk draws, in order, its initial noise and then one epsilon per
re-noising (steps - 1 of them), all on the CPU in float32, so every device gets the same numbers.

Noise bank file (safetensors), for replaying another implementation's noise exactly:
  "chunk.{i}.init"        float32 (B, 16, F, h, w): the initial noise of chunk i
  "chunk.{i}.renoise.{j}" float32 (B, 16, F, h, w): the epsilon of the j-th re-noising of chunk i
                          (j = 0 .. steps-2, after denoising step j)
"""
from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io.files import input_file

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads neighbouring (seed, chunk) pairs apart


def chunk_seed(seed: int, chunk: int) -> int:
    return (int(seed) * 1_000_003 + int(chunk) * _MIX) % (2 ** 63)


def _key_init(chunk: int) -> str:
    return f"chunk.{chunk}.init"


def _key_renoise(chunk: int, j: int) -> str:
    return f"chunk.{chunk}.renoise.{j}"


class SeededNoise:
    """Deterministic noise from (seed, chunk). draw(chunk, n, shape) -> n tensors."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def draw(self, chunk: int, count: int, shape) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(chunk_seed(self.seed, chunk))
        return [torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(count)]


class NoiseBank:
    """Noise replayed from a safetensors file (see module docstring)."""

    def __init__(self, path: str):
        input_file("noise bank", path)
        self.path = path
        try:
            with safe_open(path, "pt") as f:
                self.keys = set(f.keys())
        except Exception as e:
            raise ValueError(f"noise bank '{path}' is not a readable safetensors file ({e})") from e

    def draw(self, chunk: int, count: int, shape) -> list[torch.Tensor]:
        names = [_key_init(chunk)] + [_key_renoise(chunk, j) for j in range(count - 1)]
        missing = [n for n in names if n not in self.keys]
        if missing:
            raise ValueError(f"noise bank '{self.path}' has no {missing[0]}: it covers fewer chunks or "
                             f"steps than this run needs")
        with safe_open(self.path, "pt") as f:
            out = [f.get_tensor(n).float() for n in names]
        for n, t in zip(names, out):
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"noise bank '{self.path}': {n} has shape {tuple(t.shape)}, "
                                 f"this run needs {tuple(shape)} (other size or chunk length?)")
        return out


class RecordingNoise:
    """Wraps a noise source and remembers what it handed out, to write a noise bank."""

    def __init__(self, source):
        self.source = source
        self.tensors: dict[str, torch.Tensor] = {}

    def draw(self, chunk: int, count: int, shape) -> list[torch.Tensor]:
        out = self.source.draw(chunk, count, shape)
        self.tensors[_key_init(chunk)] = out[0]
        for j, t in enumerate(out[1:]):
            self.tensors[_key_renoise(chunk, j)] = t
        return out

    def save(self, path: str) -> None:
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, path)
