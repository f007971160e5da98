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
    return drop_dangling_links(wf)


def drop_dangling_links(wf: dict) -> dict:
    """Inputs linked to a node that was taken out (the CLIP on a sampler, without its CLIPLoader) go too."""
    for node in wf.values():
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in wf:
                del node["inputs"][name]
    return wf
