#!/usr/bin/env bash
# A second real ComfyUI for the end-to-end and browser tests: 0.33.0 with the newest frontend, in a
# venv of its own so that its requirements never touch .venv (ComfyUI 0.3.75).
#
#   bash .ci/setup_comfyui033.sh [TARBALL]      (from anywhere; idempotent)
#
# PyPI has no ComfyUI newer than 0.3.75, so 0.33.0 comes from an unmodified source snapshot,
# ComfyUI-0.33.0.tar.gz: the argument, else $COMFYUI_033_TARBALL, else ../shared/comfyui/ beside the
# checkout. It is unpacked into .comfyui/v0.33.0/ComfyUI (gitignored); nothing of it is committed.
#   * venv .comfyui/v0.33.0/venv: torch 2.14.1 + torchvision 0.29.1 (as .ci/setup.sh) + torchaudio
#     2.11.1 (PyPI's newest; it asks for torch>=2.11, so no second torch is fetched). 0.33.0 does not
#     start without torchaudio.
#   * ComfyUI's requirements.txt with comfyui-frontend-package replaced by FRONTEND_VERSION (default
#     1.58.1, the newest on PyPI; 0.33.0 pins 1.49.6), plus what the tests use (pytest, pytest-xdist,
#     playwright, websocket-client), and sentencepiece (the pack's tokenizer dependency; ComfyUI lists it
#     too). Chromium comes from .ci/setup_comfyui.sh.
# Run the e2e suites on it: PACKFORCING_COMFYUI=.comfyui/v0.33.0/ComfyUI \
#   .comfyui/v0.33.0/venv/bin/python -m pytest -q -ra -m "comfy or browser"
set -euo pipefail

VERSION=0.33.0
FRONTEND_VERSION="${FRONTEND_VERSION:-1.58.1}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1)
TEST_PINS=("pytest>=8" "pytest-xdist>=3.5" requests websocket-client==1.9.2 playwright==1.65.2 "sentencepiece>=0.2")

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.comfyui/v$VERSION"
COMFY="$DEST/ComfyUI"
VENV="$DEST/venv"
TARBALL="${1:-${COMFYUI_033_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-$VERSION.tar.gz}}"

log() { printf '[setup_comfyui033] %s\n' "$*"; }
die() { printf '[setup_comfyui033] ERROR: %s\n' "$*" >&2; exit 1; }
T0=$SECONDS

installed_version() {
  [ -f "$COMFY/comfyui_version.py" ] && sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py"
}

# --- 1. sources ------------------------------------------------------------------------
if [ "$(installed_version || true)" = "$VERSION" ] && [ -f "$COMFY/main.py" ]; then
  log "ComfyUI $VERSION already at $COMFY (skip)"
else
  [ -f "$TARBALL" ] || die "no $TARBALL: give the path of ComfyUI-$VERSION.tar.gz as the argument"
  log "unpacking $TARBALL into $COMFY"
  rm -rf "$COMFY" "$DEST/unpack"
  mkdir -p "$DEST/unpack"
  tar -xzf "$TARBALL" -C "$DEST/unpack"
  top=("$DEST"/unpack/*)
  [ ${#top[@]} = 1 ] && [ -f "${top[0]}/main.py" ] || die "$TARBALL does not hold one ComfyUI folder"
  mv "${top[0]}" "$COMFY"
  rmdir "$DEST/unpack"
  [ "$(installed_version)" = "$VERSION" ] || die "$TARBALL holds ComfyUI $(installed_version), not $VERSION"
fi

# --- 2. venv ---------------------------------------------------------------------------
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
PY="$VENV/bin/python"
REQ="$DEST/requirements.ci.txt"
grep -Ev '^[[:space:]]*comfyui-frontend-package([^A-Za-z0-9_.-]|$)' "$COMFY/requirements.txt" > "$REQ"
printf '%s\n' "comfyui-frontend-package==$FRONTEND_VERSION" "${TORCH_PINS[@]}" "${TEST_PINS[@]}" >> "$REQ"
if "$PY" "$ROOT/.ci/requirements_met.py" "$REQ" 2>/dev/null
then
  log "requirements already satisfied (skip)"
else
  log "pip install ComfyUI $VERSION's requirements, frontend $FRONTEND_VERSION, ${TORCH_PINS[*]}"
  "$PY" -m pip --disable-pip-version-check --no-input -q install -r "$REQ" 2>&1 | grep -v ' is ignored: ' || true
  "$PY" "$ROOT/.ci/requirements_met.py" "$REQ" || die "pip did not install every requirement"
fi
"$PY" -c 'import torch, torchvision, torchaudio, comfyui_frontend_package' \
  || die "the $VENV venv cannot import torch / torchvision / torchaudio / the frontend"
log "done in $((SECONDS - T0)) s: ComfyUI $(installed_version) at $COMFY, frontend $FRONTEND_VERSION, $("$PY" -c 'import torch; print("torch", torch.__version__)')"
