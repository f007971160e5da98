"""The DiT's heads split over 2 and 3 processes (gloo on the CPU) give the video of one process.

Every scenario runs once in 3 spawned processes (tests/parallel_scenarios.py; the 2-rank ones on the
first two) and once here, on one process; a video has a start latent, a prompt schedule with a
transition, re-caches and a scene cut. Then the CLI under torchrun against the CLI on one process."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import parallel_scenarios as ps
from packforcing_core.cache.compressor import HRBranch, save_compressor_weights
from packforcing_core.cli.main import main
from packforcing_core.model.checkpoint import save_model
from packforcing_core.parallel.group import check_heads

MODES = ("full", "kv_pool", "lr", "hr_lr")
SAVE_AT = ps.START + 3 * ps.CHUNK                 # a state after 3 chunks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    torch.manual_seed(1)
    hr = HRBranch(ps.CONFIG.dim)
    with torch.no_grad():
        for p in hr.parameters():
            p.mul_(0.5)
    weights = str(tmp / "hr.safetensors")
    save_compressor_weights(hr, None, weights)
    state = {name: str(tmp / f"{name}.safetensors") for name in ("one", "two", "one_on_two", "two_on_one")}
    ps.run({"mode": "kv_pool", "until": SAVE_AT, "save": state["one"]})
    scenarios = [{"mode": m, "ranks": n, "weights": weights} for n in (2, 3) for m in MODES]
    scenarios += [{"mode": "kv_pool", "ranks": 2, "until": SAVE_AT, "save": state["two"]},
                  {"mode": "kv_pool", "ranks": 2, "resume": state["two"]},
                  {"mode": "kv_pool", "ranks": 3, "resume": state["two"]},
                  {"mode": "kv_pool", "ranks": 2, "resume": state["one"], "until": SAVE_AT, "save": state["one_on_two"]}]
    out = tmp / "out"
    out.mkdir()
    results = ps.spawn(scenarios, 3, out)
    return {"weights": weights, "state": state, "parallel": dict(zip(map(_name, scenarios), results))}


def _name(s: dict) -> str:
    return f"{s['mode']}/{s['ranks']}" + ("/resume-" + Path(s["resume"]).stem if "resume" in s else "") + \
        ("/save" if "save" in s else "")


def _chunks(result: dict) -> dict:
    return {k: v for k, v in result.items() if k.startswith("chunk.")}


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_every_chunk_equals_one_process(runs, mode, ranks):
    one = ps.run({"mode": mode, "weights": runs["weights"]})
    split = runs["parallel"][f"{mode}/{ranks}"]
    assert sorted(_chunks(split)) == sorted(_chunks(one)) and len(_chunks(one)) == 6
    for k in _chunks(one):
        torch.testing.assert_close(split[k], one[k], atol=1e-5, rtol=0, msg=k)
    picks = lambda r: [r[f"selected.{i}"].tolist() for i in range(6)]
    assert picks(split) == picks(one)                     # the top-k picks the same mid blocks
    if mode != "full":                                    # ... where it has more blocks than it takes
        assert any(one[f"blocks.{i}"] > 1 for i in range(6))


def _tensors(path: str) -> tuple[dict, dict]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _same_file(a: str, b: str) -> None:
    (ta, ma), (tb, mb) = _tensors(a), _tensors(b)
    assert ma == mb and sorted(ta) == sorted(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_a_state_moves_between_rank_counts_bit_identically(runs, tmp_path):
    """One file, whatever the rank count: saved on 2 ranks and saved again on 1 (and the other way
    round), it holds the same bits; resumed on the same rank count, the video is bit-identical."""
    state = runs["state"]
    ps.run({"mode": "kv_pool", "resume": state["two"], "until": SAVE_AT, "save": state["two_on_one"]})
    _same_file(state["two_on_one"], state["two"])
    _same_file(state["one_on_two"], state["one"])
    whole = runs["parallel"]["kv_pool/2"]
    resumed = runs["parallel"]["kv_pool/2/resume-two"]
    assert sorted(_chunks(resumed)) == [f"chunk.{i}" for i in range(3, 6)]
    for k in _chunks(resumed):
        assert torch.equal(resumed[k], whole[k]), k
    one = ps.run({"mode": "kv_pool"})
    for resumed in (ps.run({"mode": "kv_pool", "resume": state["two"]}), runs["parallel"]["kv_pool/3/resume-two"]):
        for k in _chunks(resumed):
            torch.testing.assert_close(resumed[k], one[k], atol=1e-5, rtol=0, msg=k)


def test_head_counts_that_do_not_split_are_refused():
    for heads, ranks, use in ((12, 5, "use 1, 2, 3, 4 or 6 GPUs"), (40, 3, "use 1, 2, 4, 5 or 8 GPUs"),
                              (6, 4, "use 1, 2, 3 or 6 GPUs")):
        with pytest.raises(ValueError, match=f"GPUs: the DiT has {heads} attention heads, which do not split "
                                             f"evenly over {ranks} GPUs .*: {use}$"):
            check_heads(heads, ranks, "GPUs")
    for heads, ranks in ((12, 2), (12, 3), (12, 4), (12, 6), (40, 8)):
        check_heads(heads, ranks, "GPUs")


# ----------------------------------------------------------------------------- the CLI under torchrun

@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from PIL import Image
    from packforcing_core.sampling.prompts import save_prompt_embeds
    a = tmp_path_factory.mktemp("assets")
    assert main(["tiny-assets", "--out", str(a)]) == 0
    save_model(ps.model(), str(a / "dit6.safetensors"))
    Image.fromarray((torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()) \
        .save(a / "start.png")
    save_prompt_embeds(str(a / "b.safetensors"), torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1)))
    return a


def _args(a: Path, out: Path, *extra) -> list[str]:
    return ["generate", "--dit", str(a / "dit6.safetensors"), "--vae", str(a / "tiny_vae.safetensors"),
            "--prompt-embeds", str(a / "tiny_prompt.safetensors"), "--width", "48", "--height", "48",
            "--dtype", "fp32", "--device", "cpu", "--sink", "1", "--recent", "2", "--mid-blocks", "2",
            "--top-k", "1", "--chunk-frames", "2", "--start-image", str(a / "start.png"),
            "--prompt-at", f"1={a / 'b.safetensors'}", "--cut", "sink", "--out", str(out), *extra]


def _latents(out: Path) -> torch.Tensor:
    return load_file(str(out / "latents.safetensors"))["latents"]


def test_cli_under_torchrun_equals_one_process(assets, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "packforcing_core",
                           *_args(assets, two, "--frames", "41", "--save-state", str(tmp_path / "half.safetensors"))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 11 latent frames") == 1          # the root alone reports and writes
    assert sorted(p.name for p in two.iterdir()) == ["chunks.json", "frames.npy", "latents.safetensors", "video.mp4"]
    assert json.loads((two / "chunks.json").read_text())["gpus"] == 2
    assert main(_args(assets, tmp_path / "one", "--frames", "41")) == 0
    torch.testing.assert_close(_latents(two), _latents(tmp_path / "one"), atol=1e-5, rtol=0)
    # the 2-process state, resumed by one process, continues the one-process video
    assert main(_args(assets, tmp_path / "more", "--frames", "57", "--resume", str(tmp_path / "half.safetensors"))) == 0
    assert main(_args(assets, tmp_path / "longer", "--frames", "57")) == 0
    torch.testing.assert_close(_latents(tmp_path / "more"), _latents(tmp_path / "longer"), atol=1e-5, rtol=0)
    shutil.rmtree(tmp_path / "more")


def test_cli_refuses_a_process_count_that_does_not_split_the_heads(assets, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")         # as torchrun --nproc-per-node 4 sets it, before joining
    assert main(_args(assets, tmp_path / "o", "--frames", "37")) == 2
    assert ("error: --nproc-per-node: the DiT has 6 attention heads, which do not split evenly over 4 GPUs "
            "(each GPU computes whole heads): use 1, 2, 3 or 6 GPUs") in capsys.readouterr().err
