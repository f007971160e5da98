"""Start frames for a video: an image, a clip or a latent, turned into the normalised latent frames
the sampler commits as history (`Generation.commit_start`).

Images are fitted to the video's size the way ComfyUI's ARVideoI2V fits a start image: centre-crop
to the target aspect ratio (the margins rounded to whole pixels), then bilinear resize. Wan's VAE
encodes 1+4k frames to 1+k latent frames, so a clip must have 1+4k frames. A start has at least
one frame: an empty one would silently give a video from noise.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..io.files import input_file
from ..io.video import FrameSource
from ..vae.latents import normalize_latent


def nearest_clip_lengths(frames: int) -> str:
    below = 1 + max(0, frames - 1) // 4 * 4
    return f"{below} or {below + 4}"


def fit_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(F, H, W, 3) in [0, 1] -> (F, height, width, 3): centre crop to the aspect ratio, bilinear resize."""
    x = frames.movedim(-1, 1).float()
    old_h, old_w = x.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = round((old_w - old_w * new_aspect / old_aspect) / 2) if old_aspect > new_aspect else 0
    dy = round((old_h - old_h * old_aspect / new_aspect) / 2) if old_aspect < new_aspect else 0
    x = x[..., dy:old_h - dy, dx:old_w - dx]
    return F.interpolate(x, size=(height, width), mode="bilinear").movedim(1, -1)


def read_image(path: str) -> torch.Tensor:
    """An image file -> (1, H, W, 3) float in [0, 1]."""
    from PIL import Image
    input_file("start image", path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as e:
        raise ValueError(f"start image '{path}' is not a readable image ({e})") from e
    return torch.from_numpy(arr)[None]


def read_video(path: str, max_frames: int | None = None) -> torch.Tensor:
    """A video file -> (F, H, W, 3) float in [0, 1] (the first max_frames frames), read by the same
    reader as the health report."""
    input_file("start video", path)
    frames = []
    try:
        source = FrameSource(path, fps=16.0)          # the rate plays no part in a start
        try:
            for frame in source:
                frames.append(torch.from_numpy(np.array(frame)))
                if max_frames and len(frames) >= max_frames:
                    break
        finally:
            source.close()
    except ValueError as e:
        raise ValueError(f"start video {e}") from None
    except Exception as e:
        raise ValueError(f"start video '{path}' is not a readable video ({e})") from e
    if not frames:
        raise ValueError(f"start video '{path}' has no frames")
    return torch.stack(frames).float() / 255.0


def clip_latent_frames(n: int) -> int:
    """Latent frames of a start clip of n frames (1+4k); refuses other counts with the nearest valid ones."""
    if n < 1 or (n - 1) % 4:
        raise ValueError(f"a start clip has 1+4k frames (Wan's VAE encodes 4 frames per latent frame after the "
                         f"first); got {n}: use {nearest_clip_lengths(n)} frames")
    return 1 + (n - 1) // 4


def encode_start(vae, frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(F, H, W, 3) in [0, 1], F = 1+4k -> normalised latent (1, 16, 1+k, height/8, width/8)."""
    clip_latent_frames(frames.shape[0])
    pixels = fit_frames(frames, width, height) * 2 - 1                      # (F, H, W, 3) in [-1, 1]
    param = next(vae.parameters())
    with torch.no_grad():
        latent = vae.encode(pixels.permute(3, 0, 1, 2)[None].to(param.device, param.dtype))
    return latent.float().cpu()


def read_latent(path: str) -> torch.Tensor:
    """Start latent frames from a safetensors file, normalised: `latents` (normalised, as `generate`
    writes them) or ComfyUI's SaveLatent `latent_tensor` (VAE space)."""
    input_file("start latent", path)
    try:
        with safe_open(path, "pt") as f:
            keys = set(f.keys())
            if "latents" in keys:
                return f.get_tensor("latents").float()
            if "latent_tensor" in keys:
                raw = f.get_tensor("latent_tensor").float()
                if "latent_format_version_0" not in keys:       # ComfyUI's oldest format stored it scaled
                    raw = raw / 0.18215
                return normalize_latent(raw) if raw.dim() == 5 and raw.shape[1] == 16 else raw
    except Exception as e:
        raise ValueError(f"start latent '{path}' is not a readable safetensors file ({e})") from e
    raise ValueError(f"start latent '{path}' has neither 'latents' (from generate) nor 'latent_tensor' (ComfyUI "
                     "Save Latent)")


def non_finite_count(x: torch.Tensor) -> int:
    return int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """Refuse start frames with NaN/inf before anything is generated: the DiT would turn them into a
    NaN chunk and the run would blame the weights."""
    bad = non_finite_count(x)
    if bad:
        raise ValueError(f"{what} holds {bad} NaN/inf values of {x.numel()}: a start must be finite; save or "
                         "encode it again")
    return x


def check_start_latent(x: torch.Tensor, what: str) -> torch.Tensor:
    """A start latent (B, C, S, h, w) with at least one frame and no NaN/inf: the rule the CLI and the
    node share (an empty start would quietly give a video from noise)."""
    if x.dim() == 5 and x.shape[2] == 0:
        raise ValueError(f"{what} has 0 latent frames ({tuple(x.shape)}): a start needs at least one frame; "
                         "give the latent of an image or a clip, or no start")
    return check_finite(x, what)
