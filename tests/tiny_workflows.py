"""Shipped workflows (workflows/api/) put on the tiny random models that a test's server holds, and the
input files they name (a start image, a clip), so that the frontend shows them as a user sees them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from comfy_harness import REPO_ROOT

API_DIR = REPO_ROOT / "workflows" / "api"

# The shipped workflows (file names without .json: the titles ComfyUI's template browser shows).
T2V_2MIN = "PackForcing - Text to video, 2 min"
CONTINUE = "PackForcing - Continue a video with a new prompt"
I2V_60S = "PackForcing - Image to video, 60 s"
SCHEDULE_90S = "PackForcing - Prompt schedule, 3 prompts, 90 s"
EXTEND_CLIP = "PackForcing - Extend a clip by 20 s"
TWO_SHOTS = "PackForcing - Two shots with a scene cut, 20 s"
FULL_CACHE = "PackForcing - Full cache reference, 5 s"
COMPARE_CACHE = "PackForcing - Compare two caches, 60 s"


def api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def on_tiny_models(name: str, dit: str, vae: str, prompt: str, **by_kind) -> dict:
    """The API workflow `name` with the text encoder replaced by Load Prompt Embeddings of `prompt`
    and the loaders pointed at `dit` / `vae`; by_kind: extra inputs per node class."""
    wf = api(name)
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


def scene(width: int, height: int, t: float = 0.0) -> np.ndarray:
    """(height, width, 3) uint8: a sun over the sea at time t in [0, 1] (the sun sets as t grows)."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    horizon = 0.62
    sky = np.stack([0.95 - 0.5 * y, 0.55 - 0.3 * y, 0.35 + 0.3 * y], -1)
    sea = np.stack([0.1 + 0.1 * np.sin(40 * y + 6 * x + 9 * t), 0.25 + 0.05 * y, 0.45 - 0.1 * y], -1)
    img = np.where((y < horizon)[..., None], sky, sea)
    sun = (x - 0.5) ** 2 * (width / height) ** 2 + (y - (0.3 + 0.35 * t)) ** 2 < 0.012
    img[sun & (y < horizon)] = (1.0, 0.85, 0.4)
    return (img.clip(0, 1) * 255).astype(np.uint8)


def write_example_inputs(input_dir: Path, frames: int = 37) -> list[Path]:
    """The files the shipped workflows load (LoadImage's image, LoadVideo's clip) written into `input_dir`:
    a 416x240 picture and a `frames`-frame 16 fps h264 clip of the same scene."""
    import av
    from PIL import Image

    written = []
    for path in sorted(API_DIR.glob("*.json")):
        for node in json.loads(path.read_text()).values():
            kind, inputs = node["class_type"], node["inputs"]
            if kind == "LoadImage":
                out = input_dir / inputs["image"]
                Image.fromarray(scene(416, 240)).save(out)
            elif kind == "LoadVideo":
                out = input_dir / inputs["file"]
                with av.open(str(out), "w") as video:
                    stream = video.add_stream("libx264", rate=16)
                    stream.width, stream.height, stream.pix_fmt = 416, 240, "yuv420p"
                    for i in range(frames):
                        frame = av.VideoFrame.from_ndarray(scene(416, 240, i / max(1, frames - 1)), format="rgb24")
                        video.mux(stream.encode(frame))
                    video.mux(stream.encode())
            else:
                continue
            written.append(out)
    return written


# The frontend adds a preview widget to Load Video once its clip has loaded, and that widget's value goes
# into the prompt it queues ("video-preview"); wait for it before converting a workflow to a prompt.
PREVIEWS_LOADED = """() => app.graph._nodes.filter(n => n.comfyClass === 'LoadVideo')
    .every(n => n.widgets?.some(w => w.name === 'video-preview'))"""


def ui_to_api(browser, ui: dict) -> dict:
    """The prompt the frontend queues for the UI workflow `ui` (its example inputs in the server's input/)."""
    browser.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, null, "
                     "{showMissingModelsDialog: false, showMissingNodesDialog: false}) }", ui)
    browser.wait_for(PREVIEWS_LOADED, timeout=30)
    return browser.evaluate("async () => (await window.app.graphToPrompt()).output")


def differences(prompt: dict, twin: dict) -> list[str]:
    """Node inputs where the frontend's prompt and the API twin disagree, one line each."""
    out = [f"node {k}: only in the {'twin' if k in twin else 'frontend'}" for k in sorted(set(prompt) ^ set(twin))]
    for k in sorted(set(prompt) & set(twin)):
        a, b = prompt[k], twin[k]
        for key in sorted((set(a) | set(b)) - {"inputs"}):
            if a.get(key) != b.get(key):
                out.append(f"node {k} {key}: frontend {a.get(key)!r}, twin {b.get(key)!r}")
        ia, ib = a.get("inputs", {}), b.get("inputs", {})
        out += [f"node {k} ({b.get('class_type')}) input {name!r}: frontend {ia.get(name, '<none>')!r}, "
                f"twin {ib.get(name, '<none>')!r}"
                for name in sorted(set(ia) | set(ib)) if ia.get(name) != ib.get(name)]
    return out
