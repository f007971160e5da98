"""Harness for end-to-end tests against a real ComfyUI server and headless Chromium.

No pytest in here (fixtures live in conftest.py), so the module can also be used
from a REPL or a benchmark script::

    from comfy_harness import ComfyServer, Browser
    with ComfyServer() as server, Browser() as browser:
        entry = server.run({"1": {...}, "2": {...}})     # API-format prompt
        browser.open(server.url)

Install ComfyUI and friends first: ``bash .ci/setup_comfyui.sh``.

Environment variables:
  PACKFORCING_COMFYUI          ComfyUI checkout to use (default <repo>/.comfyui/ComfyUI)
  PACKFORCING_FRONTEND_ROOT    static frontend dir (default: comfyui_frontend_package/static)
  PACKFORCING_CHROMIUM         Chromium binary (default /usr/bin/chromium)
  PACKFORCING_KEEP_ARTIFACTS   if set, server base dirs (logs, outputs) are not deleted
  PACKFORCING_FRESH_SERVER     if set, every test module gets a server of its own (conftest.py; so
                               does PACKFORCING_KEEP_ARTIFACTS); by default test modules without
                               server options share one, reset() between them
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "PackForcing"  # folder name of the pack inside custom_nodes/
DEFAULT_COMFYUI = REPO_ROOT / ".comfyui" / "ComfyUI"
DEFAULT_CHROMIUM = "/usr/bin/chromium"

# Model folders ComfyUI knows about; created empty in every fresh base dir.
MODEL_FOLDERS = (
    "checkpoints", "clip", "clip_vision", "configs", "controlnet", "diffusion_models",
    "embeddings", "gligen", "hypernetworks", "latent_upscale_models", "loras",
    "model_patches", "photomaker", "style_models", "text_encoders", "unet",
    "upscale_models", "vae", "vae_approx",
)

# Frontend settings pre-seeded into user/default/comfy.settings.json so the UI
# opens straight on the graph (no first-run templates dialog).
DEFAULT_UI_SETTINGS = {
    "Comfy.TutorialCompleted": True,
}

# Core nodes only, writes one tiny preview into temp/: run by ComfyServer.reset().
NOOP_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


class ComfyError(RuntimeError):
    """A ComfyUI request or prompt failed; the message carries server details."""


def _keep_artifacts() -> bool:
    return os.environ.get("PACKFORCING_KEEP_ARTIFACTS", "") not in ("", "0")


def find_comfyui() -> Path | None:
    """Path of the installed ComfyUI (folder with main.py), or None."""
    path = Path(os.environ.get("PACKFORCING_COMFYUI") or DEFAULT_COMFYUI)
    return path if (path / "main.py").is_file() else None


def find_frontend_root() -> Path | None:
    """Static dir of the pip-installed ``comfyui-frontend-package`` (or the env override)."""
    env = os.environ.get("PACKFORCING_FRONTEND_ROOT")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(list(spec.submodule_search_locations)[0]) / "static"
    return static if (static / "index.html").is_file() else None


def find_chromium() -> str | None:
    """Path of the system Chromium binary, or None."""
    path = os.environ.get("PACKFORCING_CHROMIUM") or DEFAULT_CHROMIUM
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    return shutil.which("chromium")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _empty(folder: Path, keep_folders: bool = False) -> None:
    """Remove everything inside `folder`; with keep_folders, its subfolders stay (emptied)."""
    for entry in folder.iterdir():
        if not entry.is_dir() or entry.is_symlink():
            entry.unlink()
        elif keep_folders:
            _empty(entry)
        else:
            shutil.rmtree(entry)


def _rss_from_proc(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ComfyError(f"{field} not found for pid {pid}")


class ComfyServer:
    """A real ComfyUI server in a fresh, throw-away base directory.

    Layout of ``base_dir``: ``custom_nodes/<PACK_NAME>`` -> symlink to the repo root
    (the pack; it does not have to import successfully, check ``custom_node_loaded``),
    ``models/<folder>/``, ``input/``, ``output/``, ``user/``, and ``comfyui.log``.

    Options:
      pack:               symlink the repo root as custom_nodes/<pack_name> (default True)
      extra_custom_nodes: {name: source}; source is a ``Path`` (file or dir, copied into
                          custom_nodes/) or a ``str`` of Python code (written as
                          custom_nodes/<name>/__init__.py)
      extra_args:         more ComfyUI command line flags
      env:                extra environment variables for the server process
      ui_settings:        frontend settings to pre-seed (None: DEFAULT_UI_SETTINGS)
      startup_timeout:    seconds to wait for /object_info
    """

    def __init__(
        self,
        *,
        pack: bool = True,
        pack_name: str = PACK_NAME,
        extra_custom_nodes: Mapping[str, Path | str] | None = None,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        ui_settings: Mapping[str, Any] | None = None,
        comfyui_dir: Path | str | None = None,
        python: str | None = None,
        startup_timeout: float = 180.0,
    ):
        comfy = Path(comfyui_dir) if comfyui_dir else find_comfyui()
        if comfy is None:
            raise ComfyError("ComfyUI not found: run `bash .ci/setup_comfyui.sh` "
                             "(or set PACKFORCING_COMFYUI)")
        self.comfyui_dir = comfy
        self.python = python or sys.executable
        self.pack = pack
        self.pack_name = pack_name
        self.extra_custom_nodes = dict(extra_custom_nodes or {})
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.ui_settings = DEFAULT_UI_SETTINGS if ui_settings is None else dict(ui_settings)
        self.startup_timeout = startup_timeout
        self.client_id = uuid.uuid4().hex
        self._listeners: weakref.WeakSet = weakref.WeakSet()      # open ws_messages() of client_id
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.base_dir: Path | None = None
        self._log_file = None

    # ----------------------------------------------------------------- paths
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _prepare_base_dir(self) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="packforcing-comfy-"))
        for sub in ("custom_nodes", "input", "output", "temp", "user/default"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for folder in MODEL_FOLDERS:
            (self.models_dir / folder).mkdir(parents=True, exist_ok=True)
        self._seed_ui_settings()
        if self.pack:
            (self.custom_nodes_dir / self.pack_name).symlink_to(REPO_ROOT, target_is_directory=True)
        for name, source in self.extra_custom_nodes.items():
            dest = self.custom_nodes_dir / name
            if isinstance(source, Path):
                if source.is_dir():
                    shutil.copytree(source, dest)
                else:
                    shutil.copy2(source, dest)
            else:
                dest.mkdir()
                (dest / "__init__.py").write_text(source)

    def _seed_ui_settings(self) -> None:
        if self.ui_settings:
            (self.base_dir / "user/default/comfy.settings.json").write_text(
                json.dumps(self.ui_settings, indent=1))

    def command(self) -> list[str]:
        """The ComfyUI command line (port and base dir must be set)."""
        cmd = [
            self.python, "main.py",
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            # keep the sqlite db out of the shared ComfyUI checkout
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            "--disable-auto-launch",
            # no comfy_api_nodes (paid cloud nodes) + tells the frontend not to go online
            "--disable-api-nodes",
        ]
        frontend = find_frontend_root()
        if frontend is not None:
            cmd += ["--front-end-root", str(frontend)]
        return cmd + self.extra_args

    def start(self) -> None:
        self._prepare_base_dir()
        env = dict(os.environ)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
        })
        env.update(self.env)
        for attempt in range(3):  # a port picked by _free_port can be taken meanwhile
            self.port = _free_port()
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(f"$ {' '.join(self.command())}\n".encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(
                self.command(), cwd=self.comfyui_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C in pytest doesn't hit it
            )
            try:
                self._wait_ready()
                return
            except ComfyError:
                retry = (self.proc.poll() is not None
                         and "address already in use" in self.log_text().lower() and attempt < 2)
                self._terminate()
                if not retry:
                    self.stop()
                    raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during startup; "
                                 f"log tail:\n{self.log_tail()}")
            try:
                self.object_info(timeout=5)
                return
            except (OSError, ComfyError):
                time.sleep(0.25)
        raise ComfyError(f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f}s; "
                         f"log tail:\n{self.log_tail()}")

    def _terminate(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the server and remove the base dir (unless PACKFORCING_KEEP_ARTIFACTS)."""
        self._terminate()
        self.proc = None
        if self.base_dir is not None and self.base_dir.exists():
            if _keep_artifacts():
                print(f"[comfy_harness] kept ComfyUI base dir: {self.base_dir}", file=sys.stderr)
            else:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reset(self, timeout: float = 120.0) -> None:
        """Bring the running server back to what a test can tell from a fresh start, so that one server
        can serve several test modules: queue emptied and a running prompt interrupted, models unloaded
        and the execution cache dropped (no output of an earlier prompt is reused), history cleared,
        input/, output/, temp/, the model folders and user/default/ emptied (UI settings seeded again).
        What stays: the process (its log, memory high-water mark, imported modules), the port, the
        client id. Raises ComfyError if the server is gone or does not settle within `timeout`."""
        if not self.running():
            raise ComfyError("reset(): the ComfyUI server is not running")
        deadline = time.monotonic() + timeout
        self.post("/queue", {"clear": True})
        while True:
            queue = self.get("/queue")
            if not queue["queue_running"] and not queue["queue_pending"]:
                break
            if time.monotonic() > deadline:
                raise ComfyError(f"reset(): the queue did not empty; log tail:\n{self.log_tail()}")
            if queue["queue_running"]:
                self.interrupt()
            time.sleep(0.1)
        self.post("/free", {"unload_models": True, "free_memory": True})
        # The prompt worker applies these flags when it wakes and after every prompt, before it takes the
        # next one: once a prompt queued after them has run, no later prompt can run before them.
        self.run(NOOP_PROMPT, timeout=max(1.0, deadline - time.monotonic()))
        self.post("/history", {"clear": True})
        for folder in (self.input_dir, self.output_dir, self.base_dir / "temp", self.base_dir / "user" / "default"):
            _empty(folder)
        _empty(self.models_dir, keep_folders=True)     # ComfyUI and the pack registered the folders
        self._seed_ui_settings()

    # ------------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """JSON request to the server; returns the decoded JSON (or None for an empty body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise ComfyError(f"{method} {path} -> HTTP {e.code}: {detail[:4000]}") from None
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        return self.request("POST", path, body if body is not None else {}, timeout=timeout)

    def object_info(self, node_class: str | None = None, timeout: float = 30.0) -> dict:
        path = "/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else "")
        return self.get(path, timeout=timeout)

    def queue(self, prompt: Mapping[str, Any], client_id: str | None = None,
              extra_data: Mapping[str, Any] | None = None) -> str:
        """POST an API-format prompt; returns its prompt_id. Validation errors raise ComfyError."""
        body = {"prompt": prompt, "client_id": client_id or self.client_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        resp = self.post("/prompt", body)
        if resp.get("node_errors"):
            raise ComfyError(f"prompt rejected: {json.dumps(resp['node_errors'])[:4000]}")
        return resp["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """History entry of a finished prompt (``status``, ``outputs``, ...), or None."""
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict:
        """Wait until the prompt has finished (success, error or interrupted); return its
        history entry. On timeout raise ComfyError with queue state and log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)  # written by ComfyUI once the prompt is done
            if entry is not None:
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died (code {self.proc.returncode}) while running "
                                 f"{prompt_id}; log tail:\n{self.log_tail()}")
            time.sleep(poll)
        try:
            queue = json.dumps(self.get("/queue", timeout=5))[:2000]
        except Exception as e:  # noqa: BLE001 - diagnostics only
            queue = f"<unavailable: {e}>"
        raise ComfyError(f"prompt {prompt_id} not finished after {timeout:.0f}s; "
                         f"queue: {queue}\nlog tail:\n{self.log_tail()}")

    def run(self, prompt: Mapping[str, Any], timeout: float = 300.0) -> dict:
        """queue() + wait(); raise ComfyError unless the prompt succeeded."""
        prompt_id = self.queue(prompt)
        entry = self.wait(prompt_id, timeout=timeout)
        for ws in list(self._listeners):    # ComfyUI writes the history before its last messages: let the
            if not ws._closed:              # listeners of this client receive the prompt's messages first
                ws.wait_done(prompt_id, timeout=60)
        if (entry.get("status") or {}).get("status_str") != "success":
            raise ComfyError(f"prompt failed: {json.dumps(entry.get('status'))[:4000]}\n"
                             f"log tail:\n{self.log_tail()}")
        return entry

    def output_files(self, entry: dict) -> list[Path]:
        """Files written by a history entry's outputs (images/gifs/videos/...)."""
        files = []
        for node_out in entry.get("outputs", {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        root = self.base_dir / (item.get("type") or "output")
                        files.append(root / item.get("subfolder", "") / item["filename"])
        return files

    def interrupt(self) -> None:
        """Interrupt the currently running prompt."""
        self.post("/interrupt")

    def ws_messages(self, client_id: str | None = None) -> "WsCollector":
        """Websocket listener (context manager) on /ws; by default it uses the same client id
        as queue(), so it receives this server's progress/executing/executed messages."""
        ws = WsCollector(self.url, client_id or self.client_id)
        if ws.client_id == self.client_id:
            self._listeners.add(ws)
        return ws

    # --------------------------------------------------------------- process
    def process_rss(self) -> int:
        """Current resident memory of the server process, in bytes."""
        return _rss_from_proc(self.proc.pid, "VmRSS")

    def process_peak_rss(self) -> int:
        """Peak resident memory (high-water mark) of the server process, in bytes."""
        return _rss_from_proc(self.proc.pid, "VmHWM")

    def custom_node_loaded(self, name: str | None = None) -> bool | None:
        """True/False from ComfyUI's 'Import times for custom nodes' report for
        custom_nodes/<name> (default: the pack); None if the folder is not listed."""
        target = f"{os.sep}custom_nodes{os.sep}{name or self.pack_name}"
        for line in self.log_text().splitlines():
            if " seconds" in line and line.rstrip().endswith(target):
                return "IMPORT FAILED" not in line
        return None


class WsCollector:
    """Collects the JSON messages ComfyUI sends on ``/ws?clientId=...`` (binary preview
    frames are counted in ``binary_count``). Use as a context manager; ``messages`` is
    a list of dicts like ``{"type": "executing", "data": {...}}``."""

    def __init__(self, http_url: str, client_id: str, connect_timeout: float = 10.0):
        import websocket  # websocket-client, installed by .ci/setup_comfyui.sh

        self.client_id = client_id
        self.url = http_url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self.messages: list[dict] = []
        self.binary_count = 0
        self._cond = threading.Condition()
        self._ws = websocket.create_connection(self.url, timeout=connect_timeout)
        self._ws.settimeout(None)
        self._closed = False
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        # ComfyUI greets every client with a "status" message: once it is here the
        # connection is registered and queued prompts will report to us.
        self.wait_for(lambda m: m.get("type") == "status", timeout=connect_timeout)

    def _reader(self) -> None:
        import websocket

        while not self._closed:
            try:
                op, data = self._ws.recv_data()
            except (websocket.WebSocketException, OSError):
                break
            with self._cond:
                if op == websocket.ABNF.OPCODE_TEXT:
                    self.messages.append(json.loads(data))
                elif op == websocket.ABNF.OPCODE_BINARY:
                    self.binary_count += 1
                elif op == websocket.ABNF.OPCODE_CLOSE:
                    break
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
        """Block until a message satisfying ``predicate`` arrived (also one received
        before the call); return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    types = [m.get("type") for m in self.messages][-30:]
                    raise ComfyError(f"no matching websocket message within {timeout:.0f}s "
                                     f"(closed={self._closed}); last types: {types}")
                self._cond.wait(left)

    def wait_done(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Wait for the end of a prompt: ``executing`` with node None, or an
        ``execution_error`` / ``execution_interrupted`` for it."""
        def done(m: dict) -> bool:
            d = m.get("data") or {}
            if d.get("prompt_id") != prompt_id:
                return False
            return ((m.get("type") == "executing" and d.get("node") is None)
                    or m.get("type") in ("execution_success", "execution_error",
                                         "execution_interrupted"))
        return self.wait_for(done, timeout)

    def of_type(self, msg_type: str, prompt_id: str | None = None) -> list[dict]:
        with self._cond:
            return [m for m in self.messages if m.get("type") == msg_type
                    and (prompt_id is None or (m.get("data") or {}).get("prompt_id") == prompt_id)]

    def close(self) -> None:
        self._closed = True
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001
            pass
        self._thread.join(timeout=5)

    def __enter__(self) -> "WsCollector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


CHROMIUM_ARGS = (
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)


class Browser:
    """Headless system Chromium driven by Python Playwright (its driver ships in the
    wheel; no `playwright install`). Each Browser is a fresh profile.

    ``console``: list of {"type", "text", "location"} for every console message;
    ``page_errors``: list of uncaught exception messages; ``page``: the Playwright Page.
    """

    def __init__(self, executable: str | None = None, viewport=(1280, 800),
                 default_timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise RuntimeError("Chromium not found: run `bash .ci/setup_comfyui.sh` "
                               "(or set PACKFORCING_CHROMIUM)")
        self.viewport = viewport
        self.default_timeout_ms = default_timeout * 1000
        self.console: list[dict] = []
        self.page_errors: list[str] = []
        self._pw = self._browser = self.page = None

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            # Playwright adds --headless, --no-sandbox (chromium_sandbox=False) and a fresh
            # temporary --user-data-dir itself.
            self._browser = self._pw.chromium.launch(
                executable_path=self.executable, headless=True, chromium_sandbox=False,
                args=list(CHROMIUM_ARGS))
            context = self._browser.new_context(
                viewport={"width": self.viewport[0], "height": self.viewport[1]})
            self.page = context.new_page()
            self.page.set_default_timeout(self.default_timeout_ms)
            self.page.on("console", self._on_console)
            self.page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._pw is not None:
            self._pw.stop()
            self._pw = None

    def _on_console(self, msg) -> None:
        self.console.append({"type": msg.type, "text": msg.text, "location": msg.location})

    @property
    def version(self) -> str:
        return self._browser.version

    def open(self, url: str, wait_until: str = "load") -> None:
        self.page.goto(url, wait_until=wait_until)

    def evaluate(self, js: str, arg: Any = None) -> Any:
        """Evaluate a JS expression or function (``"() => ..."``) in the page."""
        return self.page.evaluate(js, arg)

    def wait_for(self, js: str, timeout: float = 60.0, arg: Any = None) -> Any:
        """Wait until the JS expression/function is truthy; return its value."""
        return self.page.wait_for_function(js, arg=arg, timeout=timeout * 1000).json_value()

    def screenshot(self, path: Path | str, full_page: bool = False) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def console_errors(self) -> list[str]:
        return [m["text"] for m in self.console if m["type"] == "error"]


def pack_module(name: str):
    """A module of the pack imported the way ComfyUI imports it: the repository as a package (its
    modules use relative imports), mounted here as `packforcing_pack`."""
    import importlib
    import types
    if "packforcing_pack" not in sys.modules:
        pkg = types.ModuleType("packforcing_pack")
        pkg.__path__ = [str(REPO_ROOT)]
        sys.modules["packforcing_pack"] = pkg
    return importlib.import_module(f"packforcing_pack.{name}")


def comfy_in_process(root: Path, args: Iterable[str] = ()):
    """ComfyUI imported into this process as its server runs it (GPU mode when there is one; `args`:
    more of its command line, e.g. --cpu), with output/ and temp/ under `root` and the progress hook
    raising on an interrupt like the server's. Returns comfy.model_management. For GPU tests and
    benchmarks of the nodes without a server."""
    sys.path.insert(0, str(find_comfyui()))
    sys.argv = ["main.py", *args]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_temp_directory(str(root / "temp"))
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: mm.throw_exception_if_processing_interrupted())
    return mm
