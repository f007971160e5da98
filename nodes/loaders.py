"""Model loaders: a DiT file (+ optional trained compressor), or the weights of a native MODEL."""
from __future__ import annotations

import os

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..packforcing_core.model.checkpoint import CheckpointError, load_model
from ..packforcing_core.model.fp8 import fp8_unsupported_reason, quantize_dit
from .common import CATEGORY, COMPRESSOR_FOLDER, DTYPES, PackForcingModelType, check_choice, listed_model_file
from .model_handle import NativeModel, OwnedModel
from .spec import InputError

NO_COMPRESSOR = "none"


def _compressor_option() -> io.Combo.Input:
    return io.Combo.Input(
        "compressor", options=[NO_COMPRESSOR] + folder_paths.get_filename_list(COMPRESSOR_FOLDER),
        default=NO_COMPRESSOR, optional=True,
        tooltip="Trained dual-branch compressor weights (.safetensors in models/packforcing), needed only by "
                "the cache modes hr and hr_lr. No public weights exist yet: 'none' works with full, none, "
                "kv_pool and lr.")


def _compressor_path(name: str | None) -> str | None:
    if not name or name == NO_COMPRESSOR:
        return None
    return listed_model_file("compressor", COMPRESSOR_FOLDER, name)


class LoadPackForcingModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingModelLoader",
            display_name="Load PackForcing Model",
            category=CATEGORY,
            description="Loads a causal Wan2.1 text-to-video DiT (Self-Forcing, CausalForcing, LongLive ...: "
                        ".pt or .safetensors) from models/diffusion_models. The weights stay on the offload "
                        "device until a sampler runs.",
            inputs=[
                io.Combo.Input("dit_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The DiT checkpoint in models/diffusion_models, e.g. self_forcing_dmd.pt. "
                                       "Sizes are read from the tensors, so 1.3B and 14B both load."),
                io.Combo.Input("dtype", options=list(DTYPES), default="bf16",
                               tooltip="Compute dtype of the DiT and its KV cache. bf16 as the checkpoints were "
                                       "trained; fp16 for GPUs without bf16; fp32 for CPU or debugging."),
                _compressor_option(),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the DiT's blocks and replay steady-state chunks as CUDA "
                                         "graphs, after a one-time compile of ~20 s on the first run (measured: "
                                         "compiling alone 1.5x faster on an H100; with the graphs 0.43 s per "
                                         "16-frame 832x480 chunk on an H200). Worth it for long videos. "
                                         "Ignored on CPU."),
                io.Boolean.Input("fp8", default=False, optional=True,
                                 tooltip="fp8 (e4m3) matmuls in the DiT's blocks, on GPUs with fp8 units (Ada, "
                                         "Hopper): ~10% faster chunks on an H200; the video deviates from bf16's "
                                         "(latents ~3% relative L2 with random weights). Needs dtype bf16 or fp16."),
            ],
            outputs=[PackForcingModelType.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, dit_name: str, dtype: str, compressor: str = NO_COMPRESSOR,
                compile: bool = False, fp8: bool = False) -> io.NodeOutput:
        check_choice("dtype", dtype, DTYPES)
        if fp8:
            reason = ("it replaces bf16/fp16 layers, choose dtype bf16" if dtype == "fp32"
                      else fp8_unsupported_reason(mm.get_torch_device()))
            if reason:
                raise InputError("fp8", f"{reason}; or turn fp8 off")
        path = listed_model_file("dit_name", "diffusion_models", dit_name)
        try:
            dit = load_model(path, device=mm.unet_offload_device(), dtype=DTYPES[dtype])
        except CheckpointError as e:
            raise InputError("dit_name", str(e)) from e
        if fp8:
            quantize_dit(dit)
        model = OwnedModel(dit, name=os.path.basename(path), compile=compile)
        model = model.with_compressor(_compressor_path(compressor))
        return io.NodeOutput(model)


class PackForcingModelFromModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingModelFromMODEL",
            display_name="PackForcing Model from MODEL",
            category=CATEGORY,
            description="Runs PackForcing on the weights of a native Wan2.1 T2V MODEL (UNETLoader, with any LoRA "
                        "applied by ComfyUI). No second copy of the weights is made: ComfyUI loads them and the "
                        "PackForcing DiT is built on them for each run.",
            inputs=[
                io.Model.Input("model", tooltip="A causal Wan2.1 text-to-video model from UNETLoader "
                                                "(ComfyUI-repackaged .safetensors, bf16/fp16/fp32), including "
                                                "the checkpoints ComfyUI's own AR nodes use (e.g. "
                                                "causal_forcing-framewise.safetensors: frame-wise, so set the "
                                                "sampler's chunk_frames to 1)."),
                _compressor_option(),
            ],
            outputs=[PackForcingModelType.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, compressor: str = NO_COMPRESSOR) -> io.NodeOutput:
        handle = NativeModel(model).with_compressor(_compressor_path(compressor))
        return io.NodeOutput(handle)
