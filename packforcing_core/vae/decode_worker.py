"""Decoding on a device of its own, while the DiT goes on with the next chunk.

The sampler's thread hands each committed chunk's latent to `DecodeWorker.put` and carries on; a
worker thread decodes it on the decoder's device: the DiT's GPU on a side stream (the default), a
second GPU (`cuda:1`), or the CPU. `put` never waits for a GPU: a latent in host memory is copied
into pinned memory (uploaded non-blocking on the decoder's stream by the worker); a latent on a GPU
is copied to pinned host memory non-blocking on its producer's stream, with an event the worker
waits on. The worker converts the frames to uint8 on the decoder's device, copies them back into
pinned host memory non-blocking and waits for that copy's event (the only wait, in the worker),
then hands them to `sink` in order. The queue holds `depth` chunks, so memory stays flat.

The frames are those of the stream decoder run directly: same kernels, same dtype, only the stream
and the thread differ.
"""
from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from typing import Callable

import torch


def device_problem(name: str) -> str | None:
    """Why `name` is not a device this machine can decode on (None: it is): the message says what
    to use instead."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        return f"'{name}' is not a device: use cpu, cuda or cuda:N"
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        return f"'{name}': use cpu, cuda or cuda:N"
    if not torch.cuda.is_available():
        return f"'{name}': this machine has no usable CUDA GPU; use cpu"
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        return f"'{name}': this machine has {count} CUDA device{'s' if count > 1 else ''} (cuda:0 .. cuda:{count - 1})"
    return None


def to_uint8(px: torch.Tensor) -> torch.Tensor:
    """Decoded pixels (3, F, H, W) in [-1, 1] -> uint8 frames (F, H, W, 3), on px's device."""
    return ((px.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


class DecodeWorker:
    """Decodes latent chunks (B, 16, F, h, w; batch item 0) in order on `decoder`'s device and passes
    uint8 frames (F, H, W, 3) in host memory to `sink(frames)`, on the worker thread.

    An error of the decode or the sink comes back to the caller at the next put() or at close()."""

    def __init__(self, decoder, sink: Callable[[torch.Tensor], None], chunk_size: int | None = 1, depth: int = 2):
        self.decoder, self.sink = decoder, sink
        self.device, self.dtype = decoder.device, decoder.dtype
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.stream_decoder = decoder.stream_decoder(chunk_size)
        self.frames, self.error = 0, None
        self.chunks: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name="packforcing-decode", daemon=True)
        self.thread.start()

    def put(self, latent: torch.Tensor) -> None:
        """The next latent frames of the video, normalised as the DiT sees them."""
        if self.error is not None:
            raise self.error
        latent = latent.detach()[:1]
        ready = None
        if latent.device.type == "cuda":           # to pinned host memory, without waiting here
            host = torch.empty(latent.shape, dtype=latent.dtype, pin_memory=True)
            host.copy_(latent, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(latent.device))
            latent = host
        elif self.cuda and not latent.is_pinned():
            latent = latent.pin_memory()
        self.chunks.put((latent, ready))

    def _run(self) -> None:
        if self.cuda:
            torch.cuda.set_device(self.device)
        with torch.no_grad(), (torch.cuda.stream(self.stream) if self.cuda else nullcontext()):
            while (item := self.chunks.get()) is not None:
                if self.error is not None:
                    continue                  # keep draining, so put() never blocks forever
                try:
                    self.sink(self._decode(*item))
                except BaseException as e:  # noqa: BLE001 - handed to the caller at put() / close()
                    self.error = e

    def _decode(self, latent: torch.Tensor, ready) -> torch.Tensor:
        if ready is not None:
            ready.synchronize()               # the producer's device -> host copy
        z = latent.to(self.device, self.dtype, non_blocking=True)
        u8 = to_uint8(self.stream_decoder.decode(z)[0])
        if not self.cuda:
            self.frames += u8.shape[0]
            return u8
        host = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(u8, non_blocking=True)
        done = torch.cuda.Event()
        done.record(self.stream)
        done.synchronize()
        self.frames += host.shape[0]
        return host

    def close(self) -> None:
        """Decode everything queued, stop the worker; raises the first decode or sink error."""
        if self.thread is None:
            return
        self.chunks.put(None)
        self.thread.join()
        self.thread = None
        if self.error is not None:
            raise self.error
