"""Steering from the sampler node in headless Chromium (web/js/steer.js), against a real ComfyUI on tiny
models with a real CLIP, while the node plays the run live (web/js/player.js, a tiny VAE on the
sampler): during a run the video arrives at the run's size, then pause, type the next prompt, pick
prompt embeddings for a later chunk, cut once, resume, and the video plays; then "keep these changes"
writes Prompt Schedule nodes into the workflow, and queueing it again renders a bit-identical latent. test_web_steer_nodes2.py runs the same in Nodes 2.0
mode. Screenshots: test-artifacts/web_steer_*.png."""
from __future__ import annotations

import json
import time

import pytest
import torch

from safetensors.torch import save_file

from packforcing_core.vae.model import WanVAE
from test_steer_api import CHUNKS, PROMPT_B, SCHEDULED, SIZE, server, workflow  # noqa: F401  (server: the fixture)
from test_comfy_e2e import latent_of
from test_web import focus, ours, page, shoot  # noqa: F401  (page: the fixture)

pytestmark = pytest.mark.browser
SAMPLER = 6
TEXT = "a lighthouse on a cliff at night, waves below"
VAE = "pf_steer_vae.safetensors"


def panel(page) -> str:
    return f'.pf-steer[data-node="{SAMPLER}"]'


def panel_state(page) -> dict:
    return page.evaluate(f"""() => {{ const r = app.graph.getNodeById({SAMPLER}).packforcingSteer.root;
        return {{...r.dataset, text: r.innerText}}; }}""")


def wait_panel(page, js: str, timeout: float = 120) -> dict:
    """Wait until `js` (an expression over the panel's dataset `d`) holds; the panel's state."""
    page.wait_for(f"""() => {{ const d = app.graph.getNodeById({SAMPLER}).packforcingSteer.root.dataset;
        return {js}; }}""", timeout=timeout)
    return panel_state(page)


def click(page, what: str) -> None:
    """Click one of the steer controls, the node at zoom 1 (DOM widgets are hidden when zoomed out). A DOM
    click, as the player tests do: in Nodes 2.0 mode the player and live view above the controls make the
    node taller than the page, and the canvas does not scroll like a page."""
    focus(page, [SAMPLER])
    page.evaluate("(sel) => document.querySelector(sel).click()", f"{panel(page)} [data-pf={what}]")


def check(page, what: str, on: bool) -> None:
    """Tick or clear a steer checkbox as a click would (see click())."""
    page.evaluate("""([sel, on]) => { const e = document.querySelector(sel);
        if (e.checked !== on) e.click(); }""", [f"{panel(page)} [data-pf={what}]", on])


def queued_prompt(server, before: set[str], timeout: float = 600) -> dict:
    """The history entry of the one prompt queued (by the page) since `before`, once it is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [k for k in server.get("/history") if k not in before]
        if new:
            return server.wait(new[0], timeout=deadline - time.monotonic())
        time.sleep(0.3)
    raise AssertionError("the page queued no prompt")


def with_live_playback(server, wf: dict) -> dict:
    """The steer workflow with a tiny VAE on the sampler: live playback (on by default) needs a decoder."""
    vae = server.models_dir / "vae" / VAE
    if not vae.exists():
        save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()}, str(vae))
    wf["9"] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE}}
    wf[str(SAMPLER)]["inputs"]["vae"] = ["9", 0]
    return wf


def player(page) -> dict:
    return page.evaluate(f"""() => {{ const p = app.graph.getNodeById({SAMPLER}).packforcingPlayer, v = p.video;
        const b = v.buffered;
        return {{state: p.root.dataset.state, t: v.currentTime, w: v.videoWidth, h: v.videoHeight,
                 end: b.length ? b.end(b.length - 1) : 0, decoded: v.getVideoPlaybackQuality().totalVideoFrames}};
        }}""")


def steer_and_keep(server, page, artifacts_dir, tag: str) -> None:
    wf = with_live_playback(server, workflow(f"steer_web/{tag}"))
    page.evaluate("(wf) => app.loadApiJson(wf, 'steer.json')", wf)
    focus(page, [SAMPLER])
    before = set(server.get("/history"))
    page.evaluate("() => app.queuePrompt(0, 1)")
    wait_panel(page, "d.runState === 'running'")
    seed = page.evaluate(f"() => app.graph.getNodeById({SAMPLER}).widgets.find(w => w.name === 'seed').value")
    assert seed != wf["6"]["inputs"]["seed"], "the frontend did not change the seed after queueing (randomize)"
    click(page, "pause")
    d = wait_panel(page, "d.runState === 'paused'")
    h = int(d["held"])
    assert h + 3 < SCHEDULED, f"the run went too far before the pause took hold (chunk {h})"
    assert f"paused before chunk {h}" in d["text"]
    # the live video of the chunks made so far has reached the node's player, at the run's size
    try:
        page.wait_for(f"""() => {{ const v = app.graph.getNodeById({SAMPLER}).packforcingPlayer.video, b = v.buffered;
            return v.videoWidth === {SIZE} && b.length > 0 && b.end(b.length - 1) >= {h - 1} - 0.2; }}""",
                      timeout=120)
    except Exception as e:  # noqa: BLE001 - say what the player was doing
        raise AssertionError(f"the live video did not arrive: {player(page)}; console {page.console[-15:]}") from e
    assert player(page)["h"] == SIZE, player(page)     # chunks 1 .. h - 1 arrived while it ran (the first: 13 frames)

    base = panel(page)
    loc = lambda what: page.page.locator(f"{base} [data-pf={what}]")
    # 1. typed text, at the next chunk
    loc("source").select_option("text")
    loc("text").fill(TEXT)
    click(page, "apply")
    wait_panel(page, f"JSON.parse(d.pending).length === 1")
    # 2. prompt embeddings from the list, 3 chunks later, blended in over 2 chunks, no re-cache
    loc("source").select_option(f"file:{PROMPT_B}")
    loc("chunk").fill(str(h + 3))
    loc("transition").fill("2")
    check(page, "recache", False)
    click(page, "apply")
    wait_panel(page, f"JSON.parse(d.pending).length === 2")
    # 3. a scene cut after the workflow's own scheduled prompt
    loc("transition").fill("0")
    check(page, "recache", True)
    loc("chunk").fill(str(SCHEDULED + 2))
    click(page, "cut-here")
    d = wait_panel(page, f"JSON.parse(d.pending).length === 3")
    assert "queued for chunk" in d["text"]
    shoot(page, [SAMPLER], artifacts_dir / f"web_steer_{tag}_paused.png")

    click(page, "pause")                    # now "resume"
    d = wait_panel(page, "d.runState === 'finished'", timeout=600)
    page.wait_for(f"""() => {{ const v = app.graph.getNodeById({SAMPLER}).packforcingPlayer.video, b = v.buffered;
        return v.currentTime > 0.5 && v.getVideoPlaybackQuality().totalVideoFrames > 8 && b.length > 0
            && b.end(b.length - 1) >= {CHUNKS} - 0.2; }}""", timeout=120)    # every chunk's frames, steered ones too
    steered_entry = queued_prompt(server, before)
    assert steered_entry["status"]["status_str"] == "success", steered_entry["status"]
    changes = json.loads(d["changes"])
    assert [(c["chunk"], c["seconds"]) for c in changes] == [(h, h - 1.0), (h + 3, h + 2.0),
                                                             (SCHEDULED + 2, SCHEDULED + 1.0)]
    assert changes[0]["prompt"] == {"text": TEXT} and changes[0]["recache"] and changes[0]["cut"] == "none"
    assert changes[1]["prompt"] == {"embeddings": PROMPT_B} and changes[1]["transition"] == 2
    assert not changes[1]["recache"]
    assert changes[2]["prompt"] == {"same": {"chunk": SCHEDULED, "seconds": SCHEDULED - 1.0}}
    assert changes[2]["cut"] == "sink"
    assert steered_entry["outputs"][str(SAMPLER)]["packforcing"][0]["steered"] == changes
    steered = latent_of(server, steered_entry, "8")

    click(page, "keep")
    d = wait_panel(page, "!!d.kept")
    shoot(page, [SAMPLER], artifacts_dir / f"web_steer_{tag}_kept.png")
    assert "kept 3 changes, seed fixed" in d["text"]
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    chain, at = [], prompt[str(SAMPLER)]["inputs"]["positive"][0]
    while prompt[at]["class_type"] == "PackForcingPromptSchedule":
        inputs = prompt[at]["inputs"]
        source = prompt[inputs["conditioning"][0]]
        chain.append((inputs["start_seconds"], inputs["transition_chunks"], inputs["recache"], inputs["cut"],
                      source["class_type"], source["inputs"].get("text") or source["inputs"].get("embeddings")))
        at = inputs["schedule"][0]
    assert prompt[at]["class_type"] == "PackForcingLoadPromptEmbeddings"        # prompt A, at 0 s
    # the seed the frontend changed after the first queue is the steered run's again, and stays
    assert prompt[str(SAMPLER)]["inputs"]["seed"] == wf["6"]["inputs"]["seed"]
    assert page.evaluate(f"() => app.graph.getNodeById({SAMPLER}).widgets.find(w => w.name === "
                         "'control_after_generate').value") == "fixed"
    assert chain[::-1] == [
        (h - 1.0, 0, True, "none", "CLIPTextEncode", TEXT),
        (h + 2.0, 2, False, "none", "PackForcingLoadPromptEmbeddings", PROMPT_B),
        (SCHEDULED - 1.0, 1, True, "none", "PackForcingLoadPromptEmbeddings", "pf_steer_c.safetensors"),
        (SCHEDULED + 1.0, 0, True, "sink", "PackForcingLoadPromptEmbeddings", "pf_steer_c.safetensors")], chain

    before = set(server.get("/history"))
    page.evaluate("() => app.queuePrompt(0, 1)")
    replayed = latent_of(server, queued_prompt(server, before), "8")
    assert torch.equal(replayed, steered), "the kept workflow renders another latent than the steered run"
    assert ours(page) == [], ours(page)


def test_steer_from_the_node_and_keep_the_changes(server, page, artifacts_dir):
    steer_and_keep(server, page, artifacts_dir, "classic")
