"""Our UMT5 text encoder gives what ComfyUI's CLIPLoader (type wan) + CLIPTextEncode give, on the same
files: fp32, bf16, fp8 scaled (ComfyUI's umt5_xxl_fp8_e4m3fn_scaled layout, with fp32 or bf16 for
the tensors that are not linear weights), with the tokenizer inside the file.

The file is a random UMT5 built here in the XXL layout (24 layers, width 4096) but with 2 heads of 16
and a feed-forward of 16, and a sentencepiece model trained here (see tests/comfy_text_encode.py for
how ComfyUI is given these sizes). Every
tokenizer case runs on the fp32 file; the other files get a short, a weighted and a long prompt. ComfyUI runs
in a process of its own with the python of the test run (tests/comfy_text_encode.py): CI runs this
module on ComfyUI 0.3.75 (.venv) and again on 0.33.0 (its venv, PACKFORCING_COMFYUI).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_harness import find_comfyui
from packforcing_core.text import TextEncoder
from packforcing_core.text.tiny import random_umt5_tensors, to_format, train_spiece

pytestmark = pytest.mark.comfy

LAYERS, DIM, HEADS, HEAD_DIM, FFN = 24, 4096, 2, 16, 16
VARIANTS = {"fp32": ("fp32", None), "bf16": ("bf16", None), "fp8_scaled": ("fp8_scaled", torch.float32),
            "fp8_scaled_bf16_rest": ("fp8_scaled", torch.bfloat16)}
LONG = " ".join(["a red fox running through snow under the golden light"] * 60)        # > 512 tokens
PROMPTS = [
    "a red fox running through snow",
    "",
    "a (red:1.5) fox ((running)) through \\(snow\\) (slowly:0.6)",
    "(a red fox:0.7) running",                          # the first token weighted: uses the empty prompt
    "fox) runs (in (snow",                              # unbalanced brackets are text
    "(ratio:abc) fox (x:1e-2)",                         # a colon that is not a weight
    "Ünïcödé 日本語 テキスト, punctuation!?  double  spaces\nnew line",
    LONG,
]
PROMPTS_OF = {name: PROMPTS if name == "fp32" else [PROMPTS[0], PROMPTS[2], LONG] for name in VARIANTS}


def _missing(what: str):
    if os.environ.get("PACKFORCING_REQUIRE_COMFY", "") not in ("", "0"):
        pytest.fail(f"{what} (PACKFORCING_REQUIRE_COMFY is set)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import safetensors.torch
    tmp = tmp_path_factory.mktemp("umt5")
    spiece = train_spiece(vocab=300, seed=1)
    import sentencepiece
    vocab = sentencepiece.SentencePieceProcessor(model_proto=spiece).get_piece_size() + 8
    sd = random_umt5_tensors(DIM, LAYERS, HEADS, HEAD_DIM, FFN, vocab, seed=2)
    paths = {}
    for name, (fmt, rest) in VARIANTS.items():
        out = to_format(sd, fmt, LAYERS, rest)
        out["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
        paths[name] = str(tmp / f"umt5_{name}.safetensors")
        safetensors.torch.save_file({k: v.contiguous() for k, v in out.items()}, paths[name])
    config = {"d_model": DIM, "num_layers": LAYERS, "num_heads": HEADS, "d_kv": HEAD_DIM, "d_ff": FFN,
              "vocab_size": vocab}
    return paths, config, tmp


@pytest.fixture(scope="module")
def comfy_out(files):
    comfy = find_comfyui()
    if comfy is None:
        _missing("ComfyUI is not installed: run `bash .ci/setup_comfyui.sh`")
    paths, config, tmp = files
    request = tmp / "request.json"
    request.write_text(json.dumps({"files": paths, "prompts": PROMPTS_OF, "model_config": config}))
    out = tmp / "comfy.safetensors"
    script = Path(__file__).with_name("comfy_text_encode.py")
    r = subprocess.run([sys.executable, str(script), str(comfy.resolve()), str(request), str(out)], capture_output=True,
                       text=True, timeout=900, cwd=tmp)
    assert r.returncode == 0, f"ComfyUI's encoder failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    got = load_file(str(out))
    return {name: [got[f"{name}.{i}"] for i in range(len(PROMPTS_OF[name]))] for name in paths}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_encoder_equals_comfyui_clip_text_encode(files, comfy_out, variant):
    paths, _, _ = files
    enc = TextEncoder.load(paths[variant])
    for j, text in enumerate(PROMPTS_OF[variant]):
        ours, theirs = enc.encode(text), comfy_out[variant][j]
        assert ours.shape == theirs.shape, (text[:40], ours.shape, theirs.shape)
        diff = (ours - theirs).abs().max().item()
        assert diff <= 1e-5, f"{variant}, prompt {j} ({text[:40]!r}): max |ours - ComfyUI| = {diff:.3g}"
        assert theirs.abs().max() > 0.1                 # not an all-zero output on either side


def test_long_prompts_are_not_truncated_and_padding_is_zero(comfy_out):
    """ComfyUI pads to 512 and never truncates; padded positions are zero in its output too."""
    short, long = comfy_out["fp32"][0], comfy_out["fp32"][PROMPTS.index(LONG)]
    assert short.shape[1] == 512 and long.shape[1] > 512
    n = int((short[0].abs().sum(-1) > 0).sum())
    assert 2 < n < 20 and short[0, n:].abs().max() == 0


def test_variants_differ_only_by_weight_rounding(comfy_out):
    """The bf16 and fp8 files really hold other numbers (the comparison above is not of one file four times)."""
    ref = comfy_out["fp32"][0]
    for name in ("bf16", "fp8_scaled"):
        d = (comfy_out[name][0] - ref).abs().max().item()
        assert 1e-4 < d < 1.0, (name, d)
