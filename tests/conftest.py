"""pytest fixtures for the end-to-end tests (real ComfyUI server, headless Chromium).

Fixtures:
  comfy_server  module-scoped ComfyServer (tests/comfy_harness.py). A test module can
                pass options to it with a module-level dict, e.g.
                ``COMFY_SERVER_OPTIONS = {"extra_custom_nodes": {...}}``.
  browser       function-scoped Browser (fresh headless Chromium profile per test).
  artifacts_dir <repo>/test-artifacts (created; gitignored) for screenshots, logs...

Tests using comfy_server / browser are marked ``comfy`` / ``browser`` automatically
(deselect with ``-m "not comfy"``). If ComfyUI or Chromium is missing they are skipped,
or fail when PACKFORCING_REQUIRE_COMFY=1 (CI): install with ``bash .ci/setup_comfyui.sh``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import comfy_harness`

from comfy_harness import REPO_ROOT, Browser, ComfyServer, find_chromium, find_comfyui  # noqa: E402

import torch  # noqa: E402
from packforcing_core.cache.compressor import HRBranch, save_compressor_weights  # noqa: E402
from packforcing_core.vae.model import WanVAE  # noqa: E402

ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
SETUP_HINT = "run `bash .ci/setup_comfyui.sh`"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "comfy: end-to-end test against a real ComfyUI server (slow)")
    config.addinivalue_line(
        "markers", "browser: end-to-end test driving headless Chromium")


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "comfy_server" in names:
            item.add_marker(pytest.mark.comfy)
        if "browser" in names:
            item.add_marker(pytest.mark.browser)


def _required() -> bool:
    return os.environ.get("PACKFORCING_REQUIRE_COMFY", "") not in ("", "0")


def _missing(what: str) -> None:
    msg = f"{what}: {SETUP_HINT}"
    if _required():
        pytest.fail(f"{msg} (PACKFORCING_REQUIRE_COMFY is set)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="module")
def comfy_server(request, artifacts_dir):
    if find_comfyui() is None:
        _missing("ComfyUI is not installed")
    try:
        import websocket  # noqa: F401  (websocket-client, used by ComfyServer.ws_messages)
    except ImportError:
        _missing("websocket-client is not installed")
    options = getattr(request.module, "COMFY_SERVER_OPTIONS", {})
    server = ComfyServer(**options)
    try:
        server.start()
        yield server
    finally:
        # keep the server log next to the other artifacts (CI uploads/prints them)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.module.__name__)
        if server.base_dir is not None and server.log_path.exists():
            shutil.copyfile(server.log_path, artifacts_dir / f"comfyui-{name}.log")
        server.stop()


@pytest.fixture
def browser():
    if find_chromium() is None:
        _missing("Chromium is not installed")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Python playwright is not installed")
    with Browser() as b:
        yield b


# ----------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="module")
def vae():
    """A tiny random Wan2.1 VAE."""
    torch.manual_seed(0)
    return WanVAE(dim=8).eval()


@pytest.fixture(scope="module")
def hr_weights(tmp_path_factory, model):
    """A compressor weights file (HR branch, damped random init) for the module's `model`."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "compressor.safetensors"
    hr = HRBranch(model.cfg.dim)
    with torch.no_grad():
        for p in hr.parameters():
            p.mul_(0.5)
    save_compressor_weights(hr, None, str(path))
    return str(path)
