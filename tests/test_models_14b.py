"""14B-sized causal Wan DiTs (Wan2.1-14B shapes: dim 5120, 40 heads x 128, 40 layers, ffn 13824; e.g.
Krea Realtime 14B) without allocating one: sizes detected from 14B state dicts built of meta tensors
and from a sparse safetensors file with a 14B header (CLI memory check, the budget route), and tiny
models with the same head arithmetic running against the dense float64 reference."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import dense_reference as ref
from comfy_harness import pack_module
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.cli.main import main
from packforcing_core.model.checkpoint import CheckpointError, detect_config, load_model, read_shapes, save_model, strip_prefixes
from packforcing_core.model.dit import CausalWanModel, WanConfig
from packforcing_core.model.fp8 import quantize_dit
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.noise import NoiseBank
from packforcing_core.sampling.sampler import Generation
from packforcing_core.sampling.schedule import FlowSchedule

WAN14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
GIB = 2 ** 30


def meta_model(dtype=torch.bfloat16, **sizes) -> CausalWanModel:
    with torch.device("meta"):
        return CausalWanModel(WanConfig(**sizes)).set_compute_dtype(dtype)


def sparse_safetensors(path, shapes: dict, metadata: dict | None = None) -> None:
    """A safetensors file with this header and all-zero data that takes no disk (a sparse file)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)


@pytest.fixture(scope="module")
def file14b(tmp_path_factory):
    path = tmp_path_factory.mktemp("m14b") / "krea_realtime_14b_like.safetensors"
    sparse_safetensors(path, {k: v.shape for k, v in meta_model(**WAN14B).state_dict().items()})
    return path


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "model._fsdp_wrapped_module."])
def test_14b_sizes_are_detected_from_the_state_dict(prefix):
    sd = {prefix + k: v for k, v in meta_model(**WAN14B).state_dict().items()}
    cfg = detect_config(strip_prefixes(sd))
    assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.head_dim, cfg.num_layers) == (5120, 13824, 40, 128, 40)
    assert (cfg.text_dim, cfg.freq_dim, cfg.patch, cfg.in_dim, cfg.out_dim) == (4096, 256, (1, 2, 2), 16, 16)


def test_14b_file_header_is_read_without_its_weights(file14b):
    sd, meta = read_shapes(str(file14b))
    assert all(t.device.type == "meta" for t in sd.values())
    assert detect_config(sd, meta).to_dict() == WanConfig(**WAN14B).to_dict()
    assert file14b.stat().st_blocks * 512 < 2 ** 20            # sparse: the test wrote no 28 GB
    cut = file14b.with_name("cut.safetensors")                  # a download that stopped early
    sparse_safetensors(cut, {"a": (4, 4)})
    with open(cut, "r+b") as f:
        f.truncate(f.seek(0, 2) - 1)
    with pytest.raises(CheckpointError, match="truncated or corrupt.*describes"):
        read_shapes(str(cut))


def weights_of(fp8: bool = False, **kw) -> int:
    """Independent of the accounting under test: the meta model's own tensors after set_compute_dtype
    (and quantize_dit)."""
    model = quantize_dit(meta_model(**kw)) if fp8 else meta_model(**kw)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_budget_route_counts_a_14b_models_weights(file14b):
    routes = pack_module("nodes.routes")
    model = routes.model_from_file(str(file14b))
    assert (model["layers"], model["heads"], model["head_dim"], model["source"]) == (40, 40, 128, "file")
    weights = weights_of(**WAN14B)
    assert 26.5 * GIB < weights < 27 * GIB                      # ~14.3 B parameters in bf16
    tokens = 12 * 1560 + 14 * 208                                # sink 4 + recent 4 + chunk 4 frames, top-14 mid
    kv = tokens * 2 * 40 * 5120 * 2                              # K and V, 40 layers x 40 heads x 128, bf16
    act = 4 * 1560 * (13824 + 12 * 5120) * 4
    gpu = lambda free, loaded=0: {"device": "cuda:0", "device_name": "GPU", "free_bytes": free,
                                  "total_bytes": 80 * GIB, "host_free_bytes": 64 * GIB, "loaded_bytes": loaded}
    b = lambda memory, **q: routes.budget(routes.parse_query({k: str(v) for k, v in q.items()}), model, memory)
    fits = b(gpu(kv + weights + act))
    assert fits["device_bytes"] == kv and round(kv / GIB, 2) == 16.5
    assert (fits["weights_bytes"], fits["activation_bytes"]) == (weights, act) and not fits["exceeds_free"]
    assert b(gpu(kv + weights + act - 1))["exceeds_free"]        # the cache alone would fit: 16.5 of 43 GiB
    assert not b(gpu(kv + act, loaded=weights))["exceeds_free"]  # the DiT already loaded: ComfyUI's to unload
    fp8 = b(gpu(kv + weights + act - 1), fp8="true")             # fp8 blocks: ~half the weights
    assert not fp8["exceeds_free"] and fp8["weights_bytes"] == weights_of(fp8=True, **WAN14B) < 16 * GIB
    assert b(gpu(2 * kv + 2 * weights), dtype="fp32")["weights_bytes"] == weights_of(dtype=torch.float32, **WAN14B)


def test_cli_memory_check_reads_a_14b_file(file14b, tmp_path, capsys):
    """A dense cache for a 14B model over 2500 s refuses on any machine; the message counts its weights."""
    save_file({"prompt_embeds": torch.zeros(1, 4, 4096)}, str(tmp_path / "p.safetensors"))
    code = main(["generate", "--dit", str(file14b), "--prompt-embeds", str(tmp_path / "p.safetensors"),
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--cache-mode", "full", "--frames", "40001",
                 "--no-decode"])
    err = capsys.readouterr().err
    assert code == 2 and "--cache-mode" in err, err
    assert f"weights {weights_of(**WAN14B) / GIB:.2f} GiB" in err, err
    assert not (tmp_path / "o").exists()


H, W = 6, 8


@pytest.mark.parametrize("sizes, metadata", [
    (dict(dim=256, num_heads=2, num_layers=2, ffn_dim=96, text_len=512), False),  # head_dim 128: Wan's, no metadata
    (dict(dim=320, num_heads=40, num_layers=40, ffn_dim=64), True),  # 40 heads x 40 layers, heads from metadata
], ids=["head_dim_128", "40x40"])
def test_tiny_models_with_14b_head_arithmetic_match_the_dense_reference(tmp_path, sizes, metadata):
    model = random_model(tiny_config(**sizes), seed=5)
    path = tmp_path / "dit.safetensors"
    if metadata:
        save_model(model, str(path))
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_model(str(path), dtype=torch.float32)
    assert loaded.cfg == model.cfg and loaded.cfg.head_dim == sizes["dim"] // sizes["num_heads"]
    prompt = random_prompt(model.cfg, tokens=5, seed=4)
    ref.set_prompt(prompt)
    chunks, c, sched = 2, 2, FlowSchedule()
    g, bank = torch.Generator().manual_seed(11), {}
    for i in range(chunks):
        bank[f"chunk.{i}.init"] = torch.randn(1, 16, c, H, W, generator=g)
        for j in range(len(sched.steps) - 1):
            bank[f"chunk.{i}.renoise.{j}"] = torch.randn(1, 16, c, H, W, generator=g)
    save_file(bank, str(tmp_path / "noise.safetensors"))
    gen = Generation(loaded, PackedCache(CacheConfig(mode="full")), H, W, seed=0, chunk_frames=c,
                     noise=NoiseBank(str(tmp_path / "noise.safetensors")))
    list(gen.run(loaded.encode_text(prompt), chunks * c))
    dense = ref.dense_ar_sample(model.state_dict(), model.cfg, bank, chunks, c, sched.timesteps.tolist(), (H, W))
    torch.testing.assert_close(gen.latent().double(), dense, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_quantized_on_the_way_to_the_gpu_equals_quantized_there():
    cpu = random_model(tiny_config(dim=256, num_heads=2), dtype=torch.bfloat16)
    there = quantize_dit(random_model(tiny_config(dim=256, num_heads=2), dtype=torch.bfloat16).to("cuda"))
    on_the_way = quantize_dit(cpu, device="cuda")
    a, b = on_the_way.state_dict(), there.state_dict()
    assert a.keys() == b.keys() and all(a[k].device.type == "cuda" and torch.equal(a[k], b[k]) for k in a)
