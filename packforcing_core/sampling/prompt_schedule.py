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
"""
from __future__ import annotations

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
            raise ValueError("start_chunk and transition must be >= 0")


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
