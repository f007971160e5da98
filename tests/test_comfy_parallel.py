"""The loader's `gpus` option through a real ComfyUI server on the CPU: the pack's worker processes
(gloo) give the latent of one process; cancel stops them within a pass and the saved progress resumes;
a killed worker is a clear error, not a hang; unloading the model stops them."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import ComfyServer
from packforcing_core.model.checkpoint import save_model
from packforcing_core.model.tiny import random_model, tiny_config
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.vae.model import WanVAE
from test_comfy_e2e import api, chunks_kept, error_of, fresh_cache, latent_of, resume_files, save_latent, tiny
from tiny_workflows import FULL_CACHE

DIT6, SLOW6, VAE, PROMPT = "pf_six_heads.safetensors", "pf_six_heads_slow.safetensors", "pf_vae.safetensors", \
    "pf_prompt_a.safetensors"


def six_heads(layers: int):
    """Heads that split over 2 or 3 processes, as Wan2.1's 12 split over 2, 3, 4 or 6."""
    return tiny_config(dim=96, num_heads=6, ffn_dim=192, num_layers=layers, text_dim=4096, text_len=512, freq_dim=256)


@pytest.fixture(scope="module")
def server(comfy_server):
    models = comfy_server.models_dir
    save_model(random_model(six_heads(2), seed=1), str(models / "diffusion_models" / DIT6))
    save_model(random_model(six_heads(4), seed=3), str(models / "diffusion_models" / SLOW6))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()}, str(models / "vae" / VAE))
    save_prompt_embeds(str(comfy_server.input_dir / PROMPT), torch.randn(1, 8, 4096, generator=torch.Generator()
                                                                         .manual_seed(0)))
    assert comfy_server.custom_node_loaded(), comfy_server.log_tail()
    return comfy_server


def video(gpus: int, length: int, dit: str = DIT6, size: int = 64, more: int = 0, **sampler) -> dict:
    """Embeddings -> sampler (kv_pool) [-> a second sampler continuing by `more` frames] -> SaveLatent."""
    wf = tiny(api(FULL_CACHE), {"6": length}, dit=dit)
    wf["3"]["inputs"]["gpus"] = gpus
    wf["4"]["inputs"].update(mode="kv_pool", sink_seconds=0.5, recent_seconds=0.5, mid_blocks=3, top_k=1)
    wf["5"]["inputs"]["vae_name"] = VAE
    wf["6"]["inputs"].update(width=size, height=size, chunk_frames=2, **sampler)
    del wf["7"]
    wf["8"] = save_latent(["6", 0], "pf/gpus")
    if more:
        wf["9"] = {"class_type": "PackForcingSampler", "inputs": dict(wf["6"]["inputs"], cache=["6", 1], length=more)}
        wf["10"] = save_latent(["9", 0], "pf/gpus_more")
    return wf


def workers(server) -> list[int]:
    """PIDs of the pack's worker processes: the server's children started by multiprocessing's spawn."""
    pids = []
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in pids if b"spawn_main" in _read(f"/proc/{p}/cmdline")]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def cpu_ticks(pid: int) -> int:
    fields = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()
    return int(fields[11]) + int(fields[12])            # utime + stime


def wait_until(what, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return False


def test_two_gpus_give_the_latent_of_one_and_unloading_stops_the_worker(server):
    """A video and its continuation by a second sampler (its state file loaded on both processes)."""
    one = server.run(video(1, 29, more=16))
    assert workers(server) == []
    two = server.run(video(2, 29, more=16))
    (pid,) = workers(server)
    for node in ("8", "10"):
        torch.testing.assert_close(latent_of(server, two, node), latent_of(server, one, node), atol=1e-5, rtol=0)
    assert server.run(video(2, 13, seed=3)) and workers(server) == [pid], "the worker is kept between runs"
    server.post("/free", {"unload_models": True, "free_memory": True})
    assert wait_until(lambda: not workers(server), 30), "the worker outlived the unloaded model"


def test_a_head_count_that_does_not_split_is_refused(server):
    assert ("gpus: the DiT has 6 attention heads, which do not split evenly over 4 GPUs (each GPU computes whole "
            "heads): use 1, 2, 3 or 6 GPUs") in error_of(server, video(4, 13))


def slow(gpus: int, **sampler) -> dict:
    return video(gpus, 8 * 12 - 3, dit=SLOW6, size=256, **{"seed": 7, **sampler})   # 12 chunks of 2 x 5 passes


def test_cancel_stops_the_worker_and_the_progress_resumes(server):
    with server.ws_messages() as ws:
        prompt_id = server.queue(slow(2))
        ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("phase") == "chunk_done"
                    and m["data"]["chunk"] >= 1, timeout=300)
        server.interrupt()
        ws.wait_done(prompt_id, timeout=120)
        assert ws.of_type("execution_interrupted", prompt_id), "the run was not interrupted"
        kept = chunks_kept(ws, prompt_id)[-1]
    (pid,) = workers(server)
    ticks = cpu_ticks(pid)
    time.sleep(1.5)
    assert cpu_ticks(pid) - ticks <= 5, "the worker still computes after the cancel"
    (saved,) = resume_files(server)                      # both processes' heads, in one file
    resumed = server.run(slow(2, resume=True), timeout=600)
    assert not saved.exists()
    fresh_cache(server)
    whole = server.run(slow(1), timeout=600)
    assert kept < 24
    torch.testing.assert_close(latent_of(server, resumed, "8"), latent_of(server, whole, "8"), atol=1e-5, rtol=0)


def test_a_killed_worker_is_a_clear_error_not_a_hang(server):
    with server.ws_messages() as ws:
        prompt_id = server.queue(slow(2, seed=8))
        ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("phase") == "chunk_done",
                    timeout=300)
        (pid,) = workers(server)
        os.kill(pid, signal.SIGKILL)
        ws.wait_done(prompt_id, timeout=60)
    status = server.wait(prompt_id, timeout=10)["status"]
    (error,) = [data for kind, data in status["messages"] if kind == "execution_error"]
    assert f"GPU worker 1 (pid {pid}) was killed by signal 9" in error["exception_message"]
    assert "start again with the next run" in error["exception_message"]
    for p in resume_files(server):
        p.unlink()
    assert server.run(video(2, 13, seed=5)) and len(workers(server)) == 1, "the next run did not restart it"


def test_the_workers_exit_with_a_killed_server(server):
    """SIGKILL leaves no exit handler to run: the workers see their pipe to the server close and exit.
    (`server` only makes the test skip where ComfyUI is missing; this one has a server of its own.)"""
    own = ComfyServer()
    try:
        own.start()
        for folder, name in (("diffusion_models", DIT6), ("vae", VAE)):
            shutil.copy(server.models_dir / folder / name, own.models_dir / folder / name)
        shutil.copy(server.input_dir / PROMPT, own.input_dir / PROMPT)
        own.run(video(2, 13))
        (pid,) = workers(own)
        os.kill(own.proc.pid, signal.SIGKILL)           # the server alone, not its process group
        own.proc.wait(timeout=30)
        assert Path(f"/proc/{pid}").exists()
        assert wait_until(lambda: not Path(f"/proc/{pid}").exists() or b"spawn_main" not in _read(f"/proc/{pid}/cmdline")
                          or _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()[0] == b"Z", 30), \
            "the worker outlived its server"
    finally:
        own.stop()
