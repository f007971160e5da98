"""The Wan2.1 video VAE (`wan_2.1_vae.safetensors`), written for streaming.

Architecture (weight names follow the released file, so it loads without renaming):
  encoder: causal 3D conv -> 4 stages of residual blocks with 3 spatial downsamples
           (the last two also halve time) -> middle (res, per-frame attention, res) -> head
  conv1:   1x1x1 conv to (mu, log_var); only mu is used, latents are never sampled
  conv2:   1x1x1 conv on the latent before decoding
  decoder: mirror of the encoder with nearest-neighbour upsampling; two upsamples double time

Strides are (4, 8, 8): 1+4k frames encode to 1+k latent frames, T latent frames decode to
4T-3 frames. The first frame is special: it passes the temporal resamplers unchanged, every later
latent frame becomes 4 frames.

Every temporal convolution is causal (all its padding is in front), so the network can run chunk
by chunk: each causal conv keeps the last 2 frames it saw in a per-stream `state` dict (keyed by
module) and prepends them to the next chunk instead of zeros. Outputs therefore do not depend on
how a video is split into chunks, and the state stays a fixed size however long the video is.

Latents seen by the DiT are normalised per channel: (mu - LATENT_MEAN) / LATENT_STD.
Pixels are in [-1, 1].
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from .kernels import rms_norm_silu

LATENT_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
LATENT_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]
LATENT_CHANNELS = 16
SAFETENSORS_EXTS = (".safetensors", ".sft")
TORCH_EXTS = (".pt", ".pth", ".ckpt", ".bin")
EXPECTED_FILE = "the Wan2.1 VAE (wan_2.1_vae.safetensors: 16 latent channels, base dim 96)"

# One stream's cache: module -> tensor (or flag). Plain dict so a fresh one means "new video".
State = dict


class VAELoadError(ValueError):
    """A file or state dict that is not a Wan2.1 VAE; the message names the source and the fix."""


# ----------------------------------------------------------------------------- normalisation

def _per_channel(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """values as a tensor that broadcasts over the channel axis (dim -4) of (B,)C,T,H,W."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)


def _check_latent_channels(x: torch.Tensor) -> None:
    if x.dim() < 4 or x.shape[-4] != LATENT_CHANNELS:
        raise ValueError(f"expected a Wan2.1 latent of shape (B, {LATENT_CHANNELS}, T, h, w); "
                         f"got {tuple(x.shape)}")


def normalize_latent(mu: torch.Tensor) -> torch.Tensor:
    """VAE mean (B,16,T,H,W) -> the normalised latent the DiT works with."""
    _check_latent_channels(mu)
    return (mu - _per_channel(LATENT_MEAN, mu)) / _per_channel(LATENT_STD, mu)


def denormalize_latent(z: torch.Tensor) -> torch.Tensor:
    """Inverse of normalize_latent."""
    _check_latent_channels(z)
    return z * _per_channel(LATENT_STD, z) + _per_channel(LATENT_MEAN, z)


# ----------------------------------------------------------------------------- building blocks

def _frame_conv(x: torch.Tensor, conv: nn.Conv2d, stride: int = 1) -> torch.Tensor:
    """Apply a 2D conv to every frame of (B,C,T,H,W) as a (1,k,k) 3D conv: no (B*T) reshuffle copies."""
    pad = conv.padding[0]
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, stride, stride), padding=(0, pad, pad))


def _fold_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps along `dim` of a kernel applied to a nearest-2x-upsampled axis, as 2 taps on the
    original axis per output parity (stacked in front): parity 0 reads (i-1, i, i), parity 1 (i, i, i+1)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)])


def _upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(nearest 2x upsample of x), 3x3 conv with padding 1, computed at x's resolution.

    Per output parity (a, b) the 3x3 kernel folds into a 2x2 one (_fold_taps). All four parities are
    one 2x2 conv with 4x the output channels and padding 1; parity (a, b) is that output shifted by
    (a, b). No upsampled input is ever built and the conv does 16 instead of 36 multiply-adds per
    input pixel and channel pair; four strided copies interleave the parities. The folding is a few
    tensor ops on the weight's device: no host round trip in the decode loop.
    """
    w3 = conv.weight.to(torch.promote_types(conv.weight.dtype, torch.float32))  # sum taps unrounded
    k = _fold_taps(_fold_taps(w3, 2), 4).transpose(0, 1).flatten(0, 2)  # (a, b, C_out) x C_in x 2 x 2
    fmt = _memory_format(x)
    k = k.unsqueeze(2).to(x.dtype).contiguous(memory_format=fmt)
    y = F.conv3d(x, k, conv.bias.repeat(4), padding=(0, 1, 1))        # (B, 4 C_out, T, H+1, W+1)
    b, _, t, h, w = x.shape
    c = conv.out_channels
    out = torch.empty((b, c, t, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=fmt)
    o = out.unflatten(4, (w, 2)).unflatten(3, (h, 2))                  # (B, C, T, H, 2, W, 2)
    parts = y.unflatten(1, (2, 2, c))                                  # (B, 2, 2, C, T, H+1, W+1)
    for a in (0, 1):
        for p in (0, 1):
            o[:, :, :, :, a, :, p].copy_(parts[:, a, p, :, :, a:a + h, p:p + w])
    return out


class CausalConv3d(nn.Conv3d):
    """3D conv whose temporal padding is all in front, so output frame t only sees frames <= t.

    With a `state`, the last `causal_pad` input frames are remembered and replace the zero
    padding of the next call: chunked calls give the same result as one call on the whole video.
    """

    def __init__(self, in_dim, out_dim, kernel, padding=0):
        kernel = _triple(kernel)
        pad_t, pad_h, pad_w = _triple(padding)
        super().__init__(in_dim, out_dim, kernel, padding=(0, pad_h, pad_w))
        self.causal_pad = 2 * pad_t

    def forward(self, x: torch.Tensor, state: State | None = None, norm: "RMSNorm | None" = None) -> torch.Tensor:
        """With `norm`, the conv's input is silu(norm(x)), written straight into the padded input."""
        if self.causal_pad == 0:
            return super().forward(x if norm is None else norm.silu(x))
        # one buffer of (cached or zero frames, new frames): no concatenation copy of the input
        b, _, t, h, w = x.shape
        pad = self.causal_pad
        padded = torch.empty((b, self.in_channels, pad + t, h, w), dtype=x.dtype, device=x.device,
                             memory_format=_memory_format(x))
        prev = state.get(self) if state is not None else None
        if prev is None:
            padded[:, :, :pad].zero_()
        else:
            padded[:, :, :pad].copy_(prev)
        if norm is None:
            padded[:, :, pad:].copy_(x)
        else:
            norm.silu(x, out=padded[:, :, pad:])
        if state is not None:
            # clone: keep only these frames alive, not the whole padded chunk
            state[self] = padded[:, :, -pad:].clone()
        return super().forward(padded)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Channels-last 3D if x is (outputs keep the layout cuDNN's kernels want), else contiguous."""
    cl = x.is_contiguous(memory_format=torch.channels_last_3d) and x.shape[1] > 1
    return torch.channels_last_3d if cl else torch.contiguous_format


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma (Wan's RMS_norm, no bias)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        # the file stores (C,1,1) for the attention norm (2D in Wan) and (C,1,1,1) elsewhere
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self.scale = dim ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma.view(-1, *([1] * (x.dim() - 2)))
        return F.normalize(x, dim=1) * (gamma * self.scale)

    def silu(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """silu(forward(x)), fused into one pass on CUDA (vae_kernels), optionally into `out`."""
        return rms_norm_silu(x, self.gamma, self.scale, out=out)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # indices match the file: 0 norm, 1 SiLU, 2 conv, 3 norm, 4 SiLU, 5 dropout (p=0), 6 conv
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        r = self.residual
        h = r[2](x, state, norm=r[0])
        h = r[6](h, state, norm=r[3])
        return h.add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)
        # the 1x1 convs are per-pixel linear maps: apply them to the token layout directly
        q, k, v = F.linear(tokens, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)
        return x + out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # x first: result keeps x's layout


class Resample(nn.Module):
    """2x spatial down/upsampling, optionally with a 2x temporal step (modes as in Wan)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            # index 0 is the parameter-free upsample, so the conv is "resample.1" as in the file
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # index 0 is the (0,1,0,1) zero pad applied in forward
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            # predicts 2 output frames per input frame, stacked on channels
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        conv = self.resample[1]
        if self.mode == "upsample3d":
            x = self._double_time(x, state)
        if self.mode.startswith("upsample"):
            return _upsample_conv(x, conv)
        x = _frame_conv(F.pad(x, (0, 1, 0, 1)), conv, stride=2)
        return self._halve_time(x, state) if self.mode == "downsample3d" else x

    def _double_time(self, x: torch.Tensor, state: State) -> torch.Tensor:
        """First frame of the video passes unchanged; every later frame becomes 2 frames.

        The frames after the first form their own causal stream for time_conv (it never sees
        frame 0; its padding is zeros), which is how Wan's decoder was trained.
        """
        first = None
        if self not in state:
            state[self] = True
            first, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2] > 0:
            b, c, t, h, w = x.shape
            y = self.time_conv(x, state).view(b, 2, c, t, h, w)
            # interleave (frame 2i, 2i+1) into a tensor of y's layout: channels-last stays channels-last
            out = torch.empty((b, c, 2 * t, h, w), dtype=y.dtype, device=y.device,
                              memory_format=_memory_format(y.flatten(1, 2)))
            out.unflatten(2, (t, 2)).copy_(y.permute(0, 2, 3, 1, 4, 5))
            x = out
        return x if first is None else torch.cat([first, x], dim=2)

    def _halve_time(self, x: torch.Tensor, state: State) -> torch.Tensor:
        """Output frame 0 is input frame 0; then a stride-2, width-3 conv over the whole stream.

        Frames not yet covered by a full window wait in the state (at most 2), so any split of the
        video into chunks yields the same frames.
        """
        first = None
        pending = state.get(self)
        if pending is None:
            first, pending = x[:, :, :1], x
        else:
            pending = torch.cat([pending, x], dim=2)
        windows = (pending.shape[2] - 1) // 2
        out = self.time_conv(pending[:, :, :2 * windows + 1]) if windows > 0 else pending[:, :, :0]
        state[self] = pending[:, :, 2 * windows:].clone()
        return out if first is None else torch.cat([first, out], dim=2)


class Encoder3d(nn.Module):
    def __init__(self, dim, out_dim, dim_mult, num_res_blocks, temporal_downsample):
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(d_in, d_out))
                d_in = d_out
            if i < len(dim_mult) - 1:
                layers.append(Resample(d_out, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        top = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(top, top), AttentionBlock(top), ResidualBlock(top, top))
        self.head = nn.Sequential(RMSNorm(top), nn.SiLU(), CausalConv3d(top, out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, state)
        return self.head[2](x, state, norm=self.head[0])


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temporal_upsample):
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0]))
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                d_in //= 2  # each upsample's conv halves the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(d_in, d_out))
                d_in = d_out
            if i < len(dim_mult) - 1:
                layers.append(Resample(d_out, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, state)
        return self.head[2](x, state, norm=self.head[0])


# ----------------------------------------------------------------------------- the VAE

class WanVAE(nn.Module):
    """Wan2.1 VAE. encode/decode speak normalised latents and [-1, 1] pixels (float32 outputs).

    Computation runs in the module's dtype/device; inputs are moved there. Gradients are off.
    """

    def __init__(self, dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temporal_downsample=(False, True, True)):
        super().__init__()
        self.z_dim = z_dim
        self.spatial_stride = 2 ** (len(dim_mult) - 1)
        self.temporal_stride = 2 ** sum(bool(t) for t in temporal_downsample)
        self.encoder = Encoder3d(dim, 2 * z_dim, dim_mult, num_res_blocks, temporal_downsample)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, tuple(temporal_downsample)[::-1])

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    @classmethod
    def from_state_dict(cls, sd, source="state dict", *, dtype=torch.float32, device=None) -> "WanVAE":
        """Build a VAE sized from the tensors of `sd` (Wan2.1 names); clear errors otherwise."""
        sd = _tensor_dict(sd, source)
        dim, z_dim = _detect_sizes(sd, source)
        with torch.device("meta"):  # no random init: every weight comes from sd
            model = cls(dim=dim, z_dim=z_dim)
        _check_layout(model.state_dict(), sd, source, dim)
        model.load_state_dict(sd, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def encode(self, video: torch.Tensor, chunk_size: int | None = 1) -> torch.Tensor:
        """(B,3,1+4k,H,W) in [-1,1] -> normalised latent (B,16,1+k,H/8,W/8), float32, mean (no sampling).

        chunk_size: latent frames per internal pass (memory bound); None = the whole video at once.
        """
        return self.stream_encoder(chunk_size).encode(video)

    def decode(self, latent: torch.Tensor, chunk_size: int | None = 1) -> torch.Tensor:
        """Normalised latent (B,16,T,h,w) -> (B,3,4T-3,8h,8w) float32 in [-1,1].

        chunk_size: latent frames per internal pass (memory bound); None = all at once.
        """
        return self.stream_decoder(chunk_size).decode(latent)

    def channels_last(self) -> "WanVAE":
        """3D conv weights in channels_last_3d, so cuDNN skips its NCDHW <-> NDHWC conversions
        (832x480 on an H100: 19.1 -> 19.4 fps end to end, peak memory -0.7 GiB)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
        return self

    def stream_decoder(self, chunk_size: int | None = 1) -> "StreamDecoder":
        return StreamDecoder(self, chunk_size)

    def stream_encoder(self, chunk_size: int | None = 1) -> "StreamEncoder":
        return StreamEncoder(self, chunk_size)

    def _encode_piece(self, frames: torch.Tensor, state: State) -> torch.Tensor:
        h = self.encoder(frames, state)
        # conv1 yields (mu, log_var); only mu is needed, so only its half of the conv is computed
        mu = F.conv3d(h, self.conv1.weight[:self.z_dim], self.conv1.bias[:self.z_dim])
        return normalize_latent(mu.float())

    def _decode_piece(self, z: torch.Tensor, state: State) -> torch.Tensor:
        x = self.conv2(denormalize_latent(z.float()).to(self.dtype))
        return self.decoder(x, state).float().clamp_(-1.0, 1.0)


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


# ----------------------------------------------------------------------------- loading

def load_vae(path, device="cpu", dtype=torch.float32) -> WanVAE:
    """Load wan_2.1_vae.safetensors (or a weights-only .pt/.pth) into a WanVAE on device/dtype."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VAE file not found: '{path}'. Expected {EXPECTED_FILE}, "
                                "usually in ComfyUI/models/vae")
    sd = _read_file(path)
    return WanVAE.from_state_dict(sd, source=f"'{path}'", dtype=dtype, device=device)


def _read_file(path: str) -> dict:
    ext = os.path.splitext(path)[1].lower()
    if ext in SAFETENSORS_EXTS:
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # SafetensorError, OSError ...: header or data cut short
            raise VAELoadError(f"'{path}' is not a readable .safetensors file (truncated or corrupt? {e}). "
                               f"Expected {EXPECTED_FILE}; download it again") from e
    if ext in TORCH_EXTS:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise VAELoadError(f"'{path}' holds pickled Python objects beyond plain tensors, which could run "
                               f"code when loaded: refused. Expected {EXPECTED_FILE}; use the .safetensors "
                               "file") from e
        except Exception as e:  # zip / EOF errors of truncated files
            raise VAELoadError(f"'{path}' is not a readable PyTorch file (truncated or corrupt? {e}). "
                               f"Expected {EXPECTED_FILE}") from e
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        return obj
    raise VAELoadError(f"'{path}': unsupported file type '{ext}'. Expected {EXPECTED_FILE} as "
                       f"{'/'.join(SAFETENSORS_EXTS + TORCH_EXTS)}")


def _tensor_dict(sd, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, Mapping) or not sd:
        raise VAELoadError(f"{source} holds no state dict (got {type(sd).__name__}"
                           f"{' (empty)' if isinstance(sd, Mapping) else ''}); expected {EXPECTED_FILE}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise VAELoadError(f"{source} has entries that are not named tensors: {_short(map(str, bad))}; "
                           f"expected {EXPECTED_FILE}")
    return dict(sd)


def _detect_sizes(sd: dict[str, torch.Tensor], source: str) -> tuple[int, int]:
    """(base dim, z_dim) from encoder.conv1 (dim, 3, 3,3,3) and conv2 (z, z, 1,1,1)."""
    enc, post = sd.get("encoder.conv1.weight"), sd.get("conv2.weight")
    if enc is None or post is None or enc.dim() != 5 or post.dim() != 5:
        missing = [k for k in ("encoder.conv1.weight", "conv2.weight") if k not in sd]
        raise VAELoadError(f"{source} is not a Wan2.1 VAE{_guess_family(sd)}: expected 'encoder.conv1.weight' "
                           f"(dim, 3, 3, 3, 3) and 'conv2.weight' ({LATENT_CHANNELS}, {LATENT_CHANNELS}, 1, 1, 1)"
                           f"{'; missing ' + ', '.join(missing) if missing else ' as 5-D tensors'}. "
                           f"First keys found: {_short(sorted(sd), 8)}. Expected {EXPECTED_FILE}")
    z_dim, in_ch = post.shape[0], enc.shape[1]
    if z_dim != LATENT_CHANNELS or in_ch != 3:
        hint = " This looks like the Wan2.2 VAE (48 latent channels), which PackForcing does not use." \
            if z_dim == 48 or in_ch == 12 else ""
        raise VAELoadError(f"{source} has {z_dim} latent channels and {in_ch} input channels; a Wan2.1 VAE "
                           f"has {LATENT_CHANNELS} and 3.{hint} Expected {EXPECTED_FILE}")
    return enc.shape[0], z_dim


def _check_layout(expected: Mapping, sd: Mapping, source: str, dim: int) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k}: {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in sorted(set(sd) & set(expected)) if sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing keys {_short(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected keys {_short(unexpected)}" if unexpected else "",
                 f"{len(wrong)} wrong shapes {_short(wrong)}" if wrong else ""]
        raise VAELoadError(f"{source} does not match the Wan2.1 VAE layout (base dim {dim} read from "
                           f"encoder.conv1.weight): " + "; ".join(p for p in parts if p)
                           + f". Expected {EXPECTED_FILE}")


def _guess_family(sd: Mapping) -> str:
    keys = list(sd)
    if any(k.startswith(("encoder.conv_in.", "decoder.conv_in.", "first_stage_model.")) for k in keys):
        return " (it looks like a Stable Diffusion / Flux style image VAE)"
    if any(k.startswith(("blocks.", "model.diffusion_model.", "patch_embedding.")) for k in keys):
        return " (it looks like a diffusion model / DiT checkpoint, not a VAE)"
    return ""


def _short(items, limit: int = 30) -> str:
    items = list(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + more + "]"
