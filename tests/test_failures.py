"""Faults in the core: a chunk that comes out NaN stops the run and keeps the chunks before it
intact; state files are checked against what is asked of them; a state's size on disk is what the
docs/nodes.md says (K/V of sink + recent + the mid bank, plus the latents)."""
from __future__ import annotations

import os

import pytest
import torch

from packforcing_core.cache.config import CacheConfig, Geometry, plan, recent_capacity
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.sampler import Generation, NonFiniteError
from packforcing_core.sampling.schedule import FlowSchedule
from packforcing_core.sampling.state import StateError, check_settings, load_state, save_state

H, W, CHUNK = 4, 6, 2
CFG = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=2, top_k=1)


def new_generation(model, seed: int = 5) -> Generation:
    return Generation(model, PackedCache(CFG, _compressor(model)), H, W, seed=seed, chunk_frames=CHUNK,
                      schedule=FlowSchedule(shift=3.0, steps=(1000, 500)))


def _compressor(model):
    from packforcing_core.cache.compressor import make_compressor
    return make_compressor(CFG.mode, model)


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=7)


@pytest.fixture(scope="module")
def text(model):
    return model.encode_text(random_prompt(model.cfg, seed=8))


def test_a_nan_chunk_stops_the_run_and_the_chunks_before_it_stay_intact(model, text, tmp_path):
    whole = new_generation(model)
    list(whole.run(text, 5 * CHUNK))
    gen = new_generation(model)
    poison = model.head.register_forward_hook(        # from the third chunk on the DiT answers NaN
        lambda m, i, out: out.fill_(float("nan")) if gen.frames_done >= 2 * CHUNK else out)
    try:
        with pytest.raises(NonFiniteError, match="chunk 2 .* came out NaN/inf"):
            list(gen.run(text, 5 * CHUNK))
    finally:
        poison.remove()
    assert gen.frames_done == 2 * CHUNK and len(gen.latents) == 2 and torch.isfinite(gen.latent()).all()
    save_state(gen, str(tmp_path / "kept.safetensors"))     # what the sampler saves on the error
    resumed = load_state(str(tmp_path / "kept.safetensors"), model, _compressor(model), CFG)
    list(resumed.run(text, 5 * CHUNK))
    assert torch.equal(resumed.latent(), whole.latent()), "the NaN chunk left a trace in the cache"


def test_state_settings_are_checked_naming_both_values(model, text, tmp_path):
    gen = new_generation(model, seed=5)
    list(gen.run(text, 2 * CHUNK))
    path = str(tmp_path / "s.safetensors")
    save_state(gen, path)
    assert check_settings(path, width=W * 8, height=H * 8, seed=5, steps=(1000, 500), shift=3.0,
                          chunk_frames=CHUNK, batch=1)["width"] == W * 8
    with pytest.raises(StateError) as e:
        check_settings(path, names={"width": "--width"}, width=2 * W * 8, seed=6, steps=(1000, 750, 500))
    msg = str(e.value)
    for part in (f"--width {16 * W} but the file has {8 * W}", "seed 6 but the file has 5",
                 "steps 1000,750,500 but the file has 1000,500"):
        assert part in msg, msg
    with pytest.raises(StateError, match="made with cache"):
        check_settings(path, cache_config=CacheConfig(mode="kv_pool", sink_frames=3, recent_frames=2, mid_blocks=2,
                                                      top_k=1))


def test_a_state_of_another_dtype_says_so(tmp_path, text):
    fp32 = random_model(tiny_config(), seed=7)
    gen = new_generation(fp32)
    list(gen.run(text, CHUNK))
    save_state(gen, str(tmp_path / "s.safetensors"))
    bf16 = random_model(tiny_config(), seed=7).set_compute_dtype(torch.bfloat16)
    with pytest.raises(StateError) as e:
        load_state(str(tmp_path / "s.safetensors"), bf16, _compressor(bf16), CFG)
    assert "computing in fp32" in str(e.value) and "dtype fp32" in str(e.value) and "another model" not in str(e.value)


def state_bytes(cfg: CacheConfig, geo: Geometry, dtype_bytes: int, latent_frames: int, latent_hw: tuple) -> int:
    """Bytes of the tensors of a full state: K/V of sink + recent and the mid bank (not the current chunk
    nor the top-k copy, which the next chunk rebuilds), plus the float32 latents."""
    per_token = 2 * geo.layers * geo.batch * geo.heads * geo.head_dim * dtype_bytes
    cfg = cfg.with_chunk(geo.chunk_frames)
    kept = (cfg.sink_frames + recent_capacity(cfg, geo.chunk_frames)) * geo.frame_tokens
    bank = plan(cfg, geo, dtype_bytes)["bank_tokens"]
    return (kept + bank) * per_token + latent_frames * 16 * latent_hw[0] * latent_hw[1] * 4


def test_state_size_on_disk_is_the_sink_recent_and_bank(model, text, tmp_path):
    gen = new_generation(model)
    list(gen.run(text, 8 * CHUNK))                   # sink, recent and the bank are full
    save_state(gen, str(tmp_path / "s.safetensors"))
    mc = model.cfg
    geo = Geometry(mc.num_layers, mc.num_heads, mc.head_dim, H // 2, W // 2, CHUNK)
    expected = state_bytes(CFG, geo, 4, 8 * CHUNK, (H, W))
    size = os.path.getsize(tmp_path / "s.safetensors")
    assert expected <= size <= expected * 1.15 + 16384, (size, expected)     # + offsets, mean keys, header


def test_readme_state_size_at_832x480():
    """The number docs/nodes.md gives: Wan2.1-1.3B, bf16, reference kv_pool cache, 832x480."""
    geo = Geometry(30, 12, 128, 480 // 16, 832 // 16, 4)
    cfg = CacheConfig(mode="kv_pool", sink_frames=4, recent_frames=4, mid_blocks=16, top_k=14)
    assert round(state_bytes(cfg, geo, 2, 0, (60, 104)) / 2 ** 30, 2) == 2.71
    assert round(state_bytes(cfg, geo, 2, 1, (60, 104)) - state_bytes(cfg, geo, 2, 0, (60, 104))) == 399360
