"""Directing a video: start frames, prompt schedules, KV re-cache at a switch, scene cuts.

Each behaviour is checked against an independent dense float64 recomputation (tests/dense_reference.py:
its own patchify, RoPE table, modulation and masked attention over the whole sequence)."""
import av
import numpy as np
import pytest
import torch

import dense_reference as ref
from packforcing_core.cache.compressor import KVPool
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.noise import RecordingNoise, SeededNoise
from packforcing_core.sampling.prompt_schedule import PromptEntry, PromptSchedule
from packforcing_core.sampling.sampler import Generation
from packforcing_core.sampling.schedule import FlowSchedule
from packforcing_core.sampling.start import fit_frames
from packforcing_core.sampling.state import load_state, save_state

H, W = 6, 8                 # latent size: 3x4 tokens per frame
ROWS, COLS = H // 2, W // 2


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=3)


@pytest.fixture(scope="module")
def prompts(model):
    return random_prompt(model.cfg, tokens=5, seed=4), random_prompt(model.cfg, tokens=7, seed=9)


def generation(model, cfg, chunk_frames=2, seed=5, **kw):
    compressor = KVPool() if cfg.mode == "kv_pool" else None
    return Generation(model, PackedCache(cfg, compressor), H, W, seed=seed, chunk_frames=chunk_frames,
                      noise=RecordingNoise(SeededNoise(seed)), **kw)


def positions(frame_pos):
    """(frames*rows*cols, 3) integer positions for frames at the given temporal positions."""
    t = torch.as_tensor(frame_pos, dtype=torch.long).repeat_interleave(ROWS * COLS)
    r = torch.arange(ROWS).repeat_interleave(COLS).repeat(len(frame_pos))
    c = torch.arange(COLS).repeat(ROWS * len(frame_pos))
    return torch.stack([t, r, c], 1)


def dense(model, latent, t_frames, groups, frame_pos, capture=None):
    """Velocity of `latent` (B, C, F, H, W), frames at temporal positions `frame_pos`, attention
    block-causal over `groups` (group id per frame); capture gets each layer's rotated K and V."""
    hd = model.cfg.dim // model.cfg.num_heads
    pos = positions(frame_pos)
    gid = torch.as_tensor(groups).repeat_interleave(ROWS * COLS)
    allowed = gid[None, :] <= gid[:, None]

    def attend(layer, q, k, v):
        qr, kr = ref.rotate_at(q, pos, hd, model.cfg.rope_theta), ref.rotate_at(k, pos, hd, model.cfg.rope_theta)
        if capture is not None:
            capture.append((kr, v))
        return ref.softmax_attention(qr, kr, v, allowed)

    return ref._forward(model.state_dict(), model.cfg, latent, t_frames, attend)


def dense_chunk(model, clean, groups, noise, chunk, frames, first_pos=0):
    """x0 of one generated chunk after clean history `clean` (committed in `groups`), dense AR."""
    sched = FlowSchedule()
    x = noise[f"chunk.{chunk}.init"].double()
    steps = sched.timesteps.tolist()
    for j, t in enumerate(steps):
        seq = torch.cat([clean.double(), x], 2)
        nf = seq.shape[2]
        g = list(groups) + [max(groups, default=-1) + 1] * frames
        v = dense(model, seq, [0.0] * clean.shape[2] + [t] * frames, g, list(range(first_pos, first_pos + nf)))
        x0 = x - ref.sigma_table_lookup(t) * v[:, :, -frames:]
        if j + 1 < len(steps):
            s = ref.sigma_table_lookup(steps[j + 1])
            x = (1 - s) * x0 + s * noise[f"chunk.{chunk}.renoise.{j}"].double()
    return x0


def commit_groups(sizes):
    return [g for g, n in enumerate(sizes) for _ in range(n)]


# ----------------------------------------------------------------------------- start frames

@pytest.mark.parametrize("start_frames,groups", [(1, [1]), (4, [1, 2, 1])])
def test_start_frames_equal_a_dense_recomputation(model, prompts, start_frames, groups):
    """Start latent committed at t=0 from position 0 (first frame alone, then chunk-sized passes), then
    chunks after it: equal to dense AR over [start, chunks] with that block-causal grouping."""
    torch.manual_seed(1)
    start = torch.randn(1, 16, start_frames, H, W)
    gen = generation(model, CacheConfig(mode="full"))
    text = model.encode_text(prompts[0])
    gen.commit_start(start, text, start_frames + 4)
    list(gen.run(text, start_frames + 4))
    ref.set_prompt(prompts[0])
    clean, g = start.double(), commit_groups(groups)
    for i in range(2):
        x0 = dense_chunk(model, clean, g, gen.noise.tensors, i, 2)
        clean, g = torch.cat([clean, x0], 2), g + [max(g) + 1] * 2
    assert torch.equal(gen.latent()[:, :, :start_frames], start)
    torch.testing.assert_close(gen.latent().double(), clean, atol=1e-4, rtol=1e-4)
    assert sorted(k for k in gen.noise.tensors if k.endswith("init")) == ["chunk.0.init", "chunk.1.init"]


def test_start_then_bounded_cache_resume_and_continue_are_bit_identical(model, prompts, tmp_path):
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=2, top_k=1)
    text = model.encode_text(prompts[0])
    start = torch.randn(1, 16, 3, H, W, generator=torch.Generator().manual_seed(2))
    whole = generation(model, cfg)
    whole.commit_start(start, text, 13)
    list(whole.run(text, 13))
    part = generation(model, cfg)
    part.commit_start(start, text, 7)
    list(part.run(text, 7))
    save_state(part, str(tmp_path / "s.safetensors"))
    resumed = load_state(str(tmp_path / "s.safetensors"), model, part.cache.compressor, cfg)
    assert resumed.start_frames == 3 and resumed.chunk_index == 2
    list(resumed.run(text, 13))
    list(part.run(text, 13))                 # continuing in place
    assert torch.equal(resumed.latent(), whole.latent())
    assert torch.equal(part.latent(), whole.latent())
    assert whole.cache.blocks, "the start frames age into mid like generated ones"


def test_bad_start_latent_is_refused(model, prompts):
    gen = generation(model, CacheConfig(mode="full"))
    text = model.encode_text(prompts[0])
    with pytest.raises(ValueError, match="start latent has shape"):
        gen.commit_start(torch.zeros(1, 16, 1, H + 2, W), text, 5)
    with pytest.raises(ValueError, match="start latent has shape"):
        gen.commit_start(torch.zeros(1, 4, 1, H, W), text, 5)


# ----------------------------------------------------------------------------- prompt schedules

def test_schedule_validation_and_transition_weights(model, prompts):
    a, b = prompts
    with pytest.raises(ValueError, match="empty"):
        PromptSchedule([])
    with pytest.raises(ValueError, match="order the entries"):
        PromptSchedule([PromptEntry(a), PromptEntry(b, 3), PromptEntry(a, 3)])
    with pytest.raises(ValueError, match="widths"):
        PromptSchedule([PromptEntry(a), PromptEntry(torch.zeros(1, 4, 8), 2)])
    s = PromptSchedule([PromptEntry(a), PromptEntry(b, start_chunk=3, transition=4)])
    assert [s.weight(i) for i in (0, 2, 3, 4, 6, 9)] == [(0, 1.0), (0, 1.0), (1, 0.25), (1, 0.5), (1, 1.0), (1, 1.0)]
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, 7 - t.shape[1]))
    torch.testing.assert_close(s.embeds(4), 0.5 * pad(a) + 0.5 * b)
    assert s.switch_before(3).cut == "none" and not s.switch_before(3).recache     # blending starts
    assert s.switch_before(6).recache and s.switch_before(5) is None              # fully in: re-cache
    assert s.switch_before(0) is None and s.switch_before(7) is None


def history_kv(cache):
    a, b = cache._cur_end, cache._mid_start
    return [(k[:, a:b].clone(), v[:, a:b].clone()) for k, v in zip(cache.k, cache.v)]


@pytest.mark.parametrize("recache", [True, False])
def test_recache_recomputes_history_under_the_new_prompt(model, prompts, recache):
    """After a switch with re-cache, sink and recent K/V equal a dense block-causal recomputation
    over the same clean latents under the new prompt; without it they are the old ones. Chunks
    before the switch are bit-identical to a run without the schedule."""
    a, b = prompts
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=4, mid_blocks=4, top_k=2)
    plain = generation(model, cfg)
    list(plain.run(model.encode_text(a), 12))
    gen = generation(model, cfg)
    sched = PromptSchedule([PromptEntry(a), PromptEntry(b, start_chunk=6, recache=recache)])
    seen = []
    on_switch = lambda i, sw: seen.append((i, sw, history_kv(gen.cache), gen.cache.history_frames()))
    list(gen.run(sched, 12, on_switch=on_switch))
    assert torch.equal(gen.latent(), plain.latent())          # the switch is at chunk 6: nothing changed yet
    before = history_kv(gen.cache)
    list(gen.run(sched, 14, on_switch=on_switch))
    (chunk, switch, after, (frames, pos)), = seen
    assert chunk == 6 and switch.recache == recache
    if not recache:
        assert all(torch.equal(x, y) for kv0, kv1 in zip(before, after) for x, y in zip(kv0, kv1))
        return
    assert frames == [0, 1, 8, 9, 10, 11] and pos[2:] != [2.0, 3.0, 4.0, 5.0]      # mid sits between
    ref.set_prompt(b)
    captured = []
    dense(model, gen.latent()[:, :, frames].double(), [0.0] * 6, [0, 0, 1, 1, 2, 2], [int(p) for p in pos], captured)
    for layer, ((k, v), (k_ref, v_ref)) in enumerate(zip(after, captured)):
        torch.testing.assert_close(k.double(), k_ref, atol=2e-5, rtol=1e-4, msg=f"K of layer {layer}")
        torch.testing.assert_close(v.double(), v_ref, atol=2e-5, rtol=1e-4, msg=f"V of layer {layer}")
        if layer:   # layer 0's keys come before any cross-attention; deeper ones carry the prompt
            assert not torch.allclose(k, before[layer][0], atol=1e-3)


def test_recache_recompresses_latent_mid_blocks(model, prompts):
    """In a mode that compresses from latents, every mid block after a re-cache equals the block a
    cache built by committing the same latents under the new prompt holds."""
    from packforcing_core.cache.compressor import make_compressor
    from packforcing_core.vae.model import WanVAE
    torch.manual_seed(0)
    vae = WanVAE(dim=8)
    a, b = prompts
    cfg = CacheConfig(mode="lr", sink_frames=2, recent_frames=2, mid_blocks=3, top_k=2)
    gen = Generation(model, PackedCache(cfg, make_compressor("lr", model, vae)), H, W, seed=1, chunk_frames=2)
    list(gen.run(model.encode_text(a), 10))
    gen.recache(model.encode_text(b))
    replay = Generation(model, PackedCache(cfg, make_compressor("lr", model, vae)), H, W, seed=1, chunk_frames=2)
    replay.setup(10)
    text_b = model.encode_text(b)
    for i in range(5):
        replay.commit_frames(gen.latent()[:, :, 2 * i:2 * i + 2], text_b)
    assert [blk.first_frame for blk in gen.cache.blocks] == [blk.first_frame for blk in replay.cache.blocks]
    for x, y in zip(gen.cache.bank_k + gen.cache.bank_v, replay.cache.bank_k + replay.cache.bank_v):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    sink = slice(gen.cache._cur_end, gen.cache._cur_end + 2 * gen.cache._t)
    for x, y in zip(gen.cache.k, replay.cache.k):
        torch.testing.assert_close(x[:, sink], y[:, sink], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cut", ["sink", "all"])
def test_chunk_after_a_cut_sees_only_what_is_kept(model, prompts, cut):
    a, b = prompts
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=4, top_k=2)
    gen = generation(model, cfg)
    sched = PromptSchedule([PromptEntry(a), PromptEntry(b, start_chunk=4, cut=cut)])   # sink re-cached under b
    list(gen.run(sched, 10))
    ref.set_prompt(b)
    clean = gen.latent()[:, :, :2] if cut == "sink" else gen.latent()[:, :, :0]
    x0 = dense_chunk(model, clean, [0] * clean.shape[2], gen.noise.tensors, 4, 2)
    torch.testing.assert_close(gen.latent()[:, :, 8:10].double(), x0, atol=1e-4, rtol=1e-4)
    assert gen.cache.timeline()["sink"] == ([0, 2] if cut == "sink" else [8, 10])
    assert all(blk.first_frame >= 8 for blk in gen.cache.blocks)


def test_a_long_video_with_switches_keeps_positions_bounded(model, prompts):
    a, b = prompts
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=2, top_k=2)
    entries = [PromptEntry(a)] + [PromptEntry((a, b)[k % 2], start_chunk=10 * k, transition=k % 3,
                                              cut=("none", "sink", "all")[k % 3]) for k in range(1, 8)]
    gen = generation(model, cfg)
    bytes0 = None
    for r in gen.run(PromptSchedule(entries), 2 * 80):
        if r.index == 20:
            bytes0 = gen.cache.nbytes()
        assert gen.cache._chunk is None
    assert gen.cache.nbytes() == bytes0 and torch.isfinite(gen.latent()).all()
    _, pos = gen.cache.history_frames()
    assert max(pos) < 2 + 2 * 2 + 2 + 2     # sink + top-k mid + recent + the chunk, never the frame index


# ----------------------------------------------------------------------------- headless (CLI)

def test_fit_frames_centre_crops_like_arvideo_i2v():
    img = torch.rand(1, 48, 96, 3)                       # aspect 2 -> 4:3: 16 columns cut each side
    torch.testing.assert_close(fit_frames(img, 64, 48), img[:, :, 16:80], atol=0, rtol=0)
    tall = torch.rand(2, 96, 48, 3)                       # aspect 0.5 -> 1: 24 rows cut each side
    torch.testing.assert_close(fit_frames(tall, 48, 48), tall[:, 24:72], atol=0, rtol=0)


def test_cli_start_image_video_latent_schedule_and_resume(tmp_path):
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from packforcing_core.cli.main import main
    from packforcing_core.sampling.prompts import save_prompt_embeds
    from packforcing_core.vae.model import load_vae
    assert main(["tiny-assets", "--out", str(tmp_path / "a")]) == 0
    a = tmp_path / "a"
    Image.fromarray((torch.rand(32, 48, 3) * 255).byte().numpy()).save(tmp_path / "start.png")
    save_prompt_embeds(str(tmp_path / "b.safetensors"), torch.randn(1, 6, 32))      # the tiny model's text width

    def gen(name, *extra):
        args = ["generate", "--dit", str(a / "tiny_dit.safetensors"), "--vae", str(a / "tiny_vae.safetensors"),
                "--prompt-embeds", str(a / "tiny_prompt.safetensors"), "--width", "32", "--height", "32",
                "--dtype", "fp32", "--device", "cpu", "--sink", "1", "--recent", "2", "--mid-blocks", "2",
                "--top-k", "1", "--chunk-frames", "2", "--no-decode", "--out", str(tmp_path / name), *extra]
        assert main(args) == 0
        return load_file(str(tmp_path / name / "latents.safetensors"))["latents"]

    schedule = ["--prompt-at", f"1={tmp_path / 'b.safetensors'}", "--cut", "sink"]
    whole = gen("img", "--frames", "33", "--start-image", str(tmp_path / "start.png"), *schedule)
    assert whole.shape[2] == 9                                        # 1 start + 4 chunks of 2
    vae = load_vae(str(a / "tiny_vae.safetensors"), device="cpu", dtype=torch.float32)
    encode = lambda frames: vae.encode((fit_frames(frames, 32, 32) * 2 - 1).permute(3, 0, 1, 2)[None])
    frame = torch.from_numpy(np.array(Image.open(tmp_path / "start.png"))).float()[None] / 255
    torch.testing.assert_close(whole[:, :, :1], encode(frame), atol=1e-6, rtol=0)
    save_file({"latents": whole[:, :, :1].contiguous()}, str(tmp_path / "start.safetensors"))
    assert torch.equal(gen("lat", "--frames", "33", "--start-latent", str(tmp_path / "start.safetensors"),
                           *schedule), whole)
    # the half ends at the switch (1 s = chunk 2): the switch is past its end, and the resume may add it
    gen("half", "--frames", "17", "--start-image", str(tmp_path / "start.png"),
        "--save-state", str(tmp_path / "s.safetensors"))
    assert torch.equal(gen("resumed", "--frames", "33", "--resume", str(tmp_path / "s.safetensors"), *schedule), whole)
    with av.open(str(tmp_path / "clip.mp4"), "w") as out:                  # 5 frames = 1+4: 2 latent frames
        stream = out.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(5):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 48, 3), 40 * i, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(tmp_path / "clip.mp4")) as c:
        clip = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]).float() / 255
    video = gen("vid", "--frames", "37", "--start-video", str(tmp_path / "clip.mp4"))
    assert video.shape[2] == 10
    torch.testing.assert_close(video[:, :, :2], encode(clip), atol=1e-6, rtol=0)
    assert main(["generate", "--dit", str(a / "tiny_dit.safetensors"), "--prompt-embeds",
                 str(a / "tiny_prompt.safetensors"), "--start-image", str(tmp_path / "start.png"), "--width", "32",
                 "--height", "32", "--frames", "33", "--device", "cpu", "--out", str(tmp_path / "x")]) == 2
