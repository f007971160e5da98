"""ComfyUI glue shared by the nodes: socket types, the model folder, devices and memory."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

CATEGORY = "PackForcing"
COMPRESSOR_FOLDER = "packforcing"          # models/packforcing: trained compressor weights

PackForcingModelType = io.Custom("PACKFORCING_MODEL")
PackedCacheType = io.Custom("PACKED_CACHE")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def register_model_folder() -> None:
    """models/packforcing (plus any path extra_model_paths.yaml gives under `packforcing`)."""
    default = os.path.join(folder_paths.models_dir, COMPRESSOR_FOLDER)
    os.makedirs(default, exist_ok=True)
    if COMPRESSOR_FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(COMPRESSOR_FOLDER, default)
        paths, _ = folder_paths.folder_names_and_paths[COMPRESSOR_FOLDER]
    else:
        paths = [default]
    folder_paths.folder_names_and_paths[COMPRESSOR_FOLDER] = (paths, {".safetensors", ".sft"})


def work_dir(kind: str) -> str:
    """output/packforcing (kept across restarts) or temp/packforcing (emptied at start-up)."""
    root = folder_paths.get_output_directory() if kind == "output" else folder_paths.get_temp_directory()
    path = os.path.join(root, "packforcing")
    os.makedirs(path, exist_ok=True)
    return path


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def free_bytes(device: torch.device) -> int:
    return int(mm.get_free_memory(device))


def host_free_bytes() -> int:
    return int(mm.get_free_memory(torch.device("cpu")))


@contextmanager
def releasing_memory():
    """Give back the allocator's cached blocks after a run, whatever happened."""
    try:
        yield
    finally:
        mm.soft_empty_cache()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
