"""pytest fixtures for the end-to-end tests (real ComfyUI server, headless Chromium).

Fixtures:
  comfy_server  a running ComfyServer (tests/comfy_harness.py) with the pack loaded, fresh for each
                test module: modules without options share one server per pytest process, reset
                (ComfyServer.reset: queue, history, caches, models, files) before each module after
                the first; PACKFORCING_FRESH_SERVER=1 (or PACKFORCING_KEEP_ARTIFACTS=1) gives every
                module a server of its own. A module can pass options with a module-level dict, e.g.
                ``COMFY_SERVER_OPTIONS = {"extra_custom_nodes": {...}}``: it then gets its own server.
                Each module's part of the server log goes to test-artifacts/comfyui-<module>.log.
  browser       function-scoped Browser (fresh headless Chromium profile per test).
  artifacts_dir <repo>/test-artifacts (created; gitignored) for screenshots, logs...

Tests using comfy_server / browser are marked ``comfy`` / ``browser`` automatically
(deselect with ``-m "not comfy"``). If ComfyUI or Chromium is missing they are skipped,
or fail when PACKFORCING_REQUIRE_COMFY=1 (CI): install with ``bash .ci/setup_comfyui.sh``.

Under pytest-xdist (``-n N``) every worker has its own servers (free ports, own base dirs), and the
CPU threads of torch are split between the workers (OMP_NUM_THREADS, inherited by the servers and CLI
subprocesses) unless OMP_NUM_THREADS is set already.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import comfy_harness`


def _split_threads_between_workers() -> None:
    """N xdist workers on C cores: C // N threads each, else they oversubscribe the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


_split_threads_between_workers()        # before torch is imported

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


def _fresh_server_per_module() -> bool:
    """PACKFORCING_FRESH_SERVER, or PACKFORCING_KEEP_ARTIFACTS (a reset would empty the kept folders)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("PACKFORCING_FRESH_SERVER", "PACKFORCING_KEEP_ARTIFACTS"))


def _copy_log(server: ComfyServer, start: int, module_name: str, artifacts_dir: Path) -> None:
    """The module's part of the server log (from byte `start`) next to the other artifacts (CI
    prints them)."""
    if server.base_dir is None or not server.log_path.exists():
        return
    with open(server.log_path, "rb") as log:
        log.seek(start)
        part = log.read()
    if start:
        part = f"[log of a shared server from byte {start}; its start-up is in an earlier module's log]\n".encode() + part
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", module_name)
    (artifacts_dir / f"comfyui-{name}.log").write_bytes(part)


class _SharedServer:
    """The one option-less ComfyServer of this pytest process: started on first use, reset before
    every later module, started anew if a module left it dead or it does not reset."""

    def __init__(self):
        self.server: ComfyServer | None = None
        self.log_start = 0          # where the current module's part of the server log begins

    def get(self) -> ComfyServer:
        if self.server is not None:
            try:
                self.server.reset()
                self.log_start = self.server.log_path.stat().st_size
            except Exception as e:  # noqa: BLE001 - whatever went wrong: a fresh server instead
                print(f"[conftest] shared ComfyUI server not reusable ({str(e)[:300]}): starting a new one",
                      file=sys.stderr)
                self.close()
        if self.server is None:
            server = ComfyServer()
            server.start()
            self.server, self.log_start = server, 0
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server = None


@pytest.fixture(scope="session")
def _shared_comfy_server():
    shared = _SharedServer()
    yield shared
    shared.close()


@pytest.fixture(scope="module")
def comfy_server(request, artifacts_dir, _shared_comfy_server):
    if find_comfyui() is None:
        _missing("ComfyUI is not installed")
    try:
        import websocket  # noqa: F401  (websocket-client, used by ComfyServer.ws_messages)
    except ImportError:
        _missing("websocket-client is not installed")
    options = getattr(request.module, "COMFY_SERVER_OPTIONS", {})
    if options or _fresh_server_per_module():
        server = ComfyServer(**options)
        try:
            server.start()
            yield server
        finally:
            _copy_log(server, 0, request.module.__name__, artifacts_dir)
            server.stop()
        return
    server = _shared_comfy_server.get()
    try:
        yield server
    finally:
        _copy_log(server, _shared_comfy_server.log_start, request.module.__name__, artifacts_dir)


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
