"""Thumbnails of the workflow templates: workflows/<name>.jpg beside each workflows/<name>.json.

ComfyUI lists a custom node pack's workflows/*.json in its template browser, titled by file name, and
shows <name>.jpg from the same folder as the template's picture (the placeholder when there is none).

Each thumbnail is made from what its workflow makes: the API twin runs in a real ComfyUI on tiny random
models (128x128, a few chunks; prompt switches, the cut and the start frames scaled to fit), with the
files it loads in input/ (tests/tiny_workflows.write_example_inputs: a sunset picture and a clip of it).
Four frames of its videos, evenly spread (two of each when it saves two), make a 2x2 grid; a band at the
bottom names the workflow and draws a timeline of each video it makes at full size (start image or clip
white, each prompt its colour, scene cuts red). Random models draw no pictures of the prompts: the frames
show what the run made (the start frames, changes at the switches), not what a real model makes.

    .venv/bin/python workflows/build_thumbnails.py [NAME ...]     (needs `bash .ci/setup_comfyui.sh`)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from comfy_harness import ComfyServer  # noqa: E402
from packforcing_core.model.checkpoint import save_model  # noqa: E402
from packforcing_core.sampling.prompts import save_prompt_embeds  # noqa: E402
from packforcing_core.model.tiny import random_model, tiny_config  # noqa: E402
from packforcing_core.vae.model import WanVAE  # noqa: E402
from tiny_workflows import API_DIR, on_tiny_models, write_example_inputs  # noqa: E402

DIT, VAE = "thumb_dit.safetensors", "thumb_vae.safetensors"
PROMPTS = [f"thumb_prompt_{i}.safetensors" for i in range(3)]
SIZE, CHUNKS, CLIP_FRAMES = 128, 4, 9       # pixels; chunks of 4 latent frames per new video; 1+4k clip frames
TILE, GAP, BAND = 122, 4, 46                # the 256x256 picture: 2x2 tiles, the band over their bottom
QUALITY = 80


def tiny_models(server: ComfyServer) -> None:
    cfg = tiny_config(dim=128, num_heads=1, ffn_dim=256, num_layers=2, text_dim=4096, text_len=512, freq_dim=256)
    save_model(random_model(cfg, seed=1), str(server.models_dir / "diffusion_models" / DIT))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()},
              str(server.models_dir / "vae" / VAE))
    g = torch.Generator().manual_seed(0)
    for name in PROMPTS:
        save_prompt_embeds(str(server.input_dir / name), torch.randn(1, 8, 4096, generator=g))


def shrunk(name: str) -> dict:
    """The workflow on the tiny models, at SIZE, CHUNKS chunks per new video; times scaled to fit."""
    wf = on_tiny_models(name, DIT, VAE, PROMPTS[0])
    encoders = sorted((k for k, n in wf.items() if n["class_type"] == "PackForcingLoadPromptEmbeddings"), key=int)
    for i, nid in enumerate(encoders):                       # each prompt of the workflow a different one
        wf[nid]["inputs"]["embeddings"] = PROMPTS[i % len(PROMPTS)]
    seconds = max(n["inputs"]["length"] for n in wf.values() if n["class_type"] == "PackForcingSampler") / 16
    source = lambda link: wf[link[0]]["class_type"] if isinstance(link, list) else None
    for nid, node in wf.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "PackForcingSampler":                     # 16 frames a chunk; a start counts in `length`
            if source(inputs["cache"]) == "PackForcingSampler":
                length = 16 * (CHUNKS // 2)                  # a continuation: the frames it adds
            else:
                start = {"ImageFromBatch": CLIP_FRAMES, "LoadImage": 1}.get(source(inputs.get("start_image")), -3)
                length = start + 16 * CHUNKS
            inputs.update(width=SIZE, height=SIZE, length=length)
        elif kind == "ImageFromBatch":
            inputs["length"] = CLIP_FRAMES
        elif kind == "PackForcingPromptSchedule":           # switches at the same share of the video
            inputs["start_seconds"] = float(round(inputs["start_seconds"] / seconds * CHUNKS))
            inputs["transition_chunks"] = min(inputs["transition_chunks"], 1)
        elif kind == "PackForcingSaveVideo":
            inputs["filename_prefix"] = f"thumbs/{nid}"
    return wf


def videos_of(server: ComfyServer, entry: dict) -> list[Path]:
    """The mp4 files the run wrote, in the order of the nodes that wrote them."""
    return [p for nid in sorted(entry["outputs"], key=int) for p in server.output_files({"outputs": {
        nid: entry["outputs"][nid]}}) if p.suffix == ".mp4"]


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as video:
        return [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]


PROMPT_COLORS = [(78, 140, 255), (60, 207, 122), (255, 177, 59), (233, 110, 190)]
START, CUT = (245, 245, 245), (255, 85, 85)


def timelines(wf: dict) -> list[dict]:
    """The videos the (full-size) workflow makes, one row each: segments (seconds, colour) of the start
    frames and of each prompt (a colour per prompt node), cut marks (seconds), and the row's cache mode."""
    link = lambda value: wf[value[0]] if isinstance(value, list) else None
    rows, row_of, colours = [], {}, {}
    colour = lambda value: colours.setdefault(value[0], PROMPT_COLORS[len(colours) % len(PROMPT_COLORS)])
    for nid in sorted((k for k, n in wf.items() if n["class_type"] == "PackForcingSampler"), key=int):
        inputs = wf[nid]["inputs"]
        source = next((k for k, n in wf.items() if n is link(inputs["cache"])), None)
        if source in row_of:                                       # a continuation: the same video goes on
            row, frames = row_of[source], inputs["length"]
        else:
            start = link(inputs.get("start_image"))
            first = {"LoadImage": 1, "ImageFromBatch": (start or {}).get("inputs", {}).get("length")}.get(
                (start or {}).get("class_type"), 0)
            row = {"segments": [(first / 16, START)] if first else [], "cuts": [],
                   "mode": link(inputs["cache"])["inputs"].get("mode")}
            rows.append(row)
            frames = inputs["length"] - first
        row_of[nid] = row
        entries, node = [], link(inputs["positive"])
        while node and node["class_type"] == "PackForcingPromptSchedule":    # the schedule, last entry first
            entries.insert(0, node["inputs"])
            node = link(node["inputs"].get("schedule"))
        entries = entries or [{"start_seconds": 0.0, "cut": "none", "conditioning": inputs["positive"]}]
        seconds, offset = frames / 16, sum(s for s, _ in row["segments"])
        for i, entry in enumerate(entries):
            end = entries[i + 1]["start_seconds"] if i + 1 < len(entries) else seconds
            row["segments"].append((end - entry["start_seconds"], colour(entry["conditioning"])))
            if i and entry["cut"] != "none":
                row["cuts"].append(offset + entry["start_seconds"])
    return rows


def picture(videos: list[list[np.ndarray]], label: str, rows: list[dict]) -> Image.Image:
    """Four frames in a 2x2 grid (evenly spread over one video, or two of each of two); over their bottom a
    band with `label` and a timeline of each video: start frames white, each prompt its colour, cuts red."""
    if len(videos) == 1:
        (v,) = videos
        picks = [v[round(i * (len(v) - 1) / 3)] for i in range(4)]
    else:
        picks = [v[i] for v in videos[:2] for i in (len(v) // 3, len(v) - 1)]
    side = 2 * TILE + 3 * GAP
    img = Image.new("RGB", (side, side), (24, 24, 24))
    for i, frame in enumerate(picks):
        tile = Image.fromarray(frame).resize((TILE, TILE), Image.Resampling.BILINEAR)
        img.paste(tile, (GAP + (i % 2) * (TILE + GAP), GAP + (i // 2) * (TILE + GAP)))
    draw, font, small = ImageDraw.Draw(img), ImageFont.load_default(size=15), ImageFont.load_default(size=11)
    lines = wrap(draw, label, font, side - 16)
    height = 10 + 18 * len(lines) + 15 * len(rows) + 3
    band = Image.new("RGBA", (side, height), (12, 12, 12, 220))
    img.paste(band, (0, side - height), band)
    y = side - height + 8
    for line in lines:
        draw.text((8, y), line, font=font, fill=(240, 240, 240))
        y += 18
    y += 4
    longest = max(sum(s for s, _ in r["segments"]) for r in rows)
    x0 = 8 + (max(draw.textlength(r["mode"], font=small) for r in rows) + 6 if len(rows) > 1 else 0)
    scale = (side - 8 - x0) / longest
    for r in rows:
        if len(rows) > 1:
            draw.text((8, y - 2), r["mode"], font=small, fill=(200, 200, 200))
        x = x0
        for seconds, colour in r["segments"]:
            width = max(4, seconds * scale)                         # a start image shows too
            draw.rectangle([x, y, x + width - 1, y + 9], fill=colour)
            x += width
        for at in r["cuts"]:
            draw.rectangle([x0 + at * scale - 1, y - 2, x0 + at * scale + 1, y + 11], fill=CUT)
        y += 15
    return img


def wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(line, font=font) > width:
            lines.append(word)
        else:
            lines[-1] = line
    return lines


def main(names: list[str]) -> None:
    with ComfyServer() as server:
        tiny_models(server)
        write_example_inputs(server.input_dir)
        for path in sorted(API_DIR.glob("*.json")):
            if names and path.stem not in names:
                continue
            entry = server.run(shrunk(path.stem), timeout=1200)
            videos = [frames_of(p) for p in videos_of(server, entry)]
            out = ROOT / "workflows" / f"{path.stem}.jpg"
            label = path.stem.removeprefix("PackForcing - ")
            picture(videos, label, timelines(json.loads(path.read_text()))).save(out, quality=QUALITY, optimize=True)
            print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(sys.argv[1:])
