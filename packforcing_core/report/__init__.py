"""Long-video health report: where a video drifts, freezes, flickers or loops, measured without
model weights, streaming over its frames with bounded memory.

    from packforcing_core.report import analyze, report_video, write_report
    report = analyze(frames, fps=16, boundaries=wan_chunk_boundaries(4, n), switches=[30.0])
    report.summary        # "sharpness fell 38% after 70 s; motion stopped at 95 s; seconds 80-90 repeat 20-30"
    write_report(report, "out", "clip")      # out/clip.report.png, .json, .csv

Modules: measures (one frame, or two), analyzer (the streaming pass), analysis (frames -> report),
findings (thresholds, drift scores, alarms), result (the report, JSON and CSV), plot (the PNG), video
(reading files, writing the outputs). Imports io only from the core; numpy, plus PyAV to read video
files and Pillow to draw the plot (both come with ComfyUI).
"""
from __future__ import annotations

from .analysis import analyze, wan_chunk_boundaries
from .analyzer import Measurements, VideoAnalyzer
from .result import COLUMNS, Report
from .video import open_frames, report_video, write_report

__all__ = ["COLUMNS", "Measurements", "Report", "VideoAnalyzer", "analyze", "open_frames", "report_video",
           "wan_chunk_boundaries", "write_report"]
