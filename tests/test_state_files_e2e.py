"""The files behind a sampler, through real ComfyUI servers: a PACKED_CACHE output stays usable as long
as ComfyUI keeps it (here with --cache-lru, which keeps several outputs per node) or makes ComfyUI
run its sampler again; progress survives a killed server; temporaries of killed writes are removed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from comfy_harness import ComfyServer
from packforcing_core.model.checkpoint import save_model
from packforcing_core.model.tiny import random_model
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.vae.model import WanVAE
from test_comfy_e2e import PROMPTS, SLOW_DIT, VAE, api, basic, latent_of, save_latent, server, tiny, \
    tiny_dit_config  # noqa: F401  (server: the fixture)
from tiny_workflows import FULL_CACHE

COMFY_SERVER_OPTIONS = {"extra_args": ["--cache-lru", "20"]}


def two_samplers(seed: int, more: int) -> dict:
    """A video (seed `seed`, 8 latent frames), then a second sampler continuing it by `more` frames."""
    wf = basic(29, seed=seed)
    wf["13"] = {"class_type": "PackForcingSampler", "inputs": dict(wf["6"]["inputs"], cache=["6", 1], length=more)}
    wf["14"] = save_latent(["13", 0], "pf/continued")
    return wf


def test_a_packed_cache_stays_usable_while_comfyui_keeps_it(server):
    """Seed 1, seed 2, seed 1 again with another continuation: ComfyUI (LRU) still holds the first
    sampler's seed-1 output, whose state file the seed-2 run replaced. Then temp/ is emptied, as a
    second ComfyUI on the same base directory does when it starts."""
    temp = server.base_dir / "temp" / "packforcing"
    first = latent_of(server, server.run(two_samplers(1, 16)), "8")
    server.run(two_samplers(2, 16))
    again = server.run(two_samplers(1, 32))
    assert torch.equal(latent_of(server, again, "14")[:, :, :8], first)
    for path in temp.iterdir():
        path.unlink()
    entry = server.run(two_samplers(2, 48))
    assert latent_of(server, entry, "14").shape[2] == 8 + 12
    assert len(list(temp.glob("state-*.safetensors"))) == 2, "disk holds one state per sampler node"


def populate(server: ComfyServer) -> None:
    """The files the slow workflow needs, identical to test_comfy_e2e's (the run's key hashes them)."""
    models = server.models_dir
    save_model(random_model(tiny_dit_config(layers=4), seed=3), str(models / "diffusion_models" / SLOW_DIT))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()}, str(models / "vae" / VAE))
    g = torch.Generator().manual_seed(0)
    save_prompt_embeds(str(server.input_dir / PROMPTS[0]), torch.randn(1, 8, 4096, generator=g))


def slow_run(resume: bool = False) -> dict:
    wf = tiny(api(FULL_CACHE), {"6": 16 * 8 - 3}, dit=SLOW_DIT)     # 8 chunks of 4 latent frames
    wf["4"]["inputs"]["mode"] = "kv_pool"
    wf["6"]["inputs"].update(width=128, height=128, seed=5, resume=resume)
    del wf["7"]
    wf["8"] = save_latent(["6", 0], "pf/killed")
    return wf


def saved_frames(path) -> int:
    with safe_open(str(path), "pt") as f:
        return f.get_slice("latents").get_shape()[2]


def test_progress_survives_a_killed_server_and_stale_temporaries_are_removed(server):
    """Server A saves progress every chunk (PACKFORCING_AUTOSAVE_SECONDS=0) and is killed with SIGKILL
    mid-run. Server B, on the same output folder, removes the temporaries of dead writers at start-up
    and resumes the run from the saved chunks, bit-identical to an uninterrupted run. (`server` only
    makes the test skip where ComfyUI is missing; A and B are servers of their own.)"""
    env = {"PACKFORCING_AUTOSAVE_SECONDS": "0"}
    a = ComfyServer(env=env)
    b = None
    try:
        a.start()
        populate(a)
        with a.ws_messages() as ws:
            a.queue(slow_run())
            ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("phase") == "chunk_done"
                        and m["data"]["frames_done"] >= 8, timeout=180)
            os.killpg(a.proc.pid, signal.SIGKILL)
            a.proc.wait(timeout=30)
        folder = a.output_dir / "packforcing"
        (saved,) = folder.glob("resume-*.safetensors")
        kept = saved_frames(saved)
        assert 4 <= kept < 32
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        stale = folder / f"{saved.name}.tmp-{dead}"
        stale.write_bytes(b"half a file")
        busy = folder / f"resume-other.safetensors.tmp-{os.getpid()}"      # a live writer's: kept
        busy.write_bytes(b"being written")

        b = ComfyServer(env=env, extra_args=["--output-directory", str(a.output_dir)])
        b.start()
        populate(b)
        assert not stale.exists(), "a temporary of a killed write survived the start-up"
        assert busy.exists()
        busy.unlink()
        with b.ws_messages() as ws:
            resumed = b.run(slow_run(resume=True), timeout=600)
            chunks = [m["data"]["frames_done"] for m in ws.of_type("packforcing.progress")
                      if m["data"].get("phase") == "chunk_done"]
        assert chunks == list(range(kept + 4, 33, 4)), "the run did not go on from the saved progress"
        assert not saved.exists(), "the resume file outlived its successful run"
        whole = b.run(slow_run(), timeout=600)         # B writes into A's output folder
        assert torch.equal(latent_of(a, resumed, "8"), latent_of(a, whole, "8"))
    finally:
        if b is not None:
            b.stop()
        a.stop()
