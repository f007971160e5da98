"""Steering a running sampler over HTTP (POST/GET /packforcing/steer) in a real ComfyUI, on tiny models
with a real CLIP (tests/tiny_clip.py) so that typed text goes through ComfyUI's CLIPTextEncode.

- every malformed, unknown, conflicting or late request gets a 4xx answer naming the field, and
  changes nothing: the run gives exactly what its accepted changes give;
- steered over the API (an embeddings file with a transition, typed text without re-cache, a cut with
  the prompt in effect, inline embeddings with a cut of everything, one of them before the workflow's
  own scheduled prompt), the run records a schedule; the plain workflow with Prompt Schedule nodes
  built from that record, queued with the same seed, gives a bit-identical latent;
- pause holds the loop between chunks, cancel still works while paused, the queue of pending changes
  is bounded, and a run that ended refuses changes.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import torch

from packforcing_core.model.checkpoint import save_model
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.model.tiny import random_model, tiny_config
from test_comfy_e2e import latent_of, load_prompt, save_latent
from tiny_clip import TEXT_DIM, clip_loader, write_clip

DIT = "pf_steer_tiny.safetensors"
PROMPT_A, PROMPT_B, PROMPT_C = "pf_steer_a.safetensors", "pf_steer_b.safetensors", "pf_steer_c.safetensors"
CHUNKS = 16                  # chunks of 4 latent frames = 1 s each
SCHEDULED = 12               # the workflow's own Prompt Schedule entry: chunk 12 (11 s)
SIZE = 64


@pytest.fixture(scope="module")
def server(comfy_server):
    cfg = tiny_config(dim=128, num_heads=1, ffn_dim=256, num_layers=2, text_dim=TEXT_DIM, text_len=512,
                      freq_dim=256)
    save_model(random_model(cfg, seed=1), str(comfy_server.models_dir / "diffusion_models" / DIT))
    write_clip(comfy_server.models_dir)
    g = torch.Generator().manual_seed(0)
    for name in (PROMPT_A, PROMPT_B, PROMPT_C):
        save_prompt_embeds(str(comfy_server.input_dir / name), torch.randn(1, 8, TEXT_DIM, generator=g))
    assert comfy_server.custom_node_loaded(), comfy_server.log_tail()
    return comfy_server


def workflow(prefix: str, seed: int = 3) -> dict:
    """A: 0 s, C: the scheduled prompt at chunk 12; the sampler has the CLIP for typed prompts."""
    return {
        "1": clip_loader(),
        "2": load_prompt(PROMPT_A),
        "3": {"class_type": "PackForcingModelLoader", "inputs": {"dit_name": DIT, "dtype": "fp32", "compressor": "none",
                                                                 "compile": False, "fp8": False}},
        "4": {"class_type": "PackForcingPackedCache", "inputs": {"mode": "kv_pool", "sink_seconds": 0.5,
                                                                 "recent_seconds": 1.0, "mid_blocks": 4, "top_k": 2,
                                                                 "selection": "affinity", "rope_adjust": True,
                                                                 "mid_bank": "cpu"}},
        "5": load_prompt(PROMPT_C),
        "7": schedule(["5", 0], float(SCHEDULED - 1), ["2", 0], transition=1),
        "6": {"class_type": "PackForcingSampler", "inputs": {
            "model": ["3", 0], "positive": ["7", 0], "cache": ["4", 0], "width": SIZE, "height": SIZE,
            "length": 4 * 4 * CHUNKS - 3, "seed": seed, "steps": "1000,750,500,250", "shift": 5.0, "chunk_frames": 4,
            "resume": False, "clip": ["1", 0]}},
        "8": save_latent(["6", 0], prefix),
    }


def schedule(cond, seconds: float, prev, transition=0, recache=True, cut="none") -> dict:
    return {"class_type": "PackForcingPromptSchedule", "inputs": {
        "conditioning": cond, "start_seconds": seconds, "transition_chunks": transition, "recache": recache,
        "cut": cut, "schedule": prev}}


def kept(wf: dict, records: list[dict]) -> dict:
    """The workflow with the recorded changes as Prompt Schedule nodes (what "keep these changes" does),
    without the CLIP on the sampler: a plain scheduled workflow. Built from the record alone."""
    wf = json.loads(json.dumps(wf))
    del wf["6"]["inputs"]["clip"]
    entries = [(0.0, ["2", 0]), (float(SCHEDULED - 1), ["5", 0], "7")]
    for n, r in enumerate(records):
        source = r["prompt"]
        if "embeddings" in source:
            wf[f"s{n}"] = load_prompt(source["embeddings"])
            cond = [f"s{n}", 0]
        elif "text" in source:
            wf[f"s{n}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": source["text"], "clip": ["1", 0]}}
            cond = [f"s{n}", 0]
        else:
            cond = next(e[1] for e in entries if e[0] == source["same"]["seconds"])
        wf[f"p{n}"] = schedule(cond, r["seconds"], None, r["transition"], r["recache"], r["cut"])
        entries.append((r["seconds"], cond, f"p{n}"))
    prev = ["2", 0]
    for e in sorted(entries[1:]):
        wf[e[2]]["inputs"]["schedule"] = prev
        prev = [e[2], 0]
    wf["6"]["inputs"]["positive"] = prev
    return wf


def call(server, body=None, method="POST", path="/packforcing/steer", headers=None, raw: bytes | None = None):
    """(HTTP status, JSON answer) of a steer request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


def steer_events(ws, pid: str) -> list[dict]:
    return [m["data"] for m in ws.of_type("packforcing.steer", pid)]


def held(server, ws, pid: str, timeout: float = 120) -> dict:
    """Pause the run as soon as it can be steered; the state once the loop holds."""
    ws.wait_for(lambda m: m.get("type") == "packforcing.steer" and m["data"].get("prompt_id") == pid, timeout=timeout)
    status, body = call(server, {"prompt_id": pid, "action": "pause"})
    assert status == 200 and body["state"]["state"] in ("pausing", "paused"), body
    m = ws.wait_for(lambda m: m.get("type") == "packforcing.steer" and m["data"].get("prompt_id") == pid
                    and m["data"]["state"] == "paused", timeout=timeout)
    return m["data"]


def progress_count(ws, pid: str) -> int:
    return len(ws.of_type("packforcing.progress", pid))


def nan_embeds() -> list:
    e = [[[0.0] * TEXT_DIM for _ in range(3)]]
    e[0][1][5] = float("nan")
    return e


def test_steer_over_the_api_gives_the_recorded_schedule_bit_identically(server):
    wf = workflow("steer/live")
    with server.ws_messages() as ws:
        pid = server.queue(wf)
        state = held(server, ws, pid)
        h = state["held_before"]
        assert state["next_chunk"] == h and state["chunks"] == CHUNKS and state["text"] is True, state
        assert h + 2 < SCHEDULED, f"the run went too far before the pause took hold (chunk {h})"

        # the loop holds: no forward pass while paused
        before = progress_count(ws, pid)
        time.sleep(1.0)
        assert progress_count(ws, pid) == before
        assert call(server, method="GET", path=f"/api/packforcing/steer?prompt_id={pid}")[1]["runs"][0]["state"] \
            == "paused"

        base = {"prompt_id": pid, "node": "6"}
        refused = refusals(server, base, h)

        accepted = [
            {"prompt": {"embeddings": PROMPT_B}, "transition": 2},                        # the next chunk: h
            {"chunk": h + 2, "prompt": {"text": "a lighthouse at night, waves"}, "recache": False},
            {"chunk": SCHEDULED + 1, "prompt": {"same": True}, "cut": "sink"},
            {"chunk": SCHEDULED + 3, "prompt": {"embeds": torch.randn(1, 5, TEXT_DIM).tolist()}, "cut": "all"},
        ]
        for change in accepted:
            status, body = call(server, base | change)
            assert status == 202, body
        status, body = call(server, base | {"prompt": {"same": True}})             # h has one now
        assert status == 409 and body["field"] == "chunk" and "already has a change" in body["error"], body
        status, body = call(server, base | {"chunk": h + 2, "prompt": {"embeddings": PROMPT_A}})
        assert status == 409 and body["field"] == "chunk", body
        pending = call(server, method="GET", path=f"/packforcing/steer?prompt_id={pid}&node=6")[1]["runs"][0]["pending"]
        assert [p["chunk"] for p in pending] == [h, h + 2, SCHEDULED + 1, SCHEDULED + 3], pending
        assert refused == len(REFUSALS)

        assert call(server, {"prompt_id": pid, "action": "resume"})[0] == 200
        ws.wait_done(pid, timeout=600)
        final = steer_events(ws, pid)[-1]
    entry = server.wait(pid, timeout=60)      # the history may land just after the last message
    assert entry["status"]["status_str"] == "success", entry["status"]
    records = entry["outputs"]["6"]["packforcing"][0]["steered"]
    assert final["state"] == "finished" and final["changes"] == records and final["pending"] == []
    assert [r["chunk"] for r in records] == [h, h + 2, SCHEDULED + 1, SCHEDULED + 3]
    assert [r["seconds"] for r in records] == [float(h - 1), float(h + 1), float(SCHEDULED), float(SCHEDULED + 2)]
    assert records[0]["prompt"] == {"embeddings": PROMPT_B} and records[0]["transition"] == 2
    assert records[1]["prompt"] == {"text": "a lighthouse at night, waves"} and records[1]["recache"] is False
    # chunk 13 comes after the scheduled prompt C of chunk 12: "the same" is C
    assert records[2]["prompt"] == {"same": {"chunk": SCHEDULED, "seconds": float(SCHEDULED - 1)}}
    assert records[3]["prompt"]["embeddings"].startswith("prompt_embeddings/steer-")
    assert records[3]["prompt"]["embeddings"].endswith(".safetensors [output]") and records[3]["cut"] == "all"

    status, body = call(server, {"prompt_id": pid, "action": "resume"})
    assert status == 409 and body["field"] == "prompt_id" and "has ended (finished)" in body["error"], body
    assert call(server, {"prompt_id": pid, "prompt": {"same": True}})[0] == 409

    steered = latent_of(server, entry, "8")
    replayed = latent_of(server, server.run(kept(wf, records)), "8")
    assert torch.equal(replayed, steered), "the workflow with the recorded schedule differs from the steered run"

    # the steered output is not reused for the unchanged workflow: queued again, it renders unsteered
    plain = latent_of(server, server.run(wf), "8")
    first = 4 * (h - 1)
    assert torch.equal(plain[:, :, :first], steered[:, :, :first])      # chunks before the first change
    assert not torch.equal(plain[:, :, first:first + 4], steered[:, :, first:first + 4])


# (change, status, field, part of the message) that must be refused while the run holds before chunk h
REFUSALS = [
    ({"prompt_id": "no-such-prompt", "action": "pause"}, 404, "prompt_id", "no PackForcing sampler run"),
    ({"node": "99", "action": "pause"}, 404, "node", "has no PackForcing sampler run of node '99'"),
    ({"prompt": {"same": True}, "colour": "red"}, 400, "colour", "unknown field"),
    ({"action": "rewind"}, 400, "action", "is not one of change, pause, resume"),
    ({"action": "pause", "chunk": 3}, 400, "chunk", "not used by action 'pause'"),
    ({}, 400, "prompt", "a change needs a prompt"),
    ({"prompt": {"same": True, "text": "x"}}, 400, "prompt", "exactly one of"),
    ({"prompt": {"same": False}}, 400, "prompt.same", "expected true"),
    ({"prompt": {"embeds": [[0.0] * TEXT_DIM]}}, 400, "prompt.embeds", "has shape (1, 768)"),
    ({"prompt": {"embeds": [[[0.0] * TEXT_DIM, [0.0] * 5]]}}, 400, "prompt.embeds", "all rows of one length"),
    ({"prompt": {"embeds": [[[0.0] * 100]]}}, 400, "prompt.embeds", "this run's prompts are (1, tokens, 768)"),
    ({"prompt": {"embeds": "nan_embeds"}}, 400, "prompt.embeds", "NaN/inf"),
    ({"prompt": {"embeddings": "missing.safetensors"}}, 400, "prompt.embeddings", "missing.safetensors"),
    ({"prompt": {"embeddings": "../secret.safetensors"}}, 400, "prompt.embeddings", ""),
    ({"prompt": {"text": "a {red|blue} car"}}, 400, "prompt.text", "dynamic-prompt"),
    ({"prompt": {"text": 5}}, 400, "prompt.text", "expected a string"),
    ({"prompt": {"same": True}, "transition": -1}, 400, "transition", "not an integer in [0, 64]"),
    ({"prompt": {"same": True}, "transition": True}, 400, "transition", "not an integer"),
    ({"prompt": {"same": True}, "recache": "yes"}, 400, "recache", "not true or false"),
    ({"prompt": {"same": True}, "cut": "half"}, 400, "cut", "is not one of none, sink, all"),
    ({"prompt": {"same": True}, "chunk": 0}, 400, "chunk", "not an integer in [1, "),
    ({"prompt": {"same": True}, "chunk": "5"}, 400, "chunk", "not an integer"),
    ({"prompt": {"same": True}, "chunk": "past"}, 409, "chunk", "has begun or is done"),
    ({"prompt": {"same": True}, "chunk": CHUNKS + 1}, 400, "chunk", f"past the end of this run ({CHUNKS} chunks)"),
    ({"prompt": {"same": True}, "chunk": SCHEDULED}, 409, "chunk", "already has a change (a prompt switch)"),
]


def refusals(server, base: dict, h: int) -> int:
    done = 0
    for change, status, field, part in REFUSALS:
        body = base | change
        if change.get("chunk") == "past":
            body["chunk"] = h - 1
        if change.get("prompt", {}).get("embeds") == "nan_embeds":
            body["prompt"] = {"embeds": nan_embeds()}
        got, answer = call(server, body)
        assert (got, answer["field"]) == (status, field) and part in answer["error"], (change, got, answer)
        assert answer["error"].startswith(f"{field}: "), answer
        done += 1
    got, answer = call(server, raw=b"{not json")
    assert got == 400 and answer["field"] == "body", answer
    got, answer = call(server, method="GET", path="/packforcing/steer?prompt=x")
    assert got == 400 and answer["field"] == "prompt", answer
    # protected like ComfyUI's own routes: a request from another site is refused
    got, _ = call(server, base | {"action": "resume"}, headers={"Origin": "http://evil.example"})
    assert got == 403
    return done


def test_cancel_while_paused_and_the_queue_of_pending_changes_is_bounded(server):
    wf = workflow("steer/cancel", seed=5)
    with server.ws_messages() as ws:
        pid = server.queue(wf)
        state = held(server, ws, pid)
        h, limit = state["held_before"], state["queue"]
        base = {"prompt_id": pid, "node": "6", "prompt": {"same": True}}
        chunks = [c for c in range(h, CHUNKS + 1) if c != SCHEDULED][:limit]
        assert len(chunks) == limit
        for c in chunks:
            assert call(server, base | {"chunk": c})[0] == 202
        free = next(c for c in range(h, CHUNKS + 1) if c not in chunks and c != SCHEDULED)
        status, body = call(server, base | {"chunk": free})
        assert status == 429 and body["field"] == "chunk" and f"{limit} changes are waiting" in body["error"]
        frames = ws.of_type("packforcing.progress", pid)[-1]["data"]["frames_done"]
        server.interrupt()
        ws.wait_done(pid, timeout=120)
        assert ws.of_type("execution_interrupted", pid), "cancel did not stop the paused run"
        assert ws.of_type("packforcing.progress", pid)[-1]["data"]["frames_done"] == frames   # no chunk after it
        final = steer_events(ws, pid)[-1]
    assert final["state"] == "interrupted" and final["changes"] == [] and final["pending"] == [], final
    status, body = call(server, {"prompt_id": pid, "action": "resume"})
    assert status == 409 and "has ended (interrupted)" in body["error"], body


def test_a_cancelled_steered_run_resumes_from_the_kept_workflow_bit_identically(server):
    wf = workflow("steer/resumed", seed=9)
    with server.ws_messages() as ws:
        pid = server.queue(wf)
        h = held(server, ws, pid)["held_before"]
        assert call(server, {"prompt_id": pid, "prompt": {"embeddings": PROMPT_B}, "transition": 1})[0] == 202
        assert call(server, {"prompt_id": pid, "action": "resume"})[0] == 200
        ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("prompt_id") == pid
                    and m["data"]["phase"] == "chunk_done" and m["data"]["frames_done"] >= 4 * (h + 1), timeout=300)
        server.interrupt()
        ws.wait_done(pid, timeout=120)
        assert ws.of_type("execution_interrupted", pid), "the run was not interrupted"
        final = steer_events(ws, pid)[-1]
    assert final["state"] == "interrupted" and [c["chunk"] for c in final["changes"]] == [h], final
    saved = sorted((server.output_dir / "packforcing").glob("resume-*.safetensors"), key=lambda p: p.stat().st_mtime)
    assert saved, "the cancelled run saved no progress"

    again = kept(wf, final["changes"])
    again["6"]["inputs"]["resume"] = True
    again["8"] = save_latent(["6", 0], "steer/resumed_kept")
    resumed = server.run(again)
    assert not saved[-1].exists(), "the kept workflow did not continue from the steered run's progress"
    again["6"]["inputs"]["resume"] = False
    fresh = latent_of(server, server.run(again), "8")
    assert torch.equal(latent_of(server, resumed, "8"), fresh)
