"""The native VAE (VAELoader) as packforcing_core's streaming WanVAE, sharing its weights."""
from __future__ import annotations

from contextlib import contextmanager

import comfy.model_management as mm

from ..packforcing_core.vae import VAELoadError, WanVAE
from .spec import InputError


@contextmanager
def wan_vae_on_device(vae, input_name: str = "vae", memory_required: int = 0):
    """Yield a WanVAE on ComfyUI's VAE device, built on the native VAE's loaded weights (no copy when the
    dtypes agree). Refuses non-Wan2.1 VAEs, saying what was expected."""
    stage = getattr(vae, "first_stage_model", None)
    if stage is None or not hasattr(vae, "patcher"):
        raise InputError(input_name, f"{type(vae).__name__} is not a ComfyUI VAE")
    mm.load_models_gpu([vae.patcher], memory_required=memory_required, force_full_load=True)
    try:
        wan = WanVAE.from_state_dict(stage.state_dict(), source="the VAE input", dtype=vae.vae_dtype,
                                     device=vae.device)
    except VAELoadError as e:
        raise InputError(input_name, f"{e}. Load wan_2.1_vae.safetensors with VAELoader") from e
    if wan.device.type == "cuda":
        wan.channels_last()
    try:
        yield wan
    finally:
        del wan
