"""The fast paths (selection on the device, host-sync-free uploads) compute exactly what the plain
paths compute, on the CPU with tiny random models. GPU-only checks live in test_speed_gpu.py."""
import pytest
import torch

from packforcing_core.cache.compressor import make_compressor
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.sampler import Generation

H, W = 4, 6


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=7)


@pytest.fixture(scope="module")
def text_kv(model):
    return model.encode_text(random_prompt(model.cfg, tokens=6, seed=8))


def generate(model, text_kv, cfg, device_selection: bool, frames=24):
    cache = PackedCache(cfg, make_compressor(cfg.mode, model))
    used, plain = [], cache._select_on_device

    def select_on_device():
        ok = plain() if device_selection else False
        used.append(ok)
        return ok

    cache._select_on_device = select_on_device
    gen = Generation(model, cache, H, W, seed=1, chunk_frames=2)
    chosen = [[b.index for b in cache.selected] for _ in gen.run(text_kv, frames)]
    return gen.latent(), chosen, used


@pytest.mark.parametrize("rope_adjust", [True, False])
def test_selection_on_the_device_equals_the_host_selection_bit_for_bit(model, text_kv, rope_adjust):
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=5, top_k=3,
                      rope_adjust=rope_adjust, bank_device="same")
    fast, fast_sel, used = generate(model, text_kv, cfg, True)
    slow, slow_sel, unused = generate(model, text_kv, cfg, False)
    assert any(used) and not any(unused)          # the device path ran (once the bank outgrew top-k)
    assert fast_sel == slow_sel and len({tuple(s) for s in fast_sel if s}) > 1   # the choice moved
    assert torch.equal(fast, slow)


def test_device_selection_breaks_ties_towards_newer_blocks(model, text_kv):
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=4, top_k=2, bank_device="same")
    cache = PackedCache(cfg, make_compressor("kv_pool", model))
    list(Generation(model, cache, H, W, seed=1, chunk_frames=2).run(text_kv, 16))
    for b in cache.blocks:
        b.mean_k = torch.ones_like(b.mean_k)
    assert cache._select_on_device()
    assert cache.selected == cache.blocks[-2:] == cache.select()


def test_a_partial_block_falls_back_to_the_host_selection(model, text_kv):
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=4, top_k=2, bank_device="same")
    cache = PackedCache(cfg, make_compressor("kv_pool", model))
    list(Generation(model, cache, H, W, seed=1, chunk_frames=2).run(text_kv, 16))
    assert cache._select_on_device()
    cache.blocks[1].frames = 1                    # a block of another size: positions need the host
    assert not cache._select_on_device()


def test_cli_decodes_with_the_tiny_decoder_and_refuses_fp8_without_fp8_units(tmp_path, capsys):
    import numpy as np
    from safetensors.torch import load_file, save_file

    from packforcing_core.cli.main import main
    from packforcing_core.vae.taehv import TinyWanDecoder
    from test_taehv import published_state_dict

    assets = tmp_path / "assets"
    assert main(["tiny-assets", "--out", str(assets)]) == 0
    sd = published_state_dict()
    save_file(sd, str(assets / "taew2_1.safetensors"))
    args = ["generate", "--dit", str(assets / "tiny_dit.safetensors"), "--prompt-embeds",
            str(assets / "tiny_prompt.safetensors"), "--width", "32", "--height", "32", "--dtype", "fp32",
            "--device", "cpu", "--sink", "1", "--recent", "2", "--mid-blocks", "2", "--top-k", "1",
            "--chunk-frames", "2", "--frames", "13", "--out", str(tmp_path / "out")]
    assert main(args + ["--tiny-decoder", str(assets / "taew2_1.safetensors"), "--cuda-graphs"]) == 0
    frames = np.load(tmp_path / "out" / "frames.npy")
    latents = load_file(str(tmp_path / "out" / "latents.safetensors"))["latents"]
    want = TinyWanDecoder.from_state_dict(sd).decode(latents)[0]               # (3, 13, 32, 32) in [-1, 1]
    want = ((want.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert frames.shape == (13, 32, 32, 3) and np.abs(frames.astype(int) - want.astype(int)).max() <= 1
    capsys.readouterr()
    assert main(args + ["--fp8"]) == 2
    assert "use --dtype bf16" in capsys.readouterr().err
    assert main([x if x != "fp32" else "bf16" for x in args] + ["--fp8"]) == 2
    err = capsys.readouterr().err
    assert "--fp8" in err and "NVIDIA GPU" in err
