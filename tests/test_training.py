"""Compressor training by self-distillation (packforcing_core.training: distill / trainer / evaluation), on
tiny random models: the objective against an independent dense reference and against PackedCache's
own bookkeeping, the frozen DiT, learning, exact resume, the written file in the real cache, the
video folder, and bad inputs through the CLI."""
import json

import numpy as np
import pytest
import torch

import dense_reference as ref
from packforcing_core.cache.compressor import make_compressor
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.cli.main import main
from packforcing_core.model.checkpoint import save_model
from packforcing_core.training.distill import (CompressorMid, Distiller, MidEntry, Sample, full_resolution_mid, kv_pool_mid, partition, select)
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.sampling.sampler import Generation
from packforcing_core.training.config import TrainConfig, TrainingError
from packforcing_core.training.data import rollout_clips, video_clips
from packforcing_core.training.evaluation import run_evaluation
from packforcing_core.training.trainer import Compressor, Trainer
from packforcing_core.vae.model import WanVAE

H, W, CHUNK, FRAMES = 8, 16, 2, 8            # latent 8x16 (64x128 px), chunks of 2, clips of 8 latent frames
SIZES = CacheConfig(sink_frames=2, recent_frames=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the HR branch's large convolutions crawl when several threads fight for
    a busy machine's cores; one thread keeps these tests at seconds wherever they run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=7)


@pytest.fixture(scope="module")
def prompts(model):
    return [random_prompt(model.cfg, tokens=6, seed=s) for s in (8, 9)]


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE(dim=8).eval()


@pytest.fixture(scope="module")
def clips(model, prompts, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("clips"))
    train = rollout_clips(model, prompts, [0, 1, 2, 3], FRAMES, H, W, CHUNK, d)
    held = rollout_clips(model, prompts, [100, 101], FRAMES, H, W, CHUNK, d, prompt_ids=[1, 1])
    return train, held


def _sample(clip, model, prompts, t=937.5, seed=1, target=6):
    noise = torch.randn(1, 16, CHUNK, H, W, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        text_kv = model.encode_text(prompts[clip.prompt])
    return Sample(clip.latent, target, t, noise, text_kv, clip.name)


def _config(**kw):
    base = dict(branches="hr", steps=4, batch=1, lr=1e-3, warmup=1, eval_every=100, save_every=100,
                chunk_frames=CHUNK, cache=SIZES)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- the objective
@pytest.mark.parametrize("cfg,chunk,frames", [
    (CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=3, top_k=2), 2, 16),
    (CacheConfig(mode="kv_pool", sink_frames=1, recent_frames=3, mid_blocks=2, top_k=1), 2, 14),
    (CacheConfig(mode="kv_pool", sink_frames=3, recent_frames=5, mid_blocks=4, top_k=2, block_frames=2), 3, 18)])
def test_partition_and_selection_replay_packed_cache(model, prompts, cfg, chunk, frames):
    """The student's sink / mid bank / recent and its top-k are the cache's, chunk after chunk."""
    gen = Generation(model, PackedCache(cfg, make_compressor("kv_pool", model)), 4, 6, seed=1, chunk_frames=chunk)
    for _ in gen.run(model.encode_text(prompts[0]), frames):
        c, p = gen.cache, partition(cfg, chunk, gen.frames_done)
        assert (p.sink, list(p.recent)) == (c.sink_count, [c.recent_first, c.recent_first + c.recent_count])
        assert list(p.blocks) == [(b.first_frame, b.frames) for b in c.blocks]
        entries = [MidEntry(b.first_frame, b.frames, [], [], b.offsets, b.mean_k) for b in c.blocks]
        chosen = select(entries, c.mean_q, cfg.with_chunk(chunk), model.cfg.head_dim)
        assert [e.first for e in chosen] == [b.first_frame for b in c.select()]


def test_teacher_is_the_dense_full_history_model(model, prompts, clips):
    """Teacher velocity = an independent float64 dense forward over [clean history | noisy chunk]
    with a block-causal mask (history at t=0)."""
    s = _sample(clips[0][0], model, prompts)
    d = Distiller(model, SIZES, CHUNK)
    p = d.prepare(s)
    ref.set_prompt(prompts[0])
    seq = torch.cat([s.latent[:, :, :6], p.x_t], 2)
    want = ref.dense_forward(model.state_dict(), model.cfg, seq, [0.0] * 6 + [s.t] * 2, [f // 2 for f in range(8)])
    torch.testing.assert_close(d.teacher(s, p).double(), want[:, :, 6:], atol=2e-5, rtol=1e-4)


def test_loss_is_exactly_zero_with_full_resolution_mid_and_positive_otherwise(model, prompts, clips, vae):
    s = _sample(clips[0][0], model, prompts)
    d = Distiller(model, SIZES, CHUNK)
    p = d.prepare(s)
    assert p.part.blocks == ((2, 2),)
    loss, gap = d.loss(s, full_resolution_mid, p)
    assert loss.item() == 0.0 and gap == 0.0
    untrained = CompressorMid(Compressor("hr", model).view(model), None)
    for source in (kv_pool_mid, None, untrained):
        assert d.loss(s, source, p)[0].item() > 1e-8
    # dropping the block (top-k 0) or shifting the history (no RoPE re-pack and no mid) is not the teacher
    no_mid = Distiller(model, CacheConfig(sink_frames=2, recent_frames=2, top_k=0), CHUNK)
    assert no_mid.loss(s, full_resolution_mid, p)[0].item() > 1e-8


# ----------------------------------------------------------------------------- the loop
def test_only_the_compressor_trains_and_the_dit_stays_bit_identical(model, prompts, clips, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = Trainer(model, clips[0], [], prompts, _config(steps=2), str(tmp_path))
    start = {k: v.clone() for k, v in tr.comp.state_dict().items()}
    tr.run()
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {id(p) for p in tr.opt.param_groups[0]["params"]} == {id(p) for p in tr.comp.parameters()}
    changed = [k for k, v in tr.comp.state_dict().items() if not torch.equal(start[k], v)]
    assert len(changed) == len(start)                    # every HR weight and bias moved


@pytest.mark.parametrize("branches", ["hr", "lr"])
def test_loss_decreases_on_a_fixed_batch(model, prompts, clips, vae, branches):
    s = _sample(clips[0][0], model, prompts)
    d = Distiller(model, SIZES, CHUNK)
    p = d.prepare(s)
    comp = Compressor(branches, model)
    mid = CompressorMid(comp.view(model, vae), None)
    opt = torch.optim.AdamW(comp.parameters(), lr=1e-3 if branches == "hr" else 5e-3)
    losses = []
    for _ in range(10 if branches == "hr" else 30):
        opt.zero_grad()
        loss, _ = d.loss(s, mid, p)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_resume_continues_bit_identically(model, prompts, clips, vae, tmp_path):
    cfg = _config(branches="lr", steps=4, batch=2, eval_every=2)
    held = clips[1][:1]
    whole = Trainer(model, clips[0], held, prompts, cfg, str(tmp_path / "whole"), vae)
    whole.run()
    first = Trainer(model, clips[0], held, prompts, cfg, str(tmp_path / "split"), vae)
    first.run(until=2)                                  # saves its checkpoint at step 2
    second = Trainer(model, clips[0], held, prompts, cfg, str(tmp_path / "split"), vae)
    second.load_checkpoint()
    assert second.step == 2
    second.run()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(second.rows) == strip(whole.rows) and len(whole.rows) == 4
    for k, v in whole.comp.state_dict().items():
        assert torch.equal(second.comp.state_dict()[k], v)
    a, b = whole.opt.state_dict()["state"], second.opt.state_dict()["state"]
    assert all(torch.equal(a[i][n], b[i][n]) for i in a for n in a[i])
    other = Trainer(model, clips[0], held, prompts, _config(branches="lr", steps=4, batch=2, lr=2e-3),
                    str(tmp_path / "split"), vae)
    with pytest.raises(TrainingError, match="another run"):
        other.load_checkpoint()


@pytest.mark.parametrize("branches,mode", [("hr", "hr"), ("lr", "hr_lr")])
def test_written_file_loads_and_beats_the_untrained_compressor(model, prompts, clips, vae, tmp_path, branches, mode):
    """Trained on 4 clips, the file loads through make_compressor (the model loader's path) and the
    real PackedCache's teacher-forced gap on a held-out seed and prompt is below the untrained one's."""
    cfg = _config(branches=branches, steps=6 if branches == "hr" else 12, batch=2, lr=1e-3 if branches == "hr" else 3e-3)
    tr = Trainer(model, clips[0], [], prompts, cfg, str(tmp_path), vae)
    tr.run()
    out = str(tmp_path / "c.safetensors")
    tr.export(out)
    make_compressor(mode, model, vae, out)
    if mode == "hr":
        make_compressor("hr_lr", model, vae, out)
    res = run_evaluation(model, vae, out, [prompts[1]], [900_000], 12, H, W, SIZES, CHUNK, str(tmp_path / "eval"),
                         names=("full", "untrained", "trained"))
    gaps = {k: v["mean"] for k, v in res["modes"].items()}
    assert gaps["full"] == 0.0                          # the harness replays the teacher exactly
    assert 0 < gaps["trained"] < gaps["untrained"], gaps
    assert res["compressor"]["training"]["branches"] == branches and res["compressor"]["mode"] == mode


# ----------------------------------------------------------------------------- CLI, data, bad input
@pytest.fixture(scope="module")
def assets(model, vae, prompts, tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    save_model(model, str(d / "dit.safetensors"))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(d / "vae.safetensors"))
    for i, p in enumerate(prompts):
        save_prompt_embeds(str(d / f"p{i}.safetensors"), p)
    return d


def _cli(assets, tmp_path, *extra):
    return ["--dit", str(assets / "dit.safetensors"), "--prompt-embeds", str(assets / "p0.safetensors"),
            str(assets / "p1.safetensors"), "--width", "128", "--height", "64", "--chunk-frames", "2", "--sink", "2",
            "--recent", "2", "--dtype", "fp32", "--device", "cpu", *extra]


def test_cli_trains_writes_logs_and_evaluates(assets, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert main(["train-compressor", *_cli(assets, tmp_path), "--out", str(out), "--clips", "2", "--eval-clips", "1",
                 "--clip-frames", "8", "--steps", "2", "--batch", "1", "--warmup", "1", "--eval-every", "2",
                 "--final-eval-frames", "8"]) == 0
    work = tmp_path / "c.training"
    rows = json.loads((work / "log.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [1, 2] and ["heldout_gap" in r for r in rows] == [False, True]
    assert (work / "log.csv").read_text().splitlines()[0].startswith("step,loss,gap")
    assert (work / "loss.png").read_bytes()[:4] == b"\x89PNG" and (work / "eval" / "gap.png").exists()
    table = capsys.readouterr().out
    assert "| kv_pool |" in table and "| trained |" in table and "| lr |" not in table     # no --vae: no lr row
    assert main(["train-compressor", *_cli(assets, tmp_path), "--out", str(out), "--clips", "2", "--eval-clips", "1",
                 "--clip-frames", "8", "--steps", "2"]) == 2                                 # would overwrite a run
    assert "--resume" in capsys.readouterr().err
    ev = tmp_path / "ev"
    assert main(["evaluate-compressor", *_cli(assets, tmp_path), "--compressor", str(out), "--out", str(ev),
                 "--frames", "8", "--vae", str(assets / "vae.safetensors")]) == 0
    assert "| lr |" in (ev / "gap.md").read_text() and (ev / "gap.csv").exists()


def _write_video(path, seconds, w=96, h=64, fps=24):
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, (i * 3) % w:] = (40 * i) % 255
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def test_video_folder_is_cut_into_windows_and_encoded_once(vae, tmp_path):
    _write_video(tmp_path / "a.mp4", 1.5)        # 24 frames at 16 fps: one window of 4*4-3 = 13
    _write_video(tmp_path / "b.mp4", 2.0)        # 32 frames: two windows
    clips = video_clips(str(tmp_path), vae, 4, 64, 64, str(tmp_path / "cache"), n_prompts=2)
    assert [c.latent.shape for c in clips] == [(1, 16, 4, 8, 8)] * 3 and [c.prompt for c in clips] == [0, 1, 0]
    def boom(*_, **__):
        raise AssertionError("a cached video was encoded again")
    vae_never = WanVAE(dim=8)
    vae_never.load_state_dict(vae.state_dict())
    vae_never.encode = boom
    again = video_clips(str(tmp_path), vae_never, 4, 64, 64, str(tmp_path / "cache"), n_prompts=2)
    assert all(torch.equal(a.latent, b.latent) for a, b in zip(clips, again))


def test_bad_inputs_are_refused_clearly(assets, tmp_path, capsys):
    def err(*args):
        assert main(["train-compressor", *_cli(assets, tmp_path), "--out", str(tmp_path / "x.safetensors"), *args]) == 2
        return capsys.readouterr().err
    vae = ["--vae", str(assets / "vae.safetensors")]
    args = _cli(assets, tmp_path)
    args[1] = str(assets / "vae.safetensors")                           # a VAE given as the DiT
    assert main(["train-compressor", *args, "--out", str(tmp_path / "x.safetensors"), "--clip-frames", "8"]) == 2
    assert "looks like a VAE" in capsys.readouterr().err
    assert "--vae" in err("--branches", "lr", "--clip-frames", "8")
    assert "--vae" in err("--branches", "hr_lr", "--clip-frames", "8")
    assert "too short" in err("--clip-frames", "4")                   # sink 2 + recent 2: no mid block yet
    (tmp_path / "empty").mkdir()
    assert "holds no videos" in err(*vae, "--clips-dir", str(tmp_path / "empty"), "--clip-frames", "8")
    (tmp_path / "short").mkdir()
    _write_video(tmp_path / "short" / "s.mp4", 0.5)
    msg = err(*vae, "--clips-dir", str(tmp_path / "short"), "--clip-frames", "8")
    assert "shorter than a training clip" in msg and "s.mp4" in msg
    assert "holds no checkpoint" in err("--resume", "--clip-frames", "8")
