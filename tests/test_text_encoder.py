"""The UMT5 text encoder's files, tokenizer rules and errors (the comparison with ComfyUI itself is in
tests/test_text_encoder_comfy.py)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from packforcing_core.text import TextEncoder, TextEncoderFileError, TokenizerError, encode_prompts
from packforcing_core.text.tiny import train_spiece, write_tiny_text_encoder
from packforcing_core.text.tokenizer import weighted_pieces

PROMPT = "a red fox running through snow"


@pytest.fixture(scope="module")
def spiece():
    return train_spiece(seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, spiece):
    path = str(tmp_path_factory.mktemp("te") / "tiny_te.safetensors")
    write_tiny_text_encoder(path, spiece=spiece, seed=4)
    return path


def _edit(src: str, dst, drop=(), add=None, meta=None) -> str:
    sd = {k: v for k, v in load_file(src).items() if not any(k.startswith(d) for d in drop)}
    save_file({**sd, **(add or {})}, str(dst), metadata=meta)
    return str(dst)


def test_bracket_weights_follow_comfyui_rules():
    assert weighted_pieces("a (b:1.5) ((c)) d") == [("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", pytest.approx(1.21)),
                                                    (" d", 1.0)]
    assert weighted_pieces("((x:0.5) y)") == [("x", 0.5), (" y", pytest.approx(1.1))]
    assert weighted_pieces("(r:abc)") == [("r:abc", pytest.approx(1.1))]          # not a number: text
    assert weighted_pieces("a) b (c") == [("a) b (c", 1.0)]                       # unbalanced: text


def test_output_is_512_tokens_prompt_then_zeros(tiny):
    enc = TextEncoder.load(tiny)
    z = enc.encode(PROMPT)
    n = len(enc.tokenizer.tokenize(PROMPT).ids)
    assert z.shape == (1, 512, 32) and z.dtype == torch.float32
    assert (z[0, :n].abs().sum(-1) > 0).all() and z[0, n:].abs().max() == 0


def test_a_weight_scales_its_tokens_outputs_only(tiny):
    """(x:1.0) tokenizes 'x' on its own, so the unweighted reference is split the same way."""
    enc = TextEncoder.load(tiny)
    plain, double = enc.encode("a (red:1.0) fox"), enc.encode("a (red:2.0) fox")
    ids = enc.tokenizer.tokenize("a (red:2.0) fox")
    j = ids.weights.index(2.0)
    assert j > 0 and torch.allclose(double[0, j], 2 * plain[0, j])                # not the first token: z * w
    others = [i for i, w in enumerate(ids.weights) if w == 1.0]
    assert torch.equal(double[0, others], plain[0, others])


def test_tokenizer_from_a_separate_file_when_the_encoder_has_none(tiny, spiece, tmp_path):
    bare = _edit(tiny, tmp_path / "bare.safetensors", drop=("spiece_model",))
    with pytest.raises(TokenizerError, match="--tokenizer spiece.model"):
        TextEncoder.load(bare)
    (tmp_path / "spiece.model").write_bytes(spiece)
    got = TextEncoder.load(bare, tokenizer=str(tmp_path / "spiece.model")).encode(PROMPT)
    assert torch.equal(got, TextEncoder.load(tiny).encode(PROMPT))
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        TextEncoder.load(bare, tokenizer=str(tmp_path / "bad.model"))


def test_fp8_scaled_file_equals_dequantized_weights(tmp_path, spiece):
    """fp8 weights times scale_weight, run in float32: the same as an fp32 file holding those products."""
    fp8 = str(tmp_path / "fp8.safetensors")
    write_tiny_text_encoder(fp8, fmt="fp8_scaled", spiece=spiece, seed=5)
    sd = load_file(fp8)
    deq = {k: v for k, v in sd.items() if not k.endswith("scale_weight") and k != "scaled_fp8"}
    for k in [k for k in sd if k.endswith(".scale_weight")]:
        layer = k[: -len(".scale_weight")]
        deq[f"{layer}.weight"] = sd[f"{layer}.weight"].float() * sd[k]
    ref = str(tmp_path / "deq.safetensors")
    save_file(deq, ref)
    assert (TextEncoder.load(fp8).encode(PROMPT) - TextEncoder.load(ref).encode(PROMPT)).abs().max() < 1e-6


def test_comfy_quant_layout_reads_like_the_scaled_layout(tmp_path, spiece):
    """ComfyUI's newer fp8 layout (weight_scale + comfy_quant JSON per layer) holds the same numbers."""
    old = str(tmp_path / "old.safetensors")
    write_tiny_text_encoder(old, fmt="fp8_scaled", spiece=spiece, seed=6)
    sd, new = load_file(old), {}
    for k, v in sd.items():
        if k.endswith(".scale_weight"):
            layer = k[: -len(".scale_weight")]
            new[f"{layer}.weight_scale"] = v
            new[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                       dtype=torch.uint8)
        elif k != "scaled_fp8":
            new[k] = v
    save_file(new, str(tmp_path / "new.safetensors"))
    assert torch.equal(TextEncoder.load(str(tmp_path / "new.safetensors")).encode(PROMPT),
                       TextEncoder.load(old).encode(PROMPT))
    layer = next(k for k in new if k.endswith(".comfy_quant"))
    new[layer] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(new, str(tmp_path / "nvfp4.safetensors"))
    with pytest.raises(TextEncoderFileError, match="'nvfp4'.*float8 only"):
        TextEncoder.load(str(tmp_path / "nvfp4.safetensors"))


def test_files_that_are_not_wan_umt5_are_refused_with_the_fix(tiny, tmp_path):
    t5 = _edit(tiny, tmp_path / "t5.safetensors", drop=("encoder.block.1.layer.0.SelfAttention.relative_attention",))
    with pytest.raises(TextEncoderFileError, match="T5 encoder .* not the UMT5 of Wan"):
        TextEncoder.load(t5)
    part = _edit(tiny, tmp_path / "part.safetensors", drop=("encoder.block.1.layer.1.DenseReluDense.wo",))
    with pytest.raises(TextEncoderFileError, match="lacks 'encoder.block.1.layer.1.DenseReluDense.wo.weight'"):
        TextEncoder.load(part)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TextEncoderFileError, match="not a safetensors file"):
        TextEncoder.load(str(tmp_path / "junk.safetensors"))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(TextEncoderFileError, match="not a UMT5 text encoder.*umt5_xxl_fp8_e4m3fn_scaled"):
        TextEncoder.load(str(tmp_path / "other.safetensors"))
    with pytest.raises(TextEncoderFileError, match="does not exist"):
        TextEncoder.load(str(tmp_path / "missing.safetensors"))


def test_embeddings_in_the_prompt_are_refused(tiny):
    with pytest.raises(TokenizerError, match="embedding:NAME"):
        TextEncoder.load(tiny).encode("a fox, embedding:myconcept")


def test_encode_prompts_frees_the_encoder(tiny):
    out, report = encode_prompts(tiny, [PROMPT, "snow"], device="cpu")
    assert len(out) == 2 and report.device == "cpu" and "freed before sampling" in report.line()
    assert torch.equal(out[0], TextEncoder.load(tiny).encode(PROMPT))
