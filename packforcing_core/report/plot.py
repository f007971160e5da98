"""The report as one PNG: a stack of small time plots drawn with Pillow (no plotting library).

Pillow comes with ComfyUI (and with torchvision); matplotlib does not, and a few polylines, axes and
labels do not need it. x is seconds of video; chunk boundaries are thin blue lines (left out when
closer than MIN_GAP pixels), prompt switches dashed red lines, alarms red triangles at their onset,
freezes and loops shaded.
"""
from __future__ import annotations

import math

import numpy as np

from . import findings as fd
from .result import Report

WIDTH, LEFT, RIGHT = 1280, 78, 24
PANEL, GAP = 96, 30
MIN_GAP = 4
INK, GRID, MUTED = (30, 30, 30), (228, 228, 228), (120, 120, 120)
BLUE, ORANGE, GREEN, RED, PURPLE = (31, 119, 180), (230, 126, 34), (44, 160, 44), (214, 39, 40), (148, 103, 189)
CHUNK, FREEZE_FILL, LOOP_FILL, LOOP_SRC_FILL = (160, 190, 230), (220, 235, 250), (253, 225, 190), (254, 243, 226)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)        # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def nice_step(span: float, count: int) -> float:
    raw = max(span, 1e-12) / count
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _ticks(lo: float, hi: float, count: int) -> list[float]:
    step = nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}"


class Panel:
    """One plot: maps (second, value) to pixels and draws into the shared image."""

    def __init__(self, draw, top: int, title: str, duration: float, lo: float, hi: float):
        self.d, self.top, self.duration = draw, top, duration
        self.x0, self.x1, self.y0, self.y1 = LEFT, WIDTH - RIGHT, top + PANEL, top
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo < 1e-9:
            lo, hi = (lo - 1, lo + 1) if math.isfinite(lo) else (0.0, 1.0)
        pad = (hi - lo) * 0.06
        self.lo, self.hi = lo - pad, hi + pad
        draw.text((self.x0, top - 18), title, fill=INK, font=_font(13))

    def x(self, t: float) -> float:
        return self.x0 + (self.x1 - self.x0) * t / max(self.duration, 1e-9)

    def y(self, v: float) -> float:
        return self.y0 - (self.y0 - self.y1) * (v - self.lo) / (self.hi - self.lo)

    def frame(self, x_ticks: list[float], labels: bool) -> None:
        font = _font(11)
        for v in _ticks(self.lo, self.hi, 3):
            yy = self.y(v)
            self.d.line([(self.x0, yy), (self.x1, yy)], fill=GRID)
            self.d.text((self.x0 - 6, yy), _label(v), fill=MUTED, font=font, anchor="rm")
        for t in x_ticks:
            self.d.line([(self.x(t), self.y1), (self.x(t), self.y0)], fill=GRID)
            if labels:
                self.d.text((self.x(t), self.y0 + 4), f"{_label(t)} s", fill=MUTED, font=font, anchor="mt")
        self.d.rectangle([self.x0, self.y1, self.x1, self.y0], outline=MUTED)

    def span(self, a: float, b: float, fill) -> None:
        self.d.rectangle([self.x(a), self.y1 + 1, self.x(b), self.y0 - 1], fill=fill)

    def vline(self, t: float, color, dashed: bool = False) -> None:
        xx = self.x(t)
        step = 7 if dashed else self.y0 - self.y1
        for y in range(self.y1, self.y0, step):
            self.d.line([(xx, y), (xx, min(y + (4 if dashed else step), self.y0))], fill=color, width=2 if dashed else 1)

    def hline(self, v: float, color) -> None:
        if self.lo <= v <= self.hi:
            for x in range(self.x0, self.x1, 8):
                self.d.line([(x, self.y(v)), (min(x + 4, self.x1), self.y(v))], fill=color)

    def series(self, t: np.ndarray, v: np.ndarray, color, width: int = 2) -> None:
        pts = []
        for ti, vi in zip(t, v):
            if math.isfinite(vi):
                pts.append((self.x(ti), self.y(min(max(vi, self.lo), self.hi))))
            else:
                self._poly(pts, color, width)
                pts = []
        self._poly(pts, color, width)

    def _poly(self, pts, color, width) -> None:
        if len(pts) == 1:
            x, y = pts[0]
            self.d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        elif pts:
            self.d.line(pts, fill=color, width=width, joint="curve")

    def marker(self, t: float, color=RED) -> None:
        xx = self.x(t)
        self.d.polygon([(xx - 5, self.y1 + 1), (xx + 5, self.y1 + 1), (xx, self.y1 + 9)], fill=color)

    def legend(self, items: list[tuple[str, tuple]]) -> None:
        font, x = _font(11), self.x1
        for text, color in reversed(items):
            w = self.d.textlength(text, font=font)
            x -= w + 6
            self.d.text((x, self.top - 16), text, fill=color, font=font)
            x -= 6


def _range(*arrays, include=()) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays] + [np.asarray(include, np.float64)])
    vals = vals[np.isfinite(vals)]
    return (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def _percent(v: np.ndarray, ref: float) -> np.ndarray:
    return v / ref * 100 if math.isfinite(ref) and abs(ref) > 1e-9 else np.full_like(v, np.nan)


def _panels(r: Report) -> list[dict]:
    s, ref = r.per_second, r.reference
    pct = {k: _percent(s[k], ref[k]) for k in ("sharpness", "brightness", "contrast", "saturation")}
    return [
        {"title": "sharpness (Laplacian variance), % of the start", "kinds": ("sharpness",),
         "lines": [("sharpness", pct["sharpness"], INK)], "include": [100]},
        {"title": "exposure, % of the start", "kinds": ("brightness", "contrast", "saturation"),
         "lines": [("brightness", pct["brightness"], ORANGE), ("contrast", pct["contrast"], BLUE),
                   ("saturation", pct["saturation"], PURPLE)], "include": [100]},
        {"title": "colour shift from the start (dE, CIELAB)", "kinds": ("colour",),
         "lines": [("dE", s["colour_shift"], RED)], "include": [0, fd.COLOUR_ALARM], "hline": fd.COLOUR_ALARM},
        {"title": "similarity to the start", "kinds": (), "fixed": (0.0, 1.0),
         "lines": [("SSIM", s["ssim"], BLUE), ("pHash", 1 - s["phash_distance"] / 64, GREEN)]},
        {"title": "motion (normal flow, px/frame)", "kinds": ("motion", "freeze"),
         "lines": [("motion", s["motion"], GREEN)], "include": [0], "freeze": True},
        {"title": "frame-to-frame change (0-255 levels)", "kinds": ("flicker",),
         "lines": [("mean", s["change"], BLUE), ("max", s["change_max"], ORANGE)], "include": [0],
         "flicker": True},
        {"title": "repeat of an earlier second (correlation)", "kinds": ("loop",), "fixed": (0.0, 1.0),
         "lines": [("best earlier match", s["loop_similarity"], PURPLE)], "hline": fd.LOOP_SIMILARITY,
         "loops": True},
    ]


def render(r: Report, title: str = ""):
    """The report's plot as a PIL image (RGB)."""
    from PIL import Image, ImageDraw
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    head_font, text_font = _font(15), _font(13)
    summary = _wrap(probe, r.summary.replace("ΔE", "dE"), text_font, WIDTH - LEFT - RIGHT)
    panels = _panels(r)
    top0 = 40 + 17 * len(summary) + GAP
    height = top0 + len(panels) * (PANEL + GAP) + 40
    img = Image.new("RGB", (WIDTH, height), "white")
    d = ImageDraw.Draw(img)
    m = r.meta
    head = title or m.get("source") or "video"
    d.text((LEFT, 10), f"{head}: {m['duration_s']:.1f} s, {m['frames']} frames at {m['fps']:g} fps, "
                       f"{m['width']}x{m['height']}", fill=INK, font=head_font)
    for k, line in enumerate(summary):          # the default font has no Δ
        d.text((LEFT, 34 + 17 * k), line, fill=RED if r.alarms else GREEN, font=text_font)
    duration = max(m["duration_s"], 1e-6)
    t = r.per_second["second"] + 0.5
    x_ticks = _ticks(0, duration, 12)
    chunk_px = (WIDTH - LEFT - RIGHT) * (np.diff(r.boundaries).min() / m["fps"]) / duration \
        if len(r.boundaries) > 1 else math.inf
    for k, spec in enumerate(panels):
        lo, hi = spec.get("fixed") or _range(*[v for _, v, _ in spec["lines"]], include=spec.get("include", ()))
        p = Panel(d, top0 + k * (PANEL + GAP), spec["title"], duration, lo, hi)
        _decorate(p, r, spec, chunk_px)
        p.frame(x_ticks, labels=k == len(panels) - 1)
        if "hline" in spec:
            p.hline(spec["hline"], MUTED)
        for _, v, color in spec["lines"]:
            p.series(t, v, color)
        for a in r.alarms:
            if a["kind"] in spec["kinds"]:
                p.marker(a["start"])
        p.legend([(name, color) for name, _, color in spec["lines"]])
        if k == 0:
            for n, sw in enumerate(r.switches):
                d.text((p.x(sw) + 3, p.y1 - 16), f"prompt {n + 2}", fill=RED, font=_font(11))
    _footer(d, r, height - 24, chunk_px)
    return img


def _decorate(p: Panel, r: Report, spec: dict, chunk_px: float) -> None:
    """Spans and vertical markers, drawn under the lines."""
    if spec.get("freeze"):
        for a in r.alarms:
            if a["kind"] == "freeze":
                p.span(a["start"], a["end"], FREEZE_FILL)
    if spec.get("loops"):
        for lp in r.loops:
            p.span(lp["repeats_start"], lp["repeats_end"], LOOP_SRC_FILL)
            p.span(lp["start"], lp["end"], LOOP_FILL)
    if chunk_px >= MIN_GAP:
        for b in r.boundaries:
            p.vline(b / r.meta["fps"], CHUNK)
    if spec.get("flicker"):
        for f in r.flicker["event_frames"]:
            p.d.line([(p.x(f / r.meta["fps"]), p.y1), (p.x(f / r.meta["fps"]), p.y1 + 8)], fill=RED, width=2)
    for sw in r.switches:
        p.vline(sw, RED, dashed=True)


def _footer(d, r: Report, y: int, chunk_px: float) -> None:
    drift = ", ".join(f"{k} {v:.2f}" for k, v in r.drift.items() if v is not None and math.isfinite(v))
    marks = []
    if r.boundaries:
        marks.append("chunk boundaries: blue" if chunk_px >= MIN_GAP else
                     f"{len(r.boundaries)} chunk boundaries (too dense to draw)")
    if r.switches:
        marks.append("prompt switches: dashed red")
    text = f"drift (VDE, weighted mean change from the first {r.meta['reference_seconds']} s): {drift}"
    d.text((LEFT, y), text + ("   |   " + "; ".join(marks) if marks else ""), fill=MUTED, font=_font(11))
