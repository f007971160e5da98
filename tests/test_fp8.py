"""fp8 compute option: quantization and the fp8 linear layers against float64 references (CPU; the
torch._scaled_mm path is compared with the same references in test_speed_gpu.py)."""
import pytest
import torch

from packforcing_core.cache.compressor import make_compressor
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.fp8 import E4M3, Fp8Linear, fp8_unsupported_reason, quantize_dit, quantize_rows
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.sampler import Generation


def test_quantize_rows_keeps_each_row_within_e4m3_precision():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 64)[:, None]
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (64, 1)
    back = q.float() * scale
    assert (back.abs().amax(1) - x.abs().amax(1)).abs().max() / x.abs().amax() < 1e-6   # amax maps to 448
    rel = (back - x).norm(dim=1) / x.norm(dim=1)
    assert rel.max() < 0.04                      # 3 mantissa bits: ~2-3% relative error per row


def test_fp8_linear_computes_the_dequantized_product():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(96, 48).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 96, generator=g) / 10)
    x = torch.randn(2, 7, 96, generator=g).to(torch.bfloat16)
    f8 = Fp8Linear(lin)
    y = f8(x)
    assert y.shape == (2, 7, 48) and y.dtype == torch.bfloat16 and f8.weight.dtype == torch.bfloat16
    qa, sa = quantize_rows(x.reshape(-1, 96))
    qw, sw = quantize_rows(lin.weight)
    want = (qa.double() * sa.double()) @ (qw.double() * sw.double()).t() + lin.bias.double()
    torch.testing.assert_close(y.reshape(-1, 48).double(), want, atol=2e-2, rtol=1e-2)   # bf16 output
    exact = x.double() @ lin.weight.double().t() + lin.bias.double()
    assert (y.double() - exact).norm() / exact.norm() < 0.06


def test_quantized_dit_keeps_its_interface_and_stays_close_to_bf16():
    cfg = tiny_config()
    base = random_model(cfg, seed=3, dtype=torch.bfloat16)
    fast = quantize_dit(random_model(cfg, seed=3, dtype=torch.bfloat16))
    assert fast.dtype == torch.bfloat16
    blk = fast.blocks[0]
    assert all(isinstance(m, Fp8Linear) for m in (blk.self_attn.q, blk.self_attn.o, blk.cross_attn.q, blk.ffn[0], blk.ffn[2]))
    assert not isinstance(blk.cross_attn.k, Fp8Linear)        # the prompt's K/V projections stay bf16
    prompt = random_prompt(cfg, tokens=6, seed=4)
    out = []
    for m in (base, fast):
        cache = PackedCache(CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=3, top_k=2),
                            make_compressor("kv_pool", m))
        gen = Generation(m, cache, 4, 6, seed=1, chunk_frames=2)
        list(gen.run(m.encode_text(prompt), 8))
        out.append(gen.latent())
    rel = (out[1] - out[0]).norm() / out[0].norm()
    assert 0 < rel < 0.15


def test_fp8_is_refused_where_there_are_no_fp8_units():
    assert "NVIDIA GPU" in fp8_unsupported_reason("cpu")
    with pytest.raises(ValueError, match="bf16/fp16"):
        Fp8Linear(torch.nn.Linear(16, 16))
