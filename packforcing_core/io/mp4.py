"""An h264 mp4 written as frames arrive (PyAV), so a headless run ends in a file any player opens.

Frames are encoded chunk by chunk (nothing but the encoder's look-ahead is held) into `<path>.part`,
which is renamed to `path` only by close(): a run that dies leaves no half-written video under `path`.
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

FPS = 16            # Wan2.1's frame rate


class Mp4Writer:
    def __init__(self, path: str, width: int, height: int, fps: int = FPS, crf: int = 19):
        import av   # PyAV: a dependency of the CLI's video output only

        if width % 2 or height % 2:
            raise ValueError(f"h264 (yuv420p) needs even sizes, got {width}x{height}")
        self.path, self.part = path, path + ".part"
        self.container = av.open(self.part, mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = {"crf": str(crf)}
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        """Append uint8 frames (F, H, W, 3), RGB."""
        import av

        for rgb in frames:
            self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb),
                                                                             format="rgb24")))
        self.frames += len(frames)

    def close(self) -> int:
        """Flush the encoder and move the file into place; returns the number of frames."""
        self.container.mux(self.stream.encode())
        self.container.close()
        os.replace(self.part, self.path)
        return self.frames

    def abort(self) -> None:
        """Drop the partial file (the run failed)."""
        try:
            self.container.close()
        finally:
            if os.path.exists(self.part):
                os.remove(self.part)
