"""Shipped workflows (workflows/api/) put on the tiny random models that a test's server holds."""
from __future__ import annotations

import json

from comfy_harness import REPO_ROOT


def on_tiny_models(name: str, dit: str, vae: str, prompt: str, **by_kind) -> dict:
    """The API workflow `name` with the text encoder replaced by Load Prompt Embeddings of `prompt`
    and the loaders pointed at `dit` / `vae`; by_kind: extra inputs per node class."""
    wf = json.loads((REPO_ROOT / "workflows" / "api" / f"{name}.json").read_text())
    for nid, node in list(wf.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            del wf[nid]
        elif kind == "CLIPTextEncode":
            wf[nid] = {"class_type": "PackForcingLoadPromptEmbeddings", "inputs": {"embeddings": prompt}}
        elif kind == "PackForcingModelLoader":
            inputs.update(dit_name=dit, dtype="fp32")
        elif kind == "VAELoader":
            inputs.update(vae_name=vae)
        inputs.update(by_kind.get(kind, {}))
    return wf
