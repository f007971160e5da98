"""`python -m packforcing_core report VIDEO [--out DIR] [--chunk-frames N] [--switches S1,S2]`."""
from __future__ import annotations

import argparse
import math
import os
import sys

from ..io.files import check_output_folder, input_file
from .options import number_in, whole_in


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            values = None
        if values is None or any(not math.isfinite(v) or v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers >= 0")
        return values
    return parse


def add_parser(sub) -> None:
    text = "health report of a video: drift, freezes, flicker, loops (PNG, JSON, CSV)"
    r = sub.add_parser("report", help=text, description=f"Write the {text}.")
    r.add_argument("video", help="a video file (mp4, webm, ...) or a frames .npy written by `generate`")
    r.add_argument("--out", help="folder for VIDEO-STEM.report.png/.json/.csv (default: beside the video)")
    r.add_argument("--chunk-frames", type=whole_in(0), default=0,
                   help="latent frames per chunk of a Wan2.1 video, as `generate --chunk-frames`: marks the chunk "
                        "boundaries (video frames 4N-3, 8N-3, ...) and tests them for flicker")
    r.add_argument("--boundary-frames", type=_numbers(int), default=[],
                   help="chunk boundaries as video frame indices, comma-separated (any other generator)")
    r.add_argument("--switches", type=_numbers(float), default=[], help="prompt switches in seconds, e.g. 30,60")
    r.add_argument("--fps", type=number_in(above=0, hi=1000), help="frame rate; default the video's own (16 for "
                   ".npy frames)")
    r.add_argument("--reference-seconds", type=whole_in(1), default=2,
                   help="opening seconds the rest is compared with")
    r.add_argument("--no-plot", action="store_true", help="JSON and CSV only")


def run(a) -> None:
    from ..report import report_video, write_report
    input_file("video", a.video)
    out = a.out or os.path.dirname(os.path.abspath(a.video))
    check_output_folder("--out", out)                  # before minutes of analysis
    report = report_video(a.video, a.boundary_frames, a.chunk_frames, a.switches, a.fps, a.reference_seconds)
    stem = os.path.splitext(os.path.basename(a.video))[0]
    paths = write_report(report, out, stem, plot=not a.no_plot, option="--out")
    print(report.summary)
    for p in paths.values():
        print(f"wrote {p}", file=sys.stderr)
