"""Reading a video frame by frame: PyAV for video files, a memory-mapped .npy of frames (what
`generate` writes). One reader for every input video (start clips, the health report, training clips),
so a file that is not a video gets the same words everywhere. Holds one decoded frame at a time."""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np


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
                raise ValueError(f"{_quoted(name)}: expected uint8 frames (frames, height, width, 3), got "
                                 f"{self.array.dtype} {self.array.shape}")
            self.fps = float(fps or 16.0)
            self.frames, self.height, self.width = self.array.shape[:3]
            return
        import av
        self.array = None
        try:
            self.container = av.open(source)
        except (av.FFmpegError, OSError) as e:
            raise ValueError(f"{_quoted(name) or 'the video'}: cannot be opened as a video ({e})") from e
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{_quoted(name) or 'the file'} has no video stream (audio only, or not a video?)")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = fps or stream.average_rate or stream.guessed_rate
        if not rate:
            self.container.close()
            raise ValueError(f"{_quoted(name) or 'the video'}: the frame rate is unknown; give it (--fps)")
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



def _quoted(name) -> str:
    return f"'{os.fspath(name)}'" if name else ""
