"""Live playback on the sampler node (web/js/player.js) in headless Chromium against a real ComfyUI,
classic mode (tests/test_web_player_nodes2.py: the same in Nodes 2.0 mode). A tiny run queued from the
page; while it runs, the node's <video> plays decoded frames (currentTime advances, the buffered
range grows, the frame is not blank, videoWidth x videoHeight is the run's size), the scrubber seeks,
"live" jumps to a few seconds behind the newest frame, pause pauses, the full-size view shows it;
after the run the video stays playable. Nothing here is timed: every step waits for a state.
"""
from __future__ import annotations

import pytest

from test_web import CACHE, SAMPLER, on_tiny_models, ours, page, server, shoot  # noqa: F401  (fixtures)
from tiny_workflows import T2V_2MIN

pytestmark = pytest.mark.browser
W, H = 128, 96
LIVE_DELAY = 2                 # web/js/player.js


def queue_run(page, latent_frames: int, prefix: str) -> int:
    """Load the tiny 2-minute workflow at W x H and queue it from the page; returns the sampler's id."""
    wf = on_tiny_models(T2V_2MIN, **{CACHE: {"top_k": 2},
                                                   SAMPLER: {"width": W, "height": H, "length": 4 * latent_frames - 3},
                                                   "PackForcingSaveVideo": {"filename_prefix": prefix}})
    page.evaluate("(wf) => app.loadApiJson(wf, 'player.json')", wf)
    sampler = int(next(k for k, n in wf.items() if n["class_type"] == SAMPLER))
    page.evaluate("() => app.queuePrompt(0, 1)")
    return sampler


def state(page, sampler: int) -> dict:
    return page.evaluate("""(id) => { const n = app.graph.getNodeById(id), p = n.packforcingPlayer, v = p.video;
        const b = v.buffered, ranges = []; for (let i = 0; i < b.length; i++) ranges.push([b.start(i), b.end(i)]);
        return {state: p.root.dataset.state, t: v.currentTime, paused: v.paused, w: v.videoWidth, h: v.videoHeight,
                ranges, end: ranges.length ? ranges[ranges.length - 1][1] : 0, edge: +p.root.dataset.edge,
                running: n.packforcingLive.root.dataset.state === 'running', ready: v.readyState,
                seeking: v.seeking, decoded: v.getVideoPlaybackQuality().totalVideoFrames,
                text: p.root.innerText, popped: p.root.dataset.popped}; }""", sampler)


def wait(page, sampler: int, condition: str, timeout: float = 240) -> dict:
    """Wait until `condition` (JS over s = state of the player) holds; returns that state."""
    try:
        _wait(page, sampler, condition, timeout)
    except Exception as e:  # noqa: BLE001 - say what the player was doing
        raise AssertionError(f"{condition}: not reached ({type(e).__name__}); the player: {state(page, sampler)}; "
                             f"console: {page.console[-15:]}") from None
    return state(page, sampler)


def _wait(page, sampler: int, condition: str, timeout: float) -> None:
    page.wait_for(f"""(id) => {{ const n = app.graph.getNodeById(id), p = n.packforcingPlayer, v = p.video;
        const b = v.buffered, end = b.length ? b.end(b.length - 1) : 0;
        const s = {{state: p.root.dataset.state, t: v.currentTime, paused: v.paused, w: v.videoWidth,
                   h: v.videoHeight, end, edge: +p.root.dataset.edge, ready: v.readyState, seeking: v.seeking,
                   running: n.packforcingLive.root.dataset.state === 'running',
                   decoded: v.getVideoPlaybackQuality().totalVideoFrames}};
        return {condition}; }}""", arg=sampler, timeout=timeout)


def frame_spread(page, sampler: int) -> float:
    """Standard deviation of the pixels of the frame the video shows (0: a blank frame)."""
    return page.evaluate("""(id) => { const v = app.graph.getNodeById(id).packforcingPlayer.video;
        const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
        const g = c.getContext('2d'); g.drawImage(v, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
        let s = 0, s2 = 0, n = 0; for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) { s += d[i + k]; s2 += d[i + k] ** 2; n++; }
        return Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)); }""", sampler)


def click(page, sampler: int, name: str) -> None:
    page.evaluate("([id, name]) => app.graph.getNodeById(id).packforcingPlayer.controls"
                  ".querySelector(`[data-pf=${name}]`).click()", [sampler, name])


def scrub_to(page, sampler: int, seconds: float) -> None:
    """As a user drags the scrubber: its value, then its input event."""
    page.evaluate("""([id, t]) => { const s = app.graph.getNodeById(id).packforcingPlayer.scrub;
        s.value = String(t); s.dispatchEvent(new Event('input')); }""", [sampler, seconds])


def check_live_playback(server, page, artifacts_dir, tag: str) -> None:
    sampler = queue_run(page, 400, f"pf_player_{tag}/run")        # 100 chunks: interrupted when done
    try:
        s = wait(page, sampler, "s.state === 'playing' && s.t > 0 && s.w > 0 && s.running")
        assert (s["w"], s["h"]) == (W, H), s
        t0, end0, decoded0 = s["t"], s["end"], s["decoded"]
        s = wait(page, sampler, f"s.t > {t0} + 0.5 && s.end > {end0} && s.decoded > {decoded0} && s.running")
        assert s["running"] and s["state"] in ("playing", "waiting"), s        # while the run goes on
        assert frame_spread(page, sampler) > 1, "the video shows a blank frame"
        shoot(page, [sampler], artifacts_dir / f"web_player_{tag}_playing.png")

        s = wait(page, sampler, f"s.edge >= {LIVE_DELAY + 6} && s.running")    # enough video to move around in
        scrub_to(page, sampler, 1.0)
        s = wait(page, sampler, "Math.abs(s.t - 1.0) < 0.5 && !s.seeking && s.ready >= 2")
        assert s["t"] < s["edge"] - LIVE_DELAY - 1, s

        edge = s["edge"]
        click(page, sampler, "live")
        s = wait(page, sampler, f"s.t >= {edge} - {LIVE_DELAY} - 0.5 && !s.seeking && s.ready >= 2 && !s.paused")
        assert s["running"] and s["edge"] - s["t"] <= LIVE_DELAY + 2 + (s["edge"] - edge), s
        assert "live" in s["text"] or "−" in s["text"], s["text"]

        click(page, sampler, "play")
        s = wait(page, sampler, "s.paused && s.state === 'paused'")
        assert "▶" in s["text"], s["text"]
        click(page, sampler, "play")
        wait(page, sampler, "!s.paused")

        click(page, sampler, "pop")
        big = page.evaluate("""(id) => { const p = app.graph.getNodeById(id).packforcingPlayer;
            const o = document.querySelector('[data-pf=overlay]');
            return {inside: !!o && o.contains(p.video), width: p.video.clientWidth}; }""", sampler)
        assert big["inside"] and big["width"] >= W, big
        page.page.screenshot(path=str(artifacts_dir / f"web_player_{tag}_full_size.png"))
        page.page.keyboard.press("Escape")
        back = page.evaluate("""(id) => { const p = app.graph.getNodeById(id).packforcingPlayer;
            return p.root.contains(p.video) && !document.querySelector('[data-pf=overlay]'); }""", sampler)
        assert back
    finally:
        server.interrupt()
    wait(page, sampler, "!s.running", timeout=120)
    scrub_to(page, sampler, 0.5)                                       # after the run: still playable
    s = wait(page, sampler, "Math.abs(s.t - 0.5) < 0.5 && !s.seeking && s.ready >= 2")
    if s["paused"]:
        click(page, sampler, "play")
    wait(page, sampler, f"s.t > {s['t']} + 0.25 && s.state === 'playing'")
    for path in (server.output_dir / "packforcing").glob("resume-*.safetensors"):
        path.unlink()
    assert ours(page) == [], ours(page)


def check_finished_run_stays_whole(server, page, artifacts_dir, tag: str) -> None:
    """A run that ends: every fragment is in the player, the video has the run's whole length and
    plays to its end."""
    sampler = queue_run(page, 12, f"pf_player_{tag}/short")          # 45 frames
    s = wait(page, sampler, "!s.running && s.end >= 45 / 16 - 0.1", timeout=400)
    page.wait_for("(id) => app.graph.getNodeById(id).packforcingPlayer.feed.ms.readyState === 'ended'",
                  arg=sampler, timeout=60)        # the stream is ended once the run's 'end' message is in
    info = page.evaluate("""(id) => { const p = app.graph.getNodeById(id).packforcingPlayer;
        return {duration: p.video.duration, ms: p.feed.ms.readyState, edge: +p.root.dataset.edge}; }""", sampler)
    assert info["ms"] == "ended" and abs(info["duration"] - 45 / 16) < 0.07 and info["edge"] == 45 / 16, info
    scrub_to(page, sampler, 2.0)
    if state(page, sampler)["paused"]:        # a video that played to its end stays paused after the seek
        click(page, sampler, "play")
    s = wait(page, sampler, "s.state === 'ended' || (s.t >= 45 / 16 - 0.1)", timeout=60)
    shoot(page, [sampler], artifacts_dir / f"web_player_{tag}_finished.png")
    assert ours(page) == [], ours(page)


def test_live_playback_while_the_sampler_runs(server, page, artifacts_dir):
    check_live_playback(server, page, artifacts_dir, "classic")


def test_finished_run_stays_playable_whole(server, page, artifacts_dir):
    check_finished_run_stays_whole(server, page, artifacts_dir, "classic")
