#!/usr/bin/env bash
# Set up (core only) and generate a video headlessly; it ends in $OUT/video.mp4 (default out/demo/).
#   bash .ci/demo.sh                       tiny random model (no weights needed), says so
#   DIT=... VAE=... PROMPT_EMBEDS=... bash .ci/demo.sh [generate options]   real weights
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash .ci/setup.sh --core-only
OUT=${OUT:-out/demo}
rm -f "$OUT/video.mp4"
note=""
if [ -n "${DIT:-}" ]; then
  .venv/bin/python -m packforcing_core generate --dit "$DIT" --vae "${VAE:?set VAE}" \
    --prompt-embeds "${PROMPT_EMBEDS:?set PROMPT_EMBEDS}" --out "$OUT" "$@"
else
  echo "[demo] no DIT given: using a built-in tiny RANDOM model (the frames are noise; this checks the pipeline)"
  note=" (tiny random model: the frames are noise)"
  .venv/bin/python -m packforcing_core tiny-assets --out "$OUT/assets"
  .venv/bin/python -m packforcing_core generate --dit "$OUT/assets/tiny_dit.safetensors" \
    --vae "$OUT/assets/tiny_vae.safetensors" --prompt-embeds "$OUT/assets/tiny_prompt.safetensors" \
    --width 64 --height 48 --frames 61 --dtype fp32 --device cpu --cache-mode kv_pool \
    --sink 2 --recent 4 --mid-blocks 4 --top-k 2 --out "$OUT" "$@"
fi
[ -f "$OUT/video.mp4" ] || { echo "[demo] ERROR: no $OUT/video.mp4 was written" >&2; exit 1; }
echo "[demo] done: play $OUT/video.mp4$note"
