"""End-to-end tests of the node pack against a real ComfyUI server (tests/comfy_harness.py; CI runs them
on 0.3.75 and 0.33.0).

Tiny random models stand in for the real ones (nothing can be downloaded): a 2-layer causal Wan DiT
(dim 128, one 128-wide head, umt5 width 4096 so ComfyUI's own UNETLoader accepts it too) and a Wan2.1
VAE of base dim 8, written into the server's models folders.

The artists' workflows in workflows/api/ encode prompts with CLIPLoader (umt5-xxl, type wan) +
CLIPTextEncode. A tiny umt5 cannot be built, so `tiny()` substitutes each CLIPTextEncode by the
pack's Load Prompt Embeddings node (same node id, same CONDITIONING output slot) reading a random
(1, 8, 4096) embeddings file, drops the CLIPLoader, points the loaders at the tiny files and shrinks
width/height/length. Everything else runs as the user would run it.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfy_harness import REPO_ROOT, ComfyError
from tiny_workflows import (CONTINUE, FULL_CACHE, T2V_2MIN, differences, drop_dangling_links, ui_to_api,
                            write_example_inputs)
from packforcing_core.cache.compressor import HRBranch, save_compressor_weights
from packforcing_core.model.checkpoint import save_model
from packforcing_core.model.tiny import random_model, tiny_config
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.vae.latents import denormalize_latent
from packforcing_core.vae.model import WanVAE

WORKFLOWS = REPO_ROOT / "workflows"
DIT, OTHER_DIT, SLOW_DIT, NOT_WAN = "pf_tiny.safetensors", "pf_tiny_other.safetensors", "pf_slow.safetensors", \
    "sdxl_like.safetensors"
VAE = "pf_tiny_vae.safetensors"
COMPRESSOR = "pf_tiny_compressor.safetensors"
PROMPTS = ("pf_prompt_a.safetensors", "pf_prompt_b.safetensors")
CLIP_L_PROMPT = "clip_l_prompt.safetensors"
SIZE = 64                          # pixels: 4x4 tokens per latent frame

PACK_NODES = {   # node id -> (output types, {input: type})
    "PackForcingModelLoader": (["PACKFORCING_MODEL"], {"dit_name": "COMBO", "dtype": "COMBO", "compressor": "COMBO",
                                                       "compile": "BOOLEAN", "fp8": "BOOLEAN", "gpus": "INT"}),
    "PackForcingModelFromMODEL": (["PACKFORCING_MODEL"], {"model": "MODEL", "compressor": "COMBO"}),
    "PackForcingPackedCache": (["PACKED_CACHE"], {"mode": "COMBO", "sink_seconds": "FLOAT", "recent_seconds": "FLOAT",
                                                  "mid_blocks": "INT", "top_k": "INT", "selection": "COMBO",
                                                  "rope_adjust": "BOOLEAN", "mid_bank": "COMBO"}),
    "PackForcingSetCacheSizes": (["PACKED_CACHE"], {"cache": "PACKED_CACHE", "sink_seconds": "FLOAT",
                                                    "recent_seconds": "FLOAT", "mid_blocks": "INT", "top_k": "INT"}),
    "PackForcingSampler": (["LATENT", "PACKED_CACHE"], {
        "model": "PACKFORCING_MODEL", "positive": "CONDITIONING", "cache": "PACKED_CACHE", "width": "INT",
        "height": "INT", "length": "INT", "seed": "INT", "steps": "STRING", "shift": "FLOAT", "chunk_frames": "INT",
        "resume": "BOOLEAN", "start_image": "IMAGE", "start_latent": "LATENT", "save_video": "BOOLEAN",
        "filename_prefix": "STRING", "vae": "VAE", "live_playback": "BOOLEAN",
        "clip": "CLIP", "decode_device": "COMBO"}),
    "PackForcingPromptSchedule": (["CONDITIONING"], {"conditioning": "CONDITIONING", "start_seconds": "FLOAT",
                                                     "transition_chunks": "INT", "recache": "BOOLEAN", "cut": "COMBO",
                                                     "schedule": "CONDITIONING"}),
    "PackForcingDecode": (["IMAGE"], {"samples": "LATENT", "vae": "VAE"}),
    "PackForcingSaveVideo": (["VIDEO"], {"samples": "LATENT", "vae": "VAE", "filename_prefix": "STRING",
                                         "fps": "FLOAT", "codec": "COMBO", "crf": "INT", "write_report": "BOOLEAN",
                                         "decode_device": "COMBO"}),
    "PackForcingSavePromptEmbeddings": ([], {"conditioning": "CONDITIONING", "filename_prefix": "STRING",
                                             "prompt_text": "STRING"}),
    "PackForcingLoadPromptEmbeddings": (["CONDITIONING"], {"embeddings": "COMBO"}),
}


# ----------------------------------------------------------------------------- fixtures and helpers

def tiny_dit_config(layers: int = 2):
    return tiny_config(dim=128, num_heads=1, ffn_dim=256, num_layers=layers, text_dim=4096, text_len=512,
                       freq_dim=256)


@pytest.fixture(scope="module")
def server(comfy_server):
    """The server with the tiny models, VAE and prompt embeddings in its folders."""
    models, inputs = comfy_server.models_dir, comfy_server.input_dir
    save_model(random_model(tiny_dit_config(), seed=1), str(models / "diffusion_models" / DIT))
    save_model(random_model(tiny_dit_config(), seed=2), str(models / "diffusion_models" / OTHER_DIT))
    save_model(random_model(tiny_dit_config(layers=4), seed=3), str(models / "diffusion_models" / SLOW_DIT))
    save_file({"input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3), "conditioner.embedders.0.weight": torch.zeros(4)},
              str(models / "diffusion_models" / NOT_WAN))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()}, str(models / "vae" / VAE))
    (models / "packforcing").mkdir(exist_ok=True)        # the pack registers it; also made at start-up
    save_compressor_weights(HRBranch(tiny_dit_config().dim).half(), None, str(models / "packforcing" / COMPRESSOR))
    g = torch.Generator().manual_seed(0)
    for name in PROMPTS:
        save_prompt_embeds(str(inputs / name), torch.randn(1, 8, 4096, generator=g))
    save_prompt_embeds(str(inputs / CLIP_L_PROMPT), torch.randn(1, 77, 768, generator=g))
    assert comfy_server.custom_node_loaded(), comfy_server.log_tail()
    return comfy_server


def api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def tiny(workflow: dict, lengths: dict[str, int], dit: str = DIT) -> dict:
    """The artists' workflow on the tiny models (see the module docstring); lengths per sampler node id."""
    wf = copy.deepcopy(workflow)
    encoders = sorted((k for k, n in wf.items() if n["class_type"] == "CLIPTextEncode"), key=int)
    for nid, node in list(wf.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            del wf[nid]
        elif kind == "CLIPTextEncode":
            wf[nid] = load_prompt(PROMPTS[encoders.index(nid)])
        elif kind == "PackForcingModelLoader":
            inputs.update(dit_name=dit, dtype="fp32")
        elif kind == "VAELoader":
            inputs.update(vae_name=VAE)
        elif kind == "PackForcingSampler":
            inputs.update(width=SIZE, height=SIZE, length=lengths[nid])
    return drop_dangling_links(wf)


def load_prompt(name: str) -> dict:
    return {"class_type": "PackForcingLoadPromptEmbeddings", "inputs": {"embeddings": name}}


def save_latent(samples: list, prefix: str) -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": prefix}}


def files(server, entry: dict, suffix: str) -> list[Path]:
    return [p for p in server.output_files(entry) if p.name.endswith(suffix)]


def latent_of(server, entry: dict, node_id: str) -> torch.Tensor:
    item = entry["outputs"][node_id]["latents"][0]
    path = server.output_dir / item["subfolder"] / item["filename"]
    return load_file(str(path))["latent_tensor"]


def video_info(path: Path) -> tuple[int, int, int, str]:
    """(decoded frame count, width, height, codec) of a video file, read back with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height, stream.codec_context.name


def error_of(server, prompt: dict) -> str:
    """The message ComfyUI reports for a failing prompt: validation (node_errors) or execution_error."""
    try:
        prompt_id = server.queue(prompt)
    except ComfyError as e:
        return str(e)
    status = server.wait(prompt_id, timeout=120)["status"]
    errors = [data for kind, data in status["messages"] if kind == "execution_error"]
    assert errors, f"expected an error, got {json.dumps(status)[:1000]}"
    return errors[0]["exception_message"]


def fresh_cache(server) -> None:
    """Make ComfyUI forget cached node outputs, so the next prompt recomputes everything."""
    server.post("/free", {"free_memory": True})
    time.sleep(0.5)


def basic(length: int = 29, **sampler) -> dict:
    """A minimal text-to-video prompt on the tiny models: embeddings -> sampler -> SaveLatent."""
    wf = tiny(api(FULL_CACHE), {"6": length})
    wf["4"]["inputs"]["mode"] = "kv_pool"
    wf["6"]["inputs"].update(sampler)
    del wf["7"]
    wf["8"] = save_latent(["6", 0], "pf/basic")
    return wf


# ----------------------------------------------------------------------------- tests

def test_object_info_lists_every_node_with_types_and_tooltips(server):
    info = server.object_info()
    for node_id, (outputs, inputs) in PACK_NODES.items():
        assert node_id in info, f"{node_id} missing from /object_info; log:\n{server.log_tail()}"
        node = info[node_id]
        assert node["output"] == outputs and node["category"] == "PackForcing"
        declared = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert set(declared) == set(inputs), node_id
        for name, (kind, options) in declared.items():
            assert (kind if isinstance(kind, str) else "COMBO") == inputs[name], (node_id, name, kind)
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["PackForcingSampler"]["input"]["optional"].keys() == {"start_image", "start_latent", "save_video",
                                                                      "filename_prefix", "vae", "live_playback",
                                                                      "clip", "decode_device"}
    assert info["PackForcingSaveVideo"]["output_node"] is True
    assert DIT in info["PackForcingModelLoader"]["input"]["required"]["dit_name"][1]["options"]
    assert "packforcing" in server.get("/models")


def test_text_to_video_workflow_writes_a_playable_video(server):
    wf = tiny(api(T2V_2MIN), {"6": 93})            # 24 latent frames: the mid bank fills
    entry = server.run(wf)
    (video,) = files(server, entry, ".mp4")
    assert video_info(video) == (93, SIZE, SIZE, "h264")
    report = entry["outputs"]["6"]["packforcing"][0]
    assert report["frames"] == 93 and len(report["mid"]) == 4 and report["sink"] == [0, 4]
    assert not list(video.parent.glob(".*.partial")), "temporary file left behind"


def test_full_cache_workflow(server):
    entry = server.run(tiny(api(FULL_CACHE), {"6": 29}))
    (video,) = files(server, entry, ".mp4")
    assert video_info(video)[:3] == (29, SIZE, SIZE)
    assert entry["outputs"]["6"]["packforcing"][0]["mid"] == []


def test_continue_workflow_first_segment_is_bit_identical_to_running_it_alone(server):
    wf = tiny(api(CONTINUE), {"6": 29, "8": 32})   # 8 + 8 latent frames
    wf["20"], wf["21"] = save_latent(["6", 0], "pf/segment1"), save_latent(["8", 0], "pf/continued")
    alone = {k: wf[k] for k in ("2", "3", "4", "5", "6")} | {"20": wf["20"]}
    first = latent_of(server, server.run(alone), "20")
    fresh_cache(server)
    entry = server.run(wf)
    (video,) = files(server, entry, ".mp4")
    assert video_info(video)[0] == 4 * 16 - 3
    segment1, continued = latent_of(server, entry, "20"), latent_of(server, entry, "21")
    assert first.shape[2] == 8 and continued.shape[2] == 16
    assert torch.equal(segment1, first) and torch.equal(continued[:, :, :8], first)
    assert not torch.equal(continued[:, :, 8:], continued[:, :, :8])


def chunks_kept(ws, prompt_id: str | None = None) -> list[int]:
    """Latent frames done after each chunk the sampler committed, from the pack's own live-view messages
    (one per chunk; ComfyUI 0.33 throttles its progress messages, so those cannot be counted)."""
    return [m["data"]["frames_done"] for m in ws.of_type("packforcing.progress", prompt_id)
            if m["data"].get("phase") == "chunk_done"]


def resume_files(server) -> list[Path]:
    return sorted((server.output_dir / "packforcing").glob("resume-*.safetensors"))


def saved_latents(path: Path) -> torch.Tensor:
    """The VAE-space latents a resume file holds (stored as the DiT sees them)."""
    with safe_open(str(path), "pt") as f:
        return denormalize_latent(f.get_tensor("latents"))


def test_interrupt_stops_within_a_step_and_resume_is_bit_identical(server):
    wf = tiny(api(FULL_CACHE), {"6": 16 * 12 - 3}, dit=SLOW_DIT)     # 12 chunks x 5 passes
    wf["4"]["inputs"]["mode"] = "kv_pool"
    wf["6"]["inputs"].update(width=256, height=256, seed=7)
    del wf["7"]
    wf["8"] = save_latent(["6", 0], "pf/interrupt")
    with server.ws_messages() as ws:
        prompt_id = server.queue(wf)
        ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("phase") == "chunk_done"
                    and m["data"]["chunk"] >= 2, timeout=120)
        at_interrupt = chunks_kept(ws, prompt_id)[-1]
        server.interrupt()
        ws.wait_done(prompt_id, timeout=60)
        assert ws.of_type("execution_interrupted", prompt_id), "the run was not interrupted"
        kept = chunks_kept(ws, prompt_id)[-1]
    saved = resume_files(server)
    assert len(saved) == 1, "the finished chunks were not saved"
    partial = saved_latents(saved[0])
    assert partial.shape[2] == kept, "the resume file does not hold every finished chunk"
    # the chunk running when /interrupt came may have been kept if the message was slow; no more
    assert kept <= at_interrupt + 4, f"{(kept - at_interrupt) // 4} more chunks ran after /interrupt"
    assert kept < 48

    assert server.run(basic(13))  # the server still serves

    wf["6"]["inputs"]["resume"] = True
    with server.ws_messages() as ws:
        resumed_entry = server.run(wf)
        resumed = chunks_kept(ws)
    assert resumed == list(range(kept + 4, 49, 4)), "the resumed run did not go on from the saved chunks"
    assert not saved[0].exists(), "the resume file outlived its successful run"
    wf["6"]["inputs"]["resume"] = False
    fresh_cache(server)
    uninterrupted = latent_of(server, server.run(wf), "8")
    assert torch.equal(latent_of(server, resumed_entry, "8"), uninterrupted)
    assert torch.equal(partial, uninterrupted[:, :, :kept])


def test_cancel_is_checked_at_every_forward_pass_however_long_the_video(server):
    """ComfyUI 0.33 runs its progress hook, and so its own interrupt check, at most every 0.5% of the
    total: on this 3600-chunk video every 90 passes (18 chunks). The sampler must check at every pass."""
    wf = basic(16 * 3600 - 3, width=128, height=128, seed=11)
    with server.ws_messages() as ws:
        prompt_id = server.queue(wf)
        ws.wait_for(lambda m: m.get("type") == "progress" and m["data"].get("node") == "6", timeout=120)
        server.interrupt()      # right after ComfyUI's first progress hook call of the run (pass 1)
        ws.wait_done(prompt_id, timeout=120)
        assert ws.of_type("execution_interrupted", prompt_id), "the run was not interrupted"
        kept = chunks_kept(ws, prompt_id)
    saved = resume_files(server)
    try:
        assert len(kept) <= 3, f"{len(kept)} chunks were finished after /interrupt came during the first one"
        assert [saved_latents(p).shape[2] for p in saved] == kept[-1:], "the resume file does not hold what ran"
    finally:
        for p in saved:
            p.unlink()


def test_cancelled_save_video_leaves_no_file_and_stops_within_a_chunk(server):
    wf = tiny(api(FULL_CACHE), {"6": 4 * 12 - 3})
    wf["4"]["inputs"]["mode"] = "none"
    wf["6"]["inputs"].update(width=128, height=128)           # 3 decode chunks of ~1 s
    wf["7"]["inputs"]["filename_prefix"] = "pf_cancel/video"
    with server.ws_messages() as ws:
        prompt_id = server.queue(wf)
        ws.wait_for(lambda m: m.get("type") == "progress" and m["data"].get("node") == "7", timeout=120)
        server.interrupt()
        ws.wait_done(prompt_id, timeout=60)
        assert ws.of_type("execution_interrupted", prompt_id), "the save was not interrupted"
        decoded = [m["data"] for m in ws.of_type("progress", prompt_id) if m["data"]["node"] == "7"]
    assert decoded[-1]["value"] < decoded[-1]["max"]
    folder = server.output_dir / "pf_cancel"
    assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


@pytest.mark.parametrize("case", ["non_wan_model", "not_umt5", "non_wan_vae", "width", "length_static",
                                  "length_new_video", "cache_too_big", "hr_without_weights", "lr_without_vae",
                                  "other_model_state", "other_size_state", "sink_change"])
def test_bad_inputs_yield_clear_messages(server, case):
    wf, expect = bad_input(case)
    message = error_of(server, wf)
    print(f"{case}: {message}")
    for part in expect:
        assert part in message, f"{case}: {part!r} not in {message!r}"


def bad_input(case: str) -> tuple[dict, list[str]]:
    wf = basic()
    if case == "non_wan_model":
        wf["3"]["inputs"]["dit_name"] = NOT_WAN
        return wf, ["dit_name", "Stable Diffusion", "not a Wan2.1 text-to-video DiT"]
    if case == "not_umt5":
        wf["2"] = load_prompt(CLIP_L_PROMPT)
        return wf, ["positive", "width 768", "umt5"]
    if case == "non_wan_vae":
        wf["5"]["inputs"]["vae_name"] = "pixel_space"
        wf["9"] = {"class_type": "PackForcingDecode", "inputs": {"samples": ["6", 0], "vae": ["5", 0]}}
        wf["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}
        return wf, ["vae", "not a Wan2.1 VAE", "wan_2.1_vae.safetensors"]
    if case == "width":
        wf["6"]["inputs"]["width"] = 70
        return wf, ["width: 70 is not a multiple of 16", "use 64 or 80"]
    if case == "length_static":
        wf["6"]["inputs"]["length"] = 30
        return wf, ["length", "29 (1.81 s) or 45 (2.81 s)"]
    if case == "length_new_video":           # valid when continuing, not for a new video
        wf["6"]["inputs"]["length"] = 32
        return wf, ["length", "4T-3", "29", "45"]
    if case == "cache_too_big":
        wf["4"]["inputs"]["mode"] = "full"
        wf["6"]["inputs"].update(width=4096, height=4096, length=4 * 4000 - 3)
        return wf, ["cache", "full PackedCache", "is free", "bounded mode"]
    if case == "hr_without_weights":
        wf["4"]["inputs"]["mode"] = "hr_lr"
        wf["6"]["inputs"]["vae"] = ["5", 0]
        return wf, ["needs trained compressor weights", "kv_pool"]
    if case == "lr_without_vae":
        wf["4"]["inputs"]["mode"] = "lr"
        del wf["6"]["inputs"]["vae"]
        return wf, ["vae", "re-encodes history with the VAE"]
    if case in ("other_model_state", "other_size_state", "sink_change"):
        wf["11"] = {"class_type": "PackForcingModelLoader",
                    "inputs": {"dit_name": OTHER_DIT if case == "other_model_state" else DIT, "dtype": "fp32"}}
        cache = ["6", 1]
        if case == "sink_change":
            wf["12"] = {"class_type": "PackForcingSetCacheSizes",
                        "inputs": {"cache": ["6", 1], "sink_seconds": 2.0, "recent_seconds": 1.0, "mid_blocks": 16,
                                   "top_k": 14}}
            cache = ["12", 0]
        wf["13"] = {"class_type": "PackForcingSampler", "inputs": dict(wf["6"]["inputs"], model=["11", 0],
                                                                       cache=cache, length=16)}
        if case == "other_size_state":
            wf["13"]["inputs"].update(width=SIZE + 16)
        wf["14"] = save_latent(["13", 0], "pf/bad")
        expect = {"other_model_state": ["cache", "another model"],
                  "other_size_state": ["cache", "64x64 video", "width 64"],
                  "sink_change": ["sink_seconds", "cannot change"]}[case]
        return wf, expect
    raise AssertionError(case)


@pytest.mark.parametrize("mode", ["lr", "hr_lr"])
def test_vae_and_trained_compressor_modes_run(server, mode):
    """lr (training-free Pool > VAE > Patch) and hr_lr (trained weights from models/packforcing) fill the mid bank."""
    wf = basic(45)
    wf["4"]["inputs"]["mode"] = mode
    if mode == "hr_lr":
        options = server.object_info("PackForcingModelLoader")["PackForcingModelLoader"]["input"]["optional"]
        assert COMPRESSOR in options["compressor"][1]["options"]
        wf["3"]["inputs"]["compressor"] = COMPRESSOR
    entry = server.run(wf)
    report = entry["outputs"]["6"]["packforcing"][0]
    assert report["latent_frames"] == 12 and len(report["mid"]) == 1
    assert torch.isfinite(latent_of(server, entry, "8")).all()


def test_set_sizes_between_samplers_continues_the_video(server):
    wf = basic(29)
    wf["12"] = {"class_type": "PackForcingSetCacheSizes",
                "inputs": {"cache": ["6", 1], "sink_seconds": 1.0, "recent_seconds": 0.25, "mid_blocks": 1,
                           "top_k": 1}}
    wf["13"] = {"class_type": "PackForcingSampler", "inputs": dict(wf["6"]["inputs"], cache=["12", 0], length=32)}
    wf["14"] = save_latent(["13", 0], "pf/resized")
    entry = server.run(wf)
    report = entry["outputs"]["13"]["packforcing"][0]
    assert report["latent_frames"] == 16 and len(report["mid"]) == 1 and report["recent"][1] - report["recent"][0] <= 4
    assert torch.equal(latent_of(server, entry, "14")[:, :, :8], latent_of(server, entry, "8"))


def test_model_from_native_model_matches_the_pack_loader(server):
    wf = basic(29)
    wf["15"] = {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}}
    wf["16"] = {"class_type": "PackForcingModelFromMODEL", "inputs": {"model": ["15", 0]}}
    wf["17"] = {"class_type": "PackForcingSampler", "inputs": dict(wf["6"]["inputs"], model=["16", 0])}
    wf["18"] = save_latent(["17", 0], "pf/native")
    entry = server.run(wf)
    torch.testing.assert_close(latent_of(server, entry, "18"), latent_of(server, entry, "8"), rtol=0, atol=1e-5)


def test_streaming_decode_matches_native_vae_decode(server):
    wf = basic(13)
    wf["5"] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE}}
    wf["9"] = {"class_type": "PackForcingDecode", "inputs": {"samples": ["6", 0], "vae": ["5", 0]}}
    wf["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["5", 0]}}
    wf["11"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "pf/ours"}}
    wf["12"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "pf/native"}}
    entry = server.run(wf)
    frames = lambda tag: np.stack([np.asarray(Image.open(p)) for p in sorted(files(server, entry, ".png"))
                                   if p.name.startswith(tag)]).astype(int)
    ours, native = frames("ours"), frames("native")
    assert ours.shape == native.shape == (13, SIZE, SIZE, 3)
    assert np.abs(ours - native).max() <= 1, "the LATENT is not in the native (raw VAE) space"


def test_prompt_embeddings_round_trip(server):
    save = {"1": load_prompt(PROMPTS[0]),
            "2": {"class_type": "PackForcingSavePromptEmbeddings",
                  "inputs": {"conditioning": ["1", 0], "filename_prefix": "pf_embeds/roundtrip",
                             "prompt_text": "a fox"}}}
    entry = server.run(save)
    text = entry["outputs"]["2"]["text"][0]
    saved = next((server.output_dir / "pf_embeds").glob("roundtrip_*.safetensors"))
    assert saved.name in text
    name = f"pf_embeds/{saved.name} [output]"
    node = server.object_info("PackForcingLoadPromptEmbeddings")["PackForcingLoadPromptEmbeddings"]
    assert name in node["input"]["required"]["embeddings"][1]["options"]
    assert torch.equal(load_file(str(saved))["prompt_embeds"], load_file(str(server.input_dir / PROMPTS[0]))["prompt_embeds"])
    assert server.run(basic(13) | {"2": load_prompt(name)})


def test_back_to_back_runs_do_not_grow_process_memory(server):
    rss = []
    for seed in range(4):
        server.run(basic(61, seed=100 + seed))
        rss.append(server.process_rss())
    growth = rss[-1] - rss[1]
    assert growth < 40 * 2 ** 20, f"RSS grew by {growth / 2 ** 20:.1f} MiB over runs: {rss}"


UI_WORKFLOWS = tuple(sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json")))     # every shipped workflow


def test_ui_workflows_load_in_the_frontend_and_match_their_api_twins(server, browser, artifacts_dir):
    """With the files the workflows load in input/ (as a user has them): Load Video then shows its clip, and
    its preview widget's value is part of the prompt the frontend queues."""
    write_example_inputs(server.input_dir)
    browser.open(server.url)
    browser.wait_for("() => window.app && window.app.graph && window.LiteGraph", timeout=90)
    registered = set(browser.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))
    for name in UI_WORKFLOWS:
        ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
        missing = {n["type"] for n in ui["nodes"]} - registered
        assert not missing, f"{name}: node types unknown to the frontend: {missing}"
        models = [m["name"] for n in ui["nodes"] for m in n["properties"].get("models", [])]
        assert set(models) == {"self_forcing_dmd.pt", "wan_2.1_vae.safetensors",
                               "umt5_xxl_fp8_e4m3fn_scaled.safetensors"}, name
        diff = differences(ui_to_api(browser, ui), api(name))
        assert diff == [], f"{name}: the UI workflow does not convert to workflows/api/{name}.json: {diff}"
        browser.screenshot(artifacts_dir / f"workflow_{name}.png")
    assert browser.page_errors == [], browser.page_errors


def test_file_inputs_stay_inside_the_allowed_folders(server, tmp_path):
    """Names from the API that point outside input/ / output/ / models/ are refused, with one message
    whether or not the outside file exists, and nothing outside is read."""
    outside = server.base_dir / "outside.safetensors"            # next to input/, not inside it
    save_prompt_embeds(str(outside), torch.randn(1, 8, 4096))
    (server.input_dir / "link_out.safetensors").unlink(missing_ok=True)
    (server.input_dir / "link_out.safetensors").symlink_to(outside)
    refusals = {}
    for name in (str(outside), str(tmp_path / "missing.safetensors"), "../outside.safetensors",
                 "../missing.safetensors", "link_out.safetensors", "/etc/passwd", "sub/../../outside.safetensors"):
        message = error_of(server, basic(13) | {"2": load_prompt(name)})
        assert "embeddings" in message and "pick one from the list" in message, (name, message)
        refusals[name] = message.replace(name, "<name>")
    assert len(set(refusals.values())) == 1, refusals              # existence outside is not revealed
    for node, field, folder in (("3", "dit_name", "diffusion_models"),):
        wf = basic(13)
        wf[node]["inputs"][field] = f"../../{DIT}"
        message = error_of(server, wf)    # ComfyUI versions that check V3 combos refuse it before the node
        assert field in message and (f"not a file of models/{folder}" in message or "not in list" in message), message
