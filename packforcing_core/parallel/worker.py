"""A worker process of a pool (`pool.py`): it holds a copy of the DiT and its share of the heads'
K/V, and runs every job the root runs, in step with it.

A job is the root's run described in plain data (`Job`): the worker builds the same Generation (new,
or loaded from the same state file), applies the same cache sizes, commits the same start frames and
generates the same chunks; the collectives inside the passes keep it in step. Where the root does
something of its own (progress, cancel checks, previews, autosave decisions, writing video) the worker
waits for a word from it (`Channel.wait`): "go" on, or "stop" (cancel, or an error on the root); before
"go", any number of "save" (a state save, whose gather it joins) and "schedule" (the prompts were
steered: the root's new entries). When it
leaves the run it says so ("left"), then joins the root's saves until "end".

Errors that every rank meets alike (NaN in a chunk, a refused size) end the run cleanly on every
rank. Any other error in a worker leaves the collectives out of step: the worker reports it
("failed") and exits, and the root turns the broken collective into that report.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..cache.config import CacheConfig
from ..cache.packed import PackedCache
from ..model.checkpoint import load_model
from ..model.fp8 import quantize_dit
from ..sampling.noise import SeededNoise
from ..sampling.prompt_schedule import PromptEntry, PromptSchedule
from ..sampling.sampler import Generation, NonFiniteError
from ..sampling.schedule import FlowSchedule
from ..sampling.state import StateError, load_state, save_state
from .compressor import make_shared_compressor
from .group import HeadGroup, backend_for, timeout
from .ulysses import attach

log = logging.getLogger("packforcing")
CLEAN_ERRORS = (NonFiniteError, StateError, ValueError)     # met by every rank at the same point
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Job:
    """One run of the root, as the workers repeat it."""
    prompt: torch.Tensor              # prompt embeddings (B, n, text_dim), on the CPU
    prompts: object                   # a PromptSchedule, or None: the one prompt
    config: CacheConfig               # of a new cache, or the one a loaded state must have
    latent_h: int
    latent_w: int
    seed: int
    chunk_frames: int
    schedule: FlowSchedule
    batch: int
    target: int                       # latent frames at the end of the run
    state: str | None = None          # continue the video of this state file
    resize: CacheConfig | None = None  # new cache sizes before generating
    start: torch.Tensor | None = None  # start latent, committed when the video is new


def to_wire(job: Job) -> dict:
    """The job in builtins and tensors: the host may have imported this package under another name
    (ComfyUI names a pack's modules by its folder), so its classes cannot cross the pipe."""
    d = {name: getattr(job, name) for name in Job.__dataclass_fields__}
    d["config"] = job.config.to_dict()
    d["resize"] = None if job.resize is None else job.resize.to_dict()
    d["schedule"] = {"shift": job.schedule.shift, "steps": list(job.schedule.steps)}
    if job.prompts is not None:
        d["prompts"] = entries_to_wire(job.prompts)
    return d


def entries_to_wire(schedule: PromptSchedule) -> list[dict]:
    return [{k: getattr(e, k) for k in PromptEntry.__dataclass_fields__} for e in schedule.entries]


def entries_from_wire(entries: list[dict]) -> list[PromptEntry]:
    return [PromptEntry(**e) for e in entries]


def from_wire(d: dict) -> Job:
    d = dict(d, config=CacheConfig(**d["config"]), schedule=FlowSchedule(shift=d["schedule"]["shift"],
                                                                         steps=tuple(d["schedule"]["steps"])))
    if d["resize"] is not None:
        d["resize"] = CacheConfig(**d["resize"])
    if d["prompts"] is not None:
        d["prompts"] = PromptSchedule(entries_from_wire(d["prompts"]))
    return Job(**d)


class Stopped(Exception):
    """The root stopped the run (cancel, or an error of its own)."""


class Channel:
    """The worker's end of the pipe to the root."""

    def __init__(self, conn, parent: int):
        self.conn, self.parent, self.gen, self.prompts = conn, parent, None, None

    def recv(self):
        while not self.conn.poll(5.0):
            if os.getppid() != self.parent:       # the root is gone: nothing to follow
                os._exit(0)
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            os._exit(0)

    def send(self, *msg) -> None:
        self.conn.send(msg)

    def wait(self, *_) -> None:
        """A point where the root does something alone: join its saves, then go on or stop."""
        while True:
            word, *rest = self.recv()
            if word == "save":
                save_state(self.gen, None)
            elif word == "schedule":          # the root's prompts were steered: the same entries from now on
                self.prompts.entries = entries_from_wire(rest[0])
            elif word == "go":
                return
            else:
                raise Stopped()


def build(model, job: Job, text_kv) -> Generation:
    """The Generation the root built for this job (new, or from its state file)."""
    compressor = make_shared_compressor(job.config.mode, model)
    noise = SeededNoise(job.seed)
    if job.state is None:
        return Generation(model, PackedCache(job.config, compressor), job.latent_h, job.latent_w, seed=job.seed,
                          chunk_frames=job.chunk_frames, schedule=job.schedule, batch=job.batch, noise=noise)
    gen = load_state(job.state, model, compressor, job.config, noise=noise)
    gen.seed, gen.schedule = job.seed, job.schedule
    return gen


def follow(model, job: Job, chan: Channel) -> None:
    gen, outcome = None, None
    try:
        text_kv = model.encode_text(job.prompt.to(model.device))
        gen = chan.gen = build(model, job, text_kv)
        chan.prompts = job.prompts
        if job.resize is not None:
            gen.resize_cache(job.resize, text_kv)
        if job.start is not None and gen.frames_done == 0:
            gen.commit_start(job.start.to(model.device), text_kv, job.target)
        chan.wait()
        for _ in gen.run(text_kv if job.prompts is None else job.prompts, job.target, on_step=chan.wait):
            chan.wait()
    except Stopped:
        outcome = "stopped"
    except CLEAN_ERRORS as e:
        outcome = f"{type(e).__name__}: {e}"
    chan.send("left", outcome)
    while (word := chan.recv()[0]) != "end":       # the root's saves of what was done
        if word == "save":
            save_state(gen, None)
    if gen is not None:
        gen.cache.release()


def serve(rank: int, ranks: int, conn, parent: int, source: dict, device: str) -> None:
    """A worker's life: load the DiT, join the group, follow jobs until told to quit."""
    chan = Channel(conn, parent)
    try:
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        model = load_model(source["path"], device=device, dtype=DTYPES[source["dtype"]])
        if source.get("fp8"):
            quantize_dit(model)
        if source.get("compile") and model.device.type == "cuda":
            model.compile_blocks()
        chan.send("ready", rank)
        _, port = chan.recv()
        store = dist.TCPStore("127.0.0.1", port, ranks, is_master=False, timeout=timeout())
        dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=ranks, timeout=timeout())
        attach(model, HeadGroup())
        with torch.no_grad():
            while (msg := chan.recv())[0] != "quit":
                if msg[0] == "job":
                    follow(model, from_wire(msg[1]), chan)
    except BaseException as e:          # out of step with the root: report and leave
        log.error("PackForcing GPU worker %d: %s", rank, traceback.format_exc())
        chan.send("failed", f"{type(e).__name__}: {e}", traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)
    dist.destroy_process_group()
