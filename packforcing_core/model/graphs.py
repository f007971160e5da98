"""CUDA graphs for the DiT forward once the cache is in steady state.

When a bounded cache is full, every forward of every chunk runs the same kernels on the same shapes
against the same buffers; only values change (the noisy latent, the timestep, the chunk's RoPE, the
mid blocks gathered into the buffer). So the whole forward (embedding, every block with its cache
attention, head) is captured once as a CUDA graph and replayed: one launch instead of thousands, and
the GPU no longer waits for Python between kernels.

The attention context says what a captured forward depends on besides its inputs (`graph_key()`:
buffer addresses and the attended span). A key must repeat `warmup` forwards in a row before it is
captured: the eager forwards before it compile and pick kernels, and a key that changes every chunk
(the dense `full` cache, a cache still filling) is never captured. Inputs are copied into static
tensors before each replay, the prompt's K/V too when another prompt comes. If a capture fails,
graphs are switched off with a warning and the eager forward carries on.
"""
from __future__ import annotations

import logging
import weakref

import torch

log = logging.getLogger("packforcing")


class GraphRunner:
    """Stands in for CausalWanModel.forward (see CausalWanModel.enable_cuda_graphs)."""

    def __init__(self, model, warmup: int = 6):
        self.model, self.warmup = model, warmup
        self.failed = False
        self.captures = 0                 # how many graphs were captured (for tests and reports)
        self._drop(None, None)

    def _drop(self, key, ctx) -> None:
        self.key, self.seen = key, 0
        self.ctx = weakref.ref(ctx) if ctx is not None else None
        self.graph = self.x = self.t = self.text = self.text_src = self.out = None

    def _key(self, x, t, ctx, text_kv):
        if self.failed or x.device.type != "cuda" or torch.is_grad_enabled():
            return None
        get = getattr(ctx, "graph_key", None)
        ctx_key = get() if get is not None else None
        if ctx_key is None:
            return None
        return ctx_key, tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, len(text_kv), tuple(text_kv[0][0].shape)

    def __call__(self, x, t, ctx, text_kv):
        key = self._key(x, t, ctx, text_kv)
        if key is None:
            return self.model.eager_forward(x, t, ctx, text_kv)
        if key != self.key or self.ctx is None or self.ctx() is not ctx:
            self._drop(key, ctx)
        if self.graph is None:
            self.seen += 1
            if self.seen <= self.warmup or not self._capture(x, t, ctx, text_kv):
                return self.model.eager_forward(x, t, ctx, text_kv)
        return self._replay(x, t, text_kv)

    def _capture(self, x, t, ctx, text_kv) -> bool:
        self.x, self.t = x.clone(), t.clone()
        self.text = [tuple(e.clone() for e in layer) for layer in text_kv]
        self.text_src = text_kv
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):      # one forward on a side stream first, as PyTorch advises
                self.model.eager_forward(self.x, self.t, ctx, self.text)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.out = self.model.eager_forward(self.x, self.t, ctx, self.text)
        except Exception as e:  # noqa: BLE001 - any capture failure: eager from now on
            log.warning("PackForcing: CUDA graph capture failed (%s: %s); continuing without graphs",
                        type(e).__name__, e)
            self.failed = True
            self._drop(None, None)
            return False
        self.graph = graph
        self.captures += 1
        return True

    def _replay(self, x, t, text_kv):
        self.x.copy_(x)
        self.t.copy_(t)
        if text_kv is not self.text_src:       # another prompt: its K/V into the captured tensors
            for dst, src in zip(self.text, text_kv):
                for d, s in zip(dst, src):
                    d.copy_(s)
            self.text_src = text_kv
        self.graph.replay()
        return self.out.clone()
