"""PackForcing Video Report: the long-video health report (packforcing_core.report) inside ComfyUI.

Reads IMAGE frames, a VIDEO (a file-backed VIDEO is decoded frame by frame, so memory stays
bounded however long it is) or a video file of the input / output folders, and outputs the plot as
IMAGE, the numbers as JSON and the summary line. Save Video calls `write_report_beside` to put the
report's PNG / JSON / CSV next to the mp4.
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import InputImpl, io, ui

from ..packforcing_core.report import analyze, open_frames, write_report
from ..packforcing_core.report.plot import render
from .common import CATEGORY, contained_file
from .spec import FPS, InputError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi", ".gif")
NO_FILE = "none"
SAVE_VIDEO_CHUNK = 4          # latent frames per chunk assumed by Save Video's report: the sampler's default

log = logging.getLogger("packforcing")


def _roots() -> dict[str, str]:
    return {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory()}


def video_files() -> list[str]:
    """Videos of the input folder, then those of the output folder marked " [output]"."""
    found = []
    for tag, root in _roots().items():
        names = []
        for folder, _, files in os.walk(root):
            names += [os.path.relpath(os.path.join(folder, n), root).replace(os.sep, "/") for n in files
                      if n.lower().endswith(VIDEO_EXTENSIONS) and not n.startswith(".")]
        found += sorted(n + (" [output]" if tag == "output" else "") for n in names)
    return found


def video_path(name: str) -> str:
    return contained_file("video_file", name, _roots(), VIDEO_EXTENSIONS)


def parse_switches(text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        values = None
    if values is None or any(not math.isfinite(v) or v < 0 for v in values):
        raise InputError("switches", f"'{text}' is not a comma-separated list of seconds (e.g. 5, 12.5)")
    return values


def _progress(total: int | None, fps: float):
    """Per-frame callback: the progress bar once a second of video, and the interrupt check."""
    bar = comfy.utils.ProgressBar(total) if total else None
    step = max(1, int(round(fps)))

    def on_frame(i: int) -> None:
        if (i + 1) % step == 0:
            mm.throw_exception_if_processing_interrupted()
            if bar is not None:
                bar.update_absolute(min(i + 1, total))
    return on_frame


def _image_frames(images: torch.Tensor):
    for img in images:               # one frame at a time: no uint8 copy of the whole batch
        yield (img[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _source(images, video, video_file: str, fps: float):
    """(frames iterable, fps, frame count or None, name, closer) of the one source given."""
    given = [n for n, v in (("images", images), ("video", video), ("video_file", video_file != NO_FILE or None))
             if v is not None]
    if len(given) != 1:
        raise InputError("images", "connect IMAGE frames (images) or a VIDEO (video), or pick a video_file: "
                                   f"exactly one, got {', '.join(given) or 'none'}")
    if images is not None:
        if images.dim() != 4 or images.shape[-1] < 3:
            raise InputError("images", f"expected IMAGE frames (frames, height, width, 3), got {tuple(images.shape)}")
        return _image_frames(images), fps, images.shape[0], "frames", None
    if video is not None and not isinstance(video, InputImpl.VideoFromFile):
        parts = video.get_components()               # frames already in memory (e.g. from Create Video)
        return _image_frames(parts.images), float(parts.frame_rate), parts.images.shape[0], "video", None
    source = video.get_stream_source() if video is not None else video_path(video_file)
    name = os.path.basename(source) if isinstance(source, str) else "video"
    try:
        frames = open_frames(source)
    except ValueError as e:
        raise InputError("video" if video is not None else "video_file", str(e)) from e
    return frames, frames.fps, frames.frames, name, frames.close


def plot_image(report, label: str) -> torch.Tensor:
    img = np.asarray(render(report, title=label), dtype=np.float32) / 255.0
    return torch.from_numpy(img)[None]


class PackForcingVideoReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingVideoReport",
            display_name="PackForcing Video Report",
            category=CATEGORY,
            description="Where a long video drifts, freezes, flickers or loops: per second of video its sharpness, "
                        "exposure, colour shift, similarity to the start, motion, frame-to-frame change and "
                        "repeats of earlier seconds, drift scores (LV-Bench's VDE) and one summary line. No model "
                        "weights; a VIDEO or a file is read frame by frame, so memory stays bounded.",
            inputs=[
                io.Image.Input("images", optional=True,
                               tooltip="Video frames, e.g. from PackForcing Decode (at the fps below)."),
                io.Video.Input("video", optional=True,
                               tooltip="A VIDEO, e.g. from PackForcing Save Video: read back from its file frame by "
                                       "frame."),
                io.Combo.Input("video_file", options=[NO_FILE] + video_files(), default=NO_FILE, optional=True,
                               tooltip="Or a video file of the input folder, or of the output folder (marked "
                                       "[output]); refresh (R) to list new ones. Leave it at none (or out of an "
                                       "API prompt) when images or video is connected."),
                # the widgets are optional too: an optional input comes after every required one in the
                # UI, and saved workflows give the widgets' values in this order
                io.Float.Input("fps", default=float(FPS), min=1.0, max=120.0, step=1.0, optional=True,
                               tooltip="Frame rate of `images` (a VIDEO or a file carries its own)."),
                io.Int.Input("chunk_frames", default=4, min=0, max=64, optional=True,
                             tooltip="Latent frames per chunk, as set on the sampler: marks the chunk boundaries "
                                     "(video frames 4N-3, 8N-3, ...) and tests them for flicker. 0: none."),
                io.String.Input("switches", default="", optional=True,
                                tooltip="Seconds where the prompt changes, comma-separated (e.g. 5, 12.5): marked on "
                                        "the plot."),
                io.String.Input("label", default="", optional=True,
                                tooltip="Title of the plot, e.g. the setting being compared."),
            ],
            outputs=[io.Image.Output(display_name="plot", tooltip="The metrics over time, with the summary line."),
                     io.String.Output(display_name="report_json", tooltip="All the numbers, per second, as JSON."),
                     io.String.Output(display_name="summary", tooltip="One line: what went wrong, and when.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, video_file: str = NO_FILE):
        try:
            if video_file != NO_FILE:
                video_path(video_file)
        except InputError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, video_file: str = NO_FILE, **_):
        if video_file == NO_FILE:
            return ""
        try:
            return os.path.getmtime(video_path(video_file))
        except InputError:
            return float("nan")

    @classmethod
    def execute(cls, fps: float = float(FPS), chunk_frames: int = 4, switches: str = "", label: str = "",
                video_file: str = NO_FILE, images=None, video=None) -> io.NodeOutput:
        if not 1 <= fps <= 120:
            raise InputError("fps", f"{fps} is not a frame rate from 1 to 120")
        marks = parse_switches(switches)
        frames, rate, total, name, close = _source(images, video, video_file, fps)
        try:
            report = analyze(frames, rate, switches=marks, source=name, chunk_latent_frames=max(0, chunk_frames),
                             on_frame=_progress(total, rate))
        except ValueError as e:
            raise InputError("video" if video is not None else "images" if images is not None else "video_file",
                             str(e)) from e
        finally:
            if close:
                close()
        plot = plot_image(report, label)
        text = json.dumps(report.to_dict(), ensure_ascii=False)
        return io.NodeOutput(plot, text, report.summary, ui=ui.PreviewImage(plot, cls=cls))


def write_report_beside(video: str, fps: float) -> dict:
    """<video stem>.report.png/.json/.csv next to a finished video file (Save Video's write_report).
    A cancel still cancels; any other failure is logged and writes nothing (the video is saved)."""
    try:
        frames = open_frames(video)
        try:
            report = analyze(frames, frames.fps or fps, source=os.path.basename(video),
                             chunk_latent_frames=SAVE_VIDEO_CHUNK, on_frame=_progress(frames.frames, frames.fps))
        finally:
            frames.close()
        return write_report(report, os.path.dirname(video), os.path.splitext(os.path.basename(video))[0])
    except mm.InterruptProcessingException:
        raise
    except Exception as e:  # noqa: BLE001 - the video is saved; the report is an extra
        log.warning("PackForcing Save Video: the report of %s was not written: %s", video, e)
        return {}
