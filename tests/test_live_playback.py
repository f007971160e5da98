"""Live playback's feed against a real ComfyUI (no browser; tests/test_web_player.py drives the player):

- a run announces itself, each fragment and its end on the websocket (`packforcing.live_video`);
- the init segment and the fragments, fetched over HTTP and put one after another, are a video that
  PyAV (FFmpeg, not our muxer) decodes to the frames PackForcing Save Video makes of the same latent,
  at the run's size, with nothing left on disk when the video is not saved;
- with save_video on the file is exactly the init segment, the same fragments and a fragment index,
  and fragments dropped from memory are read back from it;
- the route refuses unknown prompts and nodes, malformed parts and indices out of range with a
  message (400 / 404), and a fragment dropped from memory with 410;
- memory: the server keeps at most PACKFORCING_LIVE_MB (here 0.25 MB) of fragments.
"""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import av
import numpy as np
import pytest

from comfy_harness import pack_module
from test_web import CACHE, DIT, PROMPT, SAMPLER, VAE, server  # noqa: F401  (server: the fixture)
import tiny_workflows

pytestmark = pytest.mark.comfy
BUDGET_MB = 0.25
COMFY_SERVER_OPTIONS = {"env": {"PACKFORCING_LIVE_MB": str(BUDGET_MB)}}
W, H = 128, 96
EVENT = "packforcing.live_video"


def workflow(latent_frames: int, prefix: str, **sampler) -> dict:
    """The 2-minute workflow on the tiny models at W x H, followed by PackForcing Save Video."""
    wf = tiny_workflows.on_tiny_models(tiny_workflows.T2V_2MIN, DIT, VAE, PROMPT, **{
        CACHE: {"top_k": 2}, SAMPLER: {"width": W, "height": H, "length": 4 * latent_frames - 3, **sampler},
        "PackForcingSaveVideo": {"filename_prefix": f"{prefix}/after"}})
    return wf


def run_with_messages(server, wf: dict, watching: bool = True) -> tuple[str, list[dict], dict]:
    """Run wf from a websocket client that watches the live video (as the page's player does), or from a
    new one that does not."""
    client = server.client_id if watching else uuid.uuid4().hex
    with server.ws_messages(client) as ws:
        if watching:
            assert server.post("/packforcing/live/watch", {"client_id": client}) == {"watching": client}
        prompt_id = server.queue(wf, client)
        entry = server.wait(prompt_id, timeout=300)
        ws.wait_for(lambda m: m.get("type") == "executing" and m["data"].get("node") is None
                    and m["data"].get("prompt_id") == prompt_id, timeout=60)
        msgs = [m["data"] for m in ws.messages if m.get("type") == EVENT]
    assert entry["status"]["status_str"] == "success", entry["status"]
    return prompt_id, msgs, entry


def get(server, path: str) -> tuple[int, bytes | dict]:
    try:
        with urllib.request.urlopen(f"{server.url}/api{path}", timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def live(prompt_id: str, node: str, part: str) -> str:
    return f"/packforcing/live/{urllib.parse.quote(prompt_id, safe='')}/{urllib.parse.quote(node, safe='')}/{part}"


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)


def sampler_id(wf: dict) -> str:
    return next(k for k, n in wf.items() if n["class_type"] == SAMPLER)


@pytest.fixture(scope="module")
def short_run(server):
    """3 chunks, the video not saved: (workflow, prompt id, live messages, history entry)."""
    wf = workflow(12, "pf_live_short")
    prompt_id, msgs, entry = run_with_messages(server, wf)
    return wf, prompt_id, msgs, entry


def test_fragments_over_http_are_the_video_and_nothing_is_left_on_disk(server, short_run):
    wf, prompt_id, msgs, entry = short_run
    node = sampler_id(wf)
    assert [m["phase"] for m in msgs] == ["start"] + ["fragment"] * (len(msgs) - 2) + ["end"], msgs
    start, frags, end = msgs[0], msgs[1:-1], msgs[-1]
    assert (start["prompt_id"], start["node"], start["width"], start["height"], start["fps"]) == \
        (prompt_id, node, W, H, 16)
    assert start["mime"].startswith('video/mp4; codecs="avc1.') and start["file"] is None
    assert [f["index"] for f in frags] == list(range(len(frags))) and len(frags) == 3      # one per chunk
    assert [f["frames"] for f in frags] == [13, 16, 16] and frags[0]["key"]
    assert [f["first_frame"] for f in frags] == [0, 13, 29]
    assert end == {"phase": "end", "prompt_id": prompt_id, "node": node, "frames": 45, "fragments": 3,
                   "stopped": False, "file": None}

    status, manifest = get(server, live(prompt_id, node, "manifest"))
    assert status == 200 and manifest["fragments"] == [[f["first_frame"], f["frames"], int(f["key"])] for f in frags]
    assert manifest["finished"] and manifest["mime"] == start["mime"] and manifest["kept_bytes"] > 0
    status, init = get(server, live(prompt_id, node, "init.mp4"))
    assert status == 200 and init[4:8] == b"ftyp"
    parts = [get(server, live(prompt_id, node, f"{i}.m4s")) for i in range(3)]
    assert all(s == 200 and p[4:8] == b"moof" for s, p in parts)
    frames = decode(init + b"".join(p for _, p in parts))
    (after,) = [p for p in server.output_files(entry) if p.suffix == ".mp4"]
    reference = decode(after.read_bytes())
    assert frames.shape == reference.shape == (45, H, W, 3)
    same, shifted = np.abs(frames - reference).mean(), np.abs(frames[1:] - reference[:-1]).mean()
    assert same < 8 and same < 0.5 * shifted, (same, shifted)        # the same frames, two h264 encodings
    assert sorted(p.name for p in server.output_dir.rglob("*.mp4")) == [after.name]
    assert not any(server.base_dir.joinpath("temp").rglob("*.m4s"))


def test_saved_file_is_the_same_fragments_and_serves_what_memory_dropped(server):
    """Over the 0.25 MB budget: early fragments leave memory, and come back from the saved file."""
    wf = workflow(24, "pf_live_saved", save_video=True, filename_prefix="pf_live_saved/live")
    prompt_id, msgs, entry = run_with_messages(server, wf)
    node = sampler_id(wf)
    (path,) = (server.output_dir / "pf_live_saved").glob("live_*.mp4")
    _, manifest = get(server, live(prompt_id, node, "manifest"))
    n = len(manifest["fragments"])
    assert n == 6 and manifest["first_kept"] == 0 and manifest["frames"] == 4 * 24 - 3
    assert manifest["file"] == msgs[0]["file"] == {"filename": path.name, "subfolder": "pf_live_saved",
                                                   "type": "output"}
    assert manifest["kept_bytes"] <= BUDGET_MB * 2 ** 20
    _, init = get(server, live(prompt_id, node, "init.mp4"))
    fragments = [get(server, live(prompt_id, node, f"{i}.m4s"))[1] for i in range(n)]
    data = path.read_bytes()
    body = init + b"".join(fragments)
    assert data.startswith(body) and data[len(body) + 4:len(body) + 8] == b"mfra", "file != init + fragments"
    assert len(body) > BUDGET_MB * 2 ** 20            # so some of them came from the file
    assert decode(data).shape == (4 * 24 - 3, H, W, 3)


def test_memory_keeps_the_newest_fragments_within_the_budget(server):
    wf = workflow(24, "pf_live_budget")
    prompt_id, msgs, _ = run_with_messages(server, wf)
    node = sampler_id(wf)
    status, manifest = get(server, live(prompt_id, node, "manifest"))
    first = manifest["first_kept"]
    assert 0 < first < 6 and manifest["kept_bytes"] <= BUDGET_MB * 2 ** 20, manifest
    status, body = get(server, live(prompt_id, node, "0.m4s"))
    assert status == 410 and "dropped from memory" in body["error"] and f"fragments {first}-5 are kept" in \
        body["error"] and f"PACKFORCING_LIVE_MB={BUDGET_MB}" in body["error"], body
    assert get(server, live(prompt_id, node, "5.m4s"))[0] == 200
    assert msgs[-2]["first_kept"] == first            # the page is told what it can still fetch


@pytest.mark.parametrize("part, status, message", [
    ("manifest.json", 400, "is not 'manifest', 'init.mp4' or '<fragment index>.m4s'"),
    ("01.m4s", 400, "no leading zeros"),
    ("-1.m4s", 400, "is not 'manifest'"),
    ("1.5.m4s", 400, "is not 'manifest'"),
    ("3.m4s", 404, "fragment 3 does not exist: prompt"),
    ("99999.m4s", 404, "has fragments 0-2"),
])
def test_route_refuses_bad_parts(server, short_run, part, status, message):
    wf, prompt_id, _, _ = short_run
    got, body = get(server, live(prompt_id, sampler_id(wf), part))
    assert got == status and message in body["error"], body


def test_route_refuses_unknown_prompts_and_nodes(server, short_run):
    wf, prompt_id, _, _ = short_run
    status, body = get(server, live("no-such-prompt", sampler_id(wf), "manifest"))
    assert status == 404 and "no live video for prompt 'no-such-prompt'" in body["error"], body
    status, body = get(server, live(prompt_id, "77", "init.mp4"))
    assert status == 404 and f"prompt {prompt_id} has no live video of node '77'" in body["error"] \
        and f"'{sampler_id(wf)}'" in body["error"], body
    status, body = get(server, live("a b", sampler_id(wf), "manifest"))
    assert status == 400 and "prompt id 'a b' is malformed" in body["error"], body
    status, body = get(server, live(prompt_id, "x" * 200, "manifest"))
    assert status == 400 and "node id" in body["error"], body


def test_no_vae_or_playback_off_means_no_feed(server):
    wf = workflow(4, "pf_live_off", live_playback=False)
    prompt_id, msgs, _ = run_with_messages(server, wf)
    assert msgs == [] and get(server, live(prompt_id, sampler_id(wf), "manifest"))[0] == 404
    wf = workflow(4, "pf_live_novae")
    del wf[sampler_id(wf)]["inputs"]["vae"]
    prompt_id, msgs, _ = run_with_messages(server, wf)
    assert [m["phase"] for m in msgs] == ["unavailable"] and "connect a VAE" in msgs[0]["reason"], msgs


def test_a_run_nobody_watches_is_not_decoded_for_playback(server):
    """Queued by a client that does not show the player (an API script): no decode, no feed, nothing on
    disk; the route refuses a malformed client id and says what it wants."""
    wf = workflow(4, "pf_live_unwatched")
    prompt_id, msgs, entry = run_with_messages(server, wf, watching=False)
    assert msgs == [] and get(server, live(prompt_id, sampler_id(wf), "manifest"))[0] == 404
    assert "video" not in entry["outputs"][sampler_id(wf)]["packforcing"][0]
    for body in ({"client_id": "a b"}, {"client": "x"}, ["x"]):
        req = urllib.request.Request(f"{server.url}/api/packforcing/live/watch", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 400 and "client_id" in json.loads(e.value.read())["error"]


# ----------------------------------------------------------------------------- the bounds, without a server

def test_feeds_stay_within_budget_over_an_hour_of_fragments(monkeypatch):
    """An hour of 1-second fragments of 100 kB, with a 5 MB budget: memory holds the newest ~50, the
    index all 3600; older runs' fragments go first, and only KEEP_RUNS finished runs are remembered."""
    lp = pack_module("nodes.live_player")
    monkeypatch.setenv("PACKFORCING_LIVE_MB", "5")
    feeds = lp.Feeds()
    older = lp.LiveFeed("old", "6", "video/mp4", 64, 64, b"init")
    feeds.open(older)
    for i in range(10):
        feeds.add(older, lp.Fragment(16 * i, 16, True, 100_000, bytes(100_000), None, 0.0, 0.0))
    older.finished = True
    feed = lp.LiveFeed("now", "6", "video/mp4", 64, 64, b"init")
    feeds.open(feed)
    for i in range(3600):
        feeds.add(feed, lp.Fragment(16 * i, 16, True, 100_000, bytes(100_000), None, 0.0, 0.0))
        if older.kept_bytes:                    # the finished run's fragments go first
            assert feed.first_kept == 0
    assert older.kept_bytes == 0 and older.first_kept == 10
    assert feed.kept_bytes <= 5 * 2 ** 20 and feed.kept_bytes + 100_000 > 5 * 2 ** 20
    assert feed.first_kept == 3600 - feed.kept_bytes // 100_000 and len(feed.fragments) == 3600
    assert sum(f.data is not None for f in feed.fragments) == feed.kept_bytes // 100_000
    with pytest.raises(lp.FeedError, match="dropped from memory"):
        feeds.read("now", "6", 0)
    assert feeds.read("now", "6", 3599) == bytes(100_000)
    feed.finished = True
    for k in range(lp.KEEP_RUNS + 2):
        f = lp.LiveFeed(f"run{k}", "6", "video/mp4", 64, 64, b"init")
        feeds.open(f)
        f.finished = True
    feeds.open(lp.LiveFeed("last", "6", "video/mp4", 64, 64, b"init"))
    assert len(feeds.runs) == lp.KEEP_RUNS + 1
