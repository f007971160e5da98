"""The command line refuses bad numbers, bad outputs and bad start frames with one line that names the
option, exit code 2, and leaves no partial set of outputs behind."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fs_faults import full_disk, read_only
from packforcing_core.__main__ import main
from packforcing_core.compressor import HRBranch, save_compressor_weights
from packforcing_core.tiny import tiny_config


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    assert main(["tiny-assets", "--out", str(out)]) == 0
    return out


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:               # argparse's own refusals
        code = e.code
    return code, capsys.readouterr().err


def _refused(code: int, err: str, option: str, *words: str) -> str:
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and "Traceback" not in err, err
    assert option in last and all(w in last for w in words), last
    return last


def _model_args(assets) -> list[str]:
    return ["--dit", str(assets / "tiny_dit.safetensors"), "--prompt-embeds", str(assets / "tiny_prompt.safetensors"),
            "--device", "cpu", "--dtype", "fp32"]


NUMERIC = [
    ("train-compressor", "--lr", "inf", "not a finite number"),
    ("train-compressor", "--lr", "nan", "not a finite number"),
    ("train-compressor", "--lr", "0", "out of range"),
    ("train-compressor", "--lr", "3", "out of range"),
    ("train-compressor", "--min-lr", "1.5", "out of range"),
    ("train-compressor", "--weight-decay", "-1", "out of range"),
    ("train-compressor", "--clip-grad", "1e999", "not a finite number"),
    ("train-compressor", "--shift", "0", "out of range"),
    ("train-compressor", "--steps", "0", "out of range"),
    ("train-compressor", "--batch", "-2", "out of range"),
    ("train-compressor", "--warmup", "1.5", "not a whole number"),
    ("train-compressor", "--clips", "0", "out of range"),
    ("train-compressor", "--seed", "-1", "out of range"),
    ("train-compressor", "--final-eval-frames", "-1", "out of range"),
    ("train-compressor", "--denoise-steps", "1000,x", "list of timesteps"),
    ("train-compressor", "--width", "nan", "not a whole number"),
    ("evaluate-compressor", "--frames", "0", "out of range"),
    ("evaluate-compressor", "--seeds", "-3", "out of range"),
    ("evaluate-compressor", "--top-k", "-1", "out of range"),
    ("report", "--fps", "inf", "not a finite number"),
    ("report", "--fps", "0", "out of range"),
    ("report", "--reference-seconds", "0", "out of range"),
    ("report", "--chunk-frames", "-1", "out of range"),
    ("plan", "--heads", "0", "out of range"),
    ("plan", "--width", "1e3", "not a whole number"),
    ("tiny-assets", "--seed", "-5", "out of range"),
]


@pytest.mark.parametrize("command,option,value,words", NUMERIC)
def test_every_numeric_option_is_finite_and_in_range(assets, tmp_path, capsys, command, option, value, words):
    argv = {"train-compressor": ["train-compressor", *_model_args(assets), "--out", str(tmp_path / "c.safetensors")],
            "evaluate-compressor": ["evaluate-compressor", *_model_args(assets), "--out", str(tmp_path / "ev")],
            "report": ["report", str(tmp_path / "v.npy")],
            "plan": ["plan"], "tiny-assets": ["tiny-assets", "--out", str(tmp_path / "t")]}[command]
    code, err = _run(argv + [option, value], capsys)
    _refused(code, err, option, value, words)
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_train_compressor_with_an_infinite_lr_is_refused_by_the_command(assets, tmp_path):
    out = tmp_path / "c.safetensors"
    r = subprocess.run([sys.executable, "-m", "packforcing_core", "train-compressor", *_model_args(assets),
                        "--out", str(out), "--lr", "inf"], capture_output=True, text=True)
    assert r.returncode == 2 and "--lr" in r.stderr and "inf" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "wrote" not in r.stderr and not out.exists()


def test_a_compressor_with_non_finite_weights_is_never_written_and_is_refused_on_load(assets, tmp_path, capsys):
    dim = tiny_config().dim
    torch.manual_seed(0)
    hr = HRBranch(dim)
    good = tmp_path / "good.safetensors"
    save_compressor_weights(hr, None, str(good))
    with torch.no_grad():
        hr.convs[2].weight[0, 0, 0, 0, 0] = float("inf")
    diverged = tmp_path / "diverged.safetensors"
    with pytest.raises(ValueError, match="NaN/inf.*was not written"):
        save_compressor_weights(hr, None, str(diverged))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors"]       # no temporaries either

    # a file with NaN written by something else: the run refuses it before generating
    from safetensors import safe_open
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(good))
    sd["hr.convs.4.bias"][3] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"), metadata=meta)
    code, err = _run(["generate", *_model_args(assets), "--cache-mode", "hr", "--compressor",
                      str(tmp_path / "nan.safetensors"), "--width", "32", "--height", "32", "--frames", "13",
                      "--out", str(tmp_path / "o")], capsys)
    _refused(code, err, "nan.safetensors", "NaN/inf", "hr.convs.4.bias")
    assert not (tmp_path / "o" / "latents.safetensors").exists()


# ----------------------------------------------------------------------------- outputs

@pytest.fixture()
def frames(tmp_path):
    """A 3 s clip as the frames .npy `generate` writes (the report reads it at --fps)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "clip.npy"
    np.save(path, (rng.random((48, 48, 64, 3)) * 255).astype(np.uint8))
    return path


def _report(frames, out, capsys) -> tuple[int, str]:
    return _run(["report", str(frames), "--fps", "16", "--out", str(out)], capsys)


def test_report_refuses_an_out_that_is_a_file_or_read_only(frames, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    _refused(*_report(frames, tmp_path / "afile", capsys), "--out", str(tmp_path / "afile"), "is a file")
    with read_only(tmp_path / "ro") as ro:
        _refused(*_report(frames, ro / "sub", capsys), "--out", str(ro / "sub"), "not writable")
        assert not any(ro.iterdir())


def test_report_on_a_full_disk_writes_none_of_its_files(frames, tmp_path, capsys):
    with full_disk(tmp_path / "disk", kib=16) as disk:
        last = _refused(*_report(frames, disk, capsys), "--out", "No space left")
        assert str(disk) in last
        assert not any(disk.iterdir()), list(disk.iterdir())        # no JSON and CSV without the PNG
    code, _ = _report(frames, tmp_path / "roomy", capsys)          # the same report fits elsewhere
    assert code == 0 and sorted(p.suffix for p in (tmp_path / "roomy").iterdir()) == [".csv", ".json", ".png"]


def _train(assets, out, *extra) -> list[str]:
    return ["train-compressor", *_model_args(assets), "--out", str(out), "--width", "32", "--height", "32",
            "--chunk-frames", "2", "--sink", "2", "--recent", "2", "--clip-frames", "8", "--clips", "1",
            "--eval-clips", "1", "--steps", "1", "--batch", "1", "--warmup", "1", "--final-eval-frames", "0", *extra]


def test_train_compressor_refuses_bad_outputs_before_training(assets, tmp_path, capsys):
    (tmp_path / "afolder").mkdir()
    _refused(*_run(_train(assets, tmp_path / "afolder"), capsys), "--out", "is a folder")
    _refused(*_run(_train(assets, tmp_path / "nope" / "c.safetensors"), capsys), "--out", "does not exist")
    (tmp_path / "afile").write_text("")
    _refused(*_run(_train(assets, tmp_path / "c.safetensors", "--work-dir", str(tmp_path / "afile")), capsys),
             "--work-dir", "is a file")
    with read_only(tmp_path / "ro") as ro:
        _refused(*_run(_train(assets, ro / "c.safetensors"), capsys), "--out", str(ro / "c.safetensors"),
                 "not writable")
        assert not any(ro.iterdir())


def test_train_compressor_on_a_full_disk_stops_with_one_line_and_no_partial_logs(assets, tmp_path, capsys):
    with full_disk(tmp_path / "disk", kib=64) as disk:
        out = disk / "c.safetensors"
        code, err = _run(_train(assets, out), capsys)
        last = _refused(code, err, "No space left")
        assert str(disk) in last and ("--work-dir" in last or "--out" in last), last
        assert not out.exists()
        work = disk / "c.training"
        logs = {p.name for p in work.iterdir()} & {"log.csv", "log.json", "loss.png"} if work.exists() else set()
        assert logs in (set(), {"log.csv", "log.json", "loss.png"}), logs         # all of them or none
        assert not [p for p in disk.rglob("*.tmp-*")], list(disk.rglob("*"))


def test_evaluate_compressor_refuses_bad_outputs_and_writes_all_or_nothing(assets, tmp_path, capsys):
    ev = ["evaluate-compressor", *_model_args(assets), "--width", "32", "--height", "32", "--chunk-frames", "2",
          "--sink", "2", "--recent", "2", "--frames", "8", "--seeds", "1"]
    (tmp_path / "afile").write_text("")
    _refused(*_run(ev + ["--out", str(tmp_path / "afile")], capsys), "--out", "is a file")
    with read_only(tmp_path / "ro") as ro:
        _refused(*_run(ev + ["--out", str(ro / "ev")], capsys), "--out", "not writable")
    with full_disk(tmp_path / "disk", kib=16) as disk:
        last = _refused(*_run(ev + ["--out", str(disk)], capsys), "--out", "No space left")
        assert str(disk) in last
        assert not any(disk.iterdir()), list(disk.iterdir())


# ----------------------------------------------------------------------------- start frames

def _generate(assets, tmp_path, *extra) -> list[str]:
    return ["generate", *_model_args(assets), "--vae", str(assets / "tiny_vae.safetensors"), "--width", "32",
            "--height", "32", "--frames", "13", "--chunk-frames", "2", "--out", str(tmp_path / "o"), *extra]


def test_a_start_latent_with_nan_is_refused_before_anything_is_generated(assets, tmp_path, capsys):
    lat = torch.randn(1, 16, 1, 4, 4)
    lat[0, 3, 0, 1, 2] = float("nan")
    save_file({"latents": lat}, str(tmp_path / "start.safetensors"))
    code, err = _run(_generate(assets, tmp_path, "--start-latent", str(tmp_path / "start.safetensors")), capsys)
    _refused(code, err, "--start-latent", "1 NaN/inf values")
    assert "weights or the prompt" not in err
    assert not (tmp_path / "o" / "video.mp4").exists() and not (tmp_path / "o" / "latents.safetensors").exists()


def test_a_start_image_that_encodes_to_nan_is_refused(assets, tmp_path, capsys):
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "start.png")
    vae = load_file(str(assets / "tiny_vae.safetensors"))
    name = next(k for k in vae if k.startswith("encoder.") and k.endswith("weight"))
    vae[name].fill_(float("nan"))                                  # a damaged VAE file
    save_file(vae, str(tmp_path / "nan_vae.safetensors"))
    argv = _generate(assets, tmp_path, "--start-image", str(tmp_path / "start.png"))
    argv[argv.index("--vae") + 1] = str(tmp_path / "nan_vae.safetensors")
    code, err = _run(argv, capsys)
    _refused(code, err, "--start-image", "VAE encoding", "NaN/inf")
    assert not (tmp_path / "o" / "video.mp4").exists()
