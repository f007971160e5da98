"""Encode prompts with ComfyUI's own text-encoder code, in a process of its own (used by
tests/test_text_encoder_comfy.py; run with the python of the ComfyUI's venv).

    python comfy_text_encode.py COMFYUI_DIR REQUEST.json OUT.safetensors

REQUEST: {"files": {name: path}, "prompts": {name: [texts]}, "model_config": {UMT5 sizes}}. For every
file the script does what the CLIPLoader node does (comfy.sd.load_clip with type wan) and then runs the
CLIPTextEncode node on each of its prompts; OUT gets tensor "{name}.{i}" = the conditioning tensor.

The one addition is ComfyUI's own per-model config override (model_options "umt5xxl_model_config"),
so that a UMT5 with the XXL layout (24 layers, width 4096, which ComfyUI's detection needs) but few
heads and a narrow feed-forward can be built in a test. ComfyUI runs with --cpu; its text encoder then
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
