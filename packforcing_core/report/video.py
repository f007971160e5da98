"""Reading a video frame by frame (PyAV, or a .npy of frames memory-mapped) and writing the report's
files. Nothing here holds more than one decoded frame."""
from __future__ import annotations

import io
import json
import os
from typing import Iterator

import numpy as np

from ..io.files import write_files
from .analysis import analyze
from .result import Report

SUFFIXES = {"png": ".report.png", "json": ".report.json", "csv": ".report.csv"}


class FrameSource:
    """Frames of a video file as an iterator of (H, W, 3) uint8 arrays, decoded one at a time.

    `.npy` files (frames written by `python -m packforcing_core generate`) are memory-mapped and
    need `fps`; anything else is opened with PyAV, which also accepts a file-like object."""

    def __init__(self, source, fps: float | None = None):
        self.source, self.container = source, None
        name = source if isinstance(source, (str, os.PathLike)) else ""
        if str(name).endswith(".npy"):
            self.array = np.load(source, mmap_mode="r")
            if self.array.ndim != 4 or self.array.shape[-1] != 3 or self.array.dtype != np.uint8:
                raise ValueError(f"{name}: expected uint8 frames (frames, height, width, 3), got "
                                 f"{self.array.dtype} {self.array.shape}")
            self.fps = float(fps or 16.0)
            self.frames, self.height, self.width = self.array.shape[:3]
            return
        import av
        self.array = None
        try:
            self.container = av.open(source)
        except (av.FFmpegError, OSError) as e:
            raise ValueError(f"{name or 'the video'}: cannot be opened as a video ({e})") from e
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{name or 'the file'} has no video stream")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = fps or stream.average_rate or stream.guessed_rate
        if not rate:
            self.container.close()
            raise ValueError(f"{name or 'the video'}: the frame rate is unknown; give it (--fps)")
        self.stream, self.fps = stream, float(rate)
        self.frames = int(stream.frames or 0) or None
        self.width, self.height = stream.codec_context.width, stream.codec_context.height

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.array is not None:
            for frame in self.array:
                yield np.asarray(frame)
            return
        try:
            for frame in self.container.decode(self.stream):
                yield frame.to_ndarray(format="rgb24")
        finally:
            self.close()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def open_frames(source, fps: float | None = None) -> FrameSource:
    return FrameSource(source, fps)


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
