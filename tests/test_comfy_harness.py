"""Smoke test of the e2e harness itself: real ComfyUI server + headless Chromium,
using only core nodes and a throw-away dummy custom node (not the pack's nodes)."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from comfy_harness import DEFAULT_UI_SETTINGS, REPO_ROOT, ComfyError

DUMMY_NODE = "pf_harness_dummy"
DUMMY_SOURCE = '''
import time
import comfy.model_management


class PFHarnessInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing/harness"

    def run(self, image):
        return (1.0 - image,)


class PFHarnessSleep:
    """Sleeps (interruptibly) and passes the image through."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 600.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing/harness"

    def run(self, image, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(0.05)
        return (image,)


NODE_CLASS_MAPPINGS = {"PFHarnessInvert": PFHarnessInvert, "PFHarnessSleep": PFHarnessSleep}
'''

# An LRU cache keeps node outputs across prompts (the default one drops those the next prompt does not
# use), so that the reset test can tell that reset() drops them.
COMFY_SERVER_OPTIONS = {"extra_custom_nodes": {DUMMY_NODE: DUMMY_SOURCE}, "extra_args": ["--cache-lru", "8"]}

CORE_NODES = ("KSampler", "VAELoader", "CLIPLoader", "UNETLoader", "EmptyImage", "SaveImage")


def image_prompt(prefix: str, color: int = 0xFF0000, middle: dict | None = None) -> dict:
    """EmptyImage -> [middle node] -> SaveImage, in API format."""
    prompt = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": color}},
        "3": {"class_type": "SaveImage",
              "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }
    if middle is not None:
        prompt["2"] = middle
        prompt["3"]["inputs"]["images"] = ["2", 0]
    return prompt


def test_object_info_has_core_and_dummy_nodes(comfy_server):
    info = comfy_server.object_info()
    missing = [n for n in CORE_NODES if n not in info]
    assert not missing, f"core nodes missing from /object_info: {missing}"
    assert "PFHarnessInvert" in info, comfy_server.log_tail()
    assert info["PFHarnessInvert"]["category"] == "testing/harness"
    assert comfy_server.process_rss() > 50 * 2**20


def test_custom_nodes_layout_and_import_report(comfy_server):
    pack_link = comfy_server.custom_nodes_dir / comfy_server.pack_name
    assert pack_link.is_symlink() and pack_link.resolve() == REPO_ROOT
    assert comfy_server.custom_node_loaded(DUMMY_NODE) is True
    # The pack may or may not import yet; ComfyUI must at least have tried.
    assert comfy_server.custom_node_loaded() is not None, comfy_server.log_tail()
    for sub in ("input", "output", "models/checkpoints", "models/vae", "models/diffusion_models"):
        assert (comfy_server.base_dir / sub).is_dir()


def test_prompt_runs_and_saves_image(comfy_server):
    prompt = image_prompt("harness_invert", color=0xFF0000, middle={
        "class_type": "PFHarnessInvert", "inputs": {"image": ["1", 0]}})
    with comfy_server.ws_messages() as ws:
        prompt_id = comfy_server.queue(prompt)
        entry = comfy_server.wait(prompt_id, timeout=120)
        ws.wait_done(prompt_id, timeout=30)

    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["status"]["completed"] is True
    files = comfy_server.output_files(entry)
    assert len(files) == 1 and files[0].is_file(), files
    assert files[0].parent == comfy_server.output_dir
    with Image.open(files[0]) as img:
        assert img.size == (64, 48)
        assert img.convert("RGB").getpixel((10, 10)) == (0, 255, 255)  # inverted red

    executed = {m["data"]["node"] for m in ws.of_type("executed", prompt_id)}
    assert "3" in executed  # SaveImage reports its output over the websocket
    assert ws.of_type("execution_start", prompt_id)


def test_invalid_prompt_is_rejected(comfy_server):
    with pytest.raises(ComfyError, match="HTTP 400"):
        comfy_server.queue({"1": {"class_type": "NoSuchNode", "inputs": {}}})


def test_interrupt(comfy_server):
    prompt = image_prompt("harness_sleep", middle={
        "class_type": "PFHarnessSleep", "inputs": {"image": ["1", 0], "seconds": 120.0}})
    with comfy_server.ws_messages() as ws:
        prompt_id = comfy_server.queue(prompt)
        ws.wait_for(lambda m: m["type"] == "executing"
                    and (m.get("data") or {}).get("node") == "2", timeout=60)
        comfy_server.interrupt()
        entry = comfy_server.wait(prompt_id, timeout=30)
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]


def test_frontend_loads_in_chromium(comfy_server, browser, artifacts_dir):
    browser.open(comfy_server.url)
    browser.wait_for("() => window.app && window.app.graph && window.LiteGraph"
                     " && document.querySelector('#graph-canvas')", timeout=90)
    registered = browser.evaluate(
        "() => Object.keys(window.LiteGraph.registered_node_types)")
    assert "KSampler" in registered and "PFHarnessInvert" in registered
    assert browser.evaluate("() => window.app.graph._nodes.length") > 0  # default workflow
    shot = browser.screenshot(artifacts_dir / "comfy_harness_frontend.png")
    assert shot.stat().st_size > 10_000
    assert browser.page_errors == [], browser.page_errors
    if os.environ.get("PACKFORCING_VERBOSE_BROWSER"):
        print("\n".join(browser.console_errors()))


def test_reset_forgets_prompts_files_settings_and_cached_outputs(comfy_server):
    """ComfyServer.reset(), which lets test modules share a server (conftest.py): a running prompt is
    interrupted, nothing of before is left that a test could see, and no node output is reused."""
    prompt = image_prompt("harness_reset", color=0x00FF00, middle={
        "class_type": "PFHarnessInvert", "inputs": {"image": ["1", 0]}})

    def run_and_cached_nodes() -> tuple[str, list]:
        with comfy_server.ws_messages() as ws:
            prompt_id = comfy_server.queue(prompt)
            assert comfy_server.wait(prompt_id, timeout=120)["status"]["status_str"] == "success"
            ws.wait_done(prompt_id, timeout=30)
            return prompt_id, [n for m in ws.of_type("execution_cached", prompt_id) for n in m["data"]["nodes"]]

    first, _ = run_and_cached_nodes()
    again, cached = run_and_cached_nodes()
    assert "2" in cached, cached                                    # without a reset, outputs are reused
    (comfy_server.input_dir / "left.png").write_bytes(b"x")
    (comfy_server.models_dir / "vae" / "left.safetensors").write_bytes(b"x")
    comfy_server.post("/settings/PF.Harness.Left", "yes")
    assert comfy_server.get("/settings")["PF.Harness.Left"] == "yes"
    sleeper = image_prompt("harness_sleep", middle={
        "class_type": "PFHarnessSleep", "inputs": {"image": ["1", 0], "seconds": 600.0}})
    with comfy_server.ws_messages() as ws:
        running = comfy_server.queue(sleeper)
        ws.wait_for(lambda m: m["type"] == "executing" and (m.get("data") or {}).get("node") == "2", timeout=60)
        pending = comfy_server.queue(sleeper | {"4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})

        comfy_server.reset(timeout=60)

    assert [comfy_server.history(p) for p in (first, again, running, pending)] == [None] * 4
    queue = comfy_server.get("/queue")
    assert queue["queue_running"] == [] and queue["queue_pending"] == [], queue
    for folder in ("input", "output", "temp"):
        assert list((comfy_server.base_dir / folder).iterdir()) == [], folder
    assert (comfy_server.models_dir / "vae").is_dir() and list((comfy_server.models_dir / "vae").iterdir()) == []
    assert comfy_server.get("/settings") == DEFAULT_UI_SETTINGS
    _, cached = run_and_cached_nodes()
    assert cached == [], cached
    assert len(list(comfy_server.output_dir.glob("harness_reset_*.png"))) == 1
