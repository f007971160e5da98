"""Regenerate the UI-format workflows (workflows/*.json) from their API-format twins (workflows/api/).

The real ComfyUI frontend does the conversion (app.loadApiJson, then graph.serialize), so widget
values and links are exactly what the frontend expects; this script then adds the model download
hints (`properties.models`), a note on where the files go, and fixed seeds. The server holds the files
the workflows load (tests/tiny_workflows.write_example_inputs), so nodes such as Load Video are built
as a user sees them, and a UI file is written only if the frontend turns it back into its API twin
(otherwise the differences are printed: fix the twin).

    .venv/bin/python workflows/build_ui.py [NAME ...]     (needs `bash .ci/setup_comfyui.sh`; default: all)

tests/test_comfy_e2e.py checks that each UI workflow loads without missing nodes and that the
frontend turns it back into its API twin.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_harness import Browser, ComfyServer  # noqa: E402
from tiny_workflows import PREVIEWS_LOADED, differences, ui_to_api, write_example_inputs  # noqa: E402

HF = "https://huggingface.co"
MODELS = {
    "PackForcingModelLoader": {"name": "self_forcing_dmd.pt", "directory": "diffusion_models",
                               "url": f"{HF}/gdhe17/Self-Forcing/resolve/main/checkpoints/self_forcing_dmd.pt"},
    "VAELoader": {"name": "wan_2.1_vae.safetensors", "directory": "vae",
                  "url": f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/"
                         "wan_2.1_vae.safetensors"},
    "CLIPLoader": {"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders",
                   "url": f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/"
                          "umt5_xxl_fp8_e4m3fn_scaled.safetensors"},
}
NOTE = """## Models
- **self_forcing_dmd.pt** (Self-Forcing DMD, causal Wan2.1-1.3B) -> `ComfyUI/models/diffusion_models/`
  from https://huggingface.co/gdhe17/Self-Forcing (checkpoints/). Other causal Wan2.1 T2V checkpoints
  (CausalForcing, LongLive, Rolling Forcing) load the same way.
- **wan_2.1_vae.safetensors** -> `ComfyUI/models/vae/`
- **umt5_xxl_fp8_e4m3fn_scaled.safetensors** -> `ComfyUI/models/text_encoders/`
  (both from https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged)

PackForcing needs no other weights in the training-free modes (kv_pool, lr, none, full).
"""


HOW = {   # what each workflow does, shown in a note beside it
    "PackForcing - Text to video, 2 min":
        "## Steer it while it plays\nThe CLIP also goes to the sampler's `clip` input, so "
        "while the video is generated you can type the next prompt (or pick saved prompt embeddings) in the steer "
        "controls on the sampler, with a transition, re-cache and a scene cut, or pause it between two chunks. "
        "After the run, *keep these changes* adds them as Prompt Schedule nodes: queued again, the workflow "
        "renders the same video.",
    "PackForcing - Image to video, 60 s":
        "## Image to 60 s video\nLoad your image in *Start image*: the sampler resizes and "
        "centre-crops it to 832x480, encodes it with the VAE, commits it to the cache and continues from it. "
        "`length` counts the whole video, the image included: 961 frames = the image + 60 s (240 latent frames "
        "in chunks of 4).",
    "PackForcing - Prompt schedule, 3 prompts, 90 s":
        "## 90 s, three prompts\nEach *Prompt Schedule* node adds a prompt that takes "
        "over at `start_seconds` (rounded to the nearest 1 s chunk boundary), blended in over "
        "`transition_chunks`. `recache` recomputes the cached history under the new prompt so the old one does not "
        "linger. The live view on the sampler shows the active prompt and marks the switches.",
    "PackForcing - Extend a clip by 20 s":
        "## Extend a clip\nPut a clip in `input/` and pick it in *Clip to extend*. The "
        "start must have 1+4k frames: *First 33 frames* keeps 33 (set `length` there to 1+4k). The output begins "
        "with the clip (re-encoded) and goes on for `length` minus the clip's frames: 33 + 320 = 20 s more.",
    "PackForcing - Two shots with a scene cut, 20 s":
        "## Two shots with a cut\nThe second schedule entry switches prompt at 10 s with "
        "`cut: sink`: recent and mid history are dropped and only the sink (the first second: the identity "
        "anchor) is kept, so the second shot keeps the character but not the scene. `cut: all` starts the second "
        "shot with no history at all.",
    "PackForcing - Compare two caches, 60 s":
        "## Same prompt and seed, two caches\nBoth samplers get the same prompt, seed and "
        "length (60 s); only the PackedCache differs: `none` keeps the sink (the first second) and the last second, "
        "`kv_pool` also keeps 16 compressed mid blocks and attends the top 14. Each video goes to a *Video Report*: "
        "sharpness, exposure, colour, motion, flicker and repeats per second, drift scores and one summary line, "
        "side by side. `write_report` on Save Video writes the same report as PNG / JSON / CSV beside the mp4.",
}

# Nodes placed by hand (id -> [x, y, width, height]) where the frontend's automatic layout would stack
# what should be seen side by side: the two reports of the cache comparison, with room for their plots.
LAYOUTS = {"PackForcing - Compare two caches, 60 s": {
    1: [100, 130, 270, 106], 3: [100, 300, 270, 130], 5: [100, 470, 270, 58], 14: [100, 580, 400, 300],
    2: [540, 130, 400, 200], 4: [540, 380, 340, 322], 10: [540, 820, 340, 322],
    6: [1000, 130, 340, 383], 11: [1000, 660, 340, 383], 7: [1400, 130, 270, 174], 12: [1400, 660, 270, 174],
    8: [1730, 130, 660, 720], 13: [2430, 130, 660, 720], 15: [540, -140, 760, 220]}}


def _clean(obj):
    """Drop the frontend's null-valued slot fields: shorter files, same graph."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if v is not None or k in ("link", "links")}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _decorate(workflow: dict) -> dict:
    for node in workflow["nodes"]:
        model = MODELS.get(node["type"])
        if model:
            node["properties"]["models"] = [model]
        if node["type"] == "PackForcingSampler":
            values = node["widgets_values"]
            values[values.index("randomize") if "randomize" in values else 4] = "fixed"
    right = max(n["pos"][0] + n["size"][0] for n in workflow["nodes"])
    workflow["last_node_id"] += 1
    workflow["nodes"].append({
        "id": workflow["last_node_id"], "type": "MarkdownNote", "pos": [right + 60, 130], "size": [420, 300],
        "flags": {}, "order": len(workflow["nodes"]), "mode": 0, "inputs": [], "outputs": [],
        "title": "Where the models go", "properties": {}, "widgets_values": [NOTE], "color": "#432",
        "bgcolor": "#653"})
    return workflow


def _describe(workflow: dict, name: str) -> dict:
    text = HOW.get(name.removesuffix(".json"))
    if text:
        workflow["last_node_id"] += 1
        workflow["nodes"].append({
            "id": workflow["last_node_id"], "type": "MarkdownNote", "pos": [0, -260], "size": [520, 200],
            "flags": {}, "order": len(workflow["nodes"]), "mode": 0, "inputs": [], "outputs": [],
            "title": "How this workflow works", "properties": {}, "widgets_values": [text]})
    return workflow


def _place(workflow: dict, name: str) -> dict:
    layout = LAYOUTS.get(name.removesuffix(".json"), {})
    for node in workflow["nodes"]:
        if node["id"] in layout:
            node["pos"], node["size"] = layout[node["id"]][:2], layout[node["id"]][2:]
    return workflow


def convert(browser: Browser, api: dict, name: str) -> dict:
    browser.evaluate("([api, name]) => window.app.loadApiJson(api, name)", [api, name])
    browser.wait_for(PREVIEWS_LOADED, timeout=30)
    return _place(_describe(_decorate(_clean(browser.evaluate("() => window.app.graph.serialize()"))), name), name)


def main(names: list[str]) -> None:
    failed = []
    with ComfyServer() as server, Browser() as browser:
        write_example_inputs(server.input_dir)
        browser.open(server.url)
        browser.wait_for("() => window.app && window.app.graph && window.LiteGraph", timeout=90)
        for path in sorted((ROOT / "workflows" / "api").glob("*.json")):
            if names and path.stem not in names:
                continue
            api = json.loads(path.read_text())
            ui = convert(browser, api, path.name)
            diff = differences(ui_to_api(browser, ui), api)
            if diff:
                failed.append(path.stem)
                print(f"not written: {path.stem}: the frontend does not turn it back into its API twin:\n  " +
                      "\n  ".join(diff), file=sys.stderr)
                continue
            out = ROOT / "workflows" / path.name
            out.write_text(json.dumps(ui, indent=1) + "\n")
            print(f"wrote {out.relative_to(ROOT)} ({len(ui['nodes'])} nodes)")
    if failed:
        sys.exit(f"{len(failed)} workflow(s) not written: {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:])
