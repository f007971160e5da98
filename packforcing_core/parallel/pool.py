"""Worker processes that share a DiT's heads with this process: the ComfyUI pack's "GPUs" option.

This process is the root (rank 0). `WorkerPool.start` spawns ranks 1..N-1 with torch.multiprocessing
(spawn), each loads the DiT file on its own device (the root's GPU is the first; the workers take the
next visible ones), then all meet through a TCPStore on localhost: NCCL between GPUs, gloo on the CPU.
A run is a `Job` the workers repeat in step (worker.py); `WorkerPool.job` is the root's side of it
(`Lockstep`). Only one pool per process (a process has one default process group): starting one
closes the other, which starts again when its model runs next.

Nothing hangs: waits on the workers have timeouts, a worker that died or failed is reported by rank
and exit code (gloo reports the broken collective at once; on NCCL a watchdog aborts the group), and
a broken pool is closed and started afresh by the next run. Workers exit when the root goes away.
"""
from __future__ import annotations

import logging
import os
import runpy
import sys
import threading
import time
import types
from contextlib import contextmanager
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .group import HeadGroup, backend_for, timeout
from .ulysses import attach
from .worker import Job, entries_to_wire, to_wire

log = logging.getLogger("packforcing")
START_SECONDS = float(os.environ.get("PACKFORCING_WORKER_START_TIMEOUT", "900"))   # spawn + load the DiT
ACK_SECONDS = 60.0            # a worker leaving a run: it only has to finish the pass it is in
_ACTIVE: list["WorkerPool"] = []

__all__ = ["Job", "WorkerPool", "WorkerError", "Solo"]


class WorkerError(RuntimeError):
    """A worker died, failed, or did not answer in time; the pool was closed."""


def worker_devices(device: torch.device, ranks: int, name: str = "GPUs") -> list[str]:
    if device.type != "cuda":
        return [device.type] * (ranks - 1)
    count = torch.cuda.device_count()
    first = device.index if device.index is not None else torch.cuda.current_device()
    others = [i for i in range(count) if i != first]
    if len(others) < ranks - 1:
        raise ValueError(f"{name}: {ranks} asked, but this machine shows {count} CUDA device(s): choose at most "
                         f"{count}, or start ComfyUI where more GPUs are visible")
    return [f"cuda:{i}" for i in others[:ranks - 1]]


@contextmanager
def _without_main_script():
    """A spawned child first re-runs the parent's main script; ComfyUI's main.py would import the
    whole server and run every pack's prestartup script. Present a main module without a file while
    starting workers: multiprocessing then imports nothing of it."""
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


class WorkerPool:
    def __init__(self, ranks: int, source: dict, device: torch.device, name: str = "GPUs"):
        """source: {"path": DiT file, "dtype": bf16|fp16|fp32, "fp8": bool, "compile": bool}."""
        self.ranks, self.source, self.device = ranks, dict(source), torch.device(device)
        self.devices = worker_devices(self.device, ranks, name)
        self.procs, self.conns = [], []
        self.lock: Lockstep | None = None
        self.closed = False
        self.failure: WorkerError | None = None    # why the pool broke

    # ------------------------------------------------------------------ life
    def start(self) -> "WorkerPool":
        for other in list(_ACTIVE):
            other.close()
        ctx = mp.get_context("spawn")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_main.py")
        with _without_main_script():
            for rank, dev in enumerate(self.devices, start=1):
                mine, theirs = ctx.Pipe()
                args = dict(rank=rank, ranks=self.ranks, conn=theirs, parent=os.getpid(), source=self.source, device=dev)
                p = ctx.Process(target=runpy.run_path, args=(script,), daemon=True, name=f"packforcing-worker-{rank}",
                                kwargs={"init_globals": {"WORKER": args}, "run_name": "__packforcing_worker__"})
                p.start()
                theirs.close()
                self.procs.append(p)
                self.conns.append(mine)
        _ACTIVE.append(self)
        try:
            self._collect("ready", START_SECONDS, "load the DiT")
            store = dist.TCPStore("127.0.0.1", 0, self.ranks, is_master=True, timeout=timeout(),
                                  wait_for_workers=False)
            self._send("join", store.port)
            dist.init_process_group(backend_for(self.device), store=store, rank=0, world_size=self.ranks,
                                    timeout=timeout())
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._watch, daemon=True, name="packforcing-worker-watch").start()
        log.info("PackForcing: %d worker processes hold the DiT on %s", len(self.procs), ", ".join(self.devices))
        return self

    @property
    def alive(self) -> bool:
        return not self.closed and all(p.is_alive() for p in self.procs)

    def attach(self, model):
        """Share `model`'s heads with the workers (this process is the root)."""
        return attach(model, HeadGroup(), announce=self._announce_save)

    def close(self) -> None:
        """Stop the workers (their memory goes with them) and leave the process group."""
        if self.closed:
            return
        self.closed = True
        for c in self.conns:
            try:
                c.send(("quit",))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():              # stuck in a collective of a broken run
                p.kill()
                p.join(5)
        if dist.is_initialized():
            dist.destroy_process_group()
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def _watch(self) -> None:
        """On NCCL a dead peer leaves a collective waiting for its timeout: abort the group at once."""
        while not self.closed:
            if wait([p.sentinel for p in self.procs], timeout=1.0) and not self.closed:
                abort = getattr(dist.distributed_c10d, "_abort_process_group", None)    # torch >= 2.5
                if backend_for(self.device) == "nccl" and self.lock is not None and abort is not None:
                    abort()
                return

    # ------------------------------------------------------------------ messages
    def _send(self, *msg) -> None:
        for rank, c in enumerate(self.conns, start=1):
            try:
                c.send(msg)
            except OSError:
                raise self._broken(self._culprit({})) from None

    def _collect(self, word: str, seconds: float, doing: str) -> dict[int, tuple]:
        """One `word` message from every worker, or a WorkerError naming the worker that broke the run."""
        pending = dict(enumerate(self.conns, start=1))
        got, deadline = {}, time.monotonic() + seconds
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._broken(f"GPU worker(s) {sorted(pending)} did not {doing} within {seconds:.0f} s")
            wait(list(pending.values()) + [self.procs[r - 1].sentinel for r in pending], timeout=left)
            for rank, c in list(pending.items()):
                try:
                    msg = c.recv() if c.poll() else None
                except (EOFError, OSError):
                    msg = ("failed",)
                if msg is None and not self.procs[rank - 1].is_alive():
                    msg = ("failed",)
                if msg is not None and msg[0] == "failed":
                    raise self._broken(self._culprit({rank: msg}))
                if msg is not None and msg[0] == word:
                    got[rank] = msg
                    del pending[rank]
        return got

    def _culprit(self, failed: dict[int, tuple]) -> str:
        """Which worker broke the run: one that died without a word (killed, crashed) rather than those
        whose collectives then failed; else the first error reported."""
        time.sleep(0.5)                 # the others' errors and exits arrive
        for rank, c in enumerate(self.conns, start=1):
            try:
                while rank not in failed and c.poll():
                    msg = c.recv()
                    if msg[0] == "failed":
                        failed[rank] = msg
            except (EOFError, OSError):
                failed.setdefault(rank, ("failed",))
        for rank, p in enumerate(self.procs, start=1):
            if not p.is_alive() and len(failed.get(rank, ())) < 2:
                return self._died(rank)
        told = [r for r in failed if len(failed[r]) > 1]
        if not told:
            return self._died(min(failed or [r for r, p in enumerate(self.procs, start=1) if not p.is_alive()] or [1]))
        rank = min(told)
        log.error("PackForcing: GPU worker %d: %s", rank, failed[rank][2])
        return f"GPU worker {rank} failed: {failed[rank][1]}"

    def _died(self, rank: int) -> str:
        p = self.procs[rank - 1]
        p.join(2)
        code = p.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return f"GPU worker {rank} (pid {p.pid}) {how}"

    def _broken(self, what: str) -> WorkerError:
        self.close()
        self.failure = self.failure or WorkerError(
            f"{what}; the worker processes were stopped and start again with the next run (if it happens again, "
            "look in the log for the worker's error, or at the memory of its GPU)")
        return self.failure

    # ------------------------------------------------------------------ runs
    @contextmanager
    def job(self, job: Job):
        """The root's side of one run: the workers repeat `job` until the block ends."""
        if not self.alive:
            raise WorkerError("the GPU workers are not running (a worker died between runs): queue again")
        self._send("job", to_wire(job))
        self.lock = Lockstep(self)
        try:
            yield self.lock
        finally:
            lock, self.lock = self.lock, None
            lock.end()

    def _announce_save(self) -> None:
        if self.lock is None or self.closed:
            raise WorkerError("a state save needs the GPU workers in a run")
        self._send("save")


class Lockstep:
    """The root's words to the workers at the points where they wait for it (worker.Channel.wait)."""

    def __init__(self, pool: WorkerPool):
        self.pool, self.stopped, self.left = pool, False, False

    def go(self) -> None:
        self.pool._send("go")

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.pool._send("stop")

    def follow(self, prompts) -> None:
        """The prompt schedule changed (steering): the workers take the same entries."""
        self.pool._send("schedule", entries_to_wire(prompts))

    def step(self, callback=None):
        """The sampler's on_step: the root's own work after a pass, then go on (or stop)."""
        def on_step(*args):
            with self.point():
                if callback is not None:
                    callback(*args)
        return on_step

    @contextmanager
    def point(self):
        """A block of the root's own work at a point where the workers wait: go on after it, or stop."""
        try:
            yield
        except BaseException:
            self.stop()
            raise
        self.go()

    def halt(self) -> WorkerError | None:
        """After an error on the root: the workers leave the run (so that a state save finds them).
        Returns the error of a worker that died or failed meanwhile (the pool is then closed)."""
        try:
            if self.pool.closed:        # broken (its error), or closed on purpose (the root's error says why)
                return self.pool.failure
            self.stop()
            self._left()
        except WorkerError as e:
            return e
        return None

    def _left(self) -> None:
        if not self.left:
            self.pool._collect("left", ACK_SECONDS, "leave the run")
            self.left = True

    def end(self) -> None:
        if self.pool.closed:
            return
        self.stop()            # (a worker that already left the run ignores it)
        self._left()
        self.pool._send("end")


class Solo:
    """Lockstep of a run on one process: nothing to tell anyone."""

    def go(self) -> None:
        pass

    def follow(self, prompts) -> None:
        pass

    def step(self, callback=None):
        return callback

    @contextmanager
    def point(self):
        yield

    def halt(self) -> None:
        return None
