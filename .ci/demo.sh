#!/usr/bin/env bash
# Set up (core only) and generate a video headlessly; it ends in $OUT/video.mp4 (default out/demo/).
#   bash .ci/demo.sh                                           tiny random model (no weights needed), says so
#   DIT=... VAE=... PROMPT_EMBEDS=... bash .ci/demo.sh [generate options]                 real weights
#   DIT=... VAE=... PROMPT="a red fox ..." TEXT_ENCODER=... bash .ci/demo.sh [generate options]
#   PROMPT="a red fox ..." bash .ci/demo.sh        the text path on the tiny model (its tiny text encoder)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The prompt options for generate: PROMPT (+ TEXT_ENCODER) as text, or PROMPT_EMBEDS as a file.
prompt_args() {   # $1: the prompt-embeddings file to use when neither is given ("" = required)
  if [ -n "${PROMPT:-}" ]; then
    [ -z "${PROMPT_EMBEDS:-}" ] || { echo "[demo] ERROR: set PROMPT or PROMPT_EMBEDS, not both" >&2; exit 2; }
    [ -n "${TEXT_ENCODER:-}" ] || { echo "[demo] ERROR: PROMPT needs TEXT_ENCODER=" \
      "(umt5_xxl_fp8_e4m3fn_scaled.safetensors, the file of ComfyUI's models/text_encoders/)" >&2; exit 2; }
    args=(--prompt "$PROMPT" --text-encoder "$TEXT_ENCODER")
  elif [ -n "${PROMPT_EMBEDS:-$1}" ]; then
    args=(--prompt-embeds "${PROMPT_EMBEDS:-$1}")
  else
    echo "[demo] ERROR: with DIT, give PROMPT=\"...\" TEXT_ENCODER=... or PROMPT_EMBEDS=..." >&2; exit 2
  fi
}

[ -z "${DIT:-}" ] || prompt_args ""     # a missing prompt is said before the set-up runs
bash .ci/setup.sh --core-only
OUT=${OUT:-out/demo}
rm -f "$OUT/video.mp4"
note=""
if [ -n "${DIT:-}" ]; then
  .venv/bin/python -m packforcing_core generate --dit "$DIT" --vae "${VAE:?set VAE}" \
    "${args[@]}" --out "$OUT" "$@"
else
  echo "[demo] no DIT given: using a built-in tiny RANDOM model (the frames are noise; this checks the pipeline)"
  note=" (tiny random model: the frames are noise)"
  .venv/bin/python -m packforcing_core tiny-assets --out "$OUT/assets"
  TEXT_ENCODER=${TEXT_ENCODER:-$OUT/assets/tiny_text_encoder.safetensors}
  prompt_args "$OUT/assets/tiny_prompt.safetensors"
  .venv/bin/python -m packforcing_core generate --dit "$OUT/assets/tiny_dit.safetensors" \
    --vae "$OUT/assets/tiny_vae.safetensors" "${args[@]}" \
    --width 64 --height 48 --frames 61 --dtype fp32 --device cpu --cache-mode kv_pool \
    --sink 2 --recent 4 --mid-blocks 4 --top-k 2 --out "$OUT" "$@"
fi
[ -f "$OUT/video.mp4" ] || { echo "[demo] ERROR: no $OUT/video.mp4 was written" >&2; exit 1; }
echo "[demo] done: play $OUT/video.mp4$note"
