"""Directing a video inside a real ComfyUI: start images / clips / latents, prompt schedules with
re-cache, scene cuts. Every shipped directing workflow runs on the tiny models and gives a playable
mp4 with the expected frame count; bad inputs give messages that name the input and the fix."""
from __future__ import annotations

import copy

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from test_comfy_e2e import (CLIP_L_PROMPT, PROMPTS, SIZE, api, basic, error_of, files, latent_of, load_prompt,  # noqa: F401
                            server, tiny, video_info)
from tiny_workflows import EXTEND_CLIP, FULL_CACHE, I2V_60S, SCHEDULE_90S, TWO_SHOTS

IMAGE, CLIP, LATENT = "pf_start.png", "pf_clip.mp4", "pf_start_latent.latent"
NAN_LATENT = "pf_nan_latent.latent"
EMPTY_LATENT = "pf_empty_latent.latent"
PROMPT_C = "pf_prompt_c.safetensors"


@pytest.fixture(scope="module")
def directing(server):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(server.input_dir / IMAGE)
    with av.open(str(server.input_dir / CLIP), "w") as out:             # 11 frames: 9 are used (1+4k)
        stream = out.add_stream("libx264", rate=16)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(11):
            frame = np.full((SIZE, SIZE, 3), 20 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    g = torch.Generator().manual_seed(7)
    save_file({"latent_tensor": torch.randn(1, 16, 2, SIZE // 8, SIZE // 8, generator=g),
               "latent_format_version_0": torch.tensor([])},                  # as SaveLatent writes them
              str(server.input_dir / LATENT))
    nan = torch.randn(1, 16, 2, SIZE // 8, SIZE // 8, generator=g)
    nan[0, 3, 1, 2, 2] = float("nan")
    save_file({"latent_tensor": nan, "latent_format_version_0": torch.tensor([])}, str(server.input_dir / NAN_LATENT))
    save_file({"latent_tensor": torch.zeros(1, 16, 0, SIZE // 8, SIZE // 8),
               "latent_format_version_0": torch.tensor([])}, str(server.input_dir / EMPTY_LATENT))
    from packforcing_core.sampling.prompts import save_prompt_embeds
    save_prompt_embeds(str(server.input_dir / PROMPT_C), torch.randn(1, 6, 4096, generator=g))
    return server


def tiny_directing(name: str, length: int, **sampler) -> dict:
    """A shipped directing workflow on the tiny models; prompts 1, 2, 3 -> the test's embeddings."""
    wf = api(name)
    encoders = sorted((k for k, n in wf.items() if n["class_type"] == "CLIPTextEncode"), key=int)
    for nid, prompt in zip(encoders, list(PROMPTS) + [PROMPT_C]):
        wf[nid] = load_prompt(prompt)
    wf = tiny(wf, {"6": length})
    for node in wf.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = IMAGE
        if node["class_type"] == "LoadVideo":
            node["inputs"]["file"] = CLIP
        if node["class_type"] == "ImageFromBatch":
            node["inputs"]["length"] = 9
    wf["6"]["inputs"].update(sampler)
    return wf


def frames_of(server, entry) -> int:
    (mp4,) = files(server, entry, ".mp4")
    frames, width, height, codec = video_info(mp4)
    assert (width, height, codec) == (SIZE, SIZE, "h264")
    return frames


@pytest.mark.parametrize("name,length,switch_seconds", [
    (I2V_60S, 33, None),               # the image + 2 chunks of 4 latent frames
    (SCHEDULE_90S, 77, (1.0, 3.0)),    # 5 chunks; transitions of 2 chunks from chunks 1 and 3
    (EXTEND_CLIP, 9 + 32, None),       # 9 clip frames (3 latent) + 2 chunks
    (TWO_SHOTS, 29, (1.0,)),           # 2 chunks, a cut before the second
])
def test_directing_workflows_write_playable_videos(directing, name, length, switch_seconds):
    wf = tiny_directing(name, length)
    for nid, node in wf.items():
        if node["class_type"] == "PackForcingPromptSchedule" and node["inputs"]["start_seconds"]:
            node["inputs"]["start_seconds"] = switch_seconds[0]
            switch_seconds = switch_seconds[1:]
    entry = directing.run(wf, timeout=600)
    assert frames_of(directing, entry) == length
    info = entry["outputs"]["6"]["packforcing"][0]
    assert info["frames"] == length


def test_start_latent_begins_the_video_and_the_prompt_switch_is_reported(directing):
    wf = basic(4 * (2 + 8) - 3)           # 2 start latent frames + 2 chunks of 4
    wf["20"] = {"class_type": "LoadLatent", "inputs": {"latent": LATENT}}
    wf["6"]["inputs"]["start_latent"] = ["20", 0]
    wf["21"] = load_prompt(PROMPTS[1])
    wf["22"] = {"class_type": "PackForcingPromptSchedule", "inputs": {"conditioning": ["2", 0], "start_seconds": 0.0,
                                                                     "transition_chunks": 0, "recache": True,
                                                                     "cut": "none"}}
    wf["23"] = {"class_type": "PackForcingPromptSchedule", "inputs": {"conditioning": ["21", 0], "start_seconds": 1.0,
                                                                     "transition_chunks": 0, "recache": True,
                                                                     "cut": "none", "schedule": ["22", 0]}}
    wf["6"]["inputs"]["positive"] = ["23", 0]
    entry = directing.run(wf)
    out = latent_of(directing, entry, "8")
    given = load_file(str(directing.input_dir / LATENT))["latent_tensor"]
    assert out.shape[2] == 2 + 8
    torch.testing.assert_close(out[:, :, :2], given, atol=1e-5, rtol=1e-5)   # through normalise/denormalise
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", ["out_of_order", "past_end", "first_not_zero", "wrong_width", "image_without_vae",
                                  "clip_length", "latent_size", "latent_channels", "latent_nan", "start_when_continuing",
                                  "length_with_start", "transition_past_end", "transition_overlap", "latent_no_frames"])
def test_directing_bad_inputs_yield_clear_messages(directing, case):
    wf, expect = bad_directing(case)
    message = error_of(directing, wf)
    print(f"{case}: {message}")
    for part in expect:
        assert part in message, f"{case}: {part!r} not in {message!r}"


def schedule_node(cond, seconds, prev=None, **kw):
    inputs = {"conditioning": cond, "start_seconds": seconds, "transition_chunks": 0, "recache": True, "cut": "none"}
    inputs.update(kw)
    if prev:
        inputs["schedule"] = prev
    return {"class_type": "PackForcingPromptSchedule", "inputs": inputs}


def bad_directing(case: str) -> tuple[dict, list[str]]:
    wf = basic(45)
    wf["21"] = load_prompt(PROMPTS[1])
    if case in ("out_of_order", "past_end", "first_not_zero", "wrong_width"):
        first = 0.0 if case != "first_not_zero" else 1.0
        second = {"out_of_order": 0.0, "past_end": 5.0}.get(case, 2.0)
        if case == "wrong_width":
            wf["21"] = load_prompt(CLIP_L_PROMPT)
        wf["22"] = schedule_node(["2", 0], first)
        wf["23"] = schedule_node(["21", 0], second, ["22", 0])
        wf["6"]["inputs"]["positive"] = ["23", 0]
        return wf, {"out_of_order": ["start_seconds", "not after the previous prompt"],
                    "past_end": ["positive", "prompt 2", "starts at 5.0 s", "past the end", "3 s",
                                 "3 chunks of 1 s"],
                    "first_not_zero": ["start_seconds", "starts at 0 s"],
                    "wrong_width": ["positive", "768"]}[case]
    if case == "transition_past_end":              # 3 chunks: a switch at chunk 1 has at most 2 to blend over
        wf["22"] = schedule_node(["2", 0], 0.0)
        wf["23"] = schedule_node(["21", 0], 1.0, ["22", 0], transition_chunks=3)
        wf["6"]["inputs"]["positive"] = ["23", 0]
        return wf, ["positive", "prompt 2", "3 chunks", "past the end", "at most 2"]
    if case == "transition_overlap":
        wf["22"] = schedule_node(["2", 0], 0.0)
        wf["23"] = schedule_node(["21", 0], 1.0, ["22", 0], transition_chunks=2)
        wf["24"] = schedule_node(["2", 0], 2.0, ["23", 0])
        wf["6"]["inputs"]["positive"] = ["24", 0]
        wf["6"]["inputs"]["length"] = 61
        return wf, ["positive", "prompt 2", "overlaps prompt 3"]
    if case == "latent_no_frames":
        wf["20"] = {"class_type": "LoadLatent", "inputs": {"latent": EMPTY_LATENT}}
        wf["6"]["inputs"]["start_latent"] = ["20", 0]
        return wf, ["start_latent", "0 latent frames"]
    if case == "image_without_vae":
        wf["20"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
        wf["6"]["inputs"]["start_image"] = ["20", 0]
        del wf["6"]["inputs"]["vae"]
        return wf, ["vae", "start image", "wan_2.1_vae"]
    if case == "clip_length":
        wf["20"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
        wf["24"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["20", 0], "amount": 10}}
        wf["6"]["inputs"]["start_image"] = ["24", 0]
        return wf, ["start_image", "1+4k", "got 10", "9 or 13"]
    if case in ("latent_size", "latent_channels"):
        wf["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}} \
            if case == "latent_size" else {"class_type": "EmptyLatentImage",
                                           "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
        wf["6"]["inputs"]["start_latent"] = ["20", 0]
        return wf, ["start_latent", "has shape", f"(batch, 16, frames, {SIZE // 8}, {SIZE // 8})"]
    if case == "latent_nan":
        wf["20"] = {"class_type": "LoadLatent", "inputs": {"latent": NAN_LATENT}}
        wf["6"]["inputs"]["start_latent"] = ["20", 0]
        return wf, ["start_latent", "1 NaN/inf"]
    if case == "start_when_continuing":
        wf["20"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
        wf["13"] = copy.deepcopy(wf["6"])
        wf["13"]["inputs"].update(cache=["6", 1], length=16, start_image=["20", 0])
        wf["14"] = {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": "pf/bad"}}
        return wf, ["start_image", "new video", "new PackedCache"]
    if case == "length_with_start":
        wf["20"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
        wf["6"]["inputs"].update(start_image=["20", 0], length=45)
        return wf, ["length", "start included", "33", "49"]
    raise AssertionError(case)


# ----------------------------------------------------------------------------- saving as it goes

def decoded(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)


def test_save_video_as_it_goes_matches_save_video_and_is_shown(directing):
    wf = basic(45)                                      # 3 chunks, after a start image
    wf["20"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
    wf["6"]["inputs"].update(start_image=["20", 0], length=4 * 13 - 3, save_video=True,
                             filename_prefix="pf_live/run")
    wf["9"] = {"class_type": "PackForcingSaveVideo", "inputs": {"samples": ["6", 0], "vae": ["5", 0],
                                                                "filename_prefix": "pf_live/after", "fps": 16.0,
                                                                "codec": "h264", "crf": 18}}   # not 19: its own decode
    with directing.ws_messages() as ws:
        entry = directing.run(wf)
        live_msgs = [m["data"] for m in ws.messages if m.get("type") == "packforcing.progress"]
    shown = entry["outputs"]["6"]["images"][0]
    live = directing.output_dir / shown["subfolder"] / shown["filename"]
    (after,) = [p for p in files(directing, entry, ".mp4") if "after" in p.name]
    a, b = decoded(live), decoded(after)
    assert a.shape == b.shape == (49, SIZE, SIZE, 3)
    same, shifted = np.abs(a - b).mean(), np.abs(a[1:] - b[:-1]).mean()
    assert same < 8 and same < 0.5 * shifted, (same, shifted)    # the same frames in order, two h264 encodings
    assert all(m["video"] == shown for m in live_msgs)          # the live view links to it from the start


def test_save_video_as_it_goes_stays_playable_after_a_cancel(directing):
    from test_comfy_e2e import SLOW_DIT, chunks_kept
    wf = tiny(api(FULL_CACHE), {"6": 16 * 12 - 3}, dit=SLOW_DIT)
    wf["4"]["inputs"]["mode"] = "kv_pool"
    wf["6"]["inputs"].update(width=128, height=128, seed=3, save_video=True, filename_prefix="pf_live/cancel")
    del wf["7"]
    wf["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "pf_live/x"}}
    with directing.ws_messages() as ws:
        prompt_id = directing.queue(wf)
        ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("phase") == "chunk_done"
                    and m["data"]["chunk"] >= 3, timeout=180)
        directing.interrupt()
        ws.wait_done(prompt_id, timeout=120)
        kept = chunks_kept(ws, prompt_id)[-1]
    (path,) = (directing.output_dir / "pf_live").glob("cancel_*.mp4")
    frames = decoded(path)
    assert frames.shape[0] == 4 * kept - 3 and 12 <= kept < 48, (frames.shape, kept)


# ----------------------------------------------------------------------------- resume with a schedule

def slow_schedule(second: float = 1.0, later: float | None = None) -> dict:
    """12 chunks of 4 latent frames (1 s each) on the slow tiny DiT: prompt A, B from `second`, then
    optionally prompt C from `later`."""
    from test_comfy_e2e import SLOW_DIT, save_latent
    wf = tiny(api(FULL_CACHE), {"6": 16 * 12 - 3}, dit=SLOW_DIT)
    wf["4"]["inputs"]["mode"] = "kv_pool"
    wf["6"]["inputs"].update(width=256, height=256, seed=9)
    del wf["7"]
    wf["8"] = save_latent(["6", 0], "pf/schedule_resume")
    wf["21"], wf["25"] = load_prompt(PROMPTS[1]), load_prompt(PROMPT_C)
    wf["22"] = schedule_node(["2", 0], 0.0)
    wf["23"] = schedule_node(["21", 0], second, ["22", 0])
    wf["6"]["inputs"]["positive"] = ["23", 0]
    if later is not None:
        wf["24"] = schedule_node(["25", 0], later, ["23", 0])
        wf["6"]["inputs"]["positive"] = ["24", 0]
    return wf


def test_resume_refuses_another_past_schedule_and_takes_new_later_switches(directing):
    """The progress of a cancelled run remembers its schedule: a resume whose switches before the saved
    chunks differ is refused saying what differs; switches after them may change, and the resumed video
    is the uninterrupted one with the new schedule."""
    from test_comfy_e2e import chunks_kept, fresh_cache, resume_files
    for old in resume_files(directing):
        old.unlink()
    with directing.ws_messages() as ws:
        prompt_id = directing.queue(slow_schedule())
        ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("phase") == "chunk_done"
                    and m["data"]["chunk"] >= 2, timeout=180)
        directing.interrupt()
        ws.wait_done(prompt_id, timeout=120)
        kept = chunks_kept(ws, prompt_id)[-1]
    (saved,) = resume_files(directing)
    assert 8 <= kept < 40, kept             # the switch at chunk 1 happened, chunk 10 has not

    moved = slow_schedule(second=2.0)
    moved["6"]["inputs"]["resume"] = True
    message = error_of(directing, moved)
    for words in ("resume", "schedule", "prompt 2", "1 s"):
        assert words in message, (words, message)
    assert saved.exists(), "a refused resume removed the saved progress"

    later = slow_schedule(later=10.0)
    later["6"]["inputs"]["resume"] = True
    with directing.ws_messages() as ws:
        resumed = directing.run(later, timeout=600)
        assert chunks_kept(ws) == list(range(kept + 4, 49, 4)), "the run did not go on from the saved chunks"
    later["6"]["inputs"]["resume"] = False
    fresh_cache(directing)
    whole = directing.run(later, timeout=600)
    assert torch.equal(latent_of(directing, resumed, "8"), latent_of(directing, whole, "8"))
