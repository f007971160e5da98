"""Steering a sampler run while it plays: the next prompt (an embeddings file, text through the
workflow's CLIP, or the current prompt again for a cut), its transition, re-cache and cut, and pause.

A run registers itself under (prompt id, node id) when its loop starts; changes come through the
route of steer_api.py. Each change names a chunk of this sampler's run, counted from 1 like the live
view: chunk k begins (k - 1) x seconds-per-chunk after the first frame the sampler generates, the time
base of the Prompt Schedule node. Changes wait in a bounded queue; at the boundary before its chunk
the loop inserts the change into the run's PromptSchedule as the very entry a Prompt Schedule node
with start_seconds = (k - 1) x seconds-per-chunk produces (same embeddings, transition, re-cache and
cut), so the video goes on exactly as the workflow with that node would render it. Every applied
change is recorded that way; "keep these changes" in the frontend (web/js/steer.js) writes the
records into the workflow as Prompt Schedule nodes.

The result of a steered run is that of the workflow with its changes kept, so its state and resume
files are named by that workflow's key (`Run.key`): queueing the kept workflow with `resume` on
continues a cancelled steered run bit-identically.

Text is encoded by ComfyUI's own CLIPTextEncode with the CLIP connected to the sampler, in the
sampler's thread between two forward passes (ComfyUI's model management is not thread-safe), while
the request that asked for it waits, so an encoder that does not fit the run is refused right away.
Pause holds the loop between two chunks (the cache stays where it is, on the GPU); ComfyUI's cancel
is checked while it holds.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..packforcing_core.sampling.prompt_schedule import (PromptEntry, PromptSchedule, ScheduleError, TimedPrompt,
                                                         timed_schedule)
from .conditioning import prompt_tensor
from .spec import FPS, FRAMES_PER_LATENT, InputError

log = logging.getLogger("packforcing")

EVENT = "packforcing.steer"
MAX_PENDING = 8            # changes waiting for their chunk, per run
KEEP_ENDED = 64            # ended runs whose record stays readable (and whose ids are told apart from unknown ones)
HOLD_POLL = 0.05           # seconds between two checks for resume / cancel while paused


class SteerError(Exception):
    """A refused request: HTTP `status` with a message that starts with the field it is about."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field = status, field

    def body(self) -> dict:
        return {"error": str(self), "field": self.field}


@dataclass
class Change:
    """A requested change. `prompt` says how a workflow gets the same embeddings: {"embeddings": file}
    (Load Prompt Embeddings), {"text": text} (CLIPTextEncode) or {"same": True} (the prompt in effect:
    a cut, or a new transition / re-cache, without a new prompt)."""
    chunk: int
    prompt: dict
    embeds: torch.Tensor | None          # None for "same": resolved when applied
    transition: int = 0
    recache: bool = True
    cut: str = "none"

    def record(self, seconds: float, prompt: dict | None = None) -> dict:
        return {"chunk": self.chunk, "seconds": seconds, "prompt": prompt or self.prompt,
                "transition": self.transition, "recache": self.recache, "cut": self.cut}


def _server():
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def clip_text_encode(clip, text: str) -> torch.Tensor:
    """The embeddings ComfyUI's CLIPTextEncode node gives for `text` (the node itself is run)."""
    import nodes as comfy_nodes
    cls = comfy_nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]
    (cond,) = getattr(cls(), cls.FUNCTION)(clip=clip, text=text)
    return prompt_tensor(cond)


class Run:
    """One sampler run that can be steered. Route methods (submit, pause, resume, state, encode) run
    on the server's event loop; the loop methods (between_chunks, on_step, end) in the sampler's thread."""

    def __init__(self, req, gen, schedule: PromptSchedule, live=None, clip=None, rekey=None, key: str = ""):
        self.req, self.gen, self.schedule, self.live, self.clip, self.rekey = req, gen, schedule, live, clip, rekey
        self.key = key
        self.first = req.spec.chunks                      # video chunk index of this run's chunk 1
        self.chunks = -(-(req.new_frames - req.start_frames) // req.chunk_frames)
        self.seconds_per_chunk = FRAMES_PER_LATENT * req.chunk_frames / FPS
        first_embeds = schedule.entries[0].embeds
        self.batch, self.width = first_embeds.shape[0], first_embeds.shape[-1]
        self.lock = threading.Lock()
        self.pending: dict[int, Change] = {}
        self.records: list[dict] = []
        self.live_prompts: list[TimedPrompt] = []
        self.errors: list[str] = []
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.paused = False                  # asked to hold at the next boundary
        self.holding: int | None = None      # the chunk the loop holds before
        self.ended: str | None = None
        self.current = gen.chunk_index - self.first + 1   # the chunk being generated (or about to be)
        self.device = gen.model.device
        server = _server()
        self.prompt_id = getattr(server, "last_prompt_id", None)
        self.node = getattr(live, "node", None)
        client = getattr(live, "client_id", None)
        self._send = (lambda data: server.send_sync(EVENT, data, client)) if server and client else None

    # ------------------------------------------------------------------ route side
    def state(self) -> dict:
        with self.lock:
            return self._state()

    def _state(self) -> dict:
        state = self.ended or ("paused" if self.holding is not None else "pausing" if self.paused else "running")
        return {"prompt_id": self.prompt_id, "node": self.node, "state": state, "chunk": self.current,
                "next_chunk": self.current + 1 if self.current < self.chunks else None, "chunks": self.chunks,
                "held_before": self.holding, "seconds_per_chunk": self.seconds_per_chunk,
                "text": self.clip is not None, "width": self.width, "queue": MAX_PENDING, "seed": self.req.seed,
                "pending": [c.record(self.seconds(c.chunk)) for _, c in sorted(self.pending.items())],
                "changes": list(self.records), "errors": list(self.errors)}

    def seconds(self, chunk: int) -> float:
        return (chunk - 1) * self.seconds_per_chunk

    def taken(self) -> set[int]:
        """Chunks that already begin a prompt: the workflow's schedule entries and applied changes."""
        return {e.start_chunk - self.first + 1 for e in self.schedule.entries[1:]}

    def check_chunk(self, chunk: int | None) -> int:
        """The chunk a change can take (None: the next one); call with the lock held."""
        self._check_open()
        c = self.current + 1 if chunk is None else chunk
        if c <= self.current:
            soonest = (f"the earliest is chunk {self.current + 1}" if self.current < self.chunks else
                       "it is the last one: nothing can change any more")
            raise SteerError(409, "chunk", f"chunk {c} of this run has begun or is done (chunk {self.current} of "
                                           f"{self.chunks} is being generated): {soonest}")
        if c > self.chunks:
            raise SteerError(400, "chunk", f"{c} is past the end of this run ({self.chunks} chunks)")
        if c in self.pending or c in self.taken():
            raise SteerError(409, "chunk", f"chunk {c} already has a change ("
                                           f"{'waiting' if c in self.pending else 'a prompt switch'}): one change per "
                                           "chunk; pick another chunk")
        if len(self.pending) >= MAX_PENDING:
            raise SteerError(429, "chunk", f"{MAX_PENDING} changes are waiting already: wait until one is applied")
        return c

    def precheck(self, chunk: int | None) -> None:
        """Refuse early what submit() would refuse now (before encoding or loading a prompt)."""
        with self.lock:
            self.check_chunk(chunk)

    def check_timing(self, chunk: int, transition: int) -> None:
        """The rules the Prompt Schedule node follows (timed_schedule: a transition ends inside the run and
        before the next switch), so that the kept workflow is accepted and renders what this run renders;
        call with the lock held."""
        stand_in = self.schedule.entries[0].embeds          # only the timing is checked here
        later = [(p.seconds, p.transition) for p in self.live_prompts] + \
            [(self.seconds(c.chunk), c.transition) for c in self.pending.values()] + [(self.seconds(chunk), transition)]
        timed = [TimedPrompt(stand_in, p.seconds, p.transition) for p in self.req.prompts] + \
            [TimedPrompt(stand_in, s, t) for s, t in later]
        timed = timed[:1] + sorted(timed[1:], key=lambda p: p.seconds)
        try:
            timed_schedule(timed, self.chunks, self.req.chunk_frames, self.first)
        except ScheduleError as e:
            raise SteerError(400, "transition" if e.part == "transition" else "chunk", str(e)) from None

    def submit(self, change: Change) -> dict:
        with self.lock:
            change.chunk = self.check_chunk(change.chunk)
            self.check_timing(change.chunk, change.transition)
            self.pending[change.chunk] = change
            state = self._state()
        self._publish(state)
        return change.record(self.seconds(change.chunk))

    def set_paused(self, paused: bool) -> dict:
        with self.lock:
            self._check_open()
            self.paused = paused
            state = self._state()
        self._publish(state)
        return state

    def encode(self, text: str) -> concurrent.futures.Future:
        """The embeddings of `text`, computed in the sampler's thread at its next forward pass or while held."""
        with self.lock:
            self._check_open()
            if self.clip is None:
                raise SteerError(400, "prompt.text", "typing a prompt needs a text encoder: connect the CLIP that "
                                                     "encodes this workflow's prompts (CLIPLoader) to the sampler's "
                                                     "clip input, or pick prompt embeddings")
            future = concurrent.futures.Future()
            self.jobs.put((text, future))
        return future

    def _check_open(self) -> None:
        if self.ended:
            raise SteerError(409, "prompt_id", f"the run of prompt {self.prompt_id} (node {self.node}) has ended "
                                               f"({self.ended}): steer a running one")

    def check_embeds(self, embeds: torch.Tensor, field: str) -> torch.Tensor:
        if embeds.dim() != 3 or embeds.shape[0] != self.batch or embeds.shape[-1] != self.width:
            raise SteerError(400, field, f"embeddings of shape {tuple(embeds.shape)}, but this run's prompts are "
                                         f"({self.batch}, tokens, {self.width}): use the text encoder of the "
                                         "workflow's prompts")
        if not bool(torch.isfinite(embeds).all()):
            raise SteerError(400, field, "the embeddings hold NaN/inf values")
        return embeds

    # ------------------------------------------------------------------ loop side
    def on_step(self, progress):
        """The sampler's per-pass callback, then any text waiting to be encoded."""
        def step(chunk: int, step: int, steps: int) -> None:
            progress(chunk, step, steps)
            self._encode_waiting()
        return step

    def _encode_waiting(self) -> None:
        encoded = False
        while True:
            try:
                text, future = self.jobs.get_nowait()
            except queue.Empty:
                break
            encoded = True
            try:
                embeds = clip_text_encode(self.clip, text)
                future.set_result(self.check_embeds(embeds, "prompt.text"))
            except InputError as e:
                future.set_exception(SteerError(400, "prompt.text", f"the CLIP's encoding was refused: {e}"))
            except Exception as e:  # noqa: BLE001 - the requester gets it; the run goes on
                future.set_exception(e if isinstance(e, SteerError) else
                                     SteerError(400, "prompt.text", f"the CLIP could not encode it ({e})"))
        if encoded:
            self._check_model_stayed()

    def _check_model_stayed(self) -> None:
        """Loading the text encoder goes through ComfyUI's model management, which frees GPU memory by
        offloading other models: if that moved the DiT's weights, stop here (progress is saved) rather
        than run on (or replay CUDA graphs of) weights that are no longer where they were."""
        if any(p.device != self.device for p in self.gen.model.parameters()):
            raise RuntimeError("typing a prompt loaded the text encoder, and ComfyUI made room for it by moving "
                               "the video model off the GPU: the run stopped and its progress is saved. Keep the "
                               "changes and queue again with resume on; to steer without loading the encoder "
                               "during a run, save prompts with Save Prompt Embeddings and pick them instead")

    def between_chunks(self) -> bool:
        """At the boundary before the next chunk: hold while paused, then apply that chunk's change.
        True when the prompts changed (the key changed with them)."""
        nxt = self.gen.chunk_index - self.first + 1
        if nxt > self.chunks:
            return False
        self._hold(nxt)
        with self.lock:
            change = self.pending.pop(nxt, None)
            self.current = nxt
        changed = change is not None and self._apply(change)
        self._publish(self.state())
        return changed

    def _hold(self, chunk: int) -> None:
        if not self.paused:
            return
        import comfy.model_management as mm
        with self.lock:
            self.holding = chunk
            state = self._state()
        self._publish(state)
        since = time.perf_counter()
        try:
            while self.paused:
                self._encode_waiting()
                mm.throw_exception_if_processing_interrupted()
                time.sleep(HOLD_POLL)
        finally:
            with self.lock:
                self.holding = None
            if self.live is not None:           # the pause is not part of the chunk's time
                self.live.chunk_start += time.perf_counter() - since

    def _apply(self, change: Change) -> bool:
        at = self.first + change.chunk - 1
        entries = self.schedule.entries
        prompt = None
        embeds = change.embeds
        if embeds is None:                      # the prompt in effect before this chunk
            ref = entries[self.schedule.entry_at(at - 1)]
            ref_chunk = ref.start_chunk - self.first + 1
            embeds, prompt = ref.embeds, {"same": {"chunk": ref_chunk, "seconds": self.seconds(ref_chunk)}}
        entry = PromptEntry(embeds, start_chunk=at, transition=change.transition, recache=change.recache,
                            cut=change.cut)
        new = sorted(entries + [entry], key=lambda e: e.start_chunk)
        try:
            PromptSchedule(new)                 # the checks a scheduled entry passes
        except ValueError as e:
            with self.lock:
                self.errors.append(f"chunk {change.chunk}: not applied: {e}")
            return False
        self.schedule.entries = new             # the loop reads it chunk by chunk
        seconds = self.seconds(change.chunk)
        with self.lock:
            self.records.append(change.record(seconds, prompt))
            self.live_prompts.append(TimedPrompt(embeds, seconds, change.transition, change.recache, change.cut))
        if self.rekey is not None:
            prompts = sorted(self.req.prompts + tuple(self.live_prompts), key=lambda p: p.seconds)
            self.key = self.rekey(dataclasses.replace(self.req, prompts=tuple(prompts)))
        if self.live is not None:
            self.live.follow(self.schedule)
        log.info("PackForcing: steered prompt %s node %s: %s", self.prompt_id, self.node, self.records[-1])
        return True

    def end(self, how: str) -> None:
        with self.lock:
            if self.ended:
                return
            self.ended, self.paused = how, False
            self.pending.clear()                # never applied: not part of the result
            jobs = []
            while not self.jobs.empty():
                jobs.append(self.jobs.get_nowait())
            state = self._state()
        for _, future in jobs:
            future.set_exception(SteerError(409, "prompt_id", f"the run ended ({how}) before the text was encoded"))
        _ended(self, state)
        self._publish(state)
        self.gen = self.schedule = self.clip = self.live = None       # the run's tensors go with it

    def _publish(self, state: dict) -> None:
        if self._send is not None:
            try:
                self._send(state)
            except Exception:  # noqa: BLE001 - a UI message never stops a run
                self._send = None


# ----------------------------------------------------------------------------- the runs of this server

_RUNS: dict[tuple[str, str], Run] = {}
_ENDED: OrderedDict[tuple[str, str], dict] = OrderedDict()
_LOCK = threading.Lock()


def begin(req, gen, schedule, live, clip=None, rekey=None, key: str = "") -> Run:
    """A steerable run; registered (reachable over HTTP) when it runs inside ComfyUI's server."""
    run = Run(req, gen, schedule, live, clip, rekey, key)
    if run.prompt_id is not None and run.node is not None:
        with _LOCK:
            _RUNS[(run.prompt_id, str(run.node))] = run
        run._publish(run.state())
    return run


def _ended(run: Run, state: dict) -> None:
    with _LOCK:
        if _RUNS.get((run.prompt_id, str(run.node))) is run:
            del _RUNS[(run.prompt_id, str(run.node))]
            _ENDED[(run.prompt_id, str(run.node))] = state
            while len(_ENDED) > KEEP_ENDED:
                _ENDED.popitem(last=False)


def find(prompt_id: str, node: str | None) -> Run | dict:
    """The running Run of (prompt id, node), or the final state of one that ended."""
    with _LOCK:
        running = {k: r for k, r in _RUNS.items() if k[0] == prompt_id}
        ended = {k: s for k, s in _ENDED.items() if k[0] == prompt_id}
    found = running | ended
    if not found:
        now = sorted({k[0] for k in _RUNS})
        raise SteerError(404, "prompt_id", f"no PackForcing sampler run of prompt '{prompt_id}' is known "
                                           f"({'running now: ' + ', '.join(now) if now else 'none is running'})")
    if node is None:
        if len(found) > 1:
            raise SteerError(400, "node", f"prompt '{prompt_id}' runs the samplers {', '.join(sorted(k[1] for k in found))}: "
                                          "name one")
        return next(iter(found.values()))
    if (prompt_id, node) not in found:
        raise SteerError(404, "node", f"prompt '{prompt_id}' has no PackForcing sampler run of node '{node}' (its "
                                      f"samplers: {', '.join(sorted(k[1] for k in found))})")
    return found[(prompt_id, node)]


def states() -> list[dict]:
    with _LOCK:
        running, ended = list(_RUNS.values()), list(_ENDED.values())
    return [r.state() for r in running] + ended
