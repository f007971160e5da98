"""Frame-wise checkpoints (CausalForcing frame-wise, ComfyUI's ar_video default): chunks of 1 latent frame.

Mid blocks default to the chunk length, so with 1-frame chunks every mid block is one frame: the
2x4x4 pooling cell covers that one frame (4x4 in space, 16x fewer tokens instead of 32x) and the
LR branch pools time over one frame. Everything else (sink, recent, top-k, positions, state files,
accounting, the nodes' length rules) works per frame.
"""
import pytest
import torch
from safetensors.torch import save_file

import dense_reference as ref
from comfy_harness import pack_module
from packforcing_core.cache.compressor import make_compressor, pool_tokens
from packforcing_core.cache.config import CacheConfig, Geometry, plan
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.noise import NoiseBank
from packforcing_core.sampling.sampler import Generation
from packforcing_core.sampling.schedule import FlowSchedule
from packforcing_core.sampling.state import load_state, save_state

H, W = 8, 8            # latent: 4x4 tokens per frame, one 4x4 pooling cell
COMPRESSING = ("kv_pool", "lr", "hr", "hr_lr")


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=21)


@pytest.fixture(scope="module")
def prompt(model):
    emb = random_prompt(model.cfg, tokens=5, seed=22)
    ref.set_prompt(emb)
    return emb


@pytest.fixture(scope="module")
def text_kv(model, prompt):
    return model.encode_text(prompt)


def frame_run(model, text_kv, cfg, frames, vae=None, weights=None):
    gen = Generation(model, PackedCache(cfg, make_compressor(cfg.mode, model, vae, weights)), H, W, seed=4,
                     chunk_frames=1)
    list(gen.run(text_kv, frames))
    return gen


def test_frame_chunks_equal_dense_frame_causal_sampling(model, prompt, tmp_path):
    """Each frame denoised against all earlier clean frames: the dense AR loop with 1-frame blocks."""
    frames, sched = 5, FlowSchedule()
    g = torch.Generator().manual_seed(5)
    bank = {}
    for i in range(frames):
        bank[f"chunk.{i}.init"] = torch.randn(1, 16, 1, H, W, generator=g)
        for j in range(len(sched.steps) - 1):
            bank[f"chunk.{i}.renoise.{j}"] = torch.randn(1, 16, 1, H, W, generator=g)
    save_file(bank, str(tmp_path / "bank.safetensors"))
    gen = Generation(model, PackedCache(CacheConfig(mode="full")), H, W, seed=0, chunk_frames=1,
                     noise=NoiseBank(str(tmp_path / "bank.safetensors")))
    list(gen.run(model.encode_text(prompt), frames))
    dense = ref.dense_ar_sample(model.state_dict(), model.cfg, bank, frames, 1, sched.timesteps.tolist(), (H, W))
    torch.testing.assert_close(gen.latent().double(), dense, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", COMPRESSING)
def test_every_compressing_mode_runs_with_one_frame_blocks(model, text_kv, vae, hr_weights, mode):
    cfg = CacheConfig(mode=mode, sink_frames=1, recent_frames=2, mid_blocks=3, top_k=2)
    gen = frame_run(model, text_kv, cfg, 9, vae, hr_weights)
    cache = gen.cache
    assert cache.cfg.block_frames == 1                            # mid blocks default to the chunk length
    assert [b.frames for b in cache.blocks] == [1, 1, 1] and [b.first_frame for b in cache.blocks] == [4, 5, 6]
    assert all(b.tokens == cache.geo.block_tokens(1) == 1 for b in cache.blocks)   # 4x4 tokens -> 1
    assert cache.sink_count == 1 and cache.recent_count == 2 and len(cache.selected) == 2
    assert torch.isfinite(gen.latent()).all() and gen.latent().shape == (1, 16, 9, H, W)


def test_kv_pool_of_one_frame_averages_its_tokens_over_space_only():
    k = torch.randn(2, 16, 3, 5)                                  # (batch, 1 frame x 4x4 tokens, heads, dim)
    pooled = pool_tokens(k, (1, 4, 4))
    torch.testing.assert_close(pooled, k.mean(1, keepdim=True))


def test_frame_chunks_resume_bit_identically(model, text_kv, tmp_path):
    cfg = CacheConfig(mode="kv_pool", sink_frames=1, recent_frames=2, mid_blocks=3, top_k=2)
    whole = frame_run(model, text_kv, cfg, 8)
    first = frame_run(model, text_kv, cfg, 4)                     # a mid block exists when it is saved
    save_state(first, str(tmp_path / "s.safetensors"))
    resumed = load_state(str(tmp_path / "s.safetensors"), model, make_compressor("kv_pool", model), cfg)
    list(resumed.run(text_kv, 8))
    assert torch.equal(resumed.latent(), whole.latent())


@pytest.mark.parametrize("cfg", [CacheConfig(mode="full"), CacheConfig(mode="none", sink_frames=1, recent_frames=3),
                                 CacheConfig(mode="kv_pool", sink_frames=1, recent_frames=2, mid_blocks=4, top_k=2)])
def test_accounting_with_frame_chunks_equals_live_cache_bytes(model, text_kv, cfg):
    gen = frame_run(model, text_kv, cfg, 9)
    geo = Geometry(model.cfg.num_layers, model.cfg.num_heads, model.cfg.head_dim, H // 2, W // 2, 1)
    p = plan(cfg, geo, dtype_bytes=4, total_frames=9)
    live = gen.cache.nbytes()
    assert {k: p[k] for k in live} == live


def test_node_lengths_with_frame_chunks():
    spec = pack_module("nodes.spec")
    assert spec.new_latent_frames(21, 1, first_segment=True) == 6        # every 4T-3 is a new video
    assert spec.new_latent_frames(4, 1, first_segment=False) == 1        # every 4 frames continue it
    assert spec.static_length_error(5, 1) is None and spec.static_length_error(8, 1) is None
    with pytest.raises(spec.InputError, match="length"):
        spec.new_latent_frames(7, 1, first_segment=True)
