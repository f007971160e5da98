"""The files behind a sampler: the state a PACKED_CACHE output points to, and the resumable progress
of an unfinished run. Written atomically, kept bounded, checked before they are trusted.

- temp/packforcing/state-<key>.safetensors: the video a PACKED_CACHE continues. A sampler node keeps
  only the state it wrote last, so disk holds one state per sampler node. ComfyUI can still hold an
  older output of that node (--cache-lru), and a second ComfyUI on the same base directory empties
  temp/ when it starts: the sampler's fingerprint_inputs (`state_fingerprint`) then changes, so
  ComfyUI runs the sampler again instead of handing on a PACKED_CACHE whose file is gone.
- output/packforcing/resume-<key>.safetensors: the progress of an unfinished run (the key hashes
  every input but the prompt schedule's switches, which the file records: a resume is refused when
  a switch its chunks went through differs, and follows the new switches still to come), written on
  cancel or error and every AUTOSAVE_SECONDS while it runs, so a crash or a kill loses at most that
  much; the newest KEEP_RESUME_FILES are kept. A write killed half-way leaves `<file>.tmp-<pid>`:
  those of dead processes are removed at start-up. Beside it, `resume-<key>.video.json` names the
  video the run was writing as it went (save_video), so that the resumed run rewrites that file
  instead of starting a second one.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from collections import OrderedDict
from typing import Mapping

from ..packforcing_core.sampling.sampler import Generation
from ..packforcing_core.sampling.state import StateError, check_schedule, check_settings, load_state, save_state
import folder_paths

from .common import work_dir
from .spec import InputError, digest

log = logging.getLogger("packforcing")

KEEP_RESUME_FILES = 4
# Seconds of sampling between two progress saves; PACKFORCING_AUTOSAVE_SECONDS overrides it (0: every chunk).
AUTOSAVE_SECONDS = float(os.environ.get("PACKFORCING_AUTOSAVE_SECONDS", "120"))
AUTOSAVE_MAX_SHARE = 0.05      # and saves at least 1/share times as far apart as one save takes

_LAST_STATE: dict[str, str] = {}                       # node id -> state file it wrote last
_MADE_BY: OrderedDict[str, str] = OrderedDict()        # state file -> widget digest of the run that wrote it
_EPOCH: dict[str, int] = {}                            # widget digest -> how often one of its states was gone
_TEMPORARY = re.compile(r".*\.tmp-(\d+)$")


# ----------------------------------------------------------------------------- PACKED_CACHE states

def widget_digest(values: Mapping) -> str:
    """The sampler's own input values (links dropped): what fingerprint_inputs sees of a run."""
    return digest({k: v for k, v in values.items() if v is not None and not isinstance(v, (list, tuple, dict))})


def state_fingerprint(values: Mapping) -> int:
    """fingerprint_inputs of the sampler: bumped when a state written by a run with these widget values
    is gone, which makes ComfyUI run the sampler again (it cannot see linked inputs here)."""
    d = widget_digest(values)
    for path, made_by in list(_MADE_BY.items()):
        if made_by == d and not os.path.isfile(path):
            del _MADE_BY[path]
            _EPOCH[d] = _EPOCH.get(d, 0) + 1
    return _EPOCH.get(d, 0)


def forget_output(values: Mapping | None) -> None:
    """Make ComfyUI run the sampler again the next time these widget values are queued (its cached
    output is not what they give: the run was steered live)."""
    if values is not None:
        d = widget_digest(values)
        _EPOCH[d] = _EPOCH.get(d, 0) + 1


def remember_state(path: str, values: Mapping | None) -> None:
    if values is None:
        return
    _MADE_BY[path] = widget_digest(values)
    _MADE_BY.move_to_end(path)
    while len(_MADE_BY) > 4096:
        _MADE_BY.popitem(last=False)


def keep_state(gen: Generation, key: str, node_id: str | None) -> str:
    """Write the state of a finished run; drop the one this node wrote before (disk stays bounded)."""
    path = os.path.join(work_dir("temp"), f"state-{key}.safetensors")
    save_state(gen, path)
    old = _LAST_STATE.pop(node_id, None) if node_id else None
    if old and old != path and old not in _LAST_STATE.values() and os.path.isfile(old):
        os.remove(old)          # an output ComfyUI still holds now fails state_fingerprint: the node re-runs
    if node_id:
        _LAST_STATE[node_id] = path
    return path


def state_gone(path: str) -> InputError:
    return InputError("cache", f"its state file '{path}' is gone (ComfyUI empties temp/ when it starts, and a sampler "
                               "replaces its state when it runs again): queue the prompt again, and the sampler "
                               "that produced this PACKED_CACHE runs again")


# ----------------------------------------------------------------------------- resumable progress

def resume_from(path: str, dit, compressor, req, noise, prompts) -> Generation:
    """The progress saved under this run's key, after checking that it was made with these settings and
    with the same prompt schedule up to where it stopped (`prompts`: this run's PromptSchedule)."""
    try:
        check_settings(path, width=req.width, height=req.height, seed=req.seed, steps=req.schedule.steps,
                       shift=req.schedule.shift, chunk_frames=req.chunk_frames, batch=req.prompt.shape[0],
                       cache_config=req.spec.config)
        check_schedule(path, prompts, first_chunk=req.spec.chunks)
        gen = load_state(path, dit, compressor, req.spec.config, noise=noise)
        if gen.frames_done > req.target:
            raise StateError(f"state file '{path}' holds {gen.frames_done} latent frames, more than the "
                             f"{req.target} of this run")
    except StateError as e:
        raise InputError("resume", f"{e}. The saved progress does not fit this run: turn resume off to start over "
                                   "(the file is replaced by the next save)") from e
    log.info("PackForcing: resuming from %s at latent frame %d", path, gen.frames_done)
    return gen


def save_progress(gen: Generation, frames_at_start: int, path: str, final: bool = True) -> bool:
    """Save what this run added (nothing when it added nothing); True when saved. Never raises."""
    if gen.frames_done <= frames_at_start:
        return False
    try:
        save_state(gen, path)
        prune_resume_files(keep=path)
    except Exception:   # never hide the original error
        log.exception("PackForcing: could not save progress to %s", path)
        return False
    if final:
        log.warning("PackForcing: stopped after %d latent frames; progress saved to %s. Queue the same inputs "
                    "with 'resume' on to continue.", gen.frames_done, path)
    return True


def prune_resume_files(keep: str) -> None:
    files = sorted(glob.glob(os.path.join(os.path.dirname(keep), "resume-*.safetensors")), key=os.path.getmtime)
    for old in [f for f in files if f != keep][:max(0, len(files) - KEEP_RESUME_FILES)]:
        os.remove(old)
    for note in glob.glob(os.path.join(os.path.dirname(keep), "resume-*.video.json")):
        if note != _note(keep) and not os.path.isfile(note.removesuffix(".video.json") + ".safetensors"):
            os.remove(note)       # its progress is gone: nothing will resume into that video


def drop_progress(path: str) -> None:
    """The run finished (or kept nothing): its progress file and video note go."""
    for p in (path, _note(path)):
        if os.path.isfile(p):
            os.remove(p)


def _note(resume_path: str) -> str:
    return resume_path.removesuffix(".safetensors") + ".video.json"


def note_video(resume_path: str, prefix: str, video: str) -> None:
    """Remember which file of output/ this run writes as it goes (for the run that resumes it)."""
    note = {"filename_prefix": prefix, "file": os.path.relpath(video, folder_paths.get_output_directory())}
    try:
        with open(_note(resume_path), "w") as f:
            json.dump(note, f)
    except OSError as e:        # a resumed run then starts a new file: no reason to stop this one
        log.warning("PackForcing: could not note the video of this run in %s: %s", _note(resume_path), e)


def noted_video(resume_path: str, prefix: str) -> str | None:
    """The video the interrupted run of this key wrote with this filename_prefix, if it is still a
    file of output/."""
    try:
        with open(_note(resume_path)) as f:
            note = json.load(f)
        if note["filename_prefix"] != prefix:
            return None
        out = folder_paths.get_output_directory()
        path = os.path.normpath(os.path.join(out, note["file"]))
        inside = os.path.commonpath([os.path.realpath(out), os.path.realpath(path)]) == os.path.realpath(out)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if inside and os.path.isfile(path) else None


class Autosave:
    """Called after every chunk: saves the progress every AUTOSAVE_SECONDS (atomically, over the same
    file), so that a crash or a kill does not lose the run. A save of a big cache takes seconds, so
    saves are also kept 1/AUTOSAVE_MAX_SHARE times as far apart as the last one took."""

    def __init__(self, gen: Generation, frames_at_start: int, path: str, every: float | None = None,
                 clock=time.monotonic):
        self.gen, self.frames_at_start, self.path = gen, frames_at_start, path
        self.every = AUTOSAVE_SECONDS if every is None else every
        self.clock = clock
        self.last, self.cost = clock(), 0.0

    def __call__(self) -> None:
        now = self.clock()
        if now - self.last < max(self.every, self.cost / AUTOSAVE_MAX_SHARE):
            return
        if save_progress(self.gen, self.frames_at_start, self.path, final=False):
            self.cost = self.clock() - now
        self.last = self.clock()


def remove_stale_temporaries() -> list[str]:
    """Remove `*.tmp-<pid>` files in output/packforcing whose writer is gone (a killed save)."""
    removed = []
    for path in glob.glob(os.path.join(work_dir("output"), "*.tmp-*")):
        m = _TEMPORARY.match(path)
        if m and not _alive(int(m.group(1))):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    if removed:
        log.info("PackForcing: removed %d unfinished temporary files: %s", len(removed), ", ".join(removed))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False            # at start-up this process writes nothing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # another user's process
    return True
