"""ComfyUI glue shared by the nodes: socket types, the model folder, devices and memory."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from .spec import InputError

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


def contained_file(input_name: str, name: str, roots: dict[str, str], extensions: tuple[str, ...]) -> str:
    """The path of a file-name input, refused unless it names a file inside one of the allowed folders.

    `name` is relative to the first root, or annotated " [<root>]" (ComfyUI's " [output]" convention).
    Absolute paths, `..`, NUL and links that lead outside are refused with the same message whether or
    not the target exists, so the answer tells a caller nothing about the rest of the disk."""
    text, root_name = str(name), next(iter(roots))
    for tag in roots:
        if text.endswith(f" [{tag}]"):
            text, root_name = text[: -len(tag) - 3], tag
    refusal = InputError(input_name, f"'{name}' is not a {'/'.join(extensions)} file of the "
                                     f"{' or '.join(roots)} folder: pick one from the list")
    parts = text.replace("\\", "/").split("/")
    if not text or "\0" in text or os.path.isabs(text) or os.path.splitdrive(text)[0] or ".." in parts \
            or not text.endswith(extensions):
        raise refusal
    root = os.path.realpath(roots[root_name])
    path = os.path.realpath(os.path.join(root, text))
    if os.path.commonpath([root, path]) != root:
        raise refusal
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{name}' is not in the {root_name} folder (any more): pick a file from "
                                     "the list, or refresh it (R)")
    return path


def listed_model_file(input_name: str, folder: str, name: str) -> str:
    """A models/<folder> file named exactly as ComfyUI lists it (V3 combos are not checked by every
    ComfyUI version, so a name from the API could be anything)."""
    if name not in folder_paths.get_filename_list(folder):
        raise InputError(input_name, f"'{name}' is not a file of models/{folder}: pick one from the list, or "
                                     "put the file there and refresh (R)")
    return folder_paths.get_full_path_or_raise(folder, name)


def check_choice(name: str, value, options) -> None:
    """ComfyUI 0.3.75 does not check the value of a V3 combo sent over the API: check it here."""
    if not isinstance(value, str) or value not in options:
        raise InputError(name, f"{value!r} is not one of {', '.join(options)}")


def check_filename_prefix(prefix) -> None:
    """A NUL cuts a path short in the C libraries that write files (ffmpeg): refuse control characters.
    ComfyUI names files after the prefix's last part (normalised): none, or one starting with '.',
    would write a hidden file such as '._00001_.mp4'."""
    if not isinstance(prefix, str) or any(ord(c) < 32 or c == "\x7f" for c in prefix):
        raise InputError("filename_prefix", f"{prefix!r} contains a control character (such as NUL): use a plain "
                                            "path like video/PackForcing")
    if not prefix.strip():
        raise InputError("filename_prefix", "the prefix is empty: give a path and name in the output folder, like "
                                            "video/PackForcing (files are named <prefix>_00001_.mp4 ...)")
    name = os.path.basename(os.path.normpath(prefix))
    if name.startswith("."):
        raise InputError("filename_prefix", f"'{prefix}' would write a hidden file ('{name}_00001_...'): end it with "
                                            "a name that does not start with '.', like video/PackForcing")


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

