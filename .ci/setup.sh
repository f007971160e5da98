#!/usr/bin/env bash
# Set up everything the pack's tests need, from scratch, idempotently:
#   .venv with torch (CPU use) and the pack's dependencies, then a real ComfyUI + frontend +
#   headless Chromium (.ci/setup_comfyui.sh).   Usage: bash .ci/setup.sh [--core-only]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check --no-input -q)
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1"
  "${pip[@]}" install torch==2.14.1 torchvision==0.29.1
fi
echo "[setup] installing the pack's dependencies"
"${pip[@]}" install "safetensors>=0.4" "einops>=0.7" "numpy>=1.24" "sentencepiece>=0.2" "pytest>=8" "pytest-xdist>=3.5" av
if [ "${1:-}" != "--core-only" ]; then
  bash .ci/setup_comfyui.sh
  # comfy-cli (the Comfy Registry's validator) in a venv of its own: its pins must not touch ComfyUI's
  if [ ! -x .cache/comfy-cli/bin/comfy ]; then
    echo "[setup] installing comfy-cli"
    "$PY" -m venv .cache/comfy-cli
    .cache/comfy-cli/bin/python -m pip --disable-pip-version-check -q install comfy-cli
  fi
fi
echo "[setup] done"
