"""Weight-free measurements of one frame, or of two frames, in numpy.

Frames are (H, W, 3) uint8 RGB. Most measures run on a small "working image": the frame averaged
over f x f pixel blocks, f chosen so the longer side is about WORK_SIDE pixels. Averaging keeps the
cost per frame flat whatever the resolution and smooths compression noise. Sharpness alone is
measured at full resolution, where blur shows first.
"""
from __future__ import annotations

import functools

import numpy as np

WORK_SIDE = 128
LUMA = np.array([0.299, 0.587, 0.114], np.float32)       # BT.601 weights
HASH_SIDE = 32                                            # pHash: DCT of a 32x32 image, 8x8 lowest terms
SSIM_WINDOW = 7
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2                   # SSIM's constants for a dynamic range of 1


def as_uint8(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB from uint8 or float [0, 1] frames (an alpha channel is dropped)."""
    a = np.asarray(frame)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 3:
        raise ValueError(f"a frame must be (height, width, 3) RGB of at least 3x3 pixels, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"a frame must be uint8 or float in [0, 1], got {a.dtype}")


def work_factor(height: int, width: int) -> int:
    return max(1, max(height, width) // WORK_SIDE)


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (the ragged edge is dropped), float32. uint8 frames are summed in
    integers, rows first then columns: ~7x faster than a float mean over two strided axes."""
    if f == 1:
        return a.astype(np.float32)
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    rest = a.shape[2:]
    acc = (np.uint16 if f * f * 255 < 2 ** 16 else np.uint32) if a.dtype == np.uint8 else np.float32
    s = a[:h, :w].reshape(h // f, f, w, *rest).sum(axis=1, dtype=acc)
    s = s.reshape(h // f, w // f, f, *rest).sum(axis=2, dtype=acc)
    return s.astype(np.float32) / (f * f)


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32, copy=False) @ LUMA


def laplacian_variance(frame_u8: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma (0-255 scale): falls as the frame blurs."""
    y = luma(frame_u8)
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * y[1:-1, 1:-1]
    return float(lap.var())


def saturation(rgb01: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max per pixel, 0 for black."""
    r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]        # elementwise: max over a 3-axis is slow
    hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    return np.where(hi > 1e-6, (hi - lo) / np.maximum(hi, 1e-6), 0.0)


def srgb_to_lab(rgb01: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in [0, 1]: L in 0-100, a (green-red), b (blue-yellow)."""
    c = np.where(rgb01 <= 0.04045, rgb01 / 12.92, ((rgb01 + 0.055) / 1.055) ** 2.4)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]],
                       np.float32)
    t = xyz / np.array([0.95047, 1.0, 1.08883], np.float32)
    d = 6.0 / 29.0
    f = np.where(t > d ** 3, np.cbrt(t), t / (3 * d * d) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])],
                    axis=-1)


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean where the window fits (one pixel smaller on each side)."""
    s = a[:-2] + a[1:-1] + a[2:]
    return (s[:, :-2] + s[:, 1:-1] + s[:, 2:]) / 9.0


def normal_flow(prev_y: np.ndarray, y: np.ndarray) -> float:
    """Motion between two luma images, in pixels per frame (of these images).

    The brightness-constancy equation fixes only the flow component along the gradient (the
    "normal flow", |I_t| / |grad I|). Its average weighted by |grad I|^2 is
    sum |I_t| |grad I| / sum |grad I|^2; for a translating texture with gradients in all directions
    that reads 2/pi of the speed (the mean |cos| of the angle), hence the pi/2. A global brightness
    change is not motion: the mean of I_t is removed first. Valid for motions up to about a pixel of
    the (blurred) working image; faster motion reads lower, which is fine for telling moving from
    still."""
    if min(y.shape) < 5:
        return 0.0
    a, b = _box3(prev_y), _box3(y)
    m = (a + b) * 0.5
    gx = (m[1:-1, 2:] - m[1:-1, :-2]) * 0.5
    gy = (m[2:, 1:-1] - m[:-2, 1:-1]) * 0.5
    it = (b - a)[1:-1, 1:-1]
    it = it - it.mean()
    g = np.sqrt(gx * gx + gy * gy)
    den = float((g * g).sum())
    return 0.0 if den < 1e-9 else float(np.pi / 2 * (np.abs(it) * g).sum() / den)


def _box_valid(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window that fits (summed-area table)."""
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.float64)
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004) of two luma images in [0, 1], uniform 7x7 windows."""
    k = min(SSIM_WINDOW, *x.shape)
    mx, my = _box_valid(x, k), _box_valid(y, k)
    vx = _box_valid(x * x, k) - mx * mx
    vy = _box_valid(y * y, k) - my * my
    cxy = _box_valid(x * y, k) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
    return float(s.mean())


@functools.lru_cache(maxsize=16)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an area-average resize along one axis (fractional overlaps)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    i = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_area(a: np.ndarray, height: int, width: int) -> np.ndarray:
    return _area_matrix(a.shape[0], height) @ a.astype(np.float32) @ _area_matrix(a.shape[1], width).T


@functools.lru_cache(maxsize=1)
def _dct_matrix(n: int = HASH_SIDE) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def phash(y: np.ndarray) -> int:
    """64-bit perceptual hash: signs of the 8x8 lowest DCT terms of a 32x32 version against their median."""
    d = _dct_matrix()
    low = (d @ resize_area(y, HASH_SIDE, HASH_SIDE) @ d.T)[:8, :8].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def standardized(v: np.ndarray) -> np.ndarray:
    """Zero mean, unit length (zeros when flat): dot products of these are correlations."""
    v = v.ravel().astype(np.float32) - v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else np.zeros_like(v)
