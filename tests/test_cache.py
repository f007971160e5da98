"""PackedCache: equivalences, sliding window, RoPE identities, bounded memory, top-k, state, accounting."""
import math

import pytest
import torch
from safetensors.torch import save_file

import dense_reference as ref
from packforcing_core.cache.compressor import HRBranch, make_compressor, save_compressor_weights
from packforcing_core.cache.config import CacheConfig, Geometry, plan
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.dit import attention
from packforcing_core.model.rope import Rotation, grid_positions
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.noise import NoiseBank
from packforcing_core.sampling.sampler import Generation
from packforcing_core.sampling.schedule import FlowSchedule
from packforcing_core.sampling.state import StateError, load_state, save_state

H, W = 4, 6


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=7)


@pytest.fixture(scope="module")
def prompt(model):
    emb = random_prompt(model.cfg, tokens=6, seed=8)
    ref.set_prompt(emb)
    return emb


@pytest.fixture(scope="module")
def text_kv(model, prompt):
    return model.encode_text(prompt)


def run(model, text_kv, cfg, frames, chunk=2, seed=3, compressor=None, vae=None, weights=None, h=H, w=W):
    comp = compressor or make_compressor(cfg.mode, model, vae, weights)
    gen = Generation(model, PackedCache(cfg, comp), h, w, seed=seed, chunk_frames=chunk)
    list(gen.run(text_kv, frames))
    return gen


# ----------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("mode", ["none", "kv_pool", "lr", "hr", "hr_lr"])
def test_every_mode_with_room_to_spare_equals_full(model, text_kv, vae, hr_weights, mode):
    frames = 10
    full = run(model, text_kv, CacheConfig(mode="full"), frames)
    big = CacheConfig(mode=mode, sink_frames=2, recent_frames=frames, mid_blocks=4, top_k=2)
    other = run(model, text_kv, big, frames, vae=vae, weights=hr_weights)
    assert torch.equal(other.latent(), full.latent())


def test_none_equals_independent_sink_plus_sliding_window(model, prompt, tmp_path):
    chunks, c, sched = 6, 2, FlowSchedule()
    g = torch.Generator().manual_seed(5)
    bank = {}
    for i in range(chunks):
        bank[f"chunk.{i}.init"] = torch.randn(1, 16, c, H, W, generator=g)
        for j in range(len(sched.steps) - 1):
            bank[f"chunk.{i}.renoise.{j}"] = torch.randn(1, 16, c, H, W, generator=g)
    save_file(bank, str(tmp_path / "bank.safetensors"))
    cfg = CacheConfig(mode="none", sink_frames=2, recent_frames=4)
    gen = Generation(model, PackedCache(cfg), H, W, seed=0, chunk_frames=c,
                     noise=NoiseBank(str(tmp_path / "bank.safetensors")))
    list(gen.run(model.encode_text(prompt), chunks * c))
    want = ref.sink_window_ar_sample(model.state_dict(), model.cfg, bank, chunks, c, sched.timesteps.tolist(),
                                     (H, W), sink=2, window=4)
    torch.testing.assert_close(gen.latent().double(), want, atol=1e-4, rtol=1e-4)
    # and the window really dropped something: the full cache gives another video
    full = Generation(model, PackedCache(CacheConfig(mode="full")), H, W, seed=0, chunk_frames=c,
                      noise=NoiseBank(str(tmp_path / "bank.safetensors")))
    list(full.run(model.encode_text(prompt), chunks * c))
    assert (full.latent() - gen.latent()).abs().max() > 1e-3


# ----------------------------------------------------------------------------- RoPE
def test_rotation_matches_wan_complex_table():
    torch.manual_seed(0)
    x = torch.randn(1, 24, 2, 128, dtype=torch.float64)
    pos = grid_positions(2, 3, 4, t0=5)
    ours = Rotation.at(pos, 128, dtype=torch.float64)(x)
    torch.testing.assert_close(ours, ref.rotate_at(x, pos.long(), 128), atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", [1.0, -3.0, 7.5, 1500.0])
def test_rotating_a_cached_key_by_d_equals_encoding_at_p_plus_d(d):
    torch.manual_seed(0)
    k = torch.randn(1, 12, 2, 128, dtype=torch.float64)
    pos = grid_positions(1, 3, 4, t0=2.0)
    moved = Rotation.time_shift(torch.full((12,), d), 128, dtype=torch.float64)(Rotation.at(pos, 128, dtype=torch.float64)(k))
    pos_d = pos.clone()
    pos_d[:, 0] += d
    torch.testing.assert_close(moved, Rotation.at(pos_d, 128, dtype=torch.float64)(k), atol=1e-10, rtol=0)


def test_shifting_all_positions_leaves_attention_unchanged():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 24, 2, 128, dtype=torch.float64) for _ in range(3))
    pos = grid_positions(2, 3, 4)
    out = lambda p: attention(Rotation.at(p, 128, dtype=torch.float64)(q), Rotation.at(p, 128, dtype=torch.float64)(k), v)
    shifted = pos.clone()
    shifted[:, 0] += 1000.0
    torch.testing.assert_close(out(pos), out(shifted), atol=1e-9, rtol=0)
    moved_space = pos.clone()
    moved_space[:, 0] += 3.0
    moved_space[:6, 0] += 1.0       # not a constant shift: attention changes
    assert (out(pos) - out(moved_space)).abs().max() > 1e-3


# ----------------------------------------------------------------------------- bounded memory
def test_memory_is_flat_and_generation_runs_past_frame_1024(model, text_kv):
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=4, mid_blocks=3, top_k=2)
    cache = PackedCache(cfg, make_compressor("kv_pool", model))
    gen = Generation(model, cache, 2, 2, seed=0, chunk_frames=4,
                     schedule=FlowSchedule(steps=(1000, 500)))
    bytes_at, ptrs, positions = {}, None, []
    for r in gen.run(text_kv, 4 * 300):
        positions.append(cache._layout()[2])
        if r.index == 10:
            bytes_at[10], ptrs = cache.nbytes(), [t.data_ptr() for t in cache.k + cache.v + cache.bank_k]
        if r.index == 299:
            bytes_at[299] = cache.nbytes()
        if r.index % 50 == 0:
            gen.latents.clear()     # the test keeps no video; the cache is what is measured
    assert gen.frames_done == 1200 > 1024
    assert bytes_at[10] == bytes_at[299]
    assert ptrs == [t.data_ptr() for t in cache.k + cache.v + cache.bank_k]   # nothing re-allocated
    assert max(positions[10:]) == min(positions[10:]) <= 2 + 2 * 4 + 4 + 3  # packed positions stay put
    assert torch.isfinite(torch.cat(gen.latents, 2)).all()


# ----------------------------------------------------------------------------- top-k
def test_topk_selection_equals_brute_force(model, text_kv):
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=5, top_k=3)
    cache = PackedCache(cfg, make_compressor("kv_pool", model))
    queries = {}
    attend = cache.attend

    def spy(layer, q, k, v, q_raw):
        if cache._chunk["commit"]:
            queries[layer] = q_raw.double()      # the model's queries before RoPE
        return attend(layer, q, k, v, q_raw)

    cache.attend = spy
    gen = Generation(model, cache, H, W, seed=1, chunk_frames=2)
    list(gen.run(text_kv, 20))
    assert len(cache.blocks) == 5
    hd = model.cfg.head_dim
    scores = []
    for blk in cache.blocks:
        s = 0.0
        for layer in range(model.cfg.num_layers):
            keys = cache.bank_k[layer][:, blk.slot:blk.slot + blk.tokens].double()
            logits = torch.einsum("bqnd,bknd->bnqk", queries[layer], keys) / math.sqrt(hd)
            s += float(logits.mean(dim=(2, 3)).sum())
        scores.append(s)
    want = sorted(sorted(range(5), key=lambda i: -scores[i])[:3])
    got = [cache.blocks.index(b) for b in cache.select()]
    assert got == want
    assert cache.affinity() == pytest.approx(scores, rel=1e-4, abs=1e-6)


def test_topk_ties_prefer_newer_and_k_beyond_bank_takes_all(model, text_kv):
    cache = PackedCache(CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=4, top_k=2),
                        make_compressor("kv_pool", model))
    gen = Generation(model, cache, H, W, seed=1, chunk_frames=2)
    list(gen.run(text_kv, 16))
    for b in cache.blocks:
        b.mean_k = torch.ones_like(b.mean_k)          # every block scores the same
    assert [b.index for b in cache.select()] == [b.index for b in cache.blocks[-2:]]
    cache.cfg = CacheConfig(**{**cache.cfg.to_dict(), "top_k": 99})
    assert cache.select() == cache.blocks


def test_recency_selection_takes_newest(model, text_kv):
    cache = PackedCache(CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=4, top_k=2,
                                    selection="recency"), make_compressor("kv_pool", model))
    list(Generation(model, cache, H, W, seed=1, chunk_frames=2).run(text_kv, 16))
    assert cache.select() == cache.blocks[-2:]


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("mode", ["full", "none", "kv_pool", "lr", "hr_lr"])
def test_save_load_continue_is_bit_identical(model, text_kv, vae, hr_weights, tmp_path, mode):
    cfg = CacheConfig(mode=mode, sink_frames=2, recent_frames=2, mid_blocks=3, top_k=2)
    whole = run(model, text_kv, cfg, 16, vae=vae, weights=hr_weights)
    first = run(model, text_kv, cfg, 8, vae=vae, weights=hr_weights)
    save_state(first, str(tmp_path / "s.safetensors"))
    resumed = load_state(str(tmp_path / "s.safetensors"), model, make_compressor(mode, model, vae, hr_weights), cfg)
    list(resumed.run(text_kv, 16))
    assert torch.equal(resumed.latent(), whole.latent())


def test_a_sink_longer_than_the_video_is_sized_to_the_video_and_grows_on_continuation(model, text_kv, tmp_path):
    """A 600-frame sink on a 4-frame video allocates 4 sink frames; continuing (in place, and from a
    state file) grows it. While every frame fits in the sink, attention equals the dense full cache."""
    cfg = CacheConfig(mode="kv_pool", sink_frames=600, recent_frames=2, mid_blocks=2, top_k=1)
    t, chunk = (H // 2) * (W // 2), 2
    geo = Geometry(model.cfg.num_layers, model.cfg.num_heads, model.cfg.head_dim, H // 2, W // 2, chunk)
    top_k = geo.block_tokens(chunk)                                 # one selected mid block
    short = run(model, text_kv, cfg, 4, chunk=chunk)
    assert short.cache.k[0].shape[1] == (chunk + 4 + 2) * t + top_k   # current chunk + sink of 4 + recent
    assert plan(cfg, geo, total_frames=4)["buffer_tokens"] == (chunk + 4 + 2) * t + top_k
    save_state(short, str(tmp_path / "s.safetensors"))
    list(short.run(text_kv, 10))
    assert short.cache.k[0].shape[1] == (chunk + 10 + 2) * t + top_k
    dense = run(model, text_kv, CacheConfig(mode="full"), 10, chunk=chunk)
    assert torch.equal(short.latent(), dense.latent())
    resumed = load_state(str(tmp_path / "s.safetensors"), model, make_compressor("kv_pool", model), cfg)
    list(resumed.run(text_kv, 10))
    assert torch.equal(resumed.latent(), dense.latent())


def test_bad_state_files_are_refused(model, text_kv, tmp_path):
    cfg = CacheConfig(mode="none", sink_frames=2, recent_frames=2)
    gen = run(model, text_kv, cfg, 6)
    path = tmp_path / "s.safetensors"
    save_state(gen, str(path))
    with pytest.raises(StateError, match="other model|another model"):
        load_state(str(path), random_model(tiny_config(), seed=99))
    with pytest.raises(StateError, match="same PackedCache"):
        load_state(str(path), model, cache_config=CacheConfig(mode="none", sink_frames=3, recent_frames=2))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(StateError, match="corrupt"):
        load_state(str(tmp_path / "cut.safetensors"), model)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(StateError, match="not a PackForcing state"):
        load_state(str(tmp_path / "other.safetensors"), model)


# ----------------------------------------------------------------------------- modes needing weights
def test_trained_modes_refuse_without_or_with_wrong_weights(model, vae, tmp_path):
    with pytest.raises(ValueError, match="trained compressor weights"):
        make_compressor("hr", model, vae, None)
    with pytest.raises(ValueError, match="VAE"):
        make_compressor("lr", model, None)
    save_compressor_weights(HRBranch(model.cfg.dim * 2), None, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ValueError, match="dim"):
        make_compressor("hr_lr", model, vae, str(tmp_path / "wide.safetensors"))


@pytest.mark.parametrize("mode", ["kv_pool", "lr", "hr", "hr_lr"])
def test_compressing_modes_run_long_and_stay_finite(model, text_kv, vae, hr_weights, mode):
    cfg = CacheConfig(mode=mode, sink_frames=2, recent_frames=2, mid_blocks=3, top_k=2)
    gen = run(model, text_kv, cfg, 20, vae=vae, weights=hr_weights, h=8, w=8)
    cache = gen.cache
    assert len(cache.blocks) == 3 and len(cache.selected) == 2
    assert cache.blocks[0].tokens == cache.geo.block_tokens(2)     # 4x4 tokens, 2 frames -> 1 token
    assert torch.isfinite(gen.latent()).all()


# ----------------------------------------------------------------------------- accounting
@pytest.mark.parametrize("cfg,frames", [
    (CacheConfig(mode="full"), 12),
    (CacheConfig(mode="none", sink_frames=1, recent_frames=3), 12),
    (CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=4, mid_blocks=5, top_k=3), 12),
    (CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=3, mid_blocks=2, top_k=9, bank_device="cpu"), 12),
    (CacheConfig(mode="lr", sink_frames=0, recent_frames=2, mid_blocks=1, top_k=1), 12),
])
def test_accounting_equals_live_cache_bytes(model, text_kv, vae, cfg, frames):
    gen = run(model, text_kv, cfg, frames, chunk=3, vae=vae, h=8, w=8)
    geo = Geometry(model.cfg.num_layers, model.cfg.num_heads, model.cfg.head_dim, 4, 4, 3)
    p = plan(cfg, geo, dtype_bytes=4, total_frames=frames)
    live = gen.cache.nbytes()
    assert {k: p[k] for k in live} == live


def test_steady_state_attends_exactly_sink_recent_topk_and_the_chunk(model, text_kv):
    """Counted from first principles: in steady state a chunk attends to chunk + sink + recent frames
    at full resolution plus top-k compressed blocks, and the buffer holds exactly that, no more."""
    c, s, r, k = 2, 2, 4, 3
    cache = PackedCache(CacheConfig(mode="kv_pool", sink_frames=s, recent_frames=r, mid_blocks=5, top_k=k),
                        make_compressor("kv_pool", model))
    gen = Generation(model, cache, 8, 8, seed=0, chunk_frames=c)
    list(gen.run(text_kv, 24))
    cache.begin_chunk(c)
    tokens_per_frame = (8 // 2) * (8 // 2)
    block = math.ceil(c / 2) * math.ceil(4 / 4) * math.ceil(4 / 4)     # 2x4x4 token cells
    attended = cache._chunk["end"] - cache._chunk["start"]
    assert attended == (c + s + r) * tokens_per_frame + k * block
    assert cache.k[0].shape[1] == attended
