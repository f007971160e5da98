"""The report: per-second table, reference levels, drift scores, findings and the summary line, as
JSON and CSV."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np

from . import findings as fd
from .analyzer import Measurements

FORMAT = "packforcing-video-report"
COLUMNS = ("second", "frames", "sharpness", "brightness", "contrast", "saturation", "highlights", "shadows",
           "lab_l", "lab_a", "lab_b", "colour_shift", "ssim", "phash_distance", "motion", "change", "change_max",
           "flicker_events", "loop_similarity", "loop_lag", "adjacent_similarity", "still")
# Drift (VDE) per metric: (column, m_1, scale). Level metrics are relative to their reference;
# the comparisons with the start are 0 (or 1) at the start by construction, so they get a fixed
# scale instead: ΔE over the 100 units of L*, 1 - SSIM, hash bits over 64.
HASH_BITS = 64
REFERENCE = ("sharpness", "brightness", "contrast", "saturation", "highlights", "shadows", "lab_l", "lab_a",
             "lab_b", "motion", "change")


@dataclass
class Report:
    meta: dict
    per_second: dict                       # column -> np.ndarray
    reference: dict
    drift: dict
    alarms: list
    flicker: dict
    loops: list
    summary: str
    boundaries: list = field(default_factory=list)
    switches: list = field(default_factory=list)

    @property
    def seconds(self) -> int:
        return len(self.per_second["second"])

    def to_dict(self) -> dict:
        return _clean({"format": FORMAT, "version": 1, **self.meta, "summary": self.summary,
                       "alarms": self.alarms, "drift": self.drift, "reference": self.reference,
                       "flicker": {k: v for k, v in self.flicker.items() if k != "per_second"},
                       "loops": self.loops, "chunk_boundaries": self.boundaries, "switches": self.switches,
                       "per_second": {k: self.per_second[k] for k in COLUMNS}})

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for i in range(self.seconds):
            w.writerow([_cell(self.per_second[k][i]) for k in COLUMNS])
        return buf.getvalue()


def _cell(v) -> str:
    v = float(v)
    if math.isnan(v):
        return ""
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else f"{v:.6g}"


def _clean(obj):
    """JSON-safe: numpy to Python, NaN to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) or math.isinf(obj) else round(float(obj), 6)
    return obj


def drift_scores(per_second: dict, ref: dict, r: int) -> dict:
    after = lambda k: per_second[k][r:]
    out = {}
    for col, _, floor, _ in fd.LEVELS + (("change", "", fd.STILL_CHANGE, 0),):
        out[col] = fd.vde(after(col), ref[col], max(abs(ref[col]), floor) if math.isfinite(ref[col]) else 1.0)
    out["colour"] = fd.vde(after("colour_shift"), 0.0, 100.0)
    out["ssim"] = fd.vde(after("ssim"), 1.0, 1.0)
    out["phash"] = fd.vde(after("phash_distance"), 0.0, HASH_BITS)
    return {k: (round(v, 4) if math.isfinite(v) else math.nan) for k, v in out.items()}


MAX_LISTED = 3                 # findings of one kind named in the summary line (the JSON holds them all)
MORE = {"loop": "repeated spans", "freeze": "freezes"}


def summary_line(alarms: list) -> str:
    shown, more = [], {}
    for a in alarms:
        if sum(x["kind"] == a["kind"] for x in shown) < MAX_LISTED:
            shown.append(a)
        else:
            more[a["kind"]] = more.get(a["kind"], 0) + 1
    return "; ".join([a["text"] for a in shown] +
                     [f"{n} more {MORE.get(k, k + ' findings')}" for k, n in more.items()])


def build(ms: Measurements, boundaries=(), switches=(), source: str = "") -> Report:
    ref = fd.reference_levels(ms)
    per_second = dict(ms.seconds)
    per_second["colour_shift"] = fd.colour_shift(ms, ref)
    still = fd.still_seconds(ms, ref)
    per_second["still"] = still.astype(np.float64)
    boundaries = sorted(int(b) for b in boundaries if 0 < int(b) < ms.frames)
    fl = fd.flicker(ms, boundaries)
    per_second["flicker_events"] = fl["per_second"].astype(np.float64)
    loops = fd.loops(ms, still)
    alarms = fd.level_alarms(ms, ref) + fd.colour_alarm(ms, ref, per_second["colour_shift"]) \
        + fd.freeze_alarms(ms, still) + fd.flicker_alarms(ms, fl) + loops
    alarms.sort(key=lambda a: (a["start"], a["kind"]))
    duration = ms.frames / ms.fps
    length = f"{duration:.0f}" if duration >= 10 else f"{duration:.2g}"
    summary = summary_line(alarms) or f"no drift, freeze, flicker or loop found in {length} s"
    meta = {"source": source, "fps": ms.fps, "frames": ms.frames, "width": ms.width, "height": ms.height,
            "duration_s": duration, "reference_seconds": ms.reference_seconds}
    return Report(meta=meta, per_second=per_second, reference={k: ref[k] for k in REFERENCE},
                  drift=drift_scores(per_second, ref, ms.reference_seconds), alarms=alarms, flicker=fl,
                  loops=loops, summary=summary, boundaries=boundaries, switches=sorted(float(s) for s in switches))
