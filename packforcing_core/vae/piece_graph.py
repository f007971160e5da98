"""CUDA graphs for the stream decoder's pieces.

After the first pieces of a video every piece has the same shapes: one latent frame in (with
chunk_size 1), four frames out, and each causal conv's cache the same size. Only values change. So
once a piece's input and cache shapes have repeated `warmup` times, the piece is captured once as a
CUDA graph: the caches live in static tensors that the graph reads at the start of a piece and
overwrites at its end (program order on one stream makes that safe), and each later piece is one
replay instead of hundreds of kernel launches. A change of shape (another size, a new video) goes
back to eager calls; a failed capture switches graphs off for the stream.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("packforcing")


def _state_key(state: dict) -> tuple:
    return tuple(sorted(((id(k), tuple(v.shape), v.dtype, v.stride()) if torch.is_tensor(v) else (id(k), v))
                        for k, v in state.items()))


class PieceGraph:
    """Calls fn(z, state) -> pixels eagerly, or as a graph replay once the shapes repeat."""

    def __init__(self, fn, warmup: int = 2):
        self.fn, self.warmup = fn, warmup
        self.failed = False
        self.captures = 0
        self._reset(None)

    def _reset(self, key) -> None:
        self.key, self.seen = key, 0
        self.graph = self.z = self.cache = self.out = None

    def __call__(self, z: torch.Tensor, state: dict) -> torch.Tensor:
        if self.failed or z.device.type != "cuda" or torch.is_grad_enabled():
            return self.fn(z, state)
        key = (tuple(z.shape), z.dtype, z.stride(), _state_key(state))
        if self.graph is not None and key == self.key:
            return self._replay(z)
        if key != self.key:
            self._reset(key)
        if self.seen >= self.warmup and self._capture(z, state):
            return self._replay(z)
        out = self.fn(z, state)
        if _state_key(state) == key[3]:         # the piece left its caches the shapes it found them in
            self.seen += 1
        else:
            self._reset(None)
        return out

    def _capture(self, z: torch.Tensor, state: dict) -> bool:
        self.z = z.clone()
        self.cache = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        work = dict(self.cache)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.out = self.fn(self.z, work)
                for k, v in work.items():          # the new caches into the static ones, at the end
                    if torch.is_tensor(v):
                        self.cache[k].copy_(v)
        except Exception as e:  # noqa: BLE001 - any capture failure: eager from now on
            log.warning("PackForcing: CUDA graph capture of the decoder failed (%s: %s); decoding without graphs",
                        type(e).__name__, e)
            self.failed = True
            self._reset(None)
            return False
        state.update(self.cache)                   # the stream's caches are the static tensors from now on
        self.graph = graph
        self.key = (tuple(z.shape), z.dtype, z.stride(), _state_key(state))
        self.captures += 1
        return True

    def _replay(self, z: torch.Tensor) -> torch.Tensor:
        self.z.copy_(z)
        self.graph.replay()
        return self.out.clone()                    # the next replay overwrites out
