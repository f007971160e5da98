"""A video's report from its frames: the streaming pass, then the findings."""
from __future__ import annotations

from typing import Callable, Iterable

from .analyzer import VideoAnalyzer
from .result import Report, build


def analyze(frames: Iterable, fps: float, boundaries: Iterable[int] = (), switches: Iterable[float] = (),
            source: str = "", reference_seconds: int = 2, chunk_latent_frames: int = 0,
            on_frame: Callable[[int], None] | None = None) -> Report:
    """The report of a video given as an iterable of (H, W, 3) uint8 or float [0, 1] RGB frames.

    boundaries: video frame indices where a new chunk starts (marked, and tested for flicker), or
    chunk_latent_frames: the chunk length of a Wan2.1 video in latent frames (see wan_chunk_boundaries);
    switches: seconds where the prompt changes (marked); reference_seconds: the opening seconds that
    the later ones are compared with; on_frame(i) is called after each frame (progress, cancel)."""
    analyzer = VideoAnalyzer(fps, reference_seconds)
    for i, frame in enumerate(frames):
        analyzer.add(frame)
        if on_frame is not None:
            on_frame(i)
    ms = analyzer.finish()
    boundaries = list(boundaries) + wan_chunk_boundaries(chunk_latent_frames, ms.frames)
    return build(ms, boundaries, switches, source)


def wan_chunk_boundaries(chunk_latent_frames: int, frames: int) -> list[int]:
    """First video frame of each chunk after the first, for a Wan2.1 video generated in chunks of
    `chunk_latent_frames` latent frames: latent frame 0 decodes to 1 frame, each later one to 4, so
    chunk k starts at video frame 4*k*C - 3."""
    if chunk_latent_frames < 1:
        return []
    step = 4 * chunk_latent_frames
    return list(range(step - 3, frames, step))
