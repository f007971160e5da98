"""Interop with ComfyUI's own autoregressive video support (ComfyUI 0.33 and newer), in a real server.

ComfyUI 0.33 builds its own causal Wan class (WAN21_CausalAR: a WanModel with a KV cache) for a
Wan2.1 text-to-video file whose safetensors `config` metadata says {"transformer": {"causal_ar":
true}}; nothing in the tensor names differs from a bidirectional Wan2.1 T2V file. The tests write a
tiny random checkpoint in exactly that layout (2 layers, dim 128, one head, text_len 8 so that the
8-token prompt embeddings need no padding on either side) and check that:

- UNETLoader + PackForcing Model from MODEL gives the same video as Load PackForcing Model on the
  same file, with 1-frame chunks (frame-wise checkpoints) and a kv_pool cache whose every tier is used;
- a LoRA applied by ComfyUI (LoraLoaderModelOnly) reaches the PackForcing DiT: the result equals
  our own loader on weights merged independently in the test;
- ComfyUI's AR path (EmptyARVideoLatent or ARVideoI2V + SamplerARVideo + SamplerCustom with the
  `ar_video` sampler) and our sampler with the `full` cache give the same latent from the same
  noise: ComfyUI draws the initial noise of the whole video from the seed and re-noises with
  torch.manual_seed(seed + 1000 * block + step); the test writes those tensors into a noise bank
  (packforcing_core/sampling/noise.py) that our sampler replays.

Run on ComfyUI 0.33 (older ComfyUI has no causal class; the module is skipped there):
    PACKFORCING_COMFYUI=.comfyui/v0.33.0/ComfyUI .comfyui/v0.33.0/venv/bin/python -m pytest -q \\
        tests/test_comfy_ar_interop.py
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from comfy_harness import find_comfyui
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.checkpoint import load_model
from packforcing_core.model.tiny import random_model, tiny_config
from packforcing_core.sampling.noise import NoiseBank
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.sampling.sampler import Generation
from packforcing_core.sampling.schedule import FlowSchedule
from packforcing_core.vae.latents import denormalize_latent, normalize_latent
from packforcing_core.vae.model import WanVAE

CAUSAL, MERGED = "pf_causal_framewise.safetensors", "pf_causal_merged.safetensors"
LORA, VAE = "pf_causal_lora.safetensors", "pf_ar_vae.safetensors"
PROMPT, START = "pf_ar_prompt.safetensors", "pf_ar_start.png"
SIZE = 64                               # pixels: 8x8 latent, 4x4 tokens per latent frame
STEPS = (1000, 750, 500, 250)
SHIFT = 5.0
LORA_STRENGTH = 0.7
LORA_LAYERS = {"blocks.0.self_attn.q": 4, "blocks.1.ffn.0": 2}      # layer -> rank


def causal_config():
    return tiny_config(dim=128, num_heads=1, ffn_dim=256, num_layers=2, text_dim=4096, text_len=8, freq_dim=256)


def save_causal(state_dict: dict, path) -> None:
    """A Wan2.1 T2V state dict in the layout ComfyUI 0.33 loads as its causal AR model."""
    cfg = causal_config()
    meta = {"config": json.dumps({"transformer": {"causal_ar": True, "num_heads": cfg.num_heads,
                                                  "text_dim": cfg.text_dim, "text_len": cfg.text_len}})}
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=meta)


def lora_tensors(sd: dict, seed: int = 11) -> tuple[dict, dict]:
    """(LoRA file tensors in ComfyUI's diffusion_model.* naming, the weights merged by hand)."""
    g = torch.Generator().manual_seed(seed)
    lora, merged = {}, dict(sd)
    for layer, rank in LORA_LAYERS.items():
        out_f, in_f = sd[f"{layer}.weight"].shape
        down, up = 0.2 * torch.randn(rank, in_f, generator=g), 0.2 * torch.randn(out_f, rank, generator=g)
        alpha = float(rank) / 2
        lora |= {f"diffusion_model.{layer}.lora_down.weight": down, f"diffusion_model.{layer}.lora_up.weight": up,
                 f"diffusion_model.{layer}.alpha": torch.tensor(alpha)}
        merged[f"{layer}.weight"] = sd[f"{layer}.weight"] + LORA_STRENGTH * (alpha / rank) * (up @ down)
    return lora, merged


pytestmark = pytest.mark.comfy      # the server is requested inside the fixture, after the version check


@pytest.fixture(scope="module")
def server(request):
    comfy = find_comfyui()
    if comfy is not None and not (comfy / "comfy" / "ldm" / "wan" / "ar_model.py").is_file():
        pytest.skip(f"ComfyUI at {comfy} has no causal AR model class (it came with 0.33): run with "
                    "PACKFORCING_COMFYUI=.comfyui/v0.33.0/ComfyUI and that ComfyUI's venv")
    comfy_server = request.getfixturevalue("comfy_server")
    assert "SamplerARVideo" in comfy_server.object_info("SamplerARVideo"), comfy_server.log_tail()
    models, inputs = comfy_server.models_dir, comfy_server.input_dir
    sd = random_model(causal_config(), seed=5).state_dict()
    save_causal(sd, models / "diffusion_models" / CAUSAL)
    lora, merged = lora_tensors(sd)
    save_file(lora, str(models / "loras" / LORA))
    save_causal(merged, models / "diffusion_models" / MERGED)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()}, str(models / "vae" / VAE))
    save_prompt_embeds(str(inputs / PROMPT), torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(3)))
    rgb = np.random.default_rng(4).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(inputs / START)
    assert comfy_server.custom_node_loaded(), comfy_server.log_tail()
    return comfy_server


def latent_of(server, entry: dict, node_id: str) -> torch.Tensor:
    item = entry["outputs"][node_id]["latents"][0]
    return load_file(str(server.output_dir / item["subfolder"] / item["filename"]))["latent_tensor"]


def node(kind: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs}


def save_latent(samples: list, prefix: str) -> dict:
    return node("SaveLatent", samples=samples, filename_prefix=prefix)


def our_sampler(model: list, cache: list, length: int, chunk: int, seed: int = 3, **extra) -> dict:
    return node("PackForcingSampler", model=model, positive=["p", 0], cache=cache, width=SIZE, height=SIZE,
                length=length, seed=seed, steps=",".join(map(str, STEPS)), shift=SHIFT, chunk_frames=chunk,
                resume=False, **extra)


def packed_cache(mode: str) -> dict:
    """Small sizes so that with 1-frame chunks every tier is used: sink 1 frame, recent 2, mid 4 blocks."""
    return node("PackForcingPackedCache", mode=mode, sink_seconds=0.25, recent_seconds=0.5, mid_blocks=4, top_k=2,
                selection="affinity", rope_adjust=True, mid_bank="cpu")


# ----------------------------------------------------------------------------- PackForcing Model from MODEL

def test_causal_unet_model_gives_the_pack_loaders_video_with_frame_chunks(server):
    """The DiT is built the same way whatever the cache mode (tests/test_frame_chunks.py runs every mode
    with 1-frame chunks), so one bounded mode with every tier in use is enough here."""
    wf = {"p": node("PackForcingLoadPromptEmbeddings", embeddings=PROMPT),
          "unet": node("UNETLoader", unet_name=CAUSAL, weight_dtype="default"),
          "native": node("PackForcingModelFromMODEL", model=["unet", 0]),
          "owned": node("PackForcingModelLoader", dit_name=CAUSAL, dtype="fp32"),
          "c": packed_cache("kv_pool")}
    for kind in ("native", "owned"):
        wf[f"s_{kind}"] = our_sampler([kind, 0], ["c", 0], 45, chunk=1)     # 12 latent frames
        wf[f"l_{kind}"] = save_latent([f"s_{kind}", 0], f"interop/{kind}")
    entry = server.run(wf, timeout=300)
    assert "WAN21_CausalAR" in server.log_text(), "ComfyUI did not build its causal AR model from the file"
    native, owned = latent_of(server, entry, "l_native"), latent_of(server, entry, "l_owned")
    assert native.shape == (1, 16, 12, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(native, owned, rtol=0, atol=1e-5)
    report = entry["outputs"]["s_native"]["packforcing"][0]
    assert report["latent_frames"] == 12 and report["sink"] == [0, 1] and len(report["mid"]) == 4, report


def test_lora_on_the_causal_model_reaches_the_packforcing_dit(server):
    wf = {"p": node("PackForcingLoadPromptEmbeddings", embeddings=PROMPT),
          "unet": node("UNETLoader", unet_name=CAUSAL, weight_dtype="default"),
          "lora": node("LoraLoaderModelOnly", model=["unet", 0], lora_name=LORA, strength_model=LORA_STRENGTH),
          "native": node("PackForcingModelFromMODEL", model=["lora", 0]),
          "plain": node("PackForcingModelFromMODEL", model=["unet", 0]),
          "merged": node("PackForcingModelLoader", dit_name=MERGED, dtype="fp32"),
          "c": packed_cache("kv_pool")}
    for kind in ("native", "plain", "merged"):
        wf[f"s_{kind}"] = our_sampler([kind, 0], ["c", 0], 21, chunk=1)
        wf[f"l_{kind}"] = save_latent([f"s_{kind}", 0], f"interop/lora_{kind}")
    entry = server.run(wf, timeout=300)
    native, merged = latent_of(server, entry, "l_native"), latent_of(server, entry, "l_merged")
    torch.testing.assert_close(native, merged, rtol=0, atol=1e-4)
    assert (native - latent_of(server, entry, "l_plain")).abs().max() > 1e-2, "the LoRA changed nothing"


# ----------------------------------------------------------------------------- ComfyUI's own AR sampler

def comfy_sigmas() -> str:
    """Our few-step schedule as the sigma list ComfyUI's samplers take (ManualSigmas), ending at 0."""
    sigmas = FlowSchedule(shift=SHIFT, steps=STEPS).timesteps / 1000
    return ", ".join(repr(float(s)) for s in sigmas) + ", 0"


def comfy_noise_bank(path, seed: int, latent_frames: int, start: int, chunk: int) -> None:
    """The noise ComfyUI's ar_video sampler uses, as a noise bank for our sampler: the initial noise of
    block b is the slice of the whole-video noise (torch.manual_seed(seed), one randn of the video's
    shape) at its frames; its re-noising after step j is torch.manual_seed(seed + 1000 b + j) randn."""
    shape = (1, 16, latent_frames, SIZE // 8, SIZE // 8)
    video_noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    tensors = {}
    for b, first in enumerate(range(start, latent_frames, chunk)):
        block = video_noise[:, :, first:first + chunk]
        tensors[f"chunk.{b}.init"] = block.contiguous()
        for j in range(len(STEPS) - 1):
            g = torch.Generator().manual_seed(seed + 1000 * b + j)
            tensors[f"chunk.{b}.renoise.{j}"] = torch.randn(block.shape, generator=g)
    save_file(tensors, str(path))


def our_ar_video(server, bank, latent_frames: int, chunk: int, start_latent=None) -> torch.Tensor:
    """Our sampler with the dense `full` cache on the same file, replaying the noise bank: raw latent."""
    model = load_model(str(server.models_dir / "diffusion_models" / CAUSAL), dtype=torch.float32)
    gen = Generation(model, PackedCache(CacheConfig(mode="full")), SIZE // 8, SIZE // 8, seed=0, chunk_frames=chunk,
                     schedule=FlowSchedule(shift=SHIFT, steps=STEPS), noise=NoiseBank(str(bank)))
    text_kv = model.encode_text(load_file(str(server.input_dir / PROMPT))["prompt_embeds"])
    if start_latent is not None:
        gen.commit_start(normalize_latent(start_latent), text_kv, latent_frames)
    for _ in gen.run(text_kv, latent_frames):
        pass
    return denormalize_latent(gen.latent())


def comfy_ar_workflow(length: int, chunk: int, seed: int, start_image: bool) -> dict:
    wf = {"p": node("PackForcingLoadPromptEmbeddings", embeddings=PROMPT),
          "unet": node("UNETLoader", unet_name=CAUSAL, weight_dtype="default"),
          "sampler": node("SamplerARVideo", num_frame_per_block=chunk),
          "sigmas": node("ManualSigmas", sigmas=comfy_sigmas())}
    if start_image:
        wf |= {"vae": node("VAELoader", vae_name=VAE), "img": node("LoadImage", image=START),
               "i2v": node("ARVideoI2V", model=["unet", 0], vae=["vae", 0], start_image=["img", 0], width=SIZE,
                           height=SIZE, length=length, batch_size=1),
               "enc": node("VAEEncode", pixels=["img", 0], vae=["vae", 0]),
               "l_start": save_latent(["enc", 0], "interop/start")}
        model, latent = ["i2v", 0], ["i2v", 1]
    else:
        wf["empty"] = node("EmptyARVideoLatent", width=SIZE, height=SIZE, length=length, batch_size=1)
        model, latent = ["unet", 0], ["empty", 0]
    wf["ar"] = node("SamplerCustom", model=model, add_noise=True, noise_seed=seed, cfg=1.0, positive=["p", 0],
                    negative=["p", 0], sampler=["sampler", 0], sigmas=["sigmas", 0], latent_image=latent)
    wf["l_ar"] = save_latent(["ar", 0], "interop/ar")
    return wf


@pytest.mark.parametrize("chunk", [1, 3])
def test_comfyui_ar_video_equals_our_sampler_given_its_noise(server, tmp_path, chunk):
    seed, length, frames = 123 + chunk, 21, 6
    entry = server.run(comfy_ar_workflow(length, chunk, seed, start_image=False), timeout=300)
    theirs = latent_of(server, entry, "l_ar")
    assert theirs.shape == (1, 16, frames, SIZE // 8, SIZE // 8)
    comfy_noise_bank(tmp_path / "bank.safetensors", seed, frames, start=0, chunk=chunk)
    ours = our_ar_video(server, tmp_path / "bank.safetensors", frames, chunk)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-4)


def test_comfyui_ar_image_to_video_equals_our_sampler_with_a_start_frame(server, tmp_path):
    seed, length, frames = 77, 21, 6
    entry = server.run(comfy_ar_workflow(length, 1, seed, start_image=True), timeout=300)
    theirs, start = latent_of(server, entry, "l_ar"), latent_of(server, entry, "l_start")
    assert theirs.shape == (1, 16, frames, SIZE // 8, SIZE // 8) and start.shape == (1, 16, 1, SIZE // 8, SIZE // 8)
    comfy_noise_bank(tmp_path / "bank.safetensors", seed, frames, start=1, chunk=1)
    ours = our_ar_video(server, tmp_path / "bank.safetensors", frames, 1, start_latent=start)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-4)
