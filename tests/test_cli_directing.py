"""`generate` with a prompt schedule, a resume and start frames, through the command: the schedule
follows the node's rules in the node's words, a resume refuses a schedule that differs from the one
the saved chunks were made with (switches still to come may change), a start latent with no frames
is refused, a start video without a video stream says so, and a folder given for a file is named a
folder by every command."""
from __future__ import annotations

import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file


def cli(argv: list[str]) -> int:
    """The command's main(argv), imported when called (the module's place in the package may change)."""
    from packforcing_core.cli.main import main
    try:
        return main([str(x) for x in argv])
    except SystemExit as e:                   # argparse's own refusals
        return e.code


def run(argv, capsys) -> tuple[int, str]:
    code = cli(argv)
    return code, capsys.readouterr().err


def last_line(code: int, err: str, *words: str) -> str:
    line = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and "Traceback" not in err, err
    assert all(w in line for w in words), (words, line)
    return line


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    assert cli(["tiny-assets", "--out", str(out)]) == 0
    from packforcing_core.sampling.prompts import save_prompt_embeds
    g = torch.Generator().manual_seed(3)
    for name in ("b", "c"):                               # the tiny model's text width is 32
        save_prompt_embeds(str(out / f"{name}.safetensors"), torch.randn(1, 6, 32, generator=g))
    return out


def gen_args(assets, out, *extra) -> list[str]:
    """29 frames = 8 latent frames = 4 chunks of 2 latent frames, 0.5 s each: a 2 s video."""
    return ["generate", "--dit", assets / "tiny_dit.safetensors", "--prompt-embeds", assets / "tiny_prompt.safetensors",
            "--width", "32", "--height", "32", "--dtype", "fp32", "--device", "cpu", "--sink", "1", "--recent", "2",
            "--mid-blocks", "2", "--top-k", "1", "--chunk-frames", "2", "--no-decode", "--out", out, *extra]


def latents(out) -> torch.Tensor:
    return load_file(str(out / "latents.safetensors"))["latents"]


# ----------------------------------------------------------------------------- schedule rules (item 4)

def test_a_switch_past_the_end_of_the_video_is_refused_in_the_nodes_words(assets, tmp_path, capsys):
    for seconds in ("5", "2"):                      # chunk 10, chunk 4: neither is one of chunks 0-3
        code, err = run(gen_args(assets, tmp_path / "o", "--frames", "29", "--prompt-at",
                                 f"{seconds}={assets / 'b.safetensors'}"), capsys)
        last_line(code, err, "--prompt-at", "prompt 2", f"starts at {float(seconds)} s", "past the end",
                  "2 s", "4 chunks of 0.5 s")
    assert not (tmp_path / "o").exists()
    # the last chunk is fine: 1.5 s = chunk 3
    assert cli(gen_args(assets, tmp_path / "ok", "--frames", "29", "--prompt-at", f"1.5={assets / 'b.safetensors'}")) == 0


def test_a_transition_that_does_not_fit_is_refused(assets, tmp_path, capsys):
    b, c = assets / "b.safetensors", assets / "c.safetensors"
    code, err = run(gen_args(assets, tmp_path / "o", "--frames", "29", "--prompt-at", f"1={b}",
                             "--transition", "1000"), capsys)
    last_line(code, err, "--transition", "prompt 2", "1000 chunks", "past the end", "at most 2")
    code, err = run(gen_args(assets, tmp_path / "o", "--frames", "29", "--prompt-at", f"0.5={b}",
                             "--prompt-at", f"1={c}", "--transition", "2"), capsys)
    last_line(code, err, "--transition", "prompt 2", "overlaps prompt 3")
    code, err = run(gen_args(assets, tmp_path / "o", "--frames", "29", "--prompt-at", f"1={b}",
                             "--transition", "-1"), capsys)
    line = last_line(code, err, "--transition", "-1")
    assert "start_chunk" not in line and "_" not in line.split("--transition")[-1], line
    assert not (tmp_path / "o").exists()
    # a transition that ends on the last chunk is fine
    assert cli(gen_args(assets, tmp_path / "ok", "--frames", "29", "--prompt-at", f"1={b}", "--transition", "2")) == 0


# ----------------------------------------------------------------------------- resume (item 5)

def test_resume_refuses_a_schedule_other_than_the_one_the_saved_chunks_were_made_with(assets, tmp_path, capsys):
    b, c = assets / "b.safetensors", assets / "c.safetensors"
    state = tmp_path / "state.safetensors"
    switch = ["--prompt-at", f"0.5={b}"]                        # chunk 1: before the resume point (chunk 2)
    assert cli(gen_args(assets, tmp_path / "half", "--frames", "13", *switch, "--save-state", state)) == 0
    refused = {
        "no schedule": ([], ["prompt 2", "0.5 s"]),
        "other prompt": (["--prompt-at", f"0.5={c}"], ["prompt 2", "embeddings"]),
        "later": (["--prompt-at", f"1={b}"], ["prompt 2", "0.5 s"]),
        "transition": (switch + ["--transition", "2"], ["prompt 2", "transition"]),
        "cut": (switch + ["--cut", "sink"], ["prompt 2", "cut"]),
        "re-cache": (switch + ["--no-recache"], ["prompt 2", "re-cache"]),
        "first prompt": (switch + ["--prompt-embeds", c], ["prompt 1", "embeddings"]),
    }
    for case, (extra, words) in refused.items():
        code, err = run(gen_args(assets, tmp_path / "r", "--frames", "29", "--resume", state, *extra), capsys)
        last_line(code, err, "--resume", "schedule", *words)
    assert not (tmp_path / "r").exists()

    # switches at or after the resume point have not happened: they may be added or changed
    both = switch + ["--prompt-at", f"1={c}"]                  # chunk 2, where the state resumes
    assert cli(gen_args(assets, tmp_path / "whole", "--frames", "29", *both)) == 0
    assert cli(gen_args(assets, tmp_path / "resumed", "--frames", "29", "--resume", state, *both)) == 0
    assert torch.equal(latents(tmp_path / "resumed"), latents(tmp_path / "whole"))
    assert cli(gen_args(assets, tmp_path / "one", "--frames", "29", *switch)) == 0
    assert not torch.equal(latents(tmp_path / "one"), latents(tmp_path / "whole")), "the later switch changed nothing"


def test_resume_refuses_a_switch_placed_before_the_resume_point(assets, tmp_path, capsys):
    state = tmp_path / "plain.safetensors"
    assert cli(gen_args(assets, tmp_path / "half", "--frames", "13", "--save-state", state)) == 0
    code, err = run(gen_args(assets, tmp_path / "r", "--frames", "29", "--resume", state,
                             "--prompt-at", f"0.5={assets / 'b.safetensors'}"), capsys)
    last_line(code, err, "--resume", "schedule", "prompt 2", "0.5 s")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- start frames (items 6, 8)

@pytest.mark.parametrize("key", ["latents", "latent_tensor"])
def test_a_start_latent_with_no_frames_is_refused(assets, tmp_path, capsys, key):
    save_file({key: torch.zeros(1, 16, 0, 4, 4)}, str(tmp_path / "empty.safetensors"))
    code, err = run(gen_args(assets, tmp_path / "o", "--frames", "29", "--start-latent",
                             tmp_path / "empty.safetensors"), capsys)
    last_line(code, err, "--start-latent", "0 latent frames")
    assert not (tmp_path / "o").exists()


def audio_only(path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, np.int16).tobytes())


def test_a_start_video_without_a_video_stream_says_so_as_the_report_does(assets, tmp_path, capsys):
    audio_only(tmp_path / "sound.wav")
    code, err = run(gen_args(assets, tmp_path / "o", "--frames", "29", "--vae", assets / "tiny_vae.safetensors",
                             "--start-video", tmp_path / "sound.wav"), capsys)
    last_line(code, err, "--start-video", "sound.wav", "has no video stream")
    code, err = run(["report", tmp_path / "sound.wav", "--out", tmp_path / "rep"], capsys)
    last_line(code, err, "sound.wav", "has no video stream")
    proc = subprocess.run([sys.executable, "-m", "packforcing_core", *map(str, gen_args(
        assets, tmp_path / "o", "--frames", "29", "--vae", assets / "tiny_vae.safetensors",
        "--start-video", tmp_path / "sound.wav"))], capture_output=True, text=True)
    assert proc.returncode == 2 and "has no video stream" in proc.stderr and "tuple index" not in proc.stderr, \
        proc.stderr


FOLDER_CASES = [
    ("generate", "--prompt-at", ["--prompt-at", "1=FOLDER"]),
    ("generate", "--tiny-decoder", ["--tiny-decoder", "FOLDER"]),
    ("generate", "--vae", ["--vae", "FOLDER"]),
    ("generate", "--start-video", ["--start-video", "FOLDER"]),
    ("generate", "--start-latent", ["--start-latent", "FOLDER"]),
    ("generate", "--resume", ["--resume", "FOLDER"]),
    ("report", "video", []),
    ("train-compressor", "--dit", ["--dit", "FOLDER"]),
    ("train-compressor", "--vae", ["--vae", "FOLDER"]),
    ("train-compressor", "--prompt-embeds", ["--prompt-embeds", "FOLDER"]),
    ("train-compressor", "--eval-prompt-embeds", ["--eval-prompt-embeds", "FOLDER"]),
    ("evaluate-compressor", "--compressor", ["--compressor", "FOLDER"]),
    ("evaluate-compressor", "--vae", ["--vae", "FOLDER"]),
    ("evaluate-compressor", "--prompt-embeds", ["--prompt-embeds", "FOLDER"]),
]


@pytest.mark.parametrize("command,option,extra", FOLDER_CASES)
def test_a_folder_given_for_a_file_is_called_a_folder(assets, tmp_path, capsys, command, option, extra):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    extra = [x.replace("FOLDER", str(folder)) for x in extra]
    model = ["--dit", assets / "tiny_dit.safetensors", "--prompt-embeds", assets / "tiny_prompt.safetensors",
             "--device", "cpu", "--dtype", "fp32", "--width", "32", "--height", "32"]
    argv = {"generate": gen_args(assets, tmp_path / "o", "--frames", "29"),
            "report": ["report", folder, "--out", tmp_path / "o"],
            "train-compressor": ["train-compressor", *model, "--out", tmp_path / "o.safetensors", "--steps", "1",
                                 "--clips", "1", "--eval-clips", "0", "--final-eval-frames", "0"],
            "evaluate-compressor": ["evaluate-compressor", *model, "--out", tmp_path / "o", "--frames", "4"]}[command]
    code, err = run(argv + extra, capsys)
    line = last_line(code, err, "is a folder", str(folder))
    assert option in line and "does not exist" not in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.safetensors").exists()


def test_a_file_given_for_the_clips_folder_is_called_a_file(assets, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    code, err = run(["train-compressor", "--dit", assets / "tiny_dit.safetensors", "--prompt-embeds",
                     assets / "tiny_prompt.safetensors", "--vae", assets / "tiny_vae.safetensors", "--device", "cpu",
                     "--dtype", "fp32", "--out", tmp_path / "c.safetensors", "--clips-dir", clip], capsys)
    last_line(code, err, "--clips-dir", "is a file", "give a folder")
