"""Reading and checking Wan2.1 VAE weights (safetensors, or weights-only PyTorch files), with errors
that name the file and the fix."""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
from safetensors.torch import load_file

from .latents import LATENT_CHANNELS

SAFETENSORS_EXTS = (".safetensors", ".sft")
TORCH_EXTS = (".pt", ".pth", ".ckpt", ".bin")
EXPECTED_FILE = "the Wan2.1 VAE (wan_2.1_vae.safetensors: 16 latent channels, base dim 96)"


class VAELoadError(ValueError):
    """A file or state dict that is not a Wan2.1 VAE; the message names the source and the fix."""


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
