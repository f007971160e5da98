"""Prompt embeddings <-> file (packforcing_core.sampling.prompts format), so a run can skip the text encoder.

Save writes to the output folder; Load lists .safetensors files of the input folder and, marked
" [output]", those of the output folder (so a saved file can be loaded without copying it).
"""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..packforcing_core.sampling.prompts import load_prompt_embeds, save_prompt_embeds
from .common import CATEGORY, check_filename_prefix, contained_file
from .conditioning import prompt_tensor
from .spec import InputError

EXTENSIONS = (".safetensors", ".sft")


def _files(root: str, tag: str = "") -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for n in names:
            if n.endswith(EXTENSIONS):
                rel = os.path.relpath(os.path.join(folder, n), root).replace(os.sep, "/")
                found.append(rel + tag)
    return sorted(found)


def embeddings_path(name: str) -> str:
    """The file a listed name refers to, only inside input/ or output/ (see common.contained_file)."""
    roots = {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory()}
    return contained_file("embeddings", name, roots, EXTENSIONS)


def embedding_files() -> list[str]:
    return _files(folder_paths.get_input_directory()) + \
        _files(folder_paths.get_output_directory(), " [output]")


class SavePromptEmbeddings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingSavePromptEmbeddings",
            display_name="Save Prompt Embeddings",
            category=CATEGORY,
            description="Saves the text encoder's output (CONDITIONING) as a .safetensors file in the output "
                        "folder, so later runs can load it instead of the 6+ GB umt5-xxl encoder.",
            inputs=[io.Conditioning.Input("conditioning", tooltip="From CLIPTextEncode (umt5-xxl, CLIPLoader type wan)."),
                    io.String.Input("filename_prefix", default="prompt_embeddings/wan",
                                    tooltip="Path and name prefix in the output folder."),
                    io.String.Input("prompt_text", default="", multiline=True, optional=True,
                                    tooltip="Optional: the prompt's text, stored in the file's metadata.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning, filename_prefix: str, prompt_text: str = "") -> io.NodeOutput:
        check_filename_prefix(filename_prefix)
        embeds = prompt_tensor(conditioning)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        file = f"{name}_{counter:05}_.safetensors"
        save_prompt_embeds(os.path.join(folder, file), embeds, prompt_text or None)
        rel = f"{subfolder}/{file}" if subfolder else file
        return io.NodeOutput(ui=ui.PreviewText(f"saved {rel} [output] ({tuple(embeds.shape)})"))


class LoadPromptEmbeddings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingLoadPromptEmbeddings",
            display_name="Load Prompt Embeddings",
            category=CATEGORY,
            description="Loads prompt embeddings saved by Save Prompt Embeddings as a CONDITIONING.",
            inputs=[io.Combo.Input("embeddings", options=embedding_files(),
                                   tooltip="A prompt-embeddings .safetensors file from the input folder, or from "
                                           "the output folder (marked [output]).")],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def fingerprint_inputs(cls, embeddings: str):
        try:
            return os.path.getmtime(embeddings_path(embeddings))
        except InputError:
            return float("nan")

    @classmethod
    def validate_inputs(cls, embeddings: str):
        try:
            embeddings_path(embeddings)
        except InputError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, embeddings: str) -> io.NodeOutput:
        try:
            embeds, _ = load_prompt_embeds(embeddings_path(embeddings))
        except (ValueError, FileNotFoundError) as e:
            raise InputError("embeddings", str(e)) from e
        return io.NodeOutput([[embeds, {}]])
