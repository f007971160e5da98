"""Mid-token compressors: turn a block of full-resolution history into ~32x fewer K/V tokens.

Every compressor maps a block of n latent frames (T tokens each, grid rows x cols) to a coarse grid
of ceil(n/2) x ceil(rows/4) x ceil(cols/4) tokens, and gives each coarse token the mean RoPE
position of the fine tokens it covers, so compressed tokens sit where their content came from.

  kv_pool  training-free: average the block's (un-rotated) keys and values over 2x4x4 token cells.
  lr       training-free LR branch ("Pool > VAE > Patch"): decode the block, pool the pixels 4x,
           re-encode with the VAE, pool time 2x, patch-embed with the DiT's own patch embedding,
           then one t=0 pass of the DiT over those tokens gives every layer's K/V.
  hr       the paper's trained HR branch: a 4-stage 3D CNN on the latent (16->32->128->512->2048->D,
           strides (2,1,1), (1,2,2) x3, (1,1,1)) gives D-dim tokens; a t=0 DiT pass gives K/V.
  hr_lr    the paper's dual branch: HR tokens + LR tokens, then the t=0 pass.

Trained weights (`hr`, `hr_lr`) come from a safetensors file, see `load_compressor_weights`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ..io.files import input_file, write_file
from ..model.dit import CausalWanModel, attention
from ..model.rope import Rotation, grid_positions

POOL = (2, 4, 4)                      # (time, rows, cols) in tokens: 32x fewer
HR_CHANNELS = (32, 128, 512, 2048)
HR_STRIDES = ((2, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2), (1, 1, 1))
WEIGHTS_FORMAT = "packforcing-compressor"


def pool_tokens(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, n*rows*cols, ...) -> (B, coarse tokens, ...): mean over 2x4x4 cells; ragged edge cells
    average only what they cover."""
    n, rows, cols = grid
    b, _, *rest = x.shape
    xf = x.float().reshape(b, n, rows, cols, -1).permute(0, 4, 1, 2, 3)
    ones = torch.ones_like(xf[:, :1])
    kernel = tuple(min(p, s) for p, s in zip(POOL, grid))   # a grid smaller than a cell is one cell
    pool = lambda t: F.avg_pool3d(t, kernel, kernel, ceil_mode=True)
    out = pool(xf) / pool(ones)
    return out.flatten(2).transpose(1, 2).reshape(b, -1, *rest).to(x.dtype)


def coarse_offsets(grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """Mean (time, row, column) position of the fine tokens each coarse token covers."""
    fine = grid_positions(*grid, device=device)[None]           # (1, n*rows*cols, 3)
    return pool_tokens(fine, grid)[0]


class KVPool:
    """Training-free: pool K and V directly."""

    def __call__(self, kv, latent, grid, text_kv):
        ks = [pool_tokens(k, grid) for k, _ in kv]
        vs = [pool_tokens(v, grid) for _, v in kv]
        return ks, vs, coarse_offsets(grid, ks[0].device)


class RecordingContext:
    """AttentionContext of a compressed block alone: attends within the block and keeps each
    layer's un-rotated K/V (the block's mid entries)."""

    def __init__(self, rotation: Rotation):
        self.rope = rotation
        self.k, self.v = [], []

    @torch.compiler.disable
    def attend(self, layer, q, k, v, q_raw):
        self.k.append(self.rope.inverse()(k))   # the bank keeps canonical (un-rotated) keys
        self.v.append(v)
        return attention(q, k, v)


class HRBranch(nn.Module):
    """Progressive 3D CNN on the 16-channel latent: time /2, space /8, channels -> model dim."""

    def __init__(self, dim: int, in_dim: int = 16):
        super().__init__()
        chans = (in_dim, *HR_CHANNELS, dim)
        self.convs = nn.ModuleList(nn.Conv3d(chans[i], chans[i + 1], 3, HR_STRIDES[i], 1) for i in range(5))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = latent
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.silu(x)
        return x                                                    # (B, dim, n/2, H/8, W/8)


class DiTCompressor:
    """lr / hr / hr_lr: coarse tokens from the branches, then a t=0 DiT pass gives their K/V."""

    def __init__(self, mode: str, model: CausalWanModel, vae=None, hr: HRBranch | None = None,
                 lr_proj: nn.Module | None = None):
        self.mode, self.model, self.vae, self.hr = mode, model, vae, hr
        self.lr_proj = lr_proj or model.patch_embedding

    def lr_latent(self, latent: torch.Tensor, grid) -> torch.Tensor:
        """Pool > VAE: decode, pool pixels 4x, re-encode, pool time 2x: (B, 16, n/2, >=H/32, >=W/32)
        float32. The block is decoded on its own (no causal context from earlier frames): a coarse
        summary is all the mid tier needs, and it keeps the cost to one block's decode and encode.
        Nothing here is trained, so training computes it once per block."""
        with torch.no_grad():
            px = self.vae.decode(latent.to(self.vae_dtype))               # (B, 3, 4n-3, H, W)
            b, c, f, h, w = px.shape
            px = F.avg_pool2d(px.transpose(1, 2).flatten(0, 1), 4, 4, ceil_mode=True)
            px = px.unflatten(0, (b, f)).transpose(1, 2)
            ph, pw = (-px.shape[-2]) % 8, (-px.shape[-1]) % 8            # the VAE wants multiples of 8
            px = F.pad(px.flatten(1, 2), (0, pw, 0, ph), mode="replicate").unflatten(1, (c, f))
            lat = self.vae.encode(px)                                     # (B, 16, n, H/32, W/32)
        kt = min(2, lat.shape[2])                 # a 1-frame block (frame-wise chunks) is its own cell
        lat = F.avg_pool3d(lat.float(), (kt, 1, 1), (kt, 1, 1), ceil_mode=True)
        return F.pad(lat, (0, lat.shape[-1] % 2, 0, lat.shape[-2] % 2, 0, 0), mode="replicate")

    def lr_tokens(self, latent: torch.Tensor, grid, lat: torch.Tensor | None = None) -> torch.Tensor:
        """> Patch: the LR latent (from `lr_latent` unless given) through the LR projection."""
        n, rows, cols = grid
        lat = self.lr_latent(latent, grid) if lat is None else lat
        proj = self.lr_proj.weight
        tok = self.lr_proj(lat.to(proj.device, proj.dtype))               # (B, dim, n/2, >=rows/4, >=cols/4)
        return tok[:, :, :, : math.ceil(rows / 4), : math.ceil(cols / 4)]

    @property
    def vae_dtype(self):
        return next(self.vae.parameters()).dtype

    def coarse_tokens(self, latent: torch.Tensor, grid, lr_lat: torch.Tensor | None = None) -> torch.Tensor:
        """The branches' tokens (B, dim, n/2, rows/4, cols/4) before the t=0 pass."""
        parts = []
        if self.mode in ("hr", "hr_lr"):
            hr = self.hr.convs[0].weight
            parts.append(self.hr(latent.to(hr.device, hr.dtype)))
        if self.mode in ("lr", "hr_lr"):
            parts.append(self.lr_tokens(latent, grid, lr_lat))
        return parts[0] if len(parts) == 1 else parts[0].to(parts[1].dtype) + parts[1]

    def block_kv(self, x: torch.Tensor, grid, text_kv):
        """The t=0 DiT pass over coarse tokens x: every layer's un-rotated K/V and the tokens'
        offsets. Differentiable: training runs it with gradients on."""
        m = self.model
        b, _, f, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).to(m.dtype)
        offsets = coarse_offsets(grid, m.device)
        ctx = RecordingContext(Rotation.at(offsets, m.cfg.head_dim, m.cfg.rope_theta).to(m.device))
        m.run_tokens(tokens, torch.zeros(b, f, device=m.device), f, ctx, text_kv)
        return ctx.k, ctx.v, offsets

    def __call__(self, kv, latent, grid, text_kv):
        if latent is None:
            raise RuntimeError(f"compressor '{self.mode}' needs the latent frames of the block")
        with torch.no_grad():
            return self.block_kv(self.coarse_tokens(latent, grid), grid, text_kv)


def load_compressor_weights(path: str, dim: int, in_dim: int = 16) -> tuple[HRBranch, nn.Module | None]:
    """Trained compressor weights (safetensors).

    Keys: hr.convs.{0..4}.{weight,bias}  (Conv3d, kernel 3, padding 1, channels 16-32-128-512-2048-dim)
          lr.proj.{weight,bias}          (optional: Conv3d 16->dim, kernel = stride = (1,2,2);
                                          absent = the DiT's own patch_embedding)
    Metadata: {"format": "packforcing-compressor", "dim": "<model dim>"}.
    """
    input_file("compressor weights", path)
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"compressor weights '{path}' are not a readable safetensors file ({e})") from e
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"'{path}' is not a PackForcing compressor file (metadata format is "
                         f"{meta.get('format')!r}, expected {WEIGHTS_FORMAT!r})")
    file_dim = int(meta.get("dim", -1))
    if file_dim != dim:
        raise ValueError(f"compressor weights '{path}' are for a model of dim {file_dim}; the loaded DiT has "
                         f"dim {dim}: use the compressor trained for this model")
    hr = HRBranch(dim, in_dim)
    hr_sd = {k[3:]: v for k, v in sd.items() if k.startswith("hr.")}
    lr_sd = {k[3:]: v for k, v in sd.items() if k.startswith("lr.")}
    unexpected = sorted(k for k in sd if not k.startswith(("hr.", "lr.")))
    bad = non_finite(sd)
    if bad:
        raise ValueError(f"compressor weights '{path}' hold NaN/inf values ({', '.join(bad[:4])}): the training "
                         "that wrote them diverged; train again with a lower --lr")
    try:
        hr.load_state_dict(hr_sd)
    except RuntimeError as e:
        raise ValueError(f"compressor weights '{path}': HR branch does not match ({e})") from e
    if unexpected:
        raise ValueError(f"compressor weights '{path}': unexpected tensors {unexpected[:8]}")
    lr = None
    if lr_sd:
        lr = nn.Conv3d(in_dim, dim, (1, 2, 2), (1, 2, 2))
        try:
            lr.load_state_dict({k.removeprefix("proj."): v for k, v in lr_sd.items()})
        except RuntimeError as e:
            raise ValueError(f"compressor weights '{path}': LR projection does not match ({e})") from e
    return hr, lr


def non_finite(sd: dict) -> list[str]:
    """Names of the tensors holding NaN or inf."""
    return sorted(k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all())


def save_compressor_weights(hr: HRBranch, lr: nn.Module | None, path: str, extra: dict | None = None,
                            option: str = "--out") -> None:
    """Write the format `load_compressor_weights` reads (whole, or not at all; `option` is named when the
    path cannot be written). `extra`: more string metadata (a trained file says what it was trained for)."""
    from safetensors.torch import save
    sd = {f"hr.{k}": v for k, v in hr.state_dict().items()}
    if lr is not None:
        sd.update({f"lr.proj.{k}": v for k, v in lr.state_dict().items()})
    bad = non_finite(sd)
    if bad:      # a diverged training must not leave a file that loads
        raise ValueError(f"the compressor weights hold NaN/inf values ({', '.join(bad[:4])}), so '{path}' was "
                         "not written: the training diverged; lower --lr")
    dim = hr.convs[-1].out_channels
    meta = {**{k: str(v) for k, v in (extra or {}).items()}, "format": WEIGHTS_FORMAT, "dim": str(dim)}
    write_file(path, save({k: v.detach().contiguous().cpu() for k, v in sd.items()}, metadata=meta), option)


def make_compressor(mode: str, model: CausalWanModel, vae=None, weights: str | None = None):
    """The compressor a cache mode needs, or a clear refusal when its inputs are missing."""
    if mode in ("full", "none"):
        return None
    if mode == "kv_pool":
        return KVPool()
    if mode in ("lr", "hr_lr") and vae is None:
        raise ValueError(f"cache mode '{mode}' re-encodes history with the VAE: connect a Wan2.1 VAE")
    hr = lr = None
    if mode in ("hr", "hr_lr"):
        if not weights:
            raise ValueError(f"cache mode '{mode}' needs trained compressor weights, and none were given. "
                             "No public weights exist yet: use 'kv_pool' or 'lr' (training-free), or load a "
                             "compressor .safetensors in the model loader")
        hr, lr = load_compressor_weights(weights, model.cfg.dim, model.cfg.in_dim)
        hr.to(model.device, model.dtype)
        if lr is not None:
            lr.to(model.device, model.dtype)
    return DiTCompressor(mode, model, vae, hr, lr)
