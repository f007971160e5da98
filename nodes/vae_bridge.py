"""The native VAE (VAELoader) as packforcing_core's streaming WanVAE, sharing its weights; or, for the
decode paths, a tiny Wan2.1 decoder (TAEHV: taew2_1 / lighttaew2_1 loaded by VAELoader) as the fast,
lower-fidelity TinyWanDecoder."""
from __future__ import annotations

from contextlib import contextmanager

import comfy.model_management as mm

from ..packforcing_core.vae.model import WanVAE
from ..packforcing_core.vae.taehv import TinyDecoderError, TinyWanDecoder, is_tiny_decoder
from ..packforcing_core.vae.weights import VAELoadError
from .spec import InputError


@contextmanager
def wan_vae_on_device(vae, input_name: str = "vae", memory_required: int = 0, tiny_ok: bool = False):
    """Yield a WanVAE on ComfyUI's VAE device, built on the native VAE's loaded weights (no copy when the
    dtypes agree); with `tiny_ok` (decoding only) a TinyWanDecoder when the VAE is a TAEHV. Refuses
    other VAEs, saying what was expected."""
    stage = getattr(vae, "first_stage_model", None)
    if stage is None or not hasattr(vae, "patcher"):
        raise InputError(input_name, f"{type(vae).__name__} is not a ComfyUI VAE")
    mm.load_models_gpu([vae.patcher], memory_required=memory_required, force_full_load=True)
    sd = stage.state_dict()
    try:
        if is_tiny_decoder(sd):
            if not tiny_ok:
                raise InputError(input_name, "this is a tiny decoder (TAEHV), which cannot encode: this cache mode "
                                             "re-encodes history, so load wan_2.1_vae.safetensors with VAELoader")
            wan = TinyWanDecoder.from_state_dict(sd, source="the VAE input", dtype=vae.vae_dtype, device=vae.device)
        else:
            wan = WanVAE.from_state_dict(sd, source="the VAE input", dtype=vae.vae_dtype, device=vae.device)
    except (VAELoadError, TinyDecoderError) as e:
        raise InputError(input_name, f"{e}. Load wan_2.1_vae.safetensors (or taew2_1 / lighttaew2_1 to decode "
                                     "fast at lower fidelity) with VAELoader") from e
    if wan.device.type == "cuda":
        wan.channels_last()
    try:
        yield wan
    finally:
        del wan
