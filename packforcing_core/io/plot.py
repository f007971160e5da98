"""Line plots as PNG with Pillow and numpy alone (matplotlib is not a dependency).

line_plot({"name": (xs, ys), ...}) draws each series as a polyline (or dots, for series named in
`dots`), with axes, ticks, a grid and a legend, and returns the PNG's bytes; None when Pillow is
missing (it comes with ComfyUI and torchvision).
"""
from __future__ import annotations

import io
import math

import numpy as np

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """log10 positions of 1-2-5 x 10^k values inside [lo, hi] (themselves log10), at most ~8."""
    for mults in ((1, 2, 5), (1,)):
        ticks = [math.log10(m) + k for k in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in mults]
        ticks = [t for t in ticks if lo <= t <= hi]
        if 2 <= len(ticks) <= 8:
            return ticks
    return _nice_ticks(lo, hi)


def _label(v: float, log_y: bool) -> str:
    if log_y:
        v = 10 ** v
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


def line_plot(series: dict, title: str = "", xlabel: str = "", ylabel: str = "",
              log_y: bool = False, dots: tuple[str, ...] = (), size=(960, 540)) -> bytes | None:
    """The plot as PNG bytes (None without Pillow)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    w, h = size
    left, right, top, bottom = 80, 230, 40, 60
    data = {}
    for name, (xs, ys) in series.items():
        x, y = np.asarray(xs, float), np.asarray(ys, float)
        ok = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        if ok.any():
            data[name] = (x[ok], np.log10(y[ok]) if log_y else y[ok])
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 12), title, fill="black", font=font)
    if not data:
        d.text((left, top + 20), "no data", fill="black", font=font)
        return _png(img)
    xs = np.concatenate([v[0] for v in data.values()])
    ys = np.concatenate([v[1] for v in data.values()])
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-9)
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    px = lambda v: left + (v - x0) / (x1 - x0) * (w - left - right)
    py = lambda v: h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)
    for t in _nice_ticks(x0, x1):
        d.line([(px(t), top), (px(t), h - bottom)], fill=(232, 232, 232))
        d.text((px(t) - 10, h - bottom + 6), _label(t, False), fill="black", font=font)
    for t in (_log_ticks if log_y else _nice_ticks)(y0, y1):
        d.line([(left, py(t)), (w - right, py(t))], fill=(232, 232, 232))
        d.text((6, py(t) - 6), _label(t, log_y), fill="black", font=font)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.text(((left + w - right) // 2 - 20, h - 22), xlabel, fill="black", font=font)
    d.text((6, top - 16), ylabel + (" (log)" if log_y else ""), fill="black", font=font)
    for i, (name, (x, y)) in enumerate(data.items()):
        color = COLORS[i % len(COLORS)]
        pts = [(px(a), py(b)) for a, b in zip(x, y)]
        if name in dots or len(pts) == 1:
            for a, b in pts:
                d.ellipse([a - 3, b - 3, a + 3, b + 3], fill=color)
        else:
            d.line(pts, fill=color, width=2)
        ly = top + 8 + 18 * i
        d.line([(w - right + 12, ly + 6), (w - right + 36, ly + 6)], fill=color, width=3)
        d.text((w - right + 42, ly), name, fill="black", font=font)
    return _png(img)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
