"""Streaming encode and decode: a video chunk by chunk, each causal conv's last frames carried in the
stream's state, so the outputs do not depend on how the video is split. `vae` is a WanVAE (model.py)."""
from __future__ import annotations

import torch

from .blocks import State


class _Stream:
    """Shared bookkeeping of the stream encoder/decoder: the cache and the stream's shape."""

    def __init__(self, vae: WanVAE, chunk_size: int | None):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None; got {chunk_size}")
        self.vae = vae
        self.chunk_size = chunk_size
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next call starts a new video."""
        self._state: State = {}
        self._shape = None  # (B, H, W) of the stream, fixed by the first call
        self.frames_in = 0

    def cache_bytes(self) -> int:
        """Memory held by the causal cache; constant after the first calls, whatever the video length."""
        return sum(v.numel() * v.element_size() for v in self._state.values() if torch.is_tensor(v))

    def _check_same_stream(self, x: torch.Tensor) -> None:
        shape = (x.shape[0], x.shape[3], x.shape[4])
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"chunk has batch/height/width {shape} but this stream started with "
                             f"{self._shape}; call reset() to start a new video")
        self._shape = shape


class StreamDecoder(_Stream):
    """Decode a latent video chunk by chunk. The first call with T1 frames returns 4*T1-3 frames,
    later calls with T frames return 4*T; all outputs concatenated equal WanVAE.decode of all."""

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 5 or latent.shape[1] != self.vae.z_dim or latent.shape[2] < 1:
            raise ValueError(f"expected a latent chunk (B, {self.vae.z_dim}, T>=1, h, w); "
                             f"got {tuple(latent.shape)}")
        self._check_same_stream(latent)
        z = latent.to(self.vae.device)
        pieces = z.split(self.chunk_size or z.shape[2], dim=2)
        out = torch.cat([self.vae._decode_piece(p, self._state) for p in pieces], dim=2)
        self.frames_in += latent.shape[2]
        return out


class StreamEncoder(_Stream):
    """Encode a video chunk by chunk: the first call takes 1+4a frames (-> 1+a latents), later
    calls 4b frames (-> b latents); outputs concatenated equal WanVAE.encode of the whole video."""

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        first = self.frames_in == 0
        _check_frames(frames, self.vae, first)
        self._check_same_stream(frames)
        x = frames.to(device=self.vae.device, dtype=self.vae.dtype)
        out = torch.cat([self.vae._encode_piece(p, self._state) for p in self._pieces(x, first)], dim=2)
        self.frames_in += frames.shape[2]
        return out

    def _pieces(self, x: torch.Tensor, first: bool) -> list[torch.Tensor]:
        """Split on latent-frame boundaries: chunk_size latent frames per piece."""
        if self.chunk_size is None:
            return [x]
        size = self.chunk_size * self.vae.temporal_stride
        head = 1 + size - self.vae.temporal_stride if first else 0  # the first latent needs 1 frame
        pieces = [x[:, :, :head]] if head else []
        if x.shape[2] > head:
            pieces += x[:, :, head:].split(size, dim=2)
        return pieces


def _check_frames(frames: torch.Tensor, vae: WanVAE, first: bool) -> None:
    if not torch.is_tensor(frames) or frames.dim() != 5 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
        raise ValueError(f"expected video frames (B, 3, T, H, W) in [-1, 1]; got {shape}")
    t, h, w = frames.shape[2:]
    s, ts = vae.spatial_stride, vae.temporal_stride
    if h % s or w % s:
        raise ValueError(f"Wan2.1 VAE encode needs height and width that are multiples of {s}; "
                         f"got {h}x{w} (HxW). Resize or crop to multiples of {s} "
                         "(PackForcing itself uses multiples of 16)")
    if first and (t < 1 or (t - 1) % ts):
        raise ValueError(f"the first chunk to encode needs 1+{ts}k frames (1, {1 + ts}, {1 + 2 * ts}, ...); "
                         f"got {t}. Trim or pad the video to 1+{ts}k frames")
    if not first and (t < 1 or t % ts):
        raise ValueError(f"after the first chunk, encode chunks need a positive multiple of {ts} "
                         f"frames; got {t}")
