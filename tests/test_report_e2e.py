"""The video report inside a real ComfyUI server: the PackForcing Video Report node on each of its
sources, Save Video's write_report, the shipped cache-comparison workflow on tiny random models,
and file names that must stay inside the input / output folders.

The synthetic clip is the one of tests/test_report.py with its motion stopped at a known second, so
every path through ComfyUI must report that second.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from packforcing_core.model.checkpoint import save_model
from packforcing_core.model.tiny import random_model, tiny_config
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.vae.model import WanVAE
from test_comfy_e2e import error_of
from test_report import FPS, clean, write_mp4
from tiny_workflows import COMPARE_CACHE, on_tiny_models

DIT, VAE, PROMPT = "pf_report_dit.safetensors", "pf_report_vae.safetensors", "pf_report_prompt.safetensors"
CLIP = "stopping.mp4"
STOP = 6                              # seconds: the clip's motion stops here
REPORT = "PackForcingVideoReport"


@pytest.fixture(scope="module")
def server(comfy_server):
    models = comfy_server.models_dir
    cfg = tiny_config(dim=128, num_heads=1, ffn_dim=256, num_layers=2, text_dim=4096, text_len=512, freq_dim=256)
    save_model(random_model(cfg, seed=1), str(models / "diffusion_models" / DIT))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()}, str(models / "vae" / VAE))
    save_prompt_embeds(str(comfy_server.input_dir / PROMPT), torch.randn(1, 8, 4096, generator=torch.Generator()))
    frames = list(clean(10))
    frames[STOP * FPS:] = [frames[STOP * FPS - 1]] * ((10 - STOP) * FPS)
    write_mp4(comfy_server.input_dir / CLIP, frames, FPS)
    assert comfy_server.custom_node_loaded(), comfy_server.log_tail()
    return comfy_server


def report_node(**inputs) -> dict:
    base = {"video_file": "none", "fps": float(FPS), "chunk_frames": 0, "switches": "", "label": ""}
    return {"class_type": REPORT, "inputs": base | inputs}


def with_outputs(node: dict) -> dict:
    """The report node plus text previews of its JSON and summary outputs (so the history holds them)."""
    return {"1": node, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}}


def run_report(server, prompt: dict) -> tuple[dict, str, Path]:
    entry = server.run(prompt)
    data = json.loads(entry["outputs"]["2"]["text"][0])
    summary = entry["outputs"]["3"]["text"][0]
    (plot,) = [p for p in server.output_files({"outputs": {"1": entry["outputs"]["1"]}}) if p.suffix == ".png"]
    return data, summary, plot


def test_node_is_listed_with_tooltips(server):
    info = server.object_info(REPORT)[REPORT]
    assert info["display_name"] == "PackForcing Video Report" and info["output_node"] is True
    assert info["output"] == ["IMAGE", "STRING", "STRING"]
    declared = {**info["input"]["required"], **info["input"]["optional"]}
    assert set(declared) == {"images", "video", "video_file", "fps", "chunk_frames", "switches", "label"}
    assert all(options.get("tooltip") for _, options in declared.values())
    assert CLIP in declared["video_file"][1]["options"]
    save = server.object_info("PackForcingSaveVideo")["PackForcingSaveVideo"]["input"]["optional"]
    assert save["write_report"][0] == "BOOLEAN" and save["write_report"][1]["default"] is False


def test_every_source_reports_the_stop_and_the_plot_shows_in_the_ui(server):
    summaries = {}
    data, summaries["file"], plot = run_report(server, with_outputs(report_node(
        video_file=CLIP, chunk_frames=1, switches="3.5", label="the stopping clip")))
    assert summaries["file"] == f"motion stopped at {STOP} s"
    assert data["summary"] == summaries["file"] and data["frames"] == 10 * FPS and data["switches"] == [3.5]
    assert data["chunk_boundaries"][:3] == [1, 5, 9]             # chunks of 1 latent frame: 4k - 3
    assert len(data["per_second"]["second"]) == 10
    assert plot.is_relative_to(server.base_dir / "temp") and Image.open(plot).size[0] == 1280    # a UI preview

    load = {"10": {"class_type": "LoadVideo", "inputs": {"file": CLIP}}}
    as_video = with_outputs(report_node(video=["10", 0])) | load
    _, summaries["video"], _ = run_report(server, as_video)
    parts = {"11": {"class_type": "GetVideoComponents", "inputs": {"video": ["10", 0]}}}
    as_images = with_outputs(report_node(images=["11", 0], fps=["11", 2])) | load | parts
    data_images, summaries["images"], _ = run_report(server, as_images)
    assert set(summaries.values()) == {f"motion stopped at {STOP} s"}, summaries
    assert data_images["per_second"]["still"] == data["per_second"]["still"]


def test_an_api_prompt_may_leave_video_file_out(server):
    """With images or video connected, video_file is not needed: a prompt without it runs the report,
    also beside another output (where ComfyUI would otherwise skip the report and answer 200)."""
    load = {"10": {"class_type": "LoadVideo", "inputs": {"file": CLIP}}}
    node = report_node(video=["10", 0], chunk_frames=1)
    del node["inputs"]["video_file"]
    other = {"20": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "21": {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}}
    prompt = with_outputs(node) | load | other
    entry = server.run(prompt)              # refused (node_errors) if the report were left out
    assert entry["outputs"]["3"]["text"][0] == f"motion stopped at {STOP} s"
    assert "21" in entry["outputs"]
    bare = {"class_type": REPORT, "inputs": {"video": ["10", 0]}}           # every widget at its default
    _, summary, _ = run_report(server, with_outputs(bare) | load)
    assert summary == f"motion stopped at {STOP} s"


def test_save_video_writes_the_report_beside_the_mp4(server):
    prompt = {
        "1": {"class_type": "PackForcingLoadPromptEmbeddings", "inputs": {"embeddings": PROMPT}},
        "2": {"class_type": "PackForcingModelLoader", "inputs": {"dit_name": DIT, "dtype": "fp32"}},
        "3": {"class_type": "PackForcingPackedCache", "inputs": {
            "mode": "kv_pool", "sink_seconds": 1.0, "recent_seconds": 1.0, "mid_blocks": 16, "top_k": 14,
            "selection": "affinity", "rope_adjust": True, "mid_bank": "cpu"}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "5": {"class_type": "PackForcingSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 0], "cache": ["3", 0], "width": 32, "height": 32, "length": 29,
            "seed": 3, "steps": "1000,750,500,250", "shift": 5.0, "chunk_frames": 4, "resume": False}},
        "6": {"class_type": "PackForcingSaveVideo", "inputs": {
            "samples": ["5", 0], "vae": ["4", 0], "filename_prefix": "pf_report/saved", "fps": 16.0, "codec": "h264",
            "crf": 19, "write_report": True}},
    }
    entry = server.run(prompt)
    (video,) = [p for p in server.output_files(entry) if p.suffix == ".mp4"]
    stem = video.name[:-len(".mp4")]
    written = sorted(p.name for p in video.parent.iterdir() if p.name != video.name)
    assert written == [f"{stem}.report.{ext}" for ext in ("csv", "json", "png")], written
    data = json.loads((video.parent / f"{stem}.report.json").read_text())
    assert data["frames"] == 29 and data["fps"] == 16 and data["chunk_boundaries"] == [13]   # chunks of 4: 13 + 16
    assert len((video.parent / f"{stem}.report.csv").read_text().splitlines()) == 1 + 2
    prompt["6"]["inputs"].update(write_report=False, filename_prefix="pf_report/plain")
    entry = server.run(prompt)
    assert [p.suffix for p in (server.output_dir / "pf_report").glob("plain*")] == [".mp4"]


def test_compare_cache_workflow_runs_both_settings_and_shows_both_reports(server):
    wf = on_tiny_models(COMPARE_CACHE, DIT, VAE, PROMPT,    # small: the tiny VAE decodes slowly
                        PackForcingSampler={"width": 32, "height": 32, "length": 29})
    samplers = [k for k, n in wf.items() if n["class_type"] == "PackForcingSampler"]
    caches = {wf[wf[s]["inputs"]["cache"][0]]["inputs"]["mode"] for s in samplers}
    assert caches == {"none", "kv_pool"}
    same = lambda s: {k: v for k, v in wf[s]["inputs"].items() if k not in ("cache", "filename_prefix")}
    assert len({json.dumps(same(s)) for s in samplers}) == 1
    saves = {n["inputs"]["samples"][0]: n["inputs"]["filename_prefix"] for n in wf.values()
             if n["class_type"] == "PackForcingSaveVideo"}
    assert {s: wf[s]["inputs"]["filename_prefix"] for s in samplers} == saves      # saved as it goes: one file
    entry = server.run(wf)
    reports = [k for k, n in wf.items() if n["class_type"] == REPORT]
    assert len(reports) == 2
    for k in reports:
        (plot,) = server.output_files({"outputs": {k: entry["outputs"][k]}})
        assert Image.open(plot).size[0] == 1280
    videos = [p for p in server.output_files(entry) if p.suffix == ".mp4"]
    assert len(videos) == 2


def test_file_names_outside_the_folders_are_refused_alike(server):
    """Absolute paths, `..`, NUL and links out are refused with one message whether or not the
    target exists; nothing outside is read."""
    outside = server.base_dir / "outside.mp4"
    write_mp4(outside, [np.zeros((64, 96, 3), np.uint8)] * 8, FPS)
    link = server.input_dir / "link_out.mp4"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    refusals = {}
    for name in (str(outside), str(server.base_dir / "missing.mp4"), "../outside.mp4", "../missing.mp4",
                 "link_out.mp4", "sub/../../outside.mp4", "a\0.mp4", "../outside.mp4 [output]"):
        message = error_of(server, with_outputs(report_node(video_file=name)))
        assert "video_file" in message, (name, message)
        refusals[name] = message.replace(json.dumps(name)[1:-1], "<name>").replace(name, "<name>")
    assert len(set(refusals.values())) == 1, refusals


@pytest.mark.parametrize("case", ["no_source", "two_sources", "switches", "not_a_video"])
def test_bad_inputs_are_named(server, case):
    if case == "no_source":
        prompt, expect = with_outputs(report_node()), ["images", "exactly one", "got none"]
    elif case == "two_sources":
        prompt = with_outputs(report_node(video=["10", 0], video_file=CLIP)) | {
            "10": {"class_type": "LoadVideo", "inputs": {"file": CLIP}}}
        expect = ["exactly one", "video, video_file"]
    elif case == "switches":
        prompt, expect = with_outputs(report_node(video_file=CLIP, switches="5, soon")), ["switches", "seconds"]
    else:
        (server.input_dir / "broken.mp4").write_bytes(b"not a video")
        prompt, expect = with_outputs(report_node(video_file="broken.mp4")), ["video_file", "cannot be opened"]
    message = error_of(server, prompt)
    for part in expect:
        assert part in message, (case, message)
