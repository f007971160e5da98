"""Streaming pass over a video's frames: per-second aggregates and small thumbnails, never frames.

Memory grows with the video's duration only, by ~4 KB per second whatever the resolution (measured
with tracemalloc): per second ~20 numbers, four 12x12 quarter-second thumbnails (2.3 KB, for loop
search) and a 64-bit hash; per frame one float (the frame-to-frame change, for flicker). An hour
holds ~15 MB.
The frames themselves are dropped as soon as they are measured.
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

import numpy as np

from . import measures as m

QUARTER_SIDE = 12              # loop thumbnails: 12x12 luma, one per quarter second
MIN_LOOP_LAG = 2.0             # seconds: a repeat closer than this is motion, not a loop
FRAME_COLUMNS = ("sharpness", "brightness", "contrast", "saturation", "highlights", "shadows",
                 "lab_l", "lab_a", "lab_b", "change", "motion")


@dataclass
class Measurements:
    """What the pass keeps: per-second columns (numpy arrays of equal length) and per-frame change."""
    fps: float
    frames: int
    width: int
    height: int
    reference_seconds: int
    seconds: dict = field(default_factory=dict)      # column -> np.ndarray (one value per second)
    change: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))   # per frame, [0] = nan


class _Second:
    """Sums over the frames of one second."""

    def __init__(self):
        self.n = 0
        self.sums = dict.fromkeys(FRAME_COLUMNS, 0.0)
        self.counts = dict.fromkeys(FRAME_COLUMNS, 0)
        self.change_max = 0.0
        self.key_luma = None           # working luma of the second's first frame (SSIM, hash)

    def add(self, values: dict) -> None:
        self.n += 1
        for k, v in values.items():
            if not math.isnan(v):
                self.sums[k] += v
                self.counts[k] += 1

    def means(self) -> dict:
        return {k: (self.sums[k] / self.counts[k] if self.counts[k] else math.nan) for k in FRAME_COLUMNS}


class QuarterBank:
    """Standardised quarter-second thumbnails in a growing buffer, and the best earlier match of each
    new second: a second is compared as a window of four quarters with every earlier window at least
    MIN_LOOP_LAG before it, at every quarter-second offset, so loops whose period is not a whole
    number of seconds are found too."""

    def __init__(self, quarters_per_lag: int):
        self.buf = np.zeros((64, QUARTER_SIDE * QUARTER_SIDE), np.float32)
        self.n = 0
        self.min_lag = quarters_per_lag

    def append(self, v: np.ndarray) -> None:
        if self.n == len(self.buf):
            self.buf = np.concatenate([self.buf, np.zeros_like(self.buf)])
        self.buf[self.n] = v
        self.n += 1

    def match(self, start: int) -> tuple[float, int, float]:
        """(best correlation, its lag in quarters, correlation with the window one second back) of the
        window of quarters [start, start + 4)."""
        win = self.buf[start:start + 4]
        adjacent = float(np.mean(np.einsum("ij,ij->i", self.buf[start - 4:start], win))) if start >= 4 else math.nan
        last = start - self.min_lag                       # latest window start allowed
        if last < 0:
            return math.nan, 0, adjacent
        g = np.einsum("qd,jd->qj", self.buf[:last + 4], win)   # (earlier quarters, 4); BLAS is slower here
        sims = sum(g[j:j + last + 1, j] for j in range(4)) / 4.0
        b = int(np.argmax(sims))
        return float(sims[b]), start - b, adjacent


class VideoAnalyzer:
    """Feed frames one by one with add(); finish() returns the Measurements."""

    def __init__(self, fps: float, reference_seconds: int = 2):
        if not (1 <= fps < 1000):                 # per-second aggregates need at least a frame a second
            raise ValueError(f"fps must be from 1 to 1000, got {fps}")
        self.fps, self.reference_seconds = float(fps), max(1, int(reference_seconds))
        self.i = 0
        self.shape = None
        self.prev_luma = None
        self.second, self.cur = 0, _Second()
        self.quarter, self.q_sum, self.q_n = 0, None, 0
        self.bank = QuarterBank(max(4, round(MIN_LOOP_LAG * 4)))
        self.rows: list[dict] = []
        self.change = array("f")
        self.ref_keys: list[tuple[np.ndarray, int]] = []     # (working luma, hash) of the reference seconds
        self.pending: list[int] = []                          # seconds waiting for the reference to close

    def add(self, frame) -> None:
        u8 = m.as_uint8(frame)
        if self.shape is None:
            self.shape, self.f = u8.shape, m.work_factor(*u8.shape[:2])
        elif u8.shape != self.shape:
            raise ValueError(f"frame {self.i} has shape {u8.shape}, the first frame {self.shape}: "
                             "all frames of a video must have the same size")
        second = int(math.floor(self.i / self.fps + 1e-9))
        quarter = int(math.floor(self.i * 4 / self.fps + 1e-9))
        if quarter != self.quarter:
            self._close_quarter(quarter)
        if second != self.second:
            self._close_second()
            self.second = second
        self._measure(u8)
        self.i += 1

    def _measure(self, u8: np.ndarray) -> None:
        rgb = m.block_mean(u8, self.f) / 255.0
        y = m.luma(rgb)
        lab = m.srgb_to_lab(rgb).reshape(-1, 3).mean(axis=0)
        values = {"sharpness": m.laplacian_variance(u8), "brightness": float(y.mean()),
                  "contrast": float(y.std()), "saturation": float(m.saturation(rgb).mean()),
                  "highlights": float((y >= 250 / 255).mean()), "shadows": float((y <= 5 / 255).mean()),
                  "lab_l": float(lab[0]), "lab_a": float(lab[1]), "lab_b": float(lab[2]),
                  "change": math.nan, "motion": math.nan}
        if self.prev_luma is not None:
            values["change"] = float(np.abs(y - self.prev_luma).mean() * 255.0)
            values["motion"] = m.normal_flow(self.prev_luma, y) * self.f
            self.cur.change_max = max(self.cur.change_max, values["change"])
        self.change.append(values["change"])
        if self.cur.key_luma is None:
            self.cur.key_luma = y
        self.cur.add(values)
        thumb = m.resize_area(y, QUARTER_SIDE, QUARTER_SIDE)
        self.q_sum = thumb if self.q_sum is None else self.q_sum + thumb
        self.q_n += 1
        self.prev_luma = y

    def _close_quarter(self, next_quarter: int) -> None:
        v = m.standardized(self.q_sum / self.q_n)
        for _ in range(next_quarter - self.quarter):        # below 4 fps some quarters hold no frame
            self.bank.append(v)
        self.quarter, self.q_sum, self.q_n = next_quarter, None, 0

    def _close_second(self) -> None:
        s, cur = self.second, self.cur
        row = {"second": s, "frames": cur.n, **cur.means(), "change_max": cur.change_max}
        start = 4 * s
        if self.bank.n >= start + 4:
            row["loop_similarity"], lag, row["adjacent_similarity"] = self.bank.match(start)
            row["loop_lag"] = lag / 4.0
        else:
            row["loop_similarity"] = row["adjacent_similarity"] = row["loop_lag"] = math.nan
        key_hash = m.phash(cur.key_luma)
        row["_key"] = (cur.key_luma, key_hash)
        self.rows.append(row)
        if s < self.reference_seconds:
            self.ref_keys.append((cur.key_luma, key_hash))
            self.pending.append(s)
            if s == self.reference_seconds - 1:
                self._flush_pending()
        else:
            self._compare_to_reference(row)
        self.cur = _Second()

    def _compare_to_reference(self, row: dict) -> None:
        y, h = row.pop("_key")
        row["ssim"] = max(m.ssim(ky, y) for ky, _ in self.ref_keys)
        row["phash_distance"] = float(min(m.hamming(kh, h) for _, kh in self.ref_keys))

    def _flush_pending(self) -> None:
        for s in self.pending:
            self._compare_to_reference(self.rows[s])
        self.pending = []

    def finish(self) -> Measurements:
        if self.i == 0:
            raise ValueError("the video has no frames")
        if self.q_n:
            self._close_quarter(self.quarter + 1)
        if self.cur.n:
            self._close_second()
        self._flush_pending()
        cols = [k for k in self.rows[0] if not k.startswith("_")]
        seconds = {k: np.array([r[k] for r in self.rows], np.float64) for k in cols}
        h, w = self.shape[:2]
        return Measurements(fps=self.fps, frames=self.i, width=w, height=h,
                            reference_seconds=min(self.reference_seconds, len(self.rows)),
                            seconds=seconds, change=np.frombuffer(self.change, np.float32).copy())
