"""The nodes' pure helpers (nodes/spec.py, nodes/resize.py), without ComfyUI.

The pack's modules use relative imports (ComfyUI imports the repository as a package), so the
repository is mounted here as the package `packforcing_pack`.
"""
from __future__ import annotations


from comfy_harness import pack_module

import pytest
import torch





spec = pack_module("nodes.spec")
resize = pack_module("nodes.resize")
core_config = pack_module("packforcing_core.cache.config")
core_cache = pack_module("packforcing_core.cache.packed")
core_sampler = pack_module("packforcing_core.sampling.sampler")
core_compressor = pack_module("packforcing_core.cache.compressor")
tiny = pack_module("packforcing_core.model.tiny")


@pytest.mark.parametrize("chunk, valid", [(4, [13, 29, 45, 77, 1917]), (3, [9, 21, 81])])
def test_new_video_lengths(chunk, valid):
    for length in valid:
        t = spec.new_latent_frames(length, chunk, first_segment=True)
        assert 4 * t - 3 == length and t % chunk == 0


def test_continuation_lengths_and_hints():
    assert spec.new_latent_frames(80, 4, first_segment=False) == 20
    with pytest.raises(spec.InputError, match=r"length: 78 frames .* 64 \(4.00 s\) or 80 \(5.00 s\)"):
        spec.new_latent_frames(78, 4, first_segment=False)
    with pytest.raises(spec.InputError, match=r"4T-3 .* 77 \(4.81 s\) or 93 \(5.81 s\)"):
        spec.new_latent_frames(81, 4, first_segment=True)
    with pytest.raises(spec.InputError, match=r"Nearest valid lengths: 13 "):
        spec.new_latent_frames(5, 4, first_segment=True)


def test_static_length_check_accepts_both_kinds():
    assert spec.static_length_error(77, 4) is None and spec.static_length_error(80, 4) is None
    err = spec.static_length_error(78, 4)
    assert "77" in err and "93" in err and "80" in err
    assert "chunk_frames" in spec.static_length_error(77, 0)


def test_time_units_sizes_and_steps():
    assert spec.seconds_to_latent_frames("sink_seconds", 1.0) == 4
    assert spec.seconds_to_latent_frames("recent_seconds", 0.25) == 1
    with pytest.raises(spec.InputError, match="recent_seconds: 0.3 s .* multiple of 0.25"):
        spec.seconds_to_latent_frames("recent_seconds", 0.3)
    assert spec.video_frames(480) == 1917 and spec.video_frames(20, first_segment=False) == 80
    assert spec.size_error(832) is None and "use 832 or 848" in spec.size_error(840)
    assert spec.parse_steps("1000, 750,500,250") == (1000, 750, 500, 250)
    with pytest.raises(spec.InputError, match="steps"):
        spec.parse_steps("four")


def test_cache_spec_keys_and_resizes():
    cfg = core_config.CacheConfig(mode="kv_pool")
    new = spec.new_cache_spec(cfg)
    assert new.key == spec.new_cache_spec(cfg).key and not new.started
    same = spec.with_sizes(new, top_k=cfg.top_k)
    assert same is new
    smaller = spec.with_sizes(new, top_k=3)
    assert smaller.key != new.key and smaller.resized_from is None          # nothing to re-pack yet
    started = spec.PackedCacheSpec(cfg, key="k", state_path="/x", frames=8, width=64, height=64, chunk_frames=4)
    resized = spec.with_sizes(spec.with_sizes(started, top_k=3), mid_blocks=2)
    assert resized.resized_from == cfg and resized.config.mid_blocks == 2 and resized.config.top_k == 3


# ----------------------------------------------------------------------------- resize (workaround module)

H = W = 6


def _generation(cfg, frames, model, text_kv, seed=3):
    compressor = core_compressor.make_compressor(cfg.mode, model)
    gen = core_sampler.Generation(model, core_cache.PackedCache(cfg, compressor), H, W, seed=seed, chunk_frames=2)
    list(gen.run(text_kv, frames))
    return gen, compressor


@pytest.fixture(scope="module")
def model_and_prompt():
    model = tiny.random_model(tiny.tiny_config(), seed=3)
    return model, model.encode_text(tiny.random_prompt(model.cfg, tokens=5, seed=4))


def test_growing_mid_and_top_k_equals_that_configuration_from_the_start(model_and_prompt):
    """While every mid block is attended, re-packing into a bigger bank changes nothing: the continued
    video equals one generated with the bigger sizes from the start (history, bank, counters carried)."""
    model, text_kv = model_and_prompt
    small = core_config.CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=8, top_k=8,
                                   bank_device="same")
    big = core_config.CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=12, top_k=12,
                                 bank_device="same")
    gen, compressor = _generation(small, 10, model, text_kv)
    assert len(gen.cache.blocks) == 3
    gen = resize.apply_sizes(gen, big, compressor, text_kv)
    list(gen.run(text_kv, 16))
    ref, _ = _generation(big, 16, model, text_kv)
    assert torch.equal(gen.latent(), ref.latent())


def test_shrinking_recent_and_mid_evicts_oldest_and_continues(model_and_prompt):
    model, text_kv = model_and_prompt
    cfg = core_config.CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=6, mid_blocks=8, top_k=8,
                                 bank_device="same")
    gen, compressor = _generation(cfg, 16, model, text_kv)
    before = gen.latent().clone()
    blocks_before = [b.index for b in gen.cache.blocks]
    smaller = core_config.CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=2, top_k=1,
                                     bank_device="same")
    gen = resize.apply_sizes(gen, smaller, compressor, text_kv)
    c = gen.cache
    assert c.recent_count <= 2 and len(c.blocks) == 2 and c.frames_done == 16
    assert [b.index for b in c.blocks] == sorted(blocks_before + [b.index for b in c.blocks])[-2:]
    list(gen.run(text_kv, 20))
    assert torch.equal(gen.latent()[:, :, :16], before) and torch.isfinite(gen.latent()).all()
    with pytest.raises(spec.InputError, match="sink_seconds"):
        resize.apply_sizes(gen, core_config.CacheConfig(mode="kv_pool", sink_frames=3, recent_frames=2,
                                                       mid_blocks=2, top_k=1, bank_device="same"),
                           compressor, text_kv)
