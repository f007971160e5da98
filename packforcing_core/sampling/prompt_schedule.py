"""Prompt schedules: which prompt conditions which chunk of a video, and what happens at a switch.

A schedule is a list of entries, each a prompt (text-encoder embeddings) that takes over at a chunk
(generated chunks count from 0 at the video's first; the first entry conditions every chunk before
the second's). At a switch:
  transition  the prompt embeddings are blended linearly from the previous prompt over N chunks
              (chunk k of the transition uses weight (k+1)/N of the new prompt), the way ComfyUI's
              ConditioningAverage blends conditionings: the blend passes through the DiT's text MLP
              and key norms, so every layer's cross-attention K/V stay ones the model can produce.
  recache     once the new prompt is fully in (the switch chunk, or the last chunk of a transition),
              the K/V of the cached history are recomputed under it (LongLive's KV re-cache): the
              history's K/V depend on the prompt through cross-attention, so without it the old prompt
              lingers. Off: the old K/V are kept.
  cut         a scene cut before the switch chunk: "sink" keeps only the sink (the identity anchor),
              "all" forgets the whole history (a new shot that refills the sink).
Everything depends on the chunk index only, so resuming at any chunk replays the same switches.

Users give switches in seconds (the Prompt Schedule node, the CLI's --prompt-at): `timed_schedule`
turns them into chunks with one set of rules and messages for both. A state file records the schedule
(`schedule_record`); a resumed video must keep every switch it has already gone through, and may
change the ones still to come (`schedule_differences`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

CUTS = ("none", "sink", "all")


@dataclass(frozen=True)
class PromptEntry:
    embeds: torch.Tensor          # (B, tokens, text_dim)
    start_chunk: int = 0          # first chunk it conditions (blended in over `transition` chunks)
    transition: int = 0           # chunks over which it blends in from the previous prompt
    recache: bool = True
    cut: str = "none"

    def __post_init__(self):
        if self.cut not in CUTS:
            raise ValueError(f"cut '{self.cut}' unknown; choose one of {', '.join(CUTS)}")
        if self.start_chunk < 0 or self.transition < 0:
            raise ValueError(f"a prompt's first chunk ({self.start_chunk}) and transition ({self.transition} "
                             "chunks) must be >= 0")


@dataclass(frozen=True)
class Switch:
    """What happens before chunk `chunk`: the prompt entry becomes `entry`."""
    entry: int
    recache: bool
    cut: str


class PromptSchedule:
    def __init__(self, entries: list[PromptEntry]):
        if not entries:
            raise ValueError("the prompt schedule is empty: give at least one prompt")
        for i, (a, b) in enumerate(zip(entries, entries[1:]), start=1):
            if b.start_chunk <= a.start_chunk:
                raise ValueError(f"prompt {i + 1} starts at chunk {b.start_chunk}, not after prompt {i}'s chunk "
                                 f"{a.start_chunk}: order the entries by time, at least one chunk apart")
        widths = {e.embeds.shape[-1] for e in entries}
        batches = {e.embeds.shape[0] for e in entries}
        if len(widths) > 1 or len(batches) > 1:
            raise ValueError(f"the prompts have different widths {sorted(widths)} or batch sizes {sorted(batches)}: "
                             "encode them all with the same text encoder")
        self.entries = list(entries)

    def entry_at(self, chunk: int) -> int:
        """Index of the entry whose prompt (blended in or not) conditions `chunk`."""
        return max([0] + [i for i, e in enumerate(self.entries) if e.start_chunk <= chunk])

    def weight(self, chunk: int) -> tuple[int, float]:
        """(entry, weight of that entry's prompt against the previous one) for `chunk`."""
        i = self.entry_at(chunk)
        e = self.entries[i]
        if i == 0 or e.transition == 0:
            return i, 1.0
        return i, min(1.0, (chunk - e.start_chunk + 1) / e.transition)

    def embeds(self, chunk: int) -> torch.Tensor:
        i, w = self.weight(chunk)
        new = self.entries[i].embeds
        if w == 1.0:
            return new
        old = self.entries[i - 1].embeds
        n = max(old.shape[1], new.shape[1])          # shorter prompts are zero-padded, as the DiT pads them
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1]))
        return torch.lerp(pad(old).float(), pad(new).float(), w)

    def switch_before(self, chunk: int) -> Switch | None:
        """The cut and re-cache to apply before `chunk`: at the first chunk of an entry (the cut) and
        at the first chunk its prompt is fully in (the re-cache). The first entry never switches."""
        i = self.entry_at(chunk)
        e = self.entries[i]
        starts = chunk == e.start_chunk
        full_now = chunk == e.start_chunk + max(e.transition, 1) - 1
        if i == 0 or not (starts or full_now):
            return None
        return Switch(i, recache=e.recache and full_now, cut=e.cut if starts else "none")


# ----------------------------------------------------------------------------- switches in seconds

FPS = 16                 # frames per second of Wan2.1 video
FRAMES_PER_LATENT = 4    # video frames per latent frame (after the first)


def seconds_per_chunk(chunk_frames: int) -> float:
    return FRAMES_PER_LATENT * chunk_frames / FPS


def switch_chunk(seconds: float, chunk_frames: int) -> int:
    """Chunk (counted from the run's first) at whose start a switch at `seconds` takes effect: the
    nearest chunk boundary."""
    return int(round(seconds * FPS / (FRAMES_PER_LATENT * chunk_frames)))


@dataclass(frozen=True)
class TimedPrompt:
    """A prompt of a schedule given in time: it takes over `seconds` after the first generated frame."""
    embeds: torch.Tensor          # (B, tokens, text_dim)
    seconds: float = 0.0
    transition: int = 0           # chunks
    recache: bool = True
    cut: str = "none"


class ScheduleError(ValueError):
    """A timed schedule that cannot work. `part` names the setting at fault: "start", "transition" or
    "cut", so that the node and the CLI can name their own input for it."""

    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


def timed_schedule(prompts: list[TimedPrompt], chunks: int, chunk_frames: int, first_chunk: int = 0) -> PromptSchedule:
    """The PromptSchedule of a run that generates `chunks` chunks (first_chunk .. first_chunk + chunks - 1)
    from prompts timed in seconds from the run's first generated frame. The rules (and the words) the
    node and the CLI share: the first prompt starts at 0 s; every later one starts inside the run, at
    least one chunk after the one before; a transition ends inside the run and before the next switch."""
    span = seconds_per_chunk(chunk_frames)
    starts: list[int] = []
    for n, p in enumerate(prompts, start=1):
        _check_fields(n, p)
        rel = switch_chunk(p.seconds, chunk_frames)
        if n == 1 and p.seconds != 0:
            raise ScheduleError("start", f"the first prompt of the schedule starts at {p.seconds} s: the first "
                                         "prompt must start at 0 s")
        if n > 1 and rel >= chunks:
            raise ScheduleError("start", f"prompt {n} starts at {p.seconds} s, past the end of the {chunks * span:g} s "
                                         f"this run generates ({chunks} chunks of {span:g} s): lower its start time "
                                         "or make the video longer")
        if n > 1 and rel <= starts[-1]:
            raise ScheduleError("start", f"prompt {n} starts at {p.seconds} s, which rounds to chunk {rel}, not after "
                                         f"prompt {n - 1}: start times must increase by at least one chunk "
                                         f"({span:g} s)")
        if n > 1 and rel + p.transition > chunks:
            raise ScheduleError("transition", f"prompt {n}'s transition of {p.transition} chunks from {p.seconds} s "
                                              f"(chunk {rel} of {chunks}) runs past the end of the video: use at most "
                                              f"{chunks - rel} chunks, or make the video longer")
        starts.append(rel)
    for n in range(2, len(prompts)):          # prompt n's transition against prompt n + 1's start
        p, end, nxt = prompts[n - 1], starts[n - 1] + prompts[n - 1].transition, starts[n]
        if end > nxt:
            raise ScheduleError("transition", f"prompt {n}'s transition of {p.transition} chunks (chunks "
                                              f"{starts[n - 1]}-{end - 1}) overlaps prompt {n + 1}, which starts at "
                                              f"{prompts[n].seconds} s (chunk {nxt}): use at most "
                                              f"{nxt - starts[n - 1]} chunks, or start prompt {n + 1} later")
    entries = [PromptEntry(p.embeds, start_chunk=first_chunk + rel, transition=p.transition, recache=p.recache,
                           cut=p.cut) for p, rel in zip(prompts, starts)]
    try:
        return PromptSchedule(entries)
    except ValueError as e:
        raise ScheduleError("start", str(e)) from None


def _check_fields(n: int, p: TimedPrompt) -> None:
    if not 0 <= p.seconds < float("inf"):                        # NaN fails too
        raise ScheduleError("start", f"prompt {n} starts at {p.seconds} s: use a number of seconds >= 0")
    if isinstance(p.transition, bool) or not isinstance(p.transition, int) or p.transition < 0:
        raise ScheduleError("transition", f"prompt {n}'s transition of {p.transition} chunks: use a whole number "
                                          "of chunks >= 0 (0: switch at once)")
    if p.cut not in CUTS:
        raise ScheduleError("cut", f"prompt {n}'s cut '{p.cut}' is unknown: choose one of {', '.join(CUTS)}")


# ----------------------------------------------------------------------------- resuming

def embeds_digest(embeds: torch.Tensor) -> str:
    t = embeds.detach().float().contiguous().cpu()
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16] + "x".join(map(str, t.shape))


def schedule_record(schedule: PromptSchedule) -> list[dict]:
    """What a state file keeps of the schedule a video was made with: per prompt, a digest of its
    embeddings, its first chunk, transition, re-cache and cut."""
    return [{"embeds": embeds_digest(e.embeds), "chunk": e.start_chunk, "transition": e.transition,
             "recache": e.recache, "cut": e.cut} for e in schedule.entries]


def schedule_differences(stored: list[dict], schedule: PromptSchedule, done: int, chunk_frames: int,
                         first_chunk: int = 0) -> list[str]:
    """How `schedule` differs from the stored one in the chunks before `done` (those already made): the
    first prompt's embeddings, and every switch before chunk `done` with all its settings. Switches at
    chunk `done` or later have not happened yet: they may be added, moved or changed."""
    span = seconds_per_chunk(chunk_frames)
    at = lambda r: f"{(r['chunk'] - first_chunk) * span:g} s"
    past = lambda rec: [r for i, r in enumerate(rec) if i == 0 or r["chunk"] < done]
    old, new = past(stored), past(schedule_record(schedule))
    diffs = []
    for n, (a, b) in enumerate(zip(old, new), start=1):
        if a["embeds"] != b["embeds"]:
            diffs.append(f"prompt {n}'s embeddings differ" + (f" (from {at(a)})" if n > 1 else ""))
        if n == 1:
            continue                    # the first prompt has no switch
        if a["chunk"] != b["chunk"]:
            diffs.append(f"prompt {n} starts at {at(a)} in the file, at {at(b)} here")
        for key, word in (("transition", "transition"), ("recache", "re-cache"), ("cut", "cut")):
            if a[key] != b[key]:
                show = (lambda v: "on" if v else "off") if key == "recache" else \
                    (lambda v: f"{v} chunks") if key == "transition" else (lambda v: f"'{v}'")
                diffs.append(f"prompt {n}'s {word} is {show(a[key])} in the file, {show(b[key])} here")
    for n, r in enumerate(old[len(new):], start=len(new) + 1):
        diffs.append(f"prompt {n} (from {at(r)}) is missing here")
    for n, r in enumerate(new[len(old):], start=len(old) + 1):
        diffs.append(f"prompt {n} (from {at(r)}) was not in the file's schedule")
    return diffs
