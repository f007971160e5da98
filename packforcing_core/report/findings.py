"""From per-second measurements to findings: reference levels, drift scores, alarms, one summary line.

Every threshold lives in this file, named, with the reason for its value.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .analyzer import Measurements

# Level metrics: (column, name in the summary, floor of the reference used as a denominator, alarm at
# a sustained relative change of). Sharpness moves most with content, exposure least.
LEVELS = (("sharpness", "sharpness", 1.0, 0.25), ("brightness", "brightness", 0.02, 0.20),
          ("contrast", "contrast", 0.02, 0.25), ("saturation", "saturation", 0.02, 0.25),
          ("motion", "motion", 0.05, 0.60))
COLOUR_ALARM = 8.0             # ΔE76 of the mean colour: ~2-3 is just noticeable side by side; 8 is obvious
SUSTAIN = 3                    # seconds a change must hold (rolling mean) to raise an alarm
STILL_CHANGE = 0.5             # mean |frame difference| (0-255 levels) below which a second is still
STILL_MOTION = 0.05            # px/frame below which a second is still ...
STILL_RELATIVE = 0.10          # ... or below this share of the reference motion
MIN_FREEZE = 2                 # seconds of stillness that count as a freeze
SPIKE_FACTOR, SPIKE_FLOOR = 2.0, 1.0   # a frame change above 2x the local median + 1 level is a spike
PERIOD_SHARE = 0.6             # share of gaps within 1 frame of the median gap for a periodic flicker
BOUNDARY_SHARE = 0.6           # share of flicker events within 1 frame of a chunk boundary
BOUNDARY_RATIO = 2.0           # median change at boundaries / elsewhere that counts as boundary flicker
LOOP_SIMILARITY = 0.85         # correlation of a second with an earlier window to count as a repeat (a loop
                               # that is not frame-aligned with the seconds reads ~0.9, unrelated seconds < 0.3) ...
LOOP_CONTRAST = 0.5            # ... and at most this share of the distance to the previous second
MIN_LOOP = 2                   # seconds of consecutive repeats that count as a loop


def reference_levels(ms: Measurements) -> dict:
    """Mean of each column over the reference seconds (weighted by their frame counts)."""
    r = ms.reference_seconds
    w = ms.seconds["frames"][:r]
    out = {}
    for k, v in ms.seconds.items():
        part, ok = v[:r], ~np.isnan(v[:r])
        out[k] = float(np.average(part[ok], weights=w[ok])) if ok.any() and w[ok].sum() > 0 else math.nan
    return out


def colour_shift(ms: Measurements, ref: dict) -> np.ndarray:
    s = ms.seconds
    return np.sqrt((s["lab_l"] - ref["lab_l"]) ** 2 + (s["lab_a"] - ref["lab_a"]) ** 2 +
                   (s["lab_b"] - ref["lab_b"]) ** 2)


def vde(values: np.ndarray, m1: float, scale: float) -> float:
    """LV-Bench's Video Drift Error over segments m_1 (the reference) .. m_N (each later second):
    sum_{i>=2} w_i |m_i - m_1| / scale with w_i = N - i + 1, divided by sum w_i so that it reads as a
    weighted mean relative change (0.2 = 20%) whatever the length. The weights favour early seconds:
    drift that starts early counts more."""
    v = values[~np.isnan(values)]
    if v.size == 0 or not math.isfinite(m1):
        return math.nan
    w = np.arange(v.size, 0, -1, dtype=np.float64)        # N - i + 1 for i = 2 .. N
    return float((w * np.abs(v - m1)).sum() / scale / w.sum())


def knee(y: np.ndarray, end: int, floor: float | None = None) -> int:
    """Onset of a change in y[:end]: the split t minimising the squared error of a constant on [0, t)
    plus a straight line on [t, end) (fits a step as well as a ramp). With a floor the fit is on
    log(max(y, floor)): relative changes such as blur's decay of sharpness are closer to straight
    there, so the onset is not pulled late. Prefix sums make it O(end)."""
    y = np.asarray(y[:end], np.float64)
    if floor is not None:
        y = np.log(np.maximum(y, floor))
    y = np.nan_to_num(y, nan=float(np.nanmean(y)) if np.isfinite(y).any() else 0.0)
    n = len(y)
    if n < 4:
        return 0
    x = np.arange(n, dtype=np.float64)
    cs = lambda a: np.concatenate([[0.0], np.cumsum(a)])
    sy, syy, sx, sxx, sxy = cs(y), cs(y * y), cs(x), cs(x * x), cs(x * y)
    best, best_t = math.inf, 0
    for t in range(1, n - 1):
        sse_c = syy[t] - sy[t] ** 2 / t
        k = n - t
        Sy, Syy, Sx, Sxx, Sxy = sy[n] - sy[t], syy[n] - syy[t], sx[n] - sx[t], sxx[n] - sxx[t], sxy[n] - sxy[t]
        vx = Sxx - Sx * Sx / k
        sse_l = Syy - Sy * Sy / k - ((Sxy - Sx * Sy / k) ** 2 / vx if vx > 1e-12 else 0.0)
        if sse_c + sse_l < best - 1e-12:
            best, best_t = sse_c + sse_l, t
    return best_t


def _held_from(dev: np.ndarray, end: int, level: float) -> int | None:
    """First second from which dev stays beyond `level` (signed) up to `end`."""
    beyond = np.nan_to_num(dev[:end] / level, nan=0.0) >= 1.0
    if not beyond[end - 1]:
        return None
    inside = np.flatnonzero(~beyond)
    return int(inside[-1] + 1) if inside.size else 0


def onset(y: np.ndarray, dev: np.ndarray, end: int, level: float, floor: float | None = None) -> int:
    """When a change began: the earlier of the knee (exact for steps and ramps, late for changes that
    are fast at first, such as blur's decay of sharpness) and the first second from which the change
    stays beyond half its alarm level (exact for those, late for slow ramps)."""
    t = knee(y, end, floor)
    held = _held_from(dev, end, level / 2)
    return t if held is None else min(t, held)


def _sustained_extreme(dev: np.ndarray, start: int) -> tuple[float, int]:
    """The rolling SUSTAIN-second mean of dev (from `start` on) furthest from 0, and the end of its window."""
    k = min(SUSTAIN, len(dev) - start)
    if k < 1:
        return 0.0, len(dev)
    d = np.nan_to_num(dev[start:], nan=0.0)
    roll = np.convolve(d, np.ones(k) / k, mode="valid")
    i = int(np.argmax(np.abs(roll)))
    return float(roll[i]), start + i + k


def level_alarms(ms: Measurements, ref: dict) -> list[dict]:
    out = []
    for col, name, floor, limit in LEVELS:
        r = ref[col]
        if not math.isfinite(r):
            continue
        dev = (ms.seconds[col] - r) / max(abs(r), floor)
        value, end = _sustained_extreme(dev, ms.reference_seconds)
        if abs(value) < limit or (col == "motion" and value < 0 and _is_stopped_elsewhere(ms, ref)):
            continue
        t = onset(ms.seconds[col], dev, end, math.copysign(limit, value), floor)
        verb = "fell" if value < 0 else "rose"
        out.append({"kind": col, "start": t, "end": end, "value": round(value, 4),
                    "text": f"{name} {verb} {abs(value) * 100:.0f}% after {t} s"})
    return out


def _is_stopped_elsewhere(ms: Measurements, ref: dict) -> bool:
    """Motion that dies is told as a freeze; no second alarm for the same thing."""
    return bool(still_seconds(ms, ref).any())


def colour_alarm(ms: Measurements, ref: dict, shift: np.ndarray) -> list[dict]:
    value, end = _sustained_extreme(shift, ms.reference_seconds)
    if value < COLOUR_ALARM:
        return []
    t = onset(shift, shift, end, COLOUR_ALARM)
    window = slice(end - min(SUSTAIN, end - ms.reference_seconds), end)
    d = {k: float(np.nanmean(ms.seconds[c][window]) - ref[c]) for k, c in (("L", "lab_l"), ("a", "lab_a"),
                                                                            ("b", "lab_b"))}
    words = {"L": ("lighter", "darker"), "a": ("redder", "greener"), "b": ("yellower", "bluer")}
    big = max(abs(v) for v in d.values())
    towards = [words[k][0 if v > 0 else 1] for k, v in d.items() if abs(v) >= 0.4 * big]
    return [{"kind": "colour", "start": t, "end": end, "value": round(value, 2), "delta_lab": d,
             "text": f"colours shifted (ΔE {value:.0f}, {', '.join(towards)}) after {t} s"}]


def still_seconds(ms: Measurements, ref: dict) -> np.ndarray:
    s = ms.seconds
    limit = max(STILL_MOTION, STILL_RELATIVE * (ref["motion"] if math.isfinite(ref["motion"]) else 0.0))
    with np.errstate(invalid="ignore"):
        return (s["change"] < STILL_CHANGE) | (s["motion"] < limit)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def freeze_alarms(ms: Measurements, still: np.ndarray) -> list[dict]:
    n, out = len(still), []
    for a, b in _runs(still):
        if b - a < MIN_FREEZE:
            continue
        if a == 0 and b == n:
            text = "no motion at all (a still video)"
        elif b == n:
            text = f"motion stopped at {a} s"
        else:
            text = f"frozen {a}-{b} s"
        out.append({"kind": "freeze", "start": a, "end": b, "text": text})
    return out


def _rolling_median(c: np.ndarray, half: int, block: int = 4096) -> np.ndarray:
    """Centred rolling median (window 2*half+1, nan ignored), computed in blocks to bound memory."""
    p = np.pad(c.astype(np.float32), half, mode="constant", constant_values=np.nan)
    out = np.empty(len(c), np.float32)
    for i in range(0, len(c), block):
        j = min(len(c), i + block)
        win = np.lib.stride_tricks.sliding_window_view(p[i:j + 2 * half], 2 * half + 1)
        with warnings.catch_warnings():             # all-nan windows (a one-frame video) give nan
            warnings.simplefilter("ignore", RuntimeWarning)
            out[i:j] = np.nanmedian(win, axis=1)
    return out


def flicker(ms: Measurements, boundaries: list[int]) -> dict:
    """Spikes of the frame-to-frame change against its local median; their period; their alignment
    with the chunk boundaries; the median change at boundaries against elsewhere."""
    c = ms.change
    half = max(2, int(round(ms.fps)))
    base = _rolling_median(c, half)
    with np.errstate(invalid="ignore"):
        spikes = np.flatnonzero(c > SPIKE_FACTOR * base + SPIKE_FLOOR)
    events = [int(f) for k, f in enumerate(spikes) if k == 0 or f - spikes[k - 1] > 2]   # flash in + out = 1
    out = {"events": len(events), "event_frames": events[:1000], "period_frames": None,
           "at_chunk_boundaries": None, "boundary_ratio": None}
    if len(events) >= 3:
        gaps = np.diff(events)
        g = float(np.median(gaps))
        if np.mean(np.abs(gaps - g) <= 1) >= PERIOD_SHARE:
            out["period_frames"] = int(round(g))
    bset = np.array(sorted(b for b in boundaries if 0 < b < ms.frames))
    if len(bset) and events:
        near = [np.min(np.abs(bset - e)) <= 1 for e in events]
        out["at_chunk_boundaries"] = bool(np.mean(near) >= BOUNDARY_SHARE)
    if len(bset) >= 3:
        at = np.zeros(len(c), bool)
        at[bset] = True
        at[0] = False
        other = ~at
        other[0] = False
        if other.any() and np.nanmedian(c[other]) > 1e-6:
            out["boundary_ratio"] = round(float(np.nanmedian(c[at]) / np.nanmedian(c[other])), 3)
    out["per_second"] = np.bincount((np.array(events) / ms.fps + 1e-9).astype(int),
                                    minlength=len(ms.seconds["second"]))[:len(ms.seconds["second"])]
    return out


def flicker_alarms(ms: Measurements, fl: dict) -> list[dict]:
    first = fl["event_frames"][0] / ms.fps if fl["events"] else 0.0
    where = " at the chunk boundaries" if fl["at_chunk_boundaries"] else ""
    if fl["period_frames"]:
        p = fl["period_frames"]
        return [{"kind": "flicker", "start": int(first), "end": len(ms.seconds["second"]), "period_frames": p,
                 "text": f"flicker every {p} frames ({p / ms.fps:.2f} s){where}"}]
    if fl["at_chunk_boundaries"] and fl["events"] >= 3:
        return [{"kind": "flicker", "start": int(first), "end": len(ms.seconds["second"]),
                 "text": f"{fl['events']} jumps at chunk boundaries"}]
    if fl["boundary_ratio"] is not None and fl["boundary_ratio"] >= BOUNDARY_RATIO:
        return [{"kind": "flicker", "start": 0, "end": len(ms.seconds["second"]),
                 "text": f"frame change at chunk boundaries {fl['boundary_ratio']:.1f}x the rest"}]
    return []


def loops(ms: Measurements, still: np.ndarray) -> list[dict]:
    """Runs of seconds that each repeat an earlier window, at the same lag (within a quarter second)."""
    s = ms.seconds
    sim, adj, lag = s["loop_similarity"], s["adjacent_similarity"], s["loop_lag"]
    with np.errstate(invalid="ignore"):
        repeat = (sim >= LOOP_SIMILARITY) & ((1 - sim) <= LOOP_CONTRAST * (1 - np.nan_to_num(adj, nan=-1.0))) \
            & ~still
    out, a = [], None
    for i in range(len(sim) + 1):
        same = a is not None and i < len(sim) and repeat[i] and abs(lag[i] - lag[a]) <= 0.25
        if same:
            continue
        if a is not None and i - a >= MIN_LOOP:
            l = float(np.median(lag[a:i]))
            out.append({"kind": "loop", "start": a, "end": i, "repeats_start": round(a - l, 2),
                        "repeats_end": round(i - l, 2), "lag": l,
                        "similarity": round(float(np.mean(sim[a:i])), 4),
                        "text": f"seconds {a}-{i} repeat {round(a - l)}-{round(i - l)}"})
        a = i if i < len(sim) and repeat[i] else None
    return out
