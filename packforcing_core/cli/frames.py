"""`generate`'s decoded output: the decoder on --decode-device, OUT/video.mp4 and OUT/frames.npy.

Each committed chunk goes to a DecodeWorker (vae/decode_worker.py) that decodes it on the decode
device while the DiT samples the next chunk, and writes it into the mp4 at once.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..io.mp4 import Mp4Writer
from ..vae.decode_worker import DecodeWorker

ENCODING_MODES = ("lr", "hr_lr")       # cache modes that re-encode history with the VAE on the DiT's device


def load_decoders(a, device: str, dtype: torch.dtype, encodes: bool = False):
    """(the Wan VAE on the DiT's device, or None where nothing there needs it; the decoder on
    --decode-device, or None with --no-decode or no decoder file). encodes: a start is VAE-encoded."""
    from ..vae.model import load_vae
    decode_device = device if a.decode_device is None or same_device(a.decode_device, device) else a.decode_device
    encodes = encodes or a.cache_mode in ENCODING_MODES
    vae = load_vae(a.vae, device=device, dtype=dtype) if a.vae and (encodes or decode_device == device) else None
    if a.no_decode:
        return vae, None
    if a.tiny_decoder:
        from ..vae.taehv import load_tiny_decoder
        decoder = load_tiny_decoder(a.tiny_decoder, device=decode_device, dtype=dtype)
    elif a.vae:
        decoder = vae if decode_device == device else load_vae(a.vae, device=decode_device, dtype=dtype)
    else:
        return vae, None
    return vae, decoder.channels_last() if decoder.device.type == "cuda" else decoder


def same_device(x: str, y: str) -> bool:
    """'cuda' and 'cuda:0' are one device (when cuda:0 is the current one)."""
    dx, dy = torch.device(x), torch.device(y)
    if dx.type == dy.type == "cuda":
        cur = torch.cuda.current_device()
        return (cur if dx.index is None else dx.index) == (cur if dy.index is None else dy.index)
    return dx == dy


class FrameWriter:
    """Decodes each committed chunk on the decoder's device while the DiT goes on, encodes it into
    OUT/video.mp4 at once, and keeps its uint8 frames for OUT/frames.npy."""

    def __init__(self, decoder, out: str):
        self.path, self.frames = os.path.join(out, "frames.npy"), []
        self.video_path, self.video = os.path.join(out, "video.mp4"), None
        self.worker = DecodeWorker(decoder, self._write)

    def add(self, latent: torch.Tensor) -> None:
        self.worker.put(latent)

    def _write(self, frames: torch.Tensor) -> None:          # on the decode worker's thread, in order
        frames = frames.numpy()
        if self.video is None:
            self.video = Mp4Writer(self.video_path, frames.shape[2], frames.shape[1])
        self.video.add(frames)
        self.frames.append(frames.copy() if self.worker.cuda else frames)     # pinned buffers are not kept

    def abort(self) -> None:
        try:
            self.worker.close()
        except Exception:  # noqa: BLE001 - the run's own error is the one to report
            pass
        if self.video is not None:
            self.video.abort()

    def close(self) -> int:
        try:
            self.worker.close()
        except BaseException:
            self.abort()
            raise
        arr = np.concatenate(self.frames) if self.frames else np.zeros((0, 0, 0, 3), np.uint8)
        tmp = self.path + ".tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, self.path)
        if self.video is not None:
            self.video.close()
        return arr.shape[0]
