"""`python -m packforcing_core` end to end on tiny random assets, as docs/headless.md describes it."""
import json
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from packforcing_core.cli.main import main


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
    with av.open(str(tmp_path / "whole" / "video.mp4")) as video:          # what a player gets
        stream = video.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate) == ("h264", 16)
        played = np.stack([f.to_ndarray(format="rgb24") for f in video.decode(stream)])
    assert played.shape == frames.shape     # the same frames in the same order, up to h264's loss:
    assert np.corrcoef(played.ravel(), frames.ravel())[0, 1] > 0.7
    assert not list((tmp_path / "whole").glob("*.part"))
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


def _run(argv, capsys) -> tuple[int, str]:
    """main(argv) -> (exit code, stderr); argparse's own refusals exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    assert main(["tiny-assets", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("extra,option,words", [
    (["--width", "0"], "--width", "multiples of 16"),
    (["--width", "-16"], "--width", "multiples of 16"),
    (["--width", "6_4"], "--width", "not a whole number"),
    (["--steps", "abc"], "--steps", "comma-separated list of timesteps"),
    (["--steps", "250,500"], "--steps", "strictly decreasing"),
    (["--shift", "nan"], "--shift", "not a finite number"),
    (["--shift", "0"], "--shift", "finite number > 0"),
    (["--device", "bogus"], "--device", "not a device"),
    (["--device", "cuda:99"], "--device", "cuda:99"),
    (["--sink", "-1"], "--sink", ">= 0"),
    (["--frames", "30"], "--frames", "4T-3"),
    (["--out", "FILE"], "--out", "is a file; give a folder"),
    (["--save-state", "MISSING/state.safetensors"], "--save-state", "does not exist; create it first"),
    (["--save-noise", "MISSING/noise.safetensors"], "--save-noise", "does not exist; create it first"),
    (["--dit", "ASSETS"], "--dit", "is a folder; give a file"),
    (["--noise-bank", "MISSING/bank.safetensors"], "--noise-bank", "does not exist"),
    (["--cache-mode", "full", "--width", "4096", "--height", "4096", "--frames", str(4 * 10 ** 6 - 3),
      "--no-decode"], "--cache-mode", "bounded mode (kv_pool)"),
    (["--width", "4096", "--height", "4096", "--frames", str(4 * 10 ** 6 - 3)], "--frames", "--no-decode"),
    (["--decode-device", "gpu1"], "--decode-device", "is not a device"),
    (["--decode-device", "cuda:64"], "--decode-device", "cuda:64"),
    (["--decode-device", "cpu", "--no-decode"], "--decode-device", "nothing to decode"),
])
def test_cli_checks_every_option_before_loading_anything(assets, tmp_path, capsys, extra, option, words):
    """The DiT given is the VAE file: loading anything first would fail on that instead. The memory check
    reads the DiT's header (sizes), so there the DiT is the real one: it would take petabytes."""
    (tmp_path / "FILE").write_text("")
    fill = {"FILE": str(tmp_path / "FILE"), "ASSETS": str(assets)}
    extra = [fill.get(x, x.replace("MISSING", str(tmp_path / "missing"))) for x in extra]
    argv = ["generate", "--dit", str(assets / "tiny_vae.safetensors"), "--vae", str(assets / "tiny_vae.safetensors"),
            "--prompt-embeds", str(assets / "tiny_prompt.safetensors"), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--dtype", "fp32", *extra]
    if option == "--dit":
        argv[2] = extra[-1]
    if "4096" in extra:
        argv[2] = str(assets / "tiny_dit.safetensors")
    code, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and "looks like a VAE" not in err, err
    assert option in lines[-1] and words in lines[-1], lines[-1]
    assert not (tmp_path / "o").exists(), "an output folder was made for a refused run"


def test_cli_resume_takes_its_settings_from_the_state_and_refuses_other_ones(assets, tmp_path, capsys):
    base = ["generate", "--dit", str(assets / "tiny_dit.safetensors"), "--prompt-embeds",
            str(assets / "tiny_prompt.safetensors"), "--device", "cpu", "--dtype", "fp32", "--no-decode",
            "--sink", "1", "--recent", "2", "--mid-blocks", "2", "--top-k", "1"]
    state = str(tmp_path / "state.safetensors")
    first = ["--width", "32", "--height", "48", "--chunk-frames", "2", "--seed", "7", "--steps", "1000,500",
             "--shift", "3"]
    assert main(base + first + ["--frames", "29", "--out", str(tmp_path / "whole")]) == 0
    assert main(base + first + ["--frames", "13", "--out", str(tmp_path / "half"), "--save-state", state]) == 0
    for option, value, stored in (("--width", "64", "32"), ("--height", "32", "48"), ("--seed", "8", "7"),
                                  ("--steps", "1000,750,500,250", "1000,500"), ("--shift", "5", "3.0"),
                                  ("--chunk-frames", "4", "2")):
        code, err = _run(base + ["--frames", "29", "--out", str(tmp_path / "r"), "--resume", state, option, value],
                         capsys)
        assert code == 2 and f"{option} " in err and value in err and stored in err, (option, err)
    code, err = _run(base + ["--frames", "29", "--out", str(tmp_path / "r"), "--resume", state, "--recent", "3"],
                     capsys)
    assert code == 2 and "made with cache" in err, err
    assert not (tmp_path / "r").exists()
    # the options not given come from the state: the resumed video is the uninterrupted one
    assert main(base + ["--frames", "29", "--out", str(tmp_path / "resumed"), "--resume", state]) == 0
    whole = load_file(str(tmp_path / "whole" / "latents.safetensors"))["latents"]
    assert torch.equal(load_file(str(tmp_path / "resumed" / "latents.safetensors"))["latents"], whole)


def test_cli_refuses_prompt_embeddings_with_nan(assets, tmp_path, capsys):
    embeds = load_file(str(assets / "tiny_prompt.safetensors"))["prompt_embeds"]
    embeds[0, 1, 2] = float("nan")
    save_file({"prompt_embeds": embeds}, str(tmp_path / "nan.safetensors"))
    code, err = _run(["generate", "--dit", str(assets / "tiny_dit.safetensors"), "--prompt-embeds",
                      str(tmp_path / "nan.safetensors"), "--device", "cpu", "--dtype", "fp32", "--width", "32",
                      "--height", "32", "--frames", "13", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "1 NaN/inf values" in err, err
