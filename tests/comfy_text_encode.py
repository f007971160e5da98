"""Encode prompts with ComfyUI's own text-encoder code, in a process of its own (used by
tests/test_text_encoder_comfy.py; run with the python of the ComfyUI's venv).

    python comfy_text_encode.py COMFYUI_DIR REQUEST.json OUT.safetensors

REQUEST: {"files": {name: path}, "prompts": {name: [texts]}, "model_config": {UMT5 sizes}}. For every
file the script does what the CLIPLoader node does (comfy.sd.load_clip with type wan) and then runs the
CLIPTextEncode node on each of its prompts; OUT gets tensor "{name}.{i}" = the conditioning tensor.

Two things stand in for the real file's size (5.7B parameters cannot be built in a test): ComfyUI's
own per-model config override (model_options "umt5xxl_model_config") gives the model the test file's
sizes, and where ComfyUI's file detection, which reads tensor sizes only, does not take the test file
for UMT5-XXL (0.33 checks the feed-forward width 10240; 0.3.75 the width 4096, which the test file
has) it is told so. Loading, the tokenizer from the file, fp8 handling and encoding are ComfyUI's. ComfyUI runs with --cpu; its text encoder then
computes in float32 (it casts every weight to the float32 activations).
"""
import json
import logging
import sys

comfy_dir, request_path, out_path = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()

import comfy.sd  # noqa: E402
import nodes  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


class Missing(logging.Handler):
    """ComfyUI loads text encoders with strict=False: a missing tensor would only be logged."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        if "missing" in record.getMessage():
            self.messages.append(record.getMessage())


XXL_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
detect = comfy.sd.detect_te_model


def detect_test_file(sd):
    found = detect(sd)
    if found != comfy.sd.TEModel.T5_XXL and XXL_KEY in sd:
        print("the size-based detection is told that the test file is UMT5-XXL")
        return comfy.sd.TEModel.T5_XXL
    return found


comfy.sd.detect_te_model = detect_test_file
missing = Missing()
logging.getLogger().addHandler(missing)
with open(request_path) as f:
    request = json.load(f)
out = {}
for name, path in request["files"].items():
    clip = comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=None, clip_type=comfy.sd.CLIPType.WAN,
                              model_options={"umt5xxl_model_config": request["model_config"]})
    if missing.messages:
        sys.exit(f"{path}: {missing.messages}")
    for i, text in enumerate(request["prompts"][name]):
        (cond,) = nodes.CLIPTextEncode().encode(clip, text)
        out[f"{name}.{i}"] = cond[0][0].float().contiguous()
save_file(out, out_path)
print("encoded", len(out))
