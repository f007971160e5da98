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

Modules: latents (normalisation), blocks (causal conv, norms, residual and attention blocks),
resample (resize-conv folding), encoder, decoder, stream (chunk-by-chunk encode/decode), weights
(reading and checking files), kernels (fused Triton norm + SiLU), taehv (the tiny decoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..io.files import InputPathError, input_file
from .blocks import CausalConv3d, State
from .decoder import Decoder3d
from .encoder import Encoder3d
from .latents import denormalize_latent, normalize_latent
from .stream import StreamDecoder, StreamEncoder
from .weights import EXPECTED_FILE, _check_layout, _detect_sizes, _read_file, _tensor_dict


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


def load_vae(path, device="cpu", dtype=torch.float32) -> WanVAE:
    """Load wan_2.1_vae.safetensors (or a weights-only .pt/.pth) into a WanVAE on device/dtype."""
    try:
        path = input_file("VAE file", path)
    except InputPathError as e:
        raise InputPathError(f"{e}. Expected {EXPECTED_FILE}, usually in ComfyUI/models/vae") from None
    sd = _read_file(path)
    return WanVAE.from_state_dict(sd, source=f"'{path}'", dtype=dtype, device=device)
