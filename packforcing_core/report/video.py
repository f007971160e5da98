"""The report of a video file (read frame by frame by io.video, one decoded frame at a time) and
writing the report's files."""
from __future__ import annotations

import io
import json
import os

from ..io.files import write_files
from ..io.video import FrameSource, open_frames  # noqa: F401  (open_frames: part of the report's API)
from .analysis import analyze
from .result import Report

SUFFIXES = {"png": ".report.png", "json": ".report.json", "csv": ".report.csv"}


def write_report(report: Report, out_dir: str, stem: str, plot: bool = True, option: str = "--out") -> dict:
    """<stem>.report.png / .json / .csv in out_dir, all or none (`option` is named when they cannot be
    written); returns the paths."""
    from .plot import render
    paths = {k: os.path.join(out_dir, stem + s) for k, s in SUFFIXES.items() if plot or k != "png"}
    data = {"json": json.dumps(report.to_dict(), indent=1, ensure_ascii=False).encode(),
            "csv": report.csv_text().encode()}
    if plot:
        buf = io.BytesIO()
        render(report).save(buf, "PNG", optimize=True)
        data["png"] = buf.getvalue()
    write_files({paths[k]: data[k] for k in paths}, option)
    return paths


def report_video(source, boundaries=(), chunk_latent_frames: int = 0, switches=(), fps: float | None = None,
                 reference_seconds: int = 2, on_frame=None) -> Report:
    """The report of a video file; boundaries from `chunk_latent_frames` (Wan2.1 chunks) when given."""
    frames = FrameSource(source, fps)
    name = os.path.basename(str(source)) if isinstance(source, (str, os.PathLike)) else ""
    try:
        return analyze(frames, frames.fps, boundaries, switches, name, reference_seconds, chunk_latent_frames,
                       on_frame)
    finally:
        frames.close()
