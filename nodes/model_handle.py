"""PACKFORCING_MODEL: a causal Wan2.1 DiT that lives on the offload device between runs.

ComfyUI caches node outputs until the node re-runs, so the output must not pin VRAM. Both kinds
of handle leave the weights to ComfyUI's model management (`ModelPatcher` + `load_models_gpu`):
a sampler run asks for them on the GPU, and ComfyUI may unload them again whenever another model
needs the memory.

- OwnedModel: weights loaded by this pack from a file (our CausalWanModel inside a ModelPatcher).
- NativeModel: a native ComfyUI Wan MODEL (UNETLoader). Its weights, LoRA patches applied by
  ComfyUI, are loaded to the GPU by ComfyUI and our CausalWanModel is built on top of those very
  tensors for the run (no copy when the dtypes agree). Bidirectional Wan2.1 T2V MODELs and the
  causal class ComfyUI >= 0.33 builds for files marked `causal_ar` (comfy.ldm.wan.ar_model, e.g.
  causal_forcing-framewise.safetensors) have the same tensor names, so both work the same way.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher

from ..packforcing_core.model.checkpoint import CheckpointError, detect_config, model_from_state_dict, strip_prefixes
from ..packforcing_core.model.dit import CausalWanModel, WanConfig
from .spec import InputError


class PackForcingDiT(torch.nn.Module):
    """ModelPatcher writes `model.device`; CausalWanModel derives it from its weights, so wrap it."""

    def __init__(self, dit: CausalWanModel):
        super().__init__()
        self.dit = dit
        self.device = dit.device


class PackForcingModel:
    name: str
    config: WanConfig
    dtype: torch.dtype              # compute dtype of the DiT and its KV cache
    compressor_path: str | None = None

    @contextmanager
    def on_device(self, memory_required: int = 0):
        """Yield the DiT on ComfyUI's torch device, after freeing `memory_required` bytes for the run."""
        raise NotImplementedError

    @property
    def load_device(self) -> torch.device:
        return self.patcher.load_device

    def with_compressor(self, path: str | None) -> "PackForcingModel":
        self.compressor_path = path
        return self


class OwnedModel(PackForcingModel):
    def __init__(self, dit: CausalWanModel, name: str, compile: bool = False):
        self.name, self.config, self.dtype = name, dit.cfg, dit.dtype
        self.compile, self._compiled = compile, False
        self.patcher = comfy.model_patcher.ModelPatcher(
            PackForcingDiT(dit), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    @contextmanager
    def on_device(self, memory_required: int = 0):
        mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)
        dit = self.patcher.model.dit
        fast = self.compile and dit.device.type == "cuda"
        if fast and not self._compiled:
            dit.compile_blocks()     # once: the compiled blocks stay with this model object
            self._compiled = True
        dit.enable_cuda_graphs(fast)
        try:
            yield dit
        finally:
            # a graph holds a memory pool and the weights' addresses, which change when ComfyUI offloads
            dit.enable_cuda_graphs(False)


class NativeModel(PackForcingModel):
    def __init__(self, patcher, name: str = "MODEL"):
        self.patcher, self.name = patcher, name
        self._loadable = None
        self.config = _native_config(patcher)
        self.dtype = _compute_dtype(patcher)

    @contextmanager
    def on_device(self, memory_required: int = 0):
        if self._loadable is None:        # one delegate per handle: ComfyUI keeps it loaded between runs
            self._loadable = _whole_weights(self.patcher)
        patcher = self._loadable
        mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
        dm = patcher.model.diffusion_model
        dit = model_from_state_dict(dm.state_dict(), _native_meta(dm), source=self.name,
                                    device=patcher.load_device, dtype=self.dtype)
        try:
            yield dit
        finally:
            del dit


def _whole_weights(patcher):
    """A patcher whose load puts every weight, LoRA patches applied, on the device. ComfyUI >= 0.33
    on a GPU streams weights by default ("dynamic VRAM"): they stay on the host and patches are
    applied as each layer runs, which a model built on the module's tensors would not see. Its
    non-dynamic delegate loads them whole, patched (ComfyUI's own route for hooked conditioning; it
    re-reads the file into host memory once)."""
    if not getattr(patcher, "is_dynamic", lambda: False)():
        return patcher
    try:
        return patcher.get_non_dynamic_delegate()
    except (AttributeError, RuntimeError) as e:
        raise InputError("model", f"ComfyUI streams this MODEL's weights (dynamic VRAM) and cannot load them whole "
                                  f"({e}): load the file with UNETLoader or Load PackForcing Model, or start "
                                  "ComfyUI with --disable-dynamic-vram") from e


def _native_meta(dm) -> dict:
    extra = {k: getattr(dm, k) for k in ("num_heads", "text_len") if hasattr(dm, k)}
    return {"config": json.dumps({"transformer": extra})}


def _compute_dtype(patcher) -> torch.dtype:
    base = patcher.model
    return getattr(base, "manual_cast_dtype", None) or base.get_dtype()


def _native_config(patcher) -> WanConfig:
    """Refuse anything but a Wan2.1 text-to-video MODEL, with what it is instead."""
    base = getattr(patcher, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if dm is None:
        raise InputError("model", f"{type(patcher).__name__} is not a ComfyUI diffusion MODEL")
    latent = type(getattr(base, "latent_format", None)).__name__
    if not isinstance(base.latent_format, comfy.latent_formats.Wan21):
        raise InputError("model", f"this MODEL is {type(base).__name__} (latent format {latent}), not a Wan2.1 "
                                  "text-to-video model: load a causal Wan2.1 T2V checkpoint (Self-Forcing, "
                                  "CausalForcing, LongLive ...) with UNETLoader, or use Load PackForcing Model")
    sd = strip_prefixes(dm.state_dict())
    if any(k.endswith(("scale_weight", "scale_input", "comfy_quant")) for k in sd):
        raise InputError("model", "this MODEL holds scaled fp8 weights, which the PackForcing DiT cannot run "
                                  "directly: load a bf16/fp16 checkpoint (weight_dtype default in UNETLoader)")
    try:
        return detect_config(sd, _native_meta(dm), source="MODEL")
    except CheckpointError as e:
        raise InputError("model", str(e)) from e
