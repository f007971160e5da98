"""Builds the synthetic clip behind docs/report_example.png.

A smooth random texture panned by a moving window (320x192, 16 fps, 120 s)
with the failures of long autoregressive video injected at known times: a prompt switch at 40 s
(a colour change), a soft jump at every chunk boundary after it, seconds 80-90 replaying 20-30, blur
growing from 70 s and motion stopping at 95 s.

    python docs/make_report_example.py /tmp/example.mp4
    python -m packforcing_core report /tmp/example.mp4 --chunk-frames 4 --switches 40    # /tmp/example.report.*
    cp /tmp/example.report.png docs/report_example.png
"""
from __future__ import annotations

import math
import sys
from fractions import Fraction

import av
import numpy as np

FPS, H, W, SECONDS = 16, 192, 320, 120


def texture(h: int, w: int) -> np.ndarray:
    t = np.random.default_rng(7).random((h // 2 + 2, w // 2 + 2, 3)).astype(np.float32)
    t = np.kron(t, np.ones((2, 2, 1), np.float32))[:h, :w]            # blocks, then smoothed: soft shapes
    for _ in range(2):
        p = np.pad(t, ((1, 1), (1, 1), (0, 0)), mode="edge")
        t = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return (t - t.min()) / (t.max() - t.min())


def blur(f: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.1:
        return f
    r = int(3 * sigma) + 1
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    p = np.pad(f, ((r, r), (r, r), (0, 0)), mode="edge")
    p = sum(k[i] * p[i:i + f.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * p[:, i:i + f.shape[1]] for i in range(2 * r + 1))


def frames():
    n = SECONDS * FPS
    tex = texture(H + 80, W + n + 1)
    boundaries = set(range(13, n, 16))                    # chunks of 4 latent frames
    for i in range(n):
        t = i / FPS
        src = i - 60 * FPS if 80 <= t < 90 else i         # seconds 80-90 replay 20-30
        src = min(src, 95 * FPS)                          # still from 95 s
        dy = int(round(40 + 30 * math.sin(src / 40)))
        f = tex[dy:dy + H, src:src + W].copy()
        if src >= 40 * FPS:                               # prompt 2: warmer light
            f = f * np.array([1.1, 1.0, 0.85], np.float32)
        if src >= 40 * FPS and any(b <= src < b + 1 for b in boundaries):
            f = f + 0.1                                   # a seam at each chunk boundary
        if t >= 70:
            f = blur(f, 0.6 + 2.4 * min(1.0, (t - 70) / 30))
        yield (np.clip(f, 0, 1) * 255).round().astype(np.uint8)


def main(path: str) -> None:
    with av.open(path, "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for f in frames():
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
