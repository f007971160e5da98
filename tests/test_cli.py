"""`python -m packforcing_core` end to end on tiny random assets, as README.md describes it."""
import json
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from packforcing_core.__main__ import main


def _generate(tmp_path, name, *extra):
    a = tmp_path / "assets"
    args = ["generate", "--dit", str(a / "tiny_dit.safetensors"), "--vae", str(a / "tiny_vae.safetensors"),
            "--prompt-embeds", str(a / "tiny_prompt.safetensors"), "--width", "32", "--height", "32",
            "--dtype", "fp32", "--device", "cpu", "--sink", "1", "--recent", "2", "--mid-blocks", "2",
            "--top-k", "1", "--chunk-frames", "2", "--out", str(tmp_path / name), *extra]
    assert main(args) == 0
    return load_file(str(tmp_path / name / "latents.safetensors"))["latents"]


def test_cli_generates_resumes_and_replays_noise(tmp_path):
    subprocess.run([sys.executable, "-m", "packforcing_core", "tiny-assets", "--out", str(tmp_path / "assets")],
                   check=True)
    whole = _generate(tmp_path, "whole", "--frames", "29", "--save-noise", str(tmp_path / "noise.safetensors"))
    assert whole.shape == (1, 16, 8, 4, 4)
    frames = np.load(tmp_path / "whole" / "frames.npy")
    assert frames.shape == (29, 32, 32, 3) and frames.dtype == np.uint8
    info = json.loads((tmp_path / "whole" / "chunks.json").read_text())
    assert [c["chunk"] for c in info["chunks"]] == [0, 1, 2, 3] and info["video_frames"] == 29

    _generate(tmp_path, "half", "--frames", "13", "--save-state", str(tmp_path / "state.safetensors"))
    resumed = _generate(tmp_path, "resumed", "--frames", "29", "--resume", str(tmp_path / "state.safetensors"))
    assert torch.equal(resumed, whole)

    replayed = _generate(tmp_path, "replayed", "--frames", "29", "--seed", "12345",
                         "--noise-bank", str(tmp_path / "noise.safetensors"))
    assert torch.equal(replayed, whole)


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    subprocess.run([sys.executable, "-m", "packforcing_core", "tiny-assets", "--out", str(tmp_path / "assets")],
                   check=True)
    a = tmp_path / "assets"
    base = ["generate", "--dit", str(a / "tiny_vae.safetensors"), "--prompt-embeds",
            str(a / "tiny_prompt.safetensors"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(base) == 2
    assert "VAE" in capsys.readouterr().err
    base[2] = str(a / "tiny_dit.safetensors")
    assert main(base + ["--frames", "30"]) == 2
    assert "4T-3" in capsys.readouterr().err
    assert main(base + ["--width", "40"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_plan_prints_the_reference_budget(capsys):
    assert main(["plan"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attended_tokens"] == 12 * 1560 + 14 * 208     # DESIGN.md: ~21.6k tokens
    assert out["gib"] < 4.0
