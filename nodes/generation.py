"""One sampler run: load the DiT to the device, start / continue / resume the Generation, loop with
progress and cancel, keep the result in a state file.

State files: the PACKED_CACHE output refers to temp/packforcing/state-<key>.safetensors; the
progress of an unfinished run (on cancel, error, and every few minutes while it runs) goes to
output/packforcing/resume-<key>.safetensors, where the key hashes every input of the run but the
prompt schedule's switches (the file records them: a resume must keep those its chunks went through,
later ones may change). How they stay bounded and trusted: state_files.py.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.utils
import latent_preview

from ..packforcing_core.cache.compressor import make_compressor
from ..packforcing_core.cache.config import Geometry, plan
from ..packforcing_core.cache.packed import PackedCache
from ..packforcing_core.sampling.noise import SeededNoise
from ..packforcing_core.sampling.prompt_schedule import schedule_record
from ..packforcing_core.sampling.sampler import Generation
from ..packforcing_core.sampling.state import StateError, check_settings, load_state
from ..packforcing_core.vae.latents import denormalize_latent
from .common import free_bytes, gib, host_free_bytes, releasing_memory, work_dir
from .directing import prompt_schedule
from .progress import LiveView
from .request import Request
from .resize import apply_sizes
from .spec import InputError, PackedCacheSpec
from .streaming import LiveVideo
from .state_files import Autosave, drop_progress, keep_state, note_video, noted_video, resume_from, save_progress, \
    state_gone
from . import steering
from .vae_bridge import wan_vae_on_device
from .video_out import remember_video

log = logging.getLogger("packforcing")



def memory_plan(mc, dtype: torch.dtype, req: Request) -> tuple[int, dict]:
    """(bytes the run needs on the model's device, packforcing_core.cache.config.plan of the cache)."""
    lh, lw = req.latent_hw
    geo = Geometry(mc.num_layers, mc.num_heads, mc.head_dim, lh // mc.patch[1], lw // mc.patch[2],
                   req.chunk_frames, req.prompt.shape[0])
    p = plan(req.spec.config, geo, dtype.itemsize, total_frames=req.target)
    chunk_tokens = req.chunk_frames * geo.frame_tokens * geo.batch
    return p["device_bytes"] + mc.activation_bytes(chunk_tokens), p


# ----------------------------------------------------------------------------- the run

def _start(dit, req: Request, compressor, resume_path: str | None, prompts) -> Generation:
    """A new Generation, the video of the input cache, or the progress saved by an interrupted run."""
    spec = req.spec
    noise = SeededNoise(req.seed)
    if resume_path and os.path.isfile(resume_path):
        return resume_from(resume_path, dit, compressor, req, noise, prompts)
    if not spec.started:
        cache = PackedCache(spec.config, compressor)
        lh, lw = req.latent_hw
        return Generation(dit, cache, lh, lw, seed=req.seed, chunk_frames=req.chunk_frames,
                          schedule=req.schedule, batch=req.prompt.shape[0], noise=noise)
    if not os.path.isfile(spec.state_path):
        raise state_gone(spec.state_path)
    try:
        check_settings(spec.state_path, width=req.width, height=req.height, chunk_frames=req.chunk_frames)
        gen = load_state(spec.state_path, dit, compressor, spec.resized_from or spec.config, noise=noise)
    except StateError as e:
        raise InputError("cache", str(e)) from e
    gen.seed, gen.schedule = req.seed, req.schedule
    if gen.batch != req.prompt.shape[0]:
        raise InputError("positive", f"batch {req.prompt.shape[0]} but the video in the cache has batch {gen.batch}")
    return gen


class Progress:
    """One ProgressBar step per forward pass (steps + commit per chunk), then ComfyUI's interrupt check:
    the bar's hook also checks, but ComfyUI 0.33 calls it at most every 0.5% of the total, which is
    dozens of passes on a long video. A latent preview of the last frame of every finished chunk, when
    previews are on. The live view of the frontend (progress.LiveView) gets every pass first."""

    def __init__(self, gen: Generation, new_frames: int, device, node_id: str | None = None):
        chunks = -(-new_frames // gen.chunk_frames)
        self.per_chunk = len(gen.schedule.steps) + 1
        self.bar = comfy.utils.ProgressBar(chunks * self.per_chunk)
        self.gen = gen
        self.previewer = latent_preview.get_previewer(device, comfy.latent_formats.Wan21())
        self.live = LiveView(gen, new_frames, node_id)

    def __call__(self, chunk: int, step: int, steps: int) -> None:
        self.live(chunk, step, steps)
        preview = None
        if step == steps - 1 and self.previewer is not None:     # the chunk is committed and kept
            preview = self.previewer.decode_latent_to_preview_image("JPEG", self.gen.latents[-1][:, :, -1:])
        self.bar.update_absolute(self.bar.current + 1, preview=preview)
        comfy.model_management.throw_exception_if_processing_interrupted()


def run(model, req: Request, vae, node_id: str | None, resume: bool, live: LiveVideo | None = None, clip=None):
    """Returns (raw VAE-space latent of the whole video, PACKED_CACHE spec, timeline for the UI).
    live: also decode the video as it is generated, with the vae, to its file (created already) and/or
    the live player. clip: encodes prompts typed while the run plays (steering.py)."""
    with releasing_memory():
        need, p = memory_plan(model.config, model.dtype, req)
        with model.on_device(need) as dit:
            _refuse_if_too_big(need, p, req, model.load_device)
            rekey = lambda r: r.key(dit, model.compressor_path)
            key = rekey(req)
            resume_path = os.path.join(work_dir("output"),
                                       f"resume-{req.resume_key(dit, model.compressor_path)}.safetensors")
            with compressor_for(req.spec.config.mode, dit, vae, model.compressor_path) as compressor:
                return _generate(dit, req, compressor, key, resume_path, resume, node_id, vae, live, (clip, rekey))


def _refuse_if_too_big(need: int, p: dict, req: Request, device: torch.device) -> None:
    free = free_bytes(device)
    if need > free:
        cfg = req.spec.config
        hint = _memory_hint(req)
        raise InputError("cache", f"the {cfg.mode} PackedCache for {req.width}x{req.height}, "
                                  f"{req.target} latent frames needs {gib(need)} on {device} (K/V "
                                  f"{gib(p['device_bytes'])} + activations) but only {gib(free)} is free: {hint}")
    if req.spec.config.bank_device == "cpu" and device.type != "cpu" and p["bank_bytes"] > host_free_bytes():
        raise InputError("cache", f"the mid bank needs {gib(p['bank_bytes'])} of host memory but only "
                                  f"{gib(host_free_bytes())} is free: lower the mid capacity")


def _memory_hint(req: Request) -> str:
    cfg = req.spec.config
    if cfg.mode == "full":
        return "full keeps every frame, so its cache grows with the length: use a bounded mode (kv_pool) for long videos"
    return "lower sink / recent seconds, the mid capacity, or width and height" + (
        "" if cfg.bank_device == "cpu" else ", or set mid bank to cpu")


@contextmanager
def compressor_for(mode: str, dit, vae, weights: str | None):
    """make_compressor, with the VAE on the device for the modes that re-encode history (lr, hr_lr)."""
    with wan_vae_on_device(vae) if mode in ("lr", "hr_lr") and vae is not None else nullcontext() as wan:
        try:
            compressor = make_compressor(mode, dit, vae=wan, weights=weights)
        except (ValueError, FileNotFoundError) as e:
            name = "vae" if "VAE" in str(e) else "cache" if "needs trained" in str(e) else "compressor"
            raise InputError(name, str(e)) from e
        yield compressor


def _generate(dit, req: Request, compressor, key: str, resume_path: str, resume: bool, node_id: str | None,
              vae=None, live: LiveVideo | None = None, steer_with=(None, None)):
    try:
        text_kv = dit.encode_text(req.prompt)
    except ValueError as e:
        raise InputError("positive", str(e)) from e
    prompts = prompt_schedule(req.prompts, req.spec.chunks, req.chunks, req.chunk_frames)
    resuming = resume and os.path.isfile(resume_path)
    gen = _start(dit, req, compressor, resume_path if resuming else None, prompts)
    frames_at_start = gen.frames_done
    progress = steer = None
    try:
        if req.spec.resized_from is not None:
            gen = apply_sizes(gen, req.spec.config, compressor, text_kv)
        if req.start is not None and gen.frames_done == 0:        # (a resumed run has them already)
            gen.commit_start(req.start.to(dit.device), text_kv, req.target)
        progress = Progress(gen, req.target - gen.frames_done, dit.device, node_id)
        progress.live.follow(prompts)
        if live is not None:
            _start_video(live, vae, gen, resume_path, resuming)
            progress.live.video = live.ui_file
        steer = steering.begin(req, gen, prompts, progress.live, *steer_with, key=key)
        autosave = Autosave(gen, frames_at_start, resume_path)
        for r in gen.run(prompts, req.target, on_step=steer.on_step(progress)):
            autosave()
            if live is not None:
                live.add(r.latent)
            if steer.between_chunks():      # the prompts changed: this is now the run of the kept workflow,
                key = steer.key             # whose resume file records the schedule with the change
                gen.prompt_record = schedule_record(prompts)
        if live is not None:
            live.close()
        state_path = keep_state(gen, key, node_id)
        latent = denormalize_latent(gen.latent())
        timeline = gen.cache.timeline() | {"kv_bytes": gen.cache.nbytes()}
        if live is not None and live.ui_file is not None:
            timeline["video"] = live.ui_file
            remember_video(latent, live, vae)
        timeline["steered"] = steer.records
        steer.end("finished")
    except BaseException as e:
        if live is not None:            # every kept chunk, and the file stays a playable video
            live.catch_up(gen)
            live.close(quietly=True)
        saved = save_progress(gen, frames_at_start, resume_path)
        if not (saved or os.path.isfile(resume_path)):
            drop_progress(resume_path)  # nothing to resume: forget the video note too
        if progress is not None:        # the UI says what was kept and how to continue
            progress.live.stopped(saved or os.path.isfile(resume_path))
        if steer is not None:
            steer.end("interrupted" if type(e).__name__ == "InterruptProcessingException" else "failed")
        raise
    finally:
        text_kv = None
        gen.cache.release()     # even if a traceback keeps the Generation alive
    drop_progress(resume_path)
    spec = PackedCacheSpec(config=req.spec.config, key=key, state_path=state_path, frames=gen.frames_done,
                           width=req.width, height=req.height, chunk_frames=req.chunk_frames,
                           chunks=gen.chunk_index)
    return latent, spec, timeline


def _start_video(live: LiveVideo, vae, gen: Generation, resume_path: str, resuming: bool) -> None:
    """Start writing the video: a resumed run rewrites the file its interrupted run left (one file,
    not a partial one beside a complete one); a start, a continued or a resumed video begins with
    its frames so far."""
    if live.path is not None:
        earlier = noted_video(resume_path, live.prefix) if resuming else None
        if earlier:
            live.rewrite(earlier)
        note_video(resume_path, live.prefix, live.path)
    live.start(vae)
    if gen.latents:
        live.add(gen.latent())
