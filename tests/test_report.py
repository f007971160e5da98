"""The long-video health report (packforcing_core.report) on synthetic videos with known defects.

Each clip is a smooth random texture seen through a window that pans without ever returning (so a
clean clip has motion and no repeats); a defect is then injected at a known time. The tests check
that the report finds that defect, at that time, against quantities computed here independently
(torch's convolution for sharpness, Pillow's colour management for CIELAB), and that a clean clip
raises nothing.
"""
from __future__ import annotations

import json
import math
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from packforcing_core.cli.main import main
from packforcing_core.report import analyze, open_frames, wan_chunk_boundaries, write_report
from packforcing_core.report.findings import vde
from packforcing_core.report.result import summary_line

FPS, H, W = 8, 64, 96


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    t = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    for _ in range(2):                                    # 3x3 box, twice: an image rather than noise
        p = np.pad(t, ((1, 1), (1, 1), (0, 0)), mode="edge")
        t = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return (t - t.min()) / (t.max() - t.min())


def clean(seconds: float, fps: int = FPS, seed: int = 0):
    """Pans 1 px per frame to the right while bobbing up and down: never the same view twice."""
    n = int(seconds * fps)
    tex = texture(H + 24, W + n + 1, seed)
    for i in range(n):
        dy = int(round(12 + 10 * math.sin(i / 9)))
        yield (tex[dy:dy + H, i:i + W] * 255).round().astype(np.uint8)


def gaussian_blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    r = int(3 * sigma) + 1
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    f = np.pad(frame.astype(np.float32), ((r, r), (r, r), (0, 0)), mode="edge")
    f = sum(k[i] * f[i:i + frame.shape[0]] for i in range(2 * r + 1))
    f = sum(k[i] * f[:, i:i + frame.shape[1]] for i in range(2 * r + 1))
    return f.round().clip(0, 255).astype(np.uint8)


def blurring(start: float, seconds: float = 40):
    """Sharp until `start`, then blurred with a sigma growing from 0.5 to 3 px."""
    for i, f in enumerate(clean(seconds)):
        t = i / FPS
        yield f if t < start else gaussian_blur(f, 0.5 + 2.5 * (t - start) / (seconds - start))


def colour_cast(start: float = 15, seconds: float = 40, amount: float = 50):
    """From `start` on, red up and blue down by up to `amount` levels (a warm cast)."""
    for i, f in enumerate(clean(seconds)):
        k = amount * max(0.0, i / FPS - start) / (seconds - start)
        yield (f.astype(np.float32) + np.array([k, 0, -k])).round().clip(0, 255).astype(np.uint8)


def alarm(report, kind: str) -> dict:
    found = [a for a in report.alarms if a["kind"] == kind]
    assert found, f"no {kind} alarm in: {report.summary}"
    return found[0]


def laplacian_variance_torch(frames: list[np.ndarray]) -> float:
    """Sharpness computed independently: conv2d with the 3x3 Laplacian on BT.601 luma."""
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float64).view(1, 1, 3, 3)
    vals = []
    for f in frames:
        y = torch.from_numpy(f).double() @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
        vals.append(torch.nn.functional.conv2d(y[None, None], lap).var(unbiased=False).item())
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- clean

def test_clean_clip_raises_no_alarm():
    r = analyze(clean(40), FPS, chunk_latent_frames=1)
    assert r.alarms == [] and r.loops == [], r.summary
    assert r.summary == "no drift, freeze, flicker or loop found in 40 s"
    for metric in ("sharpness", "brightness", "contrast", "saturation", "motion", "colour"):
        assert r.drift[metric] < 0.1, (metric, r.drift)
    assert r.flicker["events"] == 0 and r.flicker["period_frames"] is None
    assert len(r.per_second["second"]) == 40 and r.per_second["frames"].sum() == 40 * FPS


def test_motion_reads_the_injected_speed():
    """A texture translating by (dx, dy) px per frame reads ~sqrt(dx^2 + dy^2); a still one reads 0."""
    tex = texture(H + 80, W + 80, seed=3)
    for dx, dy in ((1, 0), (0, 1), (1, 1)):
        frames = [(tex[dy * i:dy * i + H, dx * i:dx * i + W] * 255).astype(np.uint8) for i in range(3 * FPS)]
        speed = float(np.nanmean(analyze(frames, FPS).per_second["motion"]))
        assert speed == pytest.approx(math.hypot(dx, dy), rel=0.25), (dx, dy, speed)
    still = [(tex[:H, :W] * 255).astype(np.uint8)] * (3 * FPS)
    assert np.nanmax(analyze(still, FPS).per_second["motion"]) == 0.0


# ----------------------------------------------------------------------------- drift

def test_progressive_blur_is_found_at_its_onset_with_its_size():
    frames = list(blurring(start=20))
    r = analyze(frames, FPS)
    a = alarm(r, "sharpness")
    assert 19 <= a["start"] <= 21, r.summary
    assert f"sharpness fell {abs(a['value']) * 100:.0f}% after {a['start']} s" in r.summary
    ref = laplacian_variance_torch(frames[:2 * FPS])
    end = laplacian_variance_torch(frames[-3 * FPS:])
    assert a["value"] == pytest.approx(end / ref - 1, abs=0.02)
    clean_drift = analyze(clean(40), FPS).drift["sharpness"]
    later = analyze(blurring(start=30), FPS).drift["sharpness"]
    assert r.drift["sharpness"] > later > 2 * clean_drift       # LV-Bench's weights: early drift counts more


def test_vde_is_lv_benchs_weighted_sum_normalised():
    m = np.array([10.0, 12.0, 7.0, 10.0, 15.0])               # m_1 = 10, then N - 1 = 4 later segments
    n = len(m)
    expected = sum((n - i + 1) * abs(m[i - 1] - m[0]) / m[0] for i in range(2, n + 1))
    assert vde(m[1:], m[0], m[0]) == pytest.approx(expected / sum(n - i + 1 for i in range(2, n + 1)))


def pil_lab(frames: list[np.ndarray]) -> np.ndarray:
    """Mean CIELAB of frames through Pillow's colour management (littleCMS), independent of ours."""
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    out = []
    for f in frames:
        raw = np.asarray(ImageCms.applyTransform(Image.fromarray(f), to_lab))
        out.append([raw[..., 0].astype(float).mean() * 100 / 255,
                    *raw[..., 1:].copy().view(np.int8).reshape(-1, 2).astype(float).mean(axis=0)])
    return np.mean(out, axis=0)


def test_colour_shift_is_found_with_its_size_and_direction():
    frames = list(colour_cast(start=15))
    r = analyze(frames, FPS)
    a = alarm(r, "colour")
    assert 13 <= a["start"] <= 17, r.summary
    delta = pil_lab(frames[-3 * FPS:]) - pil_lab(frames[:2 * FPS])
    assert a["value"] == pytest.approx(float(np.linalg.norm(delta)), rel=0.15)
    words = {1: ("redder", "greener"), 2: ("yellower", "bluer")}
    main_axis = 1 if abs(delta[1]) > abs(delta[2]) else 2
    assert words[main_axis][0 if delta[main_axis] > 0 else 1] in a["text"], (delta, a["text"])


# ----------------------------------------------------------------------------- freeze, loop, flicker

def test_freeze_in_the_middle_and_at_the_end():
    frames = list(clean(40))
    for a, b in ((10, 16), (30, 40)):
        frames[a * FPS:b * FPS] = [frames[a * FPS - 1]] * ((b - a) * FPS)
    r = analyze(frames, FPS)
    texts = [x["text"] for x in r.alarms if x["kind"] == "freeze"]
    assert texts == ["frozen 10-16 s", "motion stopped at 30 s"], r.summary
    assert r.loops == []                  # a frozen second repeats the one before: not a loop


@pytest.mark.parametrize("src", [8.0, 8.375])     # whole seconds, and 3 frames off the second grid
def test_loop_is_found_with_the_span_it_repeats(src):
    frames = list(clean(40))
    a, n = int(src * FPS), 7 * FPS
    frames[25 * FPS:25 * FPS + n] = frames[a:a + n]            # seconds 25-32 replay src .. src + 7
    r = analyze(frames, FPS)
    (lp,) = r.loops
    assert abs(lp["start"] - 25) <= 1 and abs(lp["end"] - 32) <= 1, r.summary
    assert lp["lag"] == pytest.approx(25 - src, abs=0.25)
    assert abs(lp["repeats_start"] - src) <= 1 and abs(lp["repeats_end"] - (src + 7)) <= 1
    assert [x["kind"] for x in r.alarms] == ["loop"], r.summary


def flashing(every: int, fps: int = 16, seconds: float = 20):
    """Every `every`-th frame 80 levels brighter (one-frame flashes)."""
    for i, f in enumerate(clean(seconds, fps)):
        yield (f.astype(np.int16) + 80).clip(0, 255).astype(np.uint8) if i and i % every == 0 else f


def test_flash_every_n_frames_is_found_at_its_period_and_matched_to_chunk_boundaries():
    frames = list(flashing(12))
    on_boundaries = analyze(frames, 16, boundaries=range(12, 320, 12))
    a = alarm(on_boundaries, "flicker")
    assert a["period_frames"] == 12 and "at the chunk boundaries" in a["text"], on_boundaries.summary
    assert on_boundaries.flicker["event_frames"] == list(range(12, 320, 12))
    assert on_boundaries.flicker["boundary_ratio"] > 3
    elsewhere = analyze(frames, 16, chunk_latent_frames=4)        # boundaries 13, 29, ...: not the flashes
    a = alarm(elsewhere, "flicker")
    assert a["period_frames"] == 12 and "chunk" not in a["text"], elsewhere.summary
    assert not any(x["kind"] == "flicker" for x in analyze(clean(20, 16), 16, chunk_latent_frames=4).alarms)


def test_summary_names_at_most_three_findings_of_a_kind():
    alarms = [{"kind": "loop", "text": f"seconds {10 * i}-{10 * i + 5} repeat 0-5"} for i in range(1, 6)]
    line = summary_line(alarms + [{"kind": "freeze", "text": "motion stopped at 90 s"}])
    assert line == ("seconds 10-15 repeat 0-5; seconds 20-25 repeat 0-5; seconds 30-35 repeat 0-5; "
                    "motion stopped at 90 s; 2 more repeated spans")


def test_wan_chunk_boundaries_follow_the_4t_minus_3_rule():
    # chunk k of C latent frames ends at latent frame (k+1)C - 1, i.e. after 4((k+1)C) - 3 video frames
    frames = 4 * 12 - 3
    assert wan_chunk_boundaries(4, frames) == [4 * 4 - 3, 4 * 8 - 3]
    assert wan_chunk_boundaries(3, frames) == [4 * 3 - 3, 4 * 6 - 3, 4 * 9 - 3]
    assert wan_chunk_boundaries(0, frames) == []


# ----------------------------------------------------------------------------- memory, files, CLI

def panning(seconds: int, fps: int):
    """A window circling over one fixed texture: the generator's own memory does not grow with length."""
    tex = texture(H + 64, W + 64, seed=5)
    for i in range(seconds * fps):
        x, y = int(32 + 30 * math.cos(i / 7)), int(32 + 30 * math.sin(i / 11))
        yield (tex[y:y + H, x:x + W] * 255).astype(np.uint8)


def peak_bytes(seconds: int, fps: int = 2) -> int:
    tracemalloc.start()
    try:
        analyze(panning(seconds, fps), fps)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_on_a_long_video():
    """Frames are streamed and dropped: the peak grows by a few KB per second of video (per-second
    numbers and thumbnails), below what keeping even one frame a second would cost."""
    peak_bytes(5)                                         # one-time allocations (caches, imports) first
    short, long = peak_bytes(25), peak_bytes(225)
    per_second = (long - short) / 200
    assert per_second < 8 * 1024, f"{per_second:.0f} bytes per second of video (one frame: {H * W * 3})"


def write_mp4(path, frames, fps: int) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "12"} if s.name == "libx264" else {}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def test_cli_reports_an_mp4_and_writes_png_json_csv(tmp_path, capsys):
    frames = list(clean(20))
    frames[12 * FPS:] = [frames[12 * FPS - 1]] * (8 * FPS)               # motion stops at 12 s
    video = tmp_path / "stopping clip.mp4"
    write_mp4(video, frames, FPS)
    assert sum(1 for _ in open_frames(str(video))) == len(frames)
    assert main(["report", str(video), "--out", str(tmp_path / "r"), "--chunk-frames", "2", "--switches", "12.5"]) == 0
    assert capsys.readouterr().out.strip() == "motion stopped at 12 s"
    data = json.loads((tmp_path / "r" / "stopping clip.report.json").read_text())
    assert data["frames"] == len(frames) and data["fps"] == FPS and data["switches"] == [12.5]
    assert data["chunk_boundaries"] == wan_chunk_boundaries(2, len(frames))
    assert data["summary"] == "motion stopped at 12 s"
    rows = (tmp_path / "r" / "stopping clip.report.csv").read_text().splitlines()
    assert len(rows) == 1 + 20 and rows[0].startswith("second,frames,sharpness")
    assert [int(r.split(",")[-1]) for r in rows[1:]] == [0] * 12 + [1] * 8            # the "still" column
    png = Image.open(tmp_path / "r" / "stopping clip.report.png")
    assert png.size[0] == 1280 and png.mode == "RGB"


def test_cli_refuses_bad_input_clearly(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "not_a_video.mp4").write_bytes(b"hello")
    assert main(["report", str(tmp_path / "not_a_video.mp4")]) == 2
    assert "cannot be opened as a video" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "x.mp4"), "--switches", "ten"])
    assert "comma-separated list of numbers" in capsys.readouterr().err


@pytest.mark.parametrize("frames", [1, 2, 17, 3 * FPS + 1])
def test_short_videos_give_a_whole_report(tmp_path, frames):
    clip = list(clean(4))[:frames]
    r = analyze(clip, FPS, chunk_latent_frames=1, switches=[0.5])
    assert r.seconds == math.ceil(frames / FPS) and r.per_second["frames"].sum() == frames
    if frames < FPS:
        assert r.summary == f"no drift, freeze, flicker or loop found in {frames / FPS:.2g} s"
    paths = write_report(r, str(tmp_path), "short")
    assert json.loads(open(paths["json"]).read())["frames"] == frames and Image.open(paths["png"]).size[0] == 1280


def test_frames_of_another_size_are_refused():
    frames = [np.zeros((H, W, 3), np.uint8), np.zeros((H, W + 2, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1 has shape"):
        analyze(frames, FPS)
    with pytest.raises(ValueError, match="no frames"):
        analyze([], FPS)
