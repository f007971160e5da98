"""Core engine: DiT through the cache vs a dense masked forward, AR sampler vs dense AR, schedule."""
import pytest
import torch
from safetensors.torch import save_file

import dense_reference as ref
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.noise import NoiseBank, SeededNoise
from packforcing_core.sampling.sampler import Generation
from packforcing_core.sampling.schedule import FlowSchedule

H, W = 6, 8        # latent size: 3x4 tokens per frame


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=3)


@pytest.fixture(scope="module")
def prompt(model):
    emb = random_prompt(model.cfg, tokens=5, seed=4)
    ref.set_prompt(emb)
    return emb


def test_schedule_matches_design():
    s = FlowSchedule(shift=5.0, steps=(1000, 750, 500, 250))
    assert s.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.3333333, 625.0], abs=1e-4)
    with pytest.raises(ValueError, match="decreasing"):
        FlowSchedule(steps=(500, 750))


def test_flow_matching_identities():
    s = FlowSchedule()
    x0, eps = torch.randn(3, 5), torch.randn(3, 5)
    t = float(s.timesteps[1])
    xt = s.renoise(x0, eps, t)
    torch.testing.assert_close(s.to_x0(eps - x0, xt, t), x0, atol=1e-6, rtol=0)


def test_chunk_through_cache_equals_full_sequence_masked_forward(model, prompt):
    """History committed chunk by chunk through the cache, then one noisy chunk: its velocity equals
    one dense forward with a block-causal mask over [clean history at t=0, noisy chunk]."""
    torch.manual_seed(0)
    c, chunks = 2, 3
    history = torch.randn(1, 16, c * chunks, H, W)
    noisy = torch.randn(1, 16, c, H, W)
    t = 833.3
    text_kv = model.encode_text(prompt)
    cache = PackedCache(CacheConfig(mode="full"))
    cache.setup(model, H, W, c, total_frames=c * (chunks + 1))
    with torch.no_grad():
        for i in range(chunks):
            cache.begin_chunk(c)
            cache.begin_commit()
            model(history[:, :, i * c:(i + 1) * c], torch.zeros(1, c), cache, text_kv)
            cache.commit(history[:, :, i * c:(i + 1) * c])
        cache.begin_chunk(c)
        v_cached = model(noisy, torch.full((1, c), t), cache, text_kv)
    seq = torch.cat([history, noisy], 2)
    nf = seq.shape[2]
    v_dense = ref.dense_forward(model.state_dict(), model.cfg, seq, [0.0] * (nf - c) + [t] * c,
                                [f // c for f in range(nf)])[:, :, -c:]
    torch.testing.assert_close(v_cached.double(), v_dense, atol=2e-5, rtol=1e-4)


def _noise_bank(path, chunks, c, steps, seed=11):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(chunks):
        tensors[f"chunk.{i}.init"] = torch.randn(1, 16, c, H, W, generator=g)
        for j in range(steps - 1):
            tensors[f"chunk.{i}.renoise.{j}"] = torch.randn(1, 16, c, H, W, generator=g)
    save_file(tensors, str(path))
    return tensors


@pytest.mark.parametrize("chunk_frames", [3, 4])
def test_sampler_with_noise_bank_equals_dense_ar(model, prompt, tmp_path, chunk_frames):
    chunks, sched = 3, FlowSchedule()
    bank = _noise_bank(tmp_path / "noise.safetensors", chunks, chunk_frames, len(sched.steps))
    gen = Generation(model, PackedCache(CacheConfig(mode="full")), H, W, seed=0, chunk_frames=chunk_frames,
                     noise=NoiseBank(str(tmp_path / "noise.safetensors")))
    list(gen.run(model.encode_text(prompt), chunks * chunk_frames))
    dense = ref.dense_ar_sample(model.state_dict(), model.cfg, bank, chunks, chunk_frames,
                                sched.timesteps.tolist(), (H, W))
    torch.testing.assert_close(gen.latent().double(), dense, atol=1e-4, rtol=1e-4)


def test_seeded_noise_depends_only_on_seed_and_chunk():
    a = SeededNoise(7).draw(5, 3, (1, 16, 2, 4, 4))
    b = SeededNoise(7).draw(5, 3, (1, 16, 2, 4, 4))
    c = SeededNoise(7).draw(6, 3, (1, 16, 2, 4, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])


def test_noise_bank_refuses_wrong_shapes_and_missing_chunks(tmp_path):
    _noise_bank(tmp_path / "n.safetensors", 1, 2, 4)
    bank = NoiseBank(str(tmp_path / "n.safetensors"))
    with pytest.raises(ValueError, match="chunk.1.init"):
        bank.draw(1, 4, (1, 16, 2, H, W))
    with pytest.raises(ValueError, match="shape"):
        bank.draw(0, 4, (1, 16, 3, H, W))


def test_interrupt_mid_chunk_then_continue_is_bit_identical(model, prompt):
    """A cancel raised from the progress callback mid-chunk leaves a cache that continues exactly."""
    text_kv = model.encode_text(prompt)
    cfg = CacheConfig(mode="none", sink_frames=2, recent_frames=4)
    full = Generation(model, PackedCache(cfg), H, W, seed=5, chunk_frames=2)
    list(full.run(text_kv, 12))

    class Cancel(Exception):
        pass

    def stop_at(chunk, step, steps):
        if chunk == 3 and step == 2:
            raise Cancel

    cut = Generation(model, PackedCache(cfg), H, W, seed=5, chunk_frames=2)
    with pytest.raises(Cancel):
        list(cut.run(text_kv, 12, on_step=stop_at))
    assert cut.frames_done == 6
    list(cut.run(text_kv, 12))
    assert torch.equal(cut.latent(), full.latent())


def test_model_output_shapes_and_dtypes(model, prompt):
    m16 = random_model(tiny_config(), seed=3, dtype=torch.bfloat16)
    gen = Generation(m16, PackedCache(CacheConfig(mode="full")), H, W, seed=0, chunk_frames=2)
    out = list(gen.run(m16.encode_text(prompt), 4))
    assert out[-1].latent.shape == (1, 16, 2, H, W) and torch.isfinite(gen.latent()).all()
    with pytest.raises(ValueError, match="multiple"):
        Generation(model, PackedCache(CacheConfig(mode="full")), 5, W, seed=0)
    with pytest.raises(ValueError, match="umt5"):
        model.encode_text(torch.zeros(1, 4, model.cfg.text_dim + 1))
