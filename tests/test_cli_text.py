"""`python -m packforcing_core generate --prompt TEXT --text-encoder FILE` (and text in --prompt-at), in a
subprocess, on the tiny assets of `tiny-assets` (its text encoder is a tiny random UMT5 in ComfyUI's
layout; tests/test_text_encoder_comfy.py checks the encoder against ComfyUI's own).

The reference for each run is the same command with --prompt-embeds files written from the
encoder's output: the text path must give bit-identical latents."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.text import TextEncoder

FOX, DOG = "a red fox running through snow", "a (black:1.3) dog in the rain"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "packforcing_core", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    r = cli("tiny-assets", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "tiny_text_encoder.safetensors").is_file()
    return out


def generate(assets, out, *prompt_args: str, frames: str = "29") -> subprocess.CompletedProcess:
    return cli("generate", "--dit", str(assets / "tiny_dit.safetensors"), "--vae", str(assets / "tiny_vae.safetensors"),
               "--width", "32", "--height", "32", "--frames", frames, "--dtype", "fp32", "--device", "cpu",
               "--sink", "1", "--recent", "2", "--mid-blocks", "2", "--top-k", "1", "--chunk-frames", "2",
               "--out", str(out), *prompt_args)


def latents(out) -> torch.Tensor:
    return load_file(str(out / "latents.safetensors"))["latents"]


def embeddings_file(assets, tmp_path, text: str):
    path = tmp_path / f"{abs(hash(text))}.safetensors"
    save_prompt_embeds(str(path), TextEncoder.load(str(assets / "tiny_text_encoder.safetensors")).encode(text), text)
    return str(path)


def test_a_text_prompt_makes_the_video_of_its_embeddings(assets, tmp_path):
    te = str(assets / "tiny_text_encoder.safetensors")
    r = generate(assets, tmp_path / "text", "--prompt", FOX, "--text-encoder", te)
    assert r.returncode == 0, r.stderr
    assert "text encoder: encoded on cpu" in r.stdout + r.stderr and "freed before sampling" in r.stdout + r.stderr
    assert (tmp_path / "text" / "video.mp4").stat().st_size > 0
    assert np.load(tmp_path / "text" / "frames.npy").shape == (29, 32, 32, 3)
    r = generate(assets, tmp_path / "file", "--prompt-embeds", embeddings_file(assets, tmp_path, FOX))
    assert r.returncode == 0, r.stderr
    assert torch.equal(latents(tmp_path / "text"), latents(tmp_path / "file"))


def test_prompt_at_takes_text_or_a_file(assets, tmp_path):
    te = str(assets / "tiny_text_encoder.safetensors")
    fox, dog = embeddings_file(assets, tmp_path, FOX), embeddings_file(assets, tmp_path, DOG)
    runs = {"text": ("--prompt", FOX, "--prompt-at", f"1={DOG}", "--text-encoder", te),
            "files": ("--prompt-embeds", fox, "--prompt-at", f"1={dog}"),
            "mixed": ("--prompt", FOX, "--prompt-at", f"1={dog}", "--text-encoder", te),
            "none": ("--prompt-embeds", fox)}
    for name, args in runs.items():
        r = generate(assets, tmp_path / name, *args)
        assert r.returncode == 0, (name, r.stderr)
    assert torch.equal(latents(tmp_path / "text"), latents(tmp_path / "files"))
    assert torch.equal(latents(tmp_path / "mixed"), latents(tmp_path / "files"))
    switched, plain = latents(tmp_path / "files"), latents(tmp_path / "none")
    assert torch.equal(switched[:, :, :4], plain[:, :, :4])         # chunks before 1 s (chunk 2) are the same
    assert not torch.equal(switched, plain)


def test_text_prompt_mistakes_are_named(assets, tmp_path):
    te = str(assets / "tiny_text_encoder.safetensors")
    fox = embeddings_file(assets, tmp_path, FOX)
    cases = [(("--prompt", FOX), "--text-encoder"),
             (("--prompt", FOX, "--prompt-embeds", fox, "--text-encoder", te), "not allowed with"),
             ((), "--prompt"),
             (("--prompt-embeds", fox, "--prompt-at", "1=a cat"), "--text-encoder"),
             (("--prompt-embeds", fox, "--prompt-at", f"1={tmp_path / 'gone.safetensors'}"), "gone.safetensors"),
             (("--prompt", FOX, "--text-encoder", str(assets / "tiny_dit.safetensors")), "not a UMT5 text encoder"),
             (("--prompt", "a fox, embedding:style", "--text-encoder", te), "embedding:NAME")]
    for args, message in cases:
        r = generate(assets, tmp_path / "bad", *args, frames="13")
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert not (tmp_path / "bad" / "latents.safetensors").exists()
