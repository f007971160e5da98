"""Long-video health report: where a video drifts, freezes, flickers or loops, measured without
model weights, streaming over its frames with bounded memory.

    from packforcing_core.report import analyze, report_video, write_report
    report = analyze(frames, fps=16, boundaries=wan_chunk_boundaries(4, n), switches=[30.0])
    report.summary        # "sharpness fell 38% after 70 s; motion stopped at 95 s; seconds 80-90 repeat 20-30"
    write_report(report, "out", "clip")      # out/clip.report.png, .json, .csv

Modules: measures (one frame, or two), analyzer (the streaming pass), findings (thresholds, drift
scores, alarms), result (the report, JSON and CSV), plot (the PNG), video (reading files, writing
the outputs). numpy only, plus PyAV to read video files and Pillow to draw the plot (both come
with ComfyUI).
"""
from __future__ import annotations

from typing import Callable, Iterable

from .analyzer import Measurements, VideoAnalyzer
from .result import COLUMNS, Report, build
from .video import open_frames, report_video, write_report

__all__ = ["COLUMNS", "Measurements", "Report", "VideoAnalyzer", "analyze", "open_frames", "report_video",
           "wan_chunk_boundaries", "write_report"]


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
