"""The native VAE (VAELoader) as packforcing_core's streaming WanVAE, sharing its weights; or, for the
decode paths, a tiny Wan2.1 decoder (TAEHV: taew2_1 / lighttaew2_1 loaded by VAELoader) as the fast,
lower-fidelity TinyWanDecoder."""
from __future__ import annotations

from contextlib import contextmanager

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..packforcing_core.vae.model import WanVAE
from ..packforcing_core.vae.taehv import TinyDecoderError, TinyWanDecoder, is_tiny_decoder
from ..packforcing_core.vae.weights import VAELoadError
from .common import check_choice
from .spec import InputError

DEFAULT_DEVICE = "default"


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


def decode_devices() -> list[str]:
    """Choices of the decode_device inputs: ComfyUI's VAE device, the CPU, each CUDA GPU of the machine."""
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return [DEFAULT_DEVICE, "cpu", *gpus]


def decode_device_input() -> io.Combo.Input:
    return io.Combo.Input(
        "decode_device", options=decode_devices(), default=DEFAULT_DEVICE, optional=True,
        tooltip="Where the frames are decoded. default: ComfyUI's VAE device (the sampler's GPU, on a CUDA stream "
                "of its own); cuda:1 etc.: a second GPU, so the decode no longer slows the sampling (the VAE's "
                "weights are copied there for the run); cpu: slow, frees the GPU (decodes in float32).")


@contextmanager
def decoder_on(vae, decode_device: str | None, input_name: str = "decode_device"):
    """The decoder of `vae` (Wan VAE or tiny decoder) on `decode_device`: ComfyUI's VAE device for
    'default', else a copy of its weights on the device named (checked against this machine's)."""
    device = decode_device or DEFAULT_DEVICE
    check_choice(input_name, device, decode_devices())
    if device == DEFAULT_DEVICE:
        with wan_vae_on_device(vae, tiny_ok=True) as wan:
            yield wan
        return
    stage = getattr(vae, "first_stage_model", None)
    if stage is None or not hasattr(vae, "patcher"):
        raise InputError("vae", f"{type(vae).__name__} is not a ComfyUI VAE")
    sd = stage.state_dict()
    dtype = torch.float32 if device == "cpu" else vae.vae_dtype      # half-precision 3D convs crawl on a CPU
    try:
        cls = TinyWanDecoder if is_tiny_decoder(sd) else WanVAE
        dec = cls.from_state_dict(sd, source="the VAE input", dtype=dtype, device=device)
    except (VAELoadError, TinyDecoderError) as e:
        raise InputError("vae", f"{e}. Load wan_2.1_vae.safetensors (or taew2_1 / lighttaew2_1 to decode fast at "
                                "lower fidelity) with VAELoader") from e
    if dec.device.type == "cuda":
        dec.channels_last()
    try:
        yield dec
    finally:
        del dec
