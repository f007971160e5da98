"""Videos written into output/ through a real ComfyUI: the sampler's "save video as it goes" and Save
Video on folders that cannot be written, a full disk and bad prefixes; a cancel that lands right after
a chunk is kept; resume into the same file; Save Video reusing the sampler's finished stream.

A cancel at an exact moment: the test plugin below calls ComfyUI's own interrupt (what POST /interrupt
does) the moment the sampler reports a given chunk done, as a user's click landing then would. The
tiny models and workflow helpers are those of test_comfy_e2e.py.
"""
from __future__ import annotations

import contextlib
import re
import struct
import time

import av
import pytest

from fs_faults import fill, full_disk, read_only
from tiny_workflows import T2V_2MIN
from test_comfy_e2e import SLOW_DIT, api, basic, chunks_kept, error_of, resume_files, server, tiny  # noqa: F401

CANCEL_FILE = "pf_cancel_at_chunk.txt"
CANCEL_HOOK = f'''
import os
import comfy.model_management
import folder_paths
import server

_send_sync = server.PromptServer.send_sync


def send_sync(self, event, data, sid=None):
    _send_sync(self, event, data, sid)
    trigger = os.path.join(folder_paths.get_input_directory(), "{CANCEL_FILE}")
    if event == "packforcing.progress" and data.get("phase") == "chunk_done" and os.path.isfile(trigger):
        with open(trigger) as f:
            chunk = int(f.read())
        if data.get("chunk") == chunk:
            os.remove(trigger)
            comfy.model_management.interrupt_current_processing(True)


server.PromptServer.send_sync = send_sync
NODE_CLASS_MAPPINGS = {{}}
'''
COMFY_SERVER_OPTIONS = {"extra_custom_nodes": {"pf_cancel_hook": CANCEL_HOOK}}


def frame_count(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def top_level_boxes(path) -> list[tuple[str, int]]:
    """(type, size) of the mp4's top-level boxes; raises if the last one runs past the end of the file."""
    data, boxes, off = path.read_bytes(), [], 0
    while off < len(data):
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        assert size >= 8 and off + size <= len(data), f"box {kind} at {off} is cut off ({size} > {len(data) - off})"
        boxes.append((kind.decode(), size))
        off += size
    return boxes


def live(length: int, prefix: str, size: int = 128, dit: str | None = None, **sampler) -> dict:
    """basic() with the sampler saving the video as it goes."""
    wf = basic(length, width=size, height=size, save_video=True, filename_prefix=prefix, **sampler)
    if dit:
        wf["3"]["inputs"]["dit_name"] = dit
    return wf


def save_video_of(wf: dict, prefix: str, **inputs) -> dict:
    wf["9"] = {"class_type": "PackForcingSaveVideo", "inputs": {"samples": ["6", 0], "vae": ["5", 0],
                                                                "filename_prefix": prefix, "fps": 16.0,
                                                                "codec": "h264", "crf": 19} | inputs}
    return wf


def failing(server, wf: dict) -> tuple[str, list[dict]]:
    """(error message, the progress messages of the failed prompt)."""
    with server.ws_messages() as ws:
        message = error_of(server, wf)
        time.sleep(0.2)
        return message, [m for m in ws.messages if m.get("type") in ("progress", "packforcing.progress")]


def cancelled_at(server, wf: dict, chunk: int) -> int:
    """Run `wf`, cancelled the moment its sampler reports chunk `chunk` done; the latent frames it kept."""
    (server.input_dir / CANCEL_FILE).write_text(str(chunk))
    with server.ws_messages() as ws:
        prompt_id = server.queue(wf)
        ws.wait_done(prompt_id, timeout=300)
        assert ws.of_type("execution_interrupted", prompt_id), "the run was not cancelled"
        return chunks_kept(ws, prompt_id)[-1]


@pytest.fixture
def clean_resume(server):
    yield
    for p in (server.output_dir / "packforcing").glob("resume-*"):
        p.unlink()


# ----------------------------------------------------------------------------- bad folders and prefixes

CASES = ["read_only", "name_too_long", "through_a_file", "empty", "dot"]


def bad_prefix(server, case: str, stack) -> tuple[str, list[str]]:
    """(filename_prefix, what the message must say)."""
    if case == "read_only":
        stack.enter_context(read_only(server.output_dir / "pf_ro"))
        return "pf_ro/video", [str(server.output_dir / "pf_ro" / "video_00001_."), "Read-only file system"]
    if case == "name_too_long":
        return "pf_long/" + "x" * 300, ["too long", "(311 characters", "shorter prefix"]     # + _00001_.mp4
    if case == "through_a_file":
        (server.output_dir / "pf_file.txt").write_text("a file, not a folder")
        return "pf_file.txt/video", [f"'{server.output_dir / 'pf_file.txt'}' is a file, not a folder"]
    if case == "empty":
        return "", ["is empty", "video/PackForcing"]
    return ".", ["hidden file", "'._00001_...'"]


@pytest.mark.parametrize("node", ["sampler", "save_video"])
@pytest.mark.parametrize("case", CASES)
def test_unwritable_video_paths_are_named_before_any_work(server, node, case):
    before = {p for p in server.output_dir.rglob("*")}
    with contextlib.ExitStack() as stack:
        prefix, expect = bad_prefix(server, case, stack)
        wf = live(13, prefix) if node == "sampler" else save_video_of(basic(13, seed=5), prefix)
        message, progress = failing(server, wf)
        print(f"{node}/{case}: {message}")
        for part in ["filename_prefix"] + expect:
            assert part in message, f"{part!r} not in {message!r}"
        if node == "sampler":
            assert not progress, "the sampler ran before the file was found unwritable"
        else:
            assert not [m for m in progress if m["data"].get("node") == "9"], "Save Video decoded first"
        left = {p for p in server.output_dir.rglob("*") if p.is_file()} - before
        assert not [p for p in left if p.suffix in (".mp4", ".partial") or p.name.startswith(".")], left


# ----------------------------------------------------------------------------- a full disk

def test_a_full_disk_keeps_whole_fragments_that_play(server, clean_resume):
    total = 16 * 40 - 3
    with full_disk(server.output_dir / "pf_full", kib=200) as folder:    # room for two fragments, not 40
        message, _ = failing(server, live(total, "pf_full/video", seed=21))
        print(message)
        path = folder / "video_00001_.mp4"
        for part in ("filename_prefix", str(path), "the disk is full", "keeps its first"):
            assert part in message, f"{part!r} not in {message!r}"
        kept = int(re.search(r"keeps its first (\d+) frames", message).group(1))
        boxes = top_level_boxes(path)           # every box whole: no fragment cut off by the full disk
        assert [k for k, _ in boxes[:2]] == ["ftyp", "moov"] and boxes[-1][0] == "mdat", boxes
        assert 0 < kept < total and frame_count(path) == kept


def test_a_disk_full_before_the_first_fragment_leaves_no_file(server, clean_resume):
    with full_disk(server.output_dir / "pf_full0", kib=16) as folder:
        fill(folder)
        message, _ = failing(server, live(16 * 4 - 3, "pf_full0/video", seed=22))
        print(message)
        for part in ("filename_prefix", "the disk is full", "no file is left"):
            assert part in message, f"{part!r} not in {message!r}"
        assert [p.name for p in folder.iterdir()] == ["filler"]


# ----------------------------------------------------------------------------- cancel and resume

def test_a_cancel_right_after_a_chunk_keeps_that_chunk_in_the_video(server, clean_resume):
    kept = cancelled_at(server, live(16 * 12 - 3, "pf_race/video", dit=SLOW_DIT, seed=23), chunk=3)
    assert kept == 3 * 4
    (saved,) = resume_files(server)
    (path,) = (server.output_dir / "pf_race").glob("video_*.mp4")
    assert frame_count(path) == 4 * kept - 3, "the chunk kept when the cancel came is missing from the video"


def test_resume_rewrites_the_video_of_the_cancelled_run(server, clean_resume):
    wf = live(16 * 8 - 3, "pf_resume/video", dit=SLOW_DIT, seed=24)
    kept = cancelled_at(server, wf, chunk=2)
    (partial,) = (server.output_dir / "pf_resume").glob("video_*.mp4")
    assert frame_count(partial) == 4 * kept - 3
    wf["6"]["inputs"]["resume"] = True
    entry = server.run(wf)
    shown = entry["outputs"]["6"]["images"][0]
    assert [p.name for p in (server.output_dir / "pf_resume").iterdir()] == [partial.name] == [shown["filename"]]
    assert frame_count(partial) == 16 * 8 - 3
    assert not resume_files(server) and not list((server.output_dir / "packforcing").glob("resume-*"))


# ----------------------------------------------------------------------------- Save Video reuses the stream

def test_a_shipped_workflow_saving_as_it_goes_writes_one_file_decoded_once(server):
    wf = tiny(api(T2V_2MIN), {"6": 29})
    wf["6"]["inputs"]["save_video"] = True
    assert wf["6"]["inputs"]["filename_prefix"] == wf["7"]["inputs"]["filename_prefix"]
    folder = server.output_dir / "video"

    def run() -> tuple[dict, list]:
        with server.ws_messages() as ws:
            entry = server.run(wf)
            time.sleep(0.2)
            return entry, [m for m in ws.of_type("progress") if m["data"].get("node") == "7"]

    entry, decoding = run()
    (video,) = folder.glob("packforcing_t2v_2min_*.mp4")
    assert entry["outputs"]["7"]["images"] == entry["outputs"]["6"]["images"]
    assert not decoding, "Save Video decoded the video again"
    assert frame_count(video) == 29

    wf["7"]["inputs"]["filename_prefix"] = "video/elsewhere"          # the same stream, under another name
    entry, decoding = run()
    (copy,) = folder.glob("elsewhere_*.mp4")
    assert not decoding and copy.read_bytes() == video.read_bytes()

    wf["7"]["inputs"]["crf"] = 23                                      # other settings: its own encoding
    entry, decoding = run()
    assert decoding, "Save Video with another crf must encode the video itself"
    assert len(list(folder.glob("elsewhere_*.mp4"))) == 2 and frame_count(folder / "elsewhere_00002_.mp4") == 29
