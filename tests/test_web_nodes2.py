"""The frontend extension in Nodes 2.0 mode (Comfy.VueNodes.Enabled), in headless Chromium: the
budget readout shows every row whole, a cancelled run's live view says what was saved and how
to go on, with no ETA left over, and the live view's legend of a prompt-schedule run is whole.
Fixtures and helpers are test_web.py's."""
from __future__ import annotations

import pytest

from test_web import CACHE, SAMPLER, UI_WORKFLOWS, load_api, load_ui, ours, page, readouts, run_schedule, server, \
    shoot, tiny_run_prompt  # noqa: F401  (page, server: the fixtures)

pytestmark = pytest.mark.browser
COMFY_SERVER_OPTIONS = {"ui_settings": {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": True}}


def test_readout_rows_are_whole_in_nodes_2_mode(server, page, artifacts_dir):
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is True
    for name in UI_WORKFLOWS:
        load_ui(page, name)
        readouts(page)
        page.evaluate("() => new Promise(r => setTimeout(() => requestAnimationFrame(() => requestAnimationFrame(r)), 300))")
        cut = page.evaluate("""(type) => app.graph._nodes.filter(n => n.comfyClass === type).flatMap(n => {
            const root = n.packforcingBudget.root;
            if (!root.isConnected) return [`readout of #${n.id} not on the page`];
            return [...root.children].filter(c => c.scrollWidth > c.clientWidth)
                .map(c => `${c.innerText} (${c.scrollWidth} > ${c.clientWidth} px)`); })""", CACHE)
        assert cut == [], f"{name}: rows cut off: {cut}"
        shoot(page, [page.evaluate(f"() => app.graph._nodes.find(n => n.comfyClass === '{CACHE}').id")],
              artifacts_dir / f"web_nodes2_readout_{name}.png")
    assert ours(page) == [], ours(page)


def test_cancelled_live_view_says_what_was_saved_and_drops_the_eta(server, page, artifacts_dir):
    wf = tiny_run_prompt()
    load_api(page, wf, "tiny.json")
    sampler = int(next(k for k, n in wf.items() if n["class_type"] == SAMPLER))
    page.evaluate("() => app.queuePrompt(0, 1)")
    page.wait_for(f"""() => {{ const r = app.graph.getNodeById({sampler}).packforcingLive.root;
        return r.dataset.state === 'running' && +r.dataset.chunk >= 3; }}""", timeout=120)
    server.interrupt()
    view = page.wait_for(f"""() => {{ const r = app.graph.getNodeById({sampler}).packforcingLive.root;
        const eta = r.querySelector('[data-pf="eta"]');
        return r.dataset.state === 'stopped' && {{text: r.innerText, saved: r.dataset.saved,
                                                   eta: eta ? eta.textContent : null}}; }}""", timeout=60)
    shoot(page, [sampler], artifacts_dir / "web_nodes2_cancelled.png")
    assert view["saved"] == "true", view
    assert "progress saved" in view["text"] and "turn resume on and queue the same inputs" in view["text"], view
    assert view["eta"] in (None, "–"), f"a stale ETA is shown after the cancel: {view}"
    for path in (server.output_dir / "packforcing").glob("resume-*.safetensors"):
        path.unlink()
    assert ours(page) == [], ours(page)


def test_live_view_legend_is_whole_with_a_prompt_schedule_in_nodes_2_mode(server, page, artifacts_dir):
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is True
    run_schedule(page, artifacts_dir, "web_nodes2_live_schedule.png")
