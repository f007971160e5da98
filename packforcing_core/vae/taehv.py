"""The tiny Wan2.1 video decoder (madebyollin's TAEHV weights `taew2_1` / `lighttaew2_1`), streaming.

A fast, lower-fidelity alternative to the Wan VAE decode: about 25x fewer operations per frame, 2D
convolutions only. Built from the published weight layout (keys `decoder.N.*`, the encoder's keys are
ignored); the same files ComfyUI's VAELoader accepts as a VAE.

  decoder.0   tanh(x / 3) * 3 on the raw (VAE-space) latent
  decoder.1   conv 3x3 16 -> 256, ReLU
  3 stages    3 memory blocks of n channels (n = 256, 128, 64), 2x nearest upsample, a temporal grow
              (1x1 conv n -> s*n, split into s frames; s = 1, 2, 2), conv 3x3 n -> next n (no bias)
  decoder.21  ReLU, decoder.22 conv 3x3 64 -> 3: pixels in [0, 1]
A memory block sees its input frame and its input of the previous frame (zeros before the first):
    relu(conv3x3(relu(conv3x3(relu(conv3x3([x_t, x_{t-1}]))))) + x_t)
So decoding is causal frame by frame and a stream keeps one frame per memory block. T latent frames
give 4T frames; the first 3 are dropped (4T-3, as the Wan VAE). Latents in, as everywhere in
packforcing_core, are the normalised ones the DiT sees; outputs are pixels in [-1, 1] like WanVAE's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..io.files import input_file
from .latents import LATENT_CHANNELS, denormalize_latent

CHANNELS = (256, 128, 64, 64)
TIME_GROW = (1, 2, 2)
EXPECTED = "the tiny Wan2.1 decoder (taew2_1 or lighttaew2_1 .safetensors, 16 latent channels)"


class TinyDecoderError(ValueError):
    pass


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        # indices as in the file: conv.0, conv.2, conv.4 (1 and 3 are the activations)
        self.conv = nn.Sequential(_conv(2 * n, n), nn.ReLU(inplace=True), _conv(n, n), nn.ReLU(inplace=True),
                                  _conv(n, n))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv(torch.cat([x, past], 1)).add_(x))


class TimeGrow(nn.Module):
    """1x1 conv to `stride` x channels; each frame becomes `stride` frames (channel groups in order)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.stride == 1:
            return y
        return y.reshape(-1, x.shape[1], *x.shape[2:]).contiguous(memory_format=torch.channels_last)


class TinyWanDecoder(nn.Module):
    """Decoder half of TAEHV for Wan2.1 latents. `stream_decoder()` decodes chunk by chunk."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, channels=CHANNELS):
        super().__init__()
        n = channels
        layers: list[nn.Module] = [nn.Identity(), _conv(latent_channels, n[0]), nn.ReLU(inplace=True)]
        for i in range(3):
            layers += [MemBlock(n[i]), MemBlock(n[i]), MemBlock(n[i]), nn.Upsample(scale_factor=2),
                       TimeGrow(n[i], TIME_GROW[i]), _conv(n[i], n[i + 1], bias=False)]
        layers += [nn.ReLU(inplace=True), _conv(n[3], 3)]
        self.decoder = nn.Sequential(*layers)
        self.time_stride = 1
        for g in TIME_GROW:
            self.time_stride *= g

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder[1].weight.device

    @classmethod
    def from_state_dict(cls, sd, source: str = "state dict", *, dtype=torch.float32, device=None) -> "TinyWanDecoder":
        dec = {k[len("decoder."):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith("decoder.")}
        first, last = dec.get("1.weight"), dec.get("22.weight")
        if first is None or last is None or "22.bias" not in dec:
            raise TinyDecoderError(f"{source} is not a TAEHV tiny decoder (no decoder.1.weight / decoder.22.bias); "
                                   f"expected {EXPECTED}")
        if first.shape[1] != LATENT_CHANNELS or last.shape[0] != 3:
            what = {48: "Wan2.2", 32: "HunyuanVideo 1.5", 128: "LTX-2", 24: "MiniMax"}.get(first.shape[1], "another model")
            raise TinyDecoderError(f"{source} decodes {first.shape[1]}-channel latents to {last.shape[0]} channels "
                                   f"({what}); PackForcing needs {EXPECTED}")
        channels = (first.shape[0], dec["8.weight"].shape[0], dec["14.weight"].shape[0], dec["20.weight"].shape[0]) \
            if all(f"{i}.weight" in dec for i in (8, 14, 20)) else CHANNELS
        with torch.device("meta"):
            model = cls(first.shape[1], channels)
        expected = model.decoder.state_dict()
        missing = sorted(set(expected) - set(dec))
        wrong = [k for k in expected if k in dec and dec[k].shape != expected[k].shape]
        unexpected = sorted(set(dec) - set(expected))
        if missing or wrong or unexpected:
            raise TinyDecoderError(f"{source} does not match the TAEHV decoder layout: missing {missing[:6]}, "
                                   f"wrong shapes {wrong[:6]}, unexpected {unexpected[:6]}; expected {EXPECTED}")
        model.decoder.load_state_dict({k: dec[k] for k in expected}, assign=True)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def channels_last(self) -> "TinyWanDecoder":
        """NHWC weights: cuDNN's fast 2D kernels on the GPU."""
        return self.to(memory_format=torch.channels_last)

    def stream_decoder(self, chunk_size: int | None = None) -> "TinyStreamDecoder":
        return TinyStreamDecoder(self, chunk_size)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, 16, T, h, w) -> (B, 3, 4T-3, 8h, 8w) float32 in [-1, 1]."""
        return self.stream_decoder().decode(latent)


class TinyStreamDecoder:
    """Decode chunk by chunk: the first call with T frames returns 4T-3 frames, later calls 4T; the
    outputs concatenated equal one decode of the whole video (each memory block keeps one frame)."""

    def __init__(self, tae: TinyWanDecoder, chunk_size: int | None = None):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None; got {chunk_size}")
        self.tae, self.chunk_size = tae, chunk_size      # latent frames per pass (memory bound); None: all
        self.reset()

    def reset(self) -> None:
        self.memory: dict[int, torch.Tensor] = {}
        self.frames_in = 0
        self._shape = None

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        tae = self.tae
        if latent.dim() != 5 or latent.shape[1] != tae.decoder[1].in_channels or latent.shape[2] < 1:
            raise ValueError(f"expected a latent chunk (B, {tae.decoder[1].in_channels}, T>=1, h, w); "
                             f"got {tuple(latent.shape)}")
        shape = (latent.shape[0], *latent.shape[3:])
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"chunk has batch/height/width {shape} but this stream started with {self._shape}; "
                             "call reset() to start a new video")
        self._shape = shape
        pieces = latent.split(self.chunk_size or latent.shape[2], dim=2)
        return torch.cat([self._decode_piece(p) for p in pieces], dim=2)

    def _decode_piece(self, latent: torch.Tensor) -> torch.Tensor:
        tae, b = self.tae, latent.shape[0]
        z = denormalize_latent(latent.to(tae.device).float()).to(tae.dtype)
        x = torch.tanh(z / 3) * 3
        x = x.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last)   # (B*T, C, h, w)
        for i, layer in enumerate(tae.decoder):
            if i == 0:
                continue
            if isinstance(layer, MemBlock):
                x = layer(x, self._past(i, x, b))
            elif isinstance(layer, nn.Upsample):
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            else:
                x = layer(x)
        frames = x.unflatten(0, (b, -1))                                  # (B, 4T, 3, H, W)
        if self.frames_in == 0:
            frames = frames[:, tae.time_stride - 1:]
        self.frames_in += latent.shape[2]
        return frames.float().mul_(2).sub_(1).clamp_(-1, 1).transpose(1, 2)

    def _past(self, i: int, x: torch.Tensor, b: int) -> torch.Tensor:
        """Each frame's previous frame: within the chunk, and the kept last frame before it."""
        frames = x.unflatten(0, (b, -1))
        past = torch.empty_like(x)                    # x's layout (channels-last), filled frame by frame
        shifted = past.unflatten(0, (b, -1))
        prev = self.memory.get(i)
        if prev is None:
            shifted[:, 0].zero_()
        else:
            shifted[:, 0] = prev
        shifted[:, 1:] = frames[:, :-1]
        self.memory[i] = frames[:, -1].clone()
        return past


def is_tiny_decoder(sd) -> bool:
    """The key ComfyUI's VAELoader also looks for (TAEHV family)."""
    return "decoder.22.bias" in sd


def load_tiny_decoder(path, device="cpu", dtype=torch.float32) -> TinyWanDecoder:
    from .weights import _read_file
    input_file("tiny decoder file", path)
    return TinyWanDecoder.from_state_dict(_read_file(str(path)), source=f"'{path}'", dtype=dtype, device=device)
