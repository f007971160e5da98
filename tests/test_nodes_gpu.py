"""The nodes on a CUDA GPU, in-process, at full size (random 1.3B weights): ComfyUI's model management,
VRAM after a run and after a cancel, resume, the memory check, the streaming video writer.

Skipped without CUDA or without ComfyUI (`bash .ci/setup_comfyui.sh`; PACKFORCING_COMFYUI points to
another copy). Prints what it measured (run with -s). The e2e suite covers the same nodes through a
real server on the CPU.
"""
from __future__ import annotations

import gc
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from comfy_harness import comfy_in_process, find_comfyui, pack_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or find_comfyui() is None,
                                reason="needs a CUDA GPU and ComfyUI")
GIB = 2 ** 30
W, H = 832, 480


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """ComfyUI imported in-process (GPU mode), the pack mounted as a package, output/temp in tmp."""
    root = tmp_path_factory.mktemp("comfy")
    mm = comfy_in_process(root)
    return types.SimpleNamespace(mm=mm, root=root, **{n: pack_module(m) for n, m in (
        ("generation", "nodes.generation"), ("request", "nodes.request"), ("spec", "nodes.spec"),
        ("handle", "nodes.model_handle"), ("decode", "nodes.decode"), ("cache", "packforcing_core.cache.config"),
        ("model", "packforcing_core.model.dit"), ("tiny", "packforcing_core.model.tiny"),
        ("vae", "packforcing_core.vae.model"), ("latents", "packforcing_core.vae.latents"))})


@pytest.fixture(scope="module")
def model(pack):
    """Random Wan2.1-1.3B weights in bf16, on the offload device like Load PackForcing Model leaves them."""
    gc.collect()
    pack.vram_before = torch.cuda.memory_allocated()     # what earlier test modules left in this process
    with torch.device("cuda"):
        dit = pack.tiny.random_model(pack.model.WanConfig(), seed=0, dtype=torch.bfloat16)
    handle = pack.handle.OwnedModel(dit.to(pack.mm.unet_offload_device()), name="random-1.3B")
    torch.cuda.empty_cache()
    return handle


def request(pack, length: int, cache=None, mode="kv_pool", seed=1):
    spec = cache or pack.spec.new_cache_spec(pack.cache.CacheConfig(mode=mode))   # the reference sizes
    prompt = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(0))
    return pack.request.check_request(spec, [[prompt, {}]], W, H, length, seed, "1000,750,500,250", 5.0, 4)


def weights_bytes(handle) -> int:
    return sum(p.numel() * p.element_size() for p in handle.patcher.model.parameters())


def vram_allowed(pack, handle) -> int:
    """What may stay allocated after a run: the weights (ComfyUI keeps the model loaded) and 64 MiB."""
    return pack.vram_before + weights_bytes(handle) + 64 * 2 ** 20


def test_runs_continue_and_leave_only_the_weights_in_vram(pack, model):
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    latent, spec, timeline = pack.generation.run(model, request(pack, 61), None, "1", False)     # 4 chunks
    first = time.perf_counter() - t
    after = torch.cuda.memory_allocated()
    t = time.perf_counter()
    latent2, spec2, _ = pack.generation.run(model, request(pack, 64, cache=spec), None, "2", False)  # 4 more
    second = time.perf_counter() - t
    print(f"\n1.3B bf16 {W}x{H}: 16 latent frames in {first:.1f} s (incl. loading), 16 more in {second:.1f} s; "
          f"peak {torch.cuda.max_memory_allocated() / GIB:.2f} GiB, after a run {after / GIB:.2f} GiB "
          f"(weights {weights_bytes(model) / GIB:.2f} GiB); kv {timeline['kv_bytes']}")
    assert after < vram_allowed(pack, model), "the run left tensors on the GPU"
    assert torch.cuda.memory_allocated() < vram_allowed(pack, model)
    assert latent.device.type == "cpu" and latent2.shape[2] == 32
    assert torch.equal(latent2[:, :, :16], latent)


def test_cancel_frees_vram_keeps_progress_and_resume_is_bit_identical(pack, model):
    req = request(pack, 16 * 6 - 3, seed=5)                         # 6 chunks

    def interrupt_soon():
        time.sleep(1.5)
        pack.mm.interrupt_current_processing(True)

    threading.Thread(target=interrupt_soon, daemon=True).start()
    with pytest.raises(pack.mm.InterruptProcessingException):
        pack.generation.run(model, req, None, "3", False)
    pack.mm.interrupt_current_processing(False)
    left = torch.cuda.memory_allocated()
    saved = list((pack.root / "output" / "packforcing").glob("resume-*.safetensors"))
    print(f"\nafter cancel: {left / GIB:.2f} GiB allocated; saved {[p.name for p in saved]}")
    assert left < vram_allowed(pack, model), "the cancelled run left tensors on the GPU"
    assert len(saved) == 1
    resumed, _, _ = pack.generation.run(model, req, None, "3", True)
    assert not saved[0].exists()
    uninterrupted, _, _ = pack.generation.run(model, req, None, "3", False)
    assert torch.equal(resumed, uninterrupted)


def test_full_cache_for_ten_minutes_is_refused_before_allocating(pack, model):
    req = request(pack, 16 * 600 - 3, mode="full")
    with pytest.raises(pack.spec.InputError, match="is free"):
        pack.generation.run(model, req, None, "4", False)


def test_streaming_save_video_keeps_memory_bounded(pack):
    import comfy.sd
    with torch.device("cuda"):
        sd = pack.vae.WanVAE().to(torch.bfloat16).state_dict()         # random full-size Wan2.1 VAE
    vae = comfy.sd.VAE(sd={k: v.cpu() for k, v in sd.items()})
    del sd
    torch.cuda.empty_cache()
    z = pack.latents.denormalize_latent(torch.randn(1, 16, 24, H // 8, W // 8))
    node = pack.decode.PackForcingSaveVideo.PREPARE_CLASS_CLONE({})
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = node.execute({"samples": z}, vae, "gpu/video", 16.0, "h264", 19)
    seconds = time.perf_counter() - t
    path = Path(out.args[0].get_stream_source())
    frames, width, height, codec = _video_info(path)
    peak = torch.cuda.max_memory_allocated() - base
    print(f"\nsave video: {frames} frames {width}x{height} {codec} in {seconds:.1f} s "
          f"({frames / seconds:.1f} fps), peak +{peak / GIB:.2f} GiB over the VAE weights")
    assert (frames, width, height) == (4 * 24 - 3, W, H)
    assert peak < 6 * GIB


def _video_info(path: Path):
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for _ in c.decode(s)), s.width, s.height, s.codec_context.name


def test_compiled_model_matches_eager(pack, model):
    """The loader's `compile` option: same video (to bf16 tolerance) as the eager model, same weights."""
    eager, _, _ = pack.generation.run(model, request(pack, 29, seed=3), None, "c1", False)
    compiled_handle = pack.handle.OwnedModel(model.patcher.model.dit, name="random-1.3B", compile=True)
    t = time.perf_counter()
    compiled, _, _ = pack.generation.run(compiled_handle, request(pack, 29, seed=3), None, "c2", False)
    first = time.perf_counter() - t
    t = time.perf_counter()
    pack.generation.run(compiled_handle, request(pack, 29, seed=3), None, "c3", False)
    print(f"\ncompiled: first run (compile included) {first:.1f} s, second {time.perf_counter() - t:.1f} s")
    err = float((compiled - eager).abs().mean() / eager.abs().mean())
    print(f"mean relative difference compiled vs eager: {err:.4f}")
    assert compiled.shape == eager.shape and err < 0.02, err
