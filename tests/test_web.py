"""The frontend extension (web/js/) in headless Chromium against a real ComfyUI 0.3.75 + frontend 1.32.9.

- the budget readout on PackedCache: present in every shipped workflow, equal to
  packforcing_core.cache.config.plan (computed here, independently of the route), updated when a size
  widget, the mode or the sampler's resolution changes; "unavailable" when the route is missing;
- the route GET /packforcing/plan: numbers of plan(), and 400 with a message on bad parameters;
- the live view on the sampler during a tiny run queued from the UI: chunk i of N, timing, KV bytes,
  the timeline with the top-k mid blocks highlighted, and the latent preview.

Screenshots go to test-artifacts/web_*.png. One server and one browser page serve the whole module.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
import time
import types
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from comfy_harness import REPO_ROOT, Browser, find_chromium
import tiny_workflows
from tiny_workflows import CONTINUE, FULL_CACHE, SCHEDULE_90S, T2V_2MIN
from packforcing_core.cache.config import CacheConfig, Geometry, plan
from packforcing_core.model.checkpoint import save_model
from packforcing_core.model.tiny import random_model, tiny_config
from packforcing_core.sampling.prompts import save_prompt_embeds
from packforcing_core.vae.model import WanVAE

pytestmark = pytest.mark.browser

WORKFLOWS = REPO_ROOT / "workflows"
UI_WORKFLOWS = (T2V_2MIN, CONTINUE, FULL_CACHE)
DIT, VAE, PROMPT = "pf_web_tiny.safetensors", "pf_web_vae.safetensors", "pf_web_prompt.safetensors"
CACHE, SAMPLER = "PackForcingPackedCache", "PackForcingSampler"
TINY_LAYERS, TINY_DIM = 2, 128         # one 128-wide head
GPU = {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "free_bytes": 3_000_000_000,
       "total_bytes": 85_000_000_000, "host_free_bytes": 100_000_000_000}
GB = lambda n: f"{n / 1e6:.2f} MB" if 0 < n < 1e7 else f"{n / 1e9:.2f} GB"     # web/js/common.js gb()


# ----------------------------------------------------------------------------- fixtures

def pack_module(name: str):
    """A module of the pack, which uses relative imports: the repository mounted as `packforcing_pack`."""
    if "packforcing_pack" not in sys.modules:
        pkg = types.ModuleType("packforcing_pack")
        pkg.__path__ = [str(REPO_ROOT)]
        sys.modules["packforcing_pack"] = pkg
    return importlib.import_module(f"packforcing_pack.{name}")


@pytest.fixture(scope="module")
def server(comfy_server):
    models, inputs = comfy_server.models_dir, comfy_server.input_dir
    cfg = tiny_config(dim=TINY_DIM, num_heads=1, ffn_dim=256, num_layers=TINY_LAYERS, text_dim=4096,
                      text_len=512, freq_dim=256)
    save_model(random_model(cfg, seed=1), str(models / "diffusion_models" / DIT))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=8).state_dict().items()}, str(models / "vae" / VAE))
    save_prompt_embeds(str(inputs / PROMPT), torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(0)))
    assert comfy_server.custom_node_loaded(), comfy_server.log_tail()
    return comfy_server


@pytest.fixture(scope="module")
def page(server):
    """One Chromium page on the server's frontend for the whole module (a fresh one costs ~5 s)."""
    try:
        import playwright.sync_api  # noqa: F401
        missing = None if find_chromium() else "Chromium is not installed"
    except ImportError:
        missing = "Python playwright is not installed"
    if missing:     # as conftest.py does: a failure in CI (PACKFORCING_REQUIRE_COMFY=1), else a skip
        msg = f"{missing}: run `bash .ci/setup_comfyui.sh`"
        if os.environ.get("PACKFORCING_REQUIRE_COMFY", "") not in ("", "0"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    with Browser(viewport=(1600, 1000)) as b:
        b.open(server.url)
        b.wait_for("() => window.app && window.app.graph && window.LiteGraph && "
                   "window.LiteGraph.registered_node_types['PackForcingPackedCache']", timeout=90)
        yield b
    assert b.page_errors == [], b.page_errors


def ours(browser: Browser) -> list[str]:
    """Console errors / warnings raised by our extension's code (the frontend logs plenty of its own)."""
    return [m["text"] for m in browser.console if m["type"] in ("error", "warning")
            and ("/extensions/PackForcing/" in m["text"]
                 or "/extensions/PackForcing/" in (m.get("location") or {}).get("url", ""))]


def clear_graph(page: Browser) -> None:
    """An empty graph, drawn, before the next one loads: in Nodes 2.0 mode frontend 1.32.9 mounts a DOM widget's
    element only when the node's component is created, so a node that took the id of one of the graph before
    it would show that node's (detached) widget, not its own."""
    page.evaluate("() => { app.graph.clear(); "
                  "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))) }")


def load_api(page: Browser, wf: dict, name: str) -> None:
    clear_graph(page)
    page.evaluate("([wf, name]) => app.loadApiJson(wf, name)", [wf, name])


def load_ui(page: Browser, name: str) -> dict:
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    clear_graph(page)
    page.evaluate("async (wf) => { await app.loadGraphData(wf, true, true, null, "
                  "{showMissingModelsDialog: false, showMissingNodesDialog: false}) }", ui)
    return ui


def readouts(page: Browser, timeout: float = 20) -> list[dict]:
    """{id, state, text, kv, tokens} of every PackedCache readout, once all have an answer."""
    return page.wait_for("""(type) => {
        const nodes = app.graph._nodes.filter(n => n.comfyClass === type);
        const r = nodes.map(n => ({id: n.id, state: n.packforcingBudget?.root.dataset.state,
            text: n.packforcingBudget?.root.innerText,
            kv: n.packforcingBudget?.root.querySelector('[data-pf=kv]')?.textContent,
            tokens: n.packforcingBudget?.root.querySelector('[data-pf=tokens]')?.textContent,
            longest: n.packforcingBudget?.root.querySelector('[data-pf=longest]')?.textContent,
            model: n.packforcingBudget?.root.querySelector('[data-pf=model]')?.title}));
        return r.length && r.every(x => x.state && x.state !== 'pending') && r;
    }""", arg=CACHE, timeout=timeout)


def wait_readout_change(page: Browser, node_id: int, old: str, timeout: float = 20) -> dict:
    page.wait_for("""([id, old]) => { const r = app.graph.getNodeById(id).packforcingBudget.root;
        return r.dataset.state !== 'pending' && r.innerText !== old; }""", arg=[node_id, old], timeout=timeout)
    return next(r for r in readouts(page) if r["id"] == node_id)


def settings_of(page: Browser, node_id: int) -> dict:
    """Widget values of a cache node and of the sampler it feeds (or None)."""
    return page.evaluate("""(id) => {
        const n = app.graph.getNodeById(id);
        const w = (node, name) => node.widgets.find(x => x.name === name)?.value;
        const cache = Object.fromEntries(['mode', 'sink_seconds', 'recent_seconds', 'mid_blocks', 'top_k',
                                          'mid_bank'].map(k => [k, w(n, k)]));
        let s = null;
        for (const m of n.getOutputNodes(0) ?? []) if (m.comfyClass === 'PackForcingSampler') s = m;
        const sampler = s && Object.fromEntries(['width', 'height', 'chunk_frames', 'length'].map(k => [k, w(s, k)]));
        return {cache, sampler};
    }""", node_id)


def expected(settings: dict, layers=30, heads=12, head_dim=128, dtype_bytes=2) -> dict:
    """packforcing_core's plan for the node's settings (the readout's assumptions when no sampler)."""
    c, s = settings["cache"], settings["sampler"] or {"width": 832, "height": 480, "chunk_frames": 4, "length": 77}
    cfg = CacheConfig(mode=c["mode"], sink_frames=round(c["sink_seconds"] * 4),
                      recent_frames=round(c["recent_seconds"] * 4), mid_blocks=c["mid_blocks"], top_k=c["top_k"],
                      bank_device="cpu" if c["mid_bank"] == "cpu" else "same")
    geo = Geometry(layers, heads, head_dim, s["height"] // 16, s["width"] // 16, s["chunk_frames"])
    return plan(cfg, geo, dtype_bytes, total_frames=math.ceil((s["length"] + 3) / 4))


def check_numbers(readout: dict, p: dict) -> None:
    # On this CPU-only server everything is host memory: the readout's number is plan's total_bytes.
    assert readout["kv"] == GB(p["total_bytes"]), (readout, p)
    assert readout["tokens"] == f"{p['attended_tokens']:,}", (readout, p)


def set_widget(page: Browser, node_id: int, name: str, value) -> None:
    """As a user does: the widget's value, then its callback."""
    page.evaluate("""([id, name, value]) => { const w = app.graph.getNodeById(id).widgets.find(x => x.name === name);
        w.value = value; w.callback?.(value, app.canvas, app.graph.getNodeById(id)); }""", [node_id, name, value])


def focus(page: Browser, node_ids: list[int]) -> dict:
    """Zoom 1 (DOM widgets are hidden when zoomed out) with the nodes near the top left, clear of the
    floating menus; returns the page rectangle that holds them."""
    return page.evaluate("""(ids) => {
        const c = app.canvas, T = LiteGraph.NODE_TITLE_HEIGHT, nodes = ids.map(id => app.graph.getNodeById(id));
        const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - T));
        const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
        c.ds.scale = 1; c.ds.offset = [-x0 + 320, -y0 + 140]; c.setDirty(true, true);
        const r = c.canvas.getBoundingClientRect();
        return {x: r.left + 300, y: r.top + 120, width: Math.min(x1 - x0 + 40, r.width - 340),
                height: Math.min(y1 - y0 + 40, r.height - 140)};
    }""", node_ids)


def shoot(page: Browser, node_ids: list[int], path) -> None:
    """Screenshot of some nodes at zoom 1."""
    clip = focus(page, node_ids)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    time.sleep(0.3)     # DOM widgets follow the canvas on its next frames
    path.parent.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(path), clip=clip)


def node_of(page: Browser, kind: str) -> int:
    return page.evaluate(f"() => app.graph._nodes.find(n => n.comfyClass === '{kind}').id")


def widgets_do_not_overlap(page: Browser, node_id: int, name: str) -> None:
    """Our DOM widget lies below the node's widgets before it and inside the node."""
    box = page.evaluate("""([id, name]) => { const n = app.graph.getNodeById(id);
        const ours = n.widgets.find(w => w.name === name);
        const others = n.widgets.slice(0, n.widgets.indexOf(ours)).filter(w => !w.hidden && w.type !== 'hidden');
        const bottom = Math.max(...others.map(w => w.last_y ?? w.y ?? 0)) + LiteGraph.NODE_WIDGET_HEIGHT;
        return {ours_y: ours.y ?? ours.last_y, ours_h: ours.computedHeight, bottom, node_h: n.size[1],
                min_h: n.computeSize()[1]}; }""", [node_id, name])
    assert box["ours_y"] >= box["bottom"], box
    assert box["ours_y"] + box["ours_h"] <= box["node_h"] + 1 and box["node_h"] >= box["min_h"], box


# ----------------------------------------------------------------------------- route

def http_get(server, query: dict | str) -> tuple[int, dict]:
    qs = query if isinstance(query, str) else urllib.parse.urlencode(query)
    try:
        with urllib.request.urlopen(f"{server.url}/api/packforcing/plan?{qs}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_route_serves_the_plan_of_packforcing_core(server):
    status, body = http_get(server, {})
    assert status == 200
    ref = plan(CacheConfig(), Geometry(30, 12, 128, 30, 52, 4), 2, total_frames=20)
    assert body["plan"] == ref and body["attended_tokens"] == 21632 and body["kv_bytes"] == ref["total_bytes"]
    assert body["bounded"] and body["longest"] is None
    assert body["memory"]["free_bytes"] is None and body["memory"]["device_name"] == "CPU"   # --cpu: no warning
    assert body["model"]["source"] == "default"

    status, body = http_get(server, {"dit_name": DIT, "width": 128, "height": 128, "mode": "full", "length": 93})
    assert status == 200 and body["model"] | {"name": DIT} == {"name": DIT, "source": "file", "layers": TINY_LAYERS,
                                                              "heads": 1, "head_dim": 128, "dtype": "fp32"}
    ref = plan(CacheConfig(mode="full"), Geometry(TINY_LAYERS, 1, 128, 8, 8, 4), 4, total_frames=24)
    assert body["plan"] == ref and not body["bounded"]
    longest = body["longest"]
    assert longest["limit"] == "host" and longest["latent_frames"] % 4 == 0
    big = plan(CacheConfig(mode="full"), Geometry(TINY_LAYERS, 1, 128, 8, 8, 4), 4,
               total_frames=longest["latent_frames"] + 4)
    assert big["device_bytes"] > body["memory"]["host_free_bytes"] * 0.99   # the next chunk would not fit


@pytest.mark.parametrize("query, message", [
    ("mode=turbo", "mode: 'turbo' is not one of full, none, kv_pool"),
    ("sink_seconds=abc", "sink_seconds: 'abc' is not a number"),
    ("sink_seconds=0.3", "not a whole number of latent frames"),
    ("recent_seconds=-1", "recent_seconds: -1 is out of range"),
    ("recent_seconds=inf", "out of range"),
    ("recent_seconds=0", "needs at least 0.25 s"),
    ("mid_blocks=1.5", "mid_blocks: '1.5' is not an integer"),
    ("top_k=-3", "top_k: -3 is out of range [0, 4096]"),
    ("width=70", "width: 70 is not a multiple of 16"),
    ("height=0", "height: 0 is out of range"),
    ("chunk_frames=999", "chunk_frames: 999 is out of range"),
    ("mid_bank=disk", "mid_bank: 'disk' is not one of gpu, cpu"),
    ("dtype=int8", "dtype: 'int8' is not one of bf16, fp16, fp32"),
    ("layers=30", "give all of layers, heads, head_dim"),
    ("layers=30&heads=12&head_dim=128&dit_name=x.safetensors", "either dit_name or layers"),
    ("mode=full&mode=none", "mode: given more than once"),
    ("frames=9", "unknown parameter frames"),
])
def test_route_rejects_bad_parameters_with_400_and_a_message(server, query, message):
    status, body = http_get(server, query)
    assert status == 400, body
    assert message in body["error"], body


# ----------------------------------------------------------------------------- budget readout

def test_shipped_workflows_load_with_the_readout_and_no_errors_from_the_extension(server, page, artifacts_dir):
    registered = set(page.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))
    served = page.evaluate("async () => (await (await fetch('/extensions')).json())")
    assert any(u.endswith("/PackForcing/js/budget.js") for u in served), served
    for name in UI_WORKFLOWS:
        ui = load_ui(page, name)
        assert not {n["type"] for n in ui["nodes"]} - registered, name
        for r in readouts(page):
            assert r["state"] == "ok", r
            s = settings_of(page, r["id"])
            check_numbers(r, expected(s))
            assert ("sampler #" in r["text"]) == (s["sampler"] is not None), r["text"]
            assert "Wan2.1-1.3B assumed: 30 layers, 12 heads × 128, bf16" in r["text"]
            assert "self_forcing_dmd.pt is not in models/diffusion_models" in r["model"]      # the tooltip says why
            assert "CPU" in r["text"]
            widgets_do_not_overlap(page, r["id"], "packforcing_budget")
        sampler = node_of(page, SAMPLER)
        widgets_do_not_overlap(page, sampler, "packforcing_live")
        widgets_do_not_overlap(page, sampler, "packforcing_steer")
        # the readout widgets add nothing to the prompt or to the workflow's widget values
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        assert prompt == json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()), name
        saved = page.evaluate(f"() => app.graph.serialize().nodes.find(n => n.type === '{CACHE}').widgets_values")
        assert saved == next(n for n in ui["nodes"] if n["type"] == CACHE)["widgets_values"]
        cache, vae = node_of(page, CACHE), node_of(page, "VAELoader")
        shoot(page, [cache, vae], artifacts_dir / f"web_budget_{name}.png")     # with the node below it
        shoot(page, [sampler], artifacts_dir / f"web_sampler_{name}.png")
    assert ours(page) == [], ours(page)


def test_readout_follows_sizes_mode_and_resolution(server, page, artifacts_dir):
    load_ui(page, T2V_2MIN)
    (r,) = readouts(page)
    node = r["id"]
    assert r["kv"] == "4.60 GB" and r["tokens"] == "21,632"     # the reference configuration: ~4 GB on the GPU
    assert r["longest"] == "unlimited (bounded cache)"

    set_widget(page, node, "top_k", 4)                # a size widget
    r = wait_readout_change(page, node, r["text"])
    check_numbers(r, expected(settings_of(page, node)))
    assert r["tokens"] == f"{21632 - 10 * 208:,}"

    sampler = node_of(page, SAMPLER)
    set_widget(page, sampler, "width", 1280)            # the resolution lives on the sampler
    r = wait_readout_change(page, node, r["text"])
    check_numbers(r, expected(settings_of(page, node)))
    assert "1280×480" in r["text"]
    shoot(page, [node], artifacts_dir / "web_budget_changed.png")

    set_widget(page, node, "mode", "full")              # full grows with the video: its length counts
    r = wait_readout_change(page, node, r["text"])
    check_numbers(r, expected(settings_of(page, node)))
    assert "at 480 latent frames" in r["text"] and "longest video in free host RAM: " in r["text"]
    assert r["longest"].endswith(" frames)")

    set_widget(page, node, "mode", "kv_pool")
    set_widget(page, node, "recent_seconds", 0.0)       # cannot run: the server's message is shown
    page.wait_for(f"() => app.graph.getNodeById({node}).packforcingBudget.root.dataset.state === 'invalid'")
    text = page.evaluate(f"() => app.graph.getNodeById({node}).packforcingBudget.root.innerText")
    assert "cannot run" in text and "recent_seconds" in text
    assert ours(page) == [], ours(page)


def test_readout_says_unavailable_when_the_server_side_is_older(server, page, artifacts_dir):
    page.page.route("**/packforcing/plan?**", lambda route: route.fulfill(status=404, body="404: Not Found"))
    try:
        load_ui(page, FULL_CACHE)
        (r,) = readouts(page)
        assert r["state"] == "unavailable" and "older or missing" in r["text"], r
        shoot(page, [r["id"]], artifacts_dir / "web_budget_unavailable.png")
    finally:
        page.page.unroute("**/packforcing/plan?**")
    assert ours(page) == [], ours(page)


def test_readout_warns_when_the_cache_exceeds_free_gpu_memory(server, page, artifacts_dir):
    """This server runs --cpu, so the route's answer is recomputed by nodes/routes.budget for an H100 with
    3 GB free (the route's own function, with torch.cuda.mem_get_info's number replaced)."""
    routes = pack_module("nodes.routes")

    def as_if_on_gpu(route):
        body = route.fetch().json()
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(route.request.url).query))
        model = {**body["model"], "patch": [2, 2]}
        route.fulfill(json=routes.budget(routes.parse_query(query), model, GPU))

    page.page.route("**/packforcing/plan?**", as_if_on_gpu)
    try:
        load_ui(page, T2V_2MIN)
        (r,) = readouts(page)
        node = r["id"]
        assert "⚠ exceeds free GPU memory (3.00 GB free)" in r["text"], r["text"]
        assert "3.99 GB on GPU + mid bank 0.61 GB in host RAM" in r["text"]
        shoot(page, [node], artifacts_dir / "web_budget_gpu_warning.png")
        set_widget(page, node, "top_k", 0)          # 12 full frames: 3.45 GB, still too much
        set_widget(page, node, "sink_seconds", 0.0)  # 8 full frames: 2.30 GB fits
        r = page.wait_for(f"""() => {{ const t = app.graph.getNodeById({node}).packforcingBudget.root.innerText;
            return t.includes('fits: 3.00 GB free') && t; }}""")
        assert "exceeds" not in r
        set_widget(page, node, "mode", "full")
        r = wait_readout_change(page, node, r)
        p = plan(CacheConfig(mode="full"), Geometry(30, 12, 128, 30, 52, 4), 2)
        per_frame = p["device_bytes"] // 4                                    # 1560 tokens: 287.5 MB
        frames = (3_000_000_000 // per_frame - 4) // 4 * 4                     # minus the chunk being generated
        assert frames == 4 and r["longest"] == "0.81 s (13 frames)" and "longest video in free GPU memory" in r["text"]
        assert "⚠ exceeds free GPU memory" in r["text"]                        # 480 latent frames do not
        shoot(page, [node], artifacts_dir / "web_budget_gpu_full.png")
    finally:
        page.page.unroute("**/packforcing/plan?**")
    assert ours(page) == [], ours(page)


# ----------------------------------------------------------------------------- workflow templates

def test_template_browser_shows_every_workflow_with_its_thumbnail_and_title(server, page, artifacts_dir):
    """ComfyUI lists workflows/*.json as the pack's templates; its template browser titles each by file name
    and shows <name>.jpg beside it as its picture (the placeholder when that is missing)."""
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    readable = r"PackForcing - [A-Z][\w ,]+"                # what the browser shows as the title
    assert len(names) == 8 and all(re.fullmatch(readable, n) and "_" not in n for n in names), names
    listed = json.loads(urllib.request.urlopen(f"{server.url}/api/workflow_templates", timeout=30).read())
    assert sorted(listed["PackForcing"]) == names, listed
    for name in names:                                    # small pictures of the same size
        with Image.open(WORKFLOWS / f"{name}.jpg") as im:
            assert im.format == "JPEG" and im.size == (256, 256), (name, im.format, im.size)
        assert (WORKFLOWS / f"{name}.jpg").stat().st_size < 64_000, name
    pictures = {(WORKFLOWS / f"{n}.jpg").read_bytes() for n in names}
    assert len(pictures) == len(names), "thumbnails repeat"

    fetched = {}
    record = lambda r: fetched.__setitem__(urllib.parse.unquote(r.url), r.status) if ".jpg" in r.url else None
    page.page.on("response", record)
    try:
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.page.locator("[role=dialog]").get_by_text("PackForcing", exact=True).click()
        cards = []
        for name in names:
            card = page.page.locator(f'[data-testid="template-workflow-{name}"]')
            card.scroll_into_view_if_needed()
            cards.append(page.wait_for("""(name) => {
                const card = document.querySelector(`[data-testid="template-workflow-${CSS.escape(name)}"]`);
                const img = card?.querySelector('img');
                return img && img.complete && img.naturalWidth > 0 &&
                    {text: card.innerText, src: img.src, width: img.naturalWidth, height: img.naturalHeight};
            }""", arg=name, timeout=30))
        page.page.screenshot(path=str(artifacts_dir / "web_templates.png"))
        for name, card in zip(names, cards):
            assert name in card["text"], card                                     # the title is the file name
            assert "default-template" not in card["src"] and (card["width"], card["height"]) == (256, 256), card
            assert fetched.get(f"{server.url}/api/workflow_templates/PackForcing/{name}.jpg") == 200, (name, fetched)
        page.page.locator(f'[data-testid="template-workflow-{names[0]}"]').click()   # it opens the workflow
        ui = json.loads((WORKFLOWS / f"{names[0]}.json").read_text())
        page.wait_for("(n) => app.graph._nodes.length === n", arg=len(ui["nodes"]), timeout=30)
        types_ = page.evaluate("() => app.graph._nodes.map(n => n.type).sort()")
        assert types_ == sorted(n["type"] for n in ui["nodes"])
    finally:
        page.page.remove_listener("response", record)
        page.page.keyboard.press("Escape")
    assert ours(page) == [], ours(page)


# ----------------------------------------------------------------------------- live view

def on_tiny_models(name: str, **by_kind) -> dict:
    return tiny_workflows.on_tiny_models(name, DIT, VAE, PROMPT, **by_kind)


def tiny_run_prompt() -> dict:
    """The shipped 2-minute workflow on the tiny models: 128x128, 48 latent frames (12 chunks), top-k 2."""
    return on_tiny_models(T2V_2MIN, **{CACHE: {"top_k": 2},
                                       SAMPLER: {"width": 128, "height": 128, "length": 4 * 48 - 3},
                                       "PackForcingSaveVideo": {"filename_prefix": "pf_web/run"}})


def test_tiny_run_shows_progress_timeline_and_preview(server, page, artifacts_dir):
    wf = tiny_run_prompt()
    load_api(page, wf, "tiny.json")
    sampler = int(next(k for k, n in wf.items() if n["class_type"] == SAMPLER))
    cache = int(next(k for k, n in wf.items() if n["class_type"] == CACHE))
    (r,) = readouts(page)                       # the readout reads the tiny model's sizes from its file
    assert f"{DIT}: {TINY_LAYERS} layers, 1 head × 128, fp32" in r["text"], r["text"]
    check_numbers(r, expected(settings_of(page, cache), layers=TINY_LAYERS, heads=1, dtype_bytes=4))
    shoot(page, [cache], artifacts_dir / "web_budget_tiny.png")

    # Our listener runs after the extension's: it records each message and what the view showed for it.
    page.evaluate(f"""() => {{ window.__pf = [];
        window.__pfListener ??= window.comfyAPI.api.api.addEventListener('packforcing.progress', (e) =>
            window.__pf.push({{msg: e.detail, shown: app.graph.getNodeById({sampler}).packforcingLive.root.innerText}}));
    }}""")
    clip = focus(page, [sampler])
    clip["height"] += 180                       # the view grows when the run starts
    page.evaluate("() => app.queuePrompt(0, 1)")
    state = page.wait_for(f"""() => {{ const r = app.graph.getNodeById({sampler}).packforcingLive.root;
        return (r.dataset.state === 'done' || (r.dataset.state === 'running' && +r.dataset.chunk >= 3)) && r.dataset.state; }}""",
        timeout=120)
    page.page.screenshot(path=str(artifacts_dir / f"web_live_{'running' if state == 'running' else 'early_done'}.png"),
                         clip=clip)
    page.wait_for(f"() => app.graph.getNodeById({sampler}).packforcingLive.root.dataset.state === 'done'",
                  timeout=120)
    records = page.evaluate("() => window.__pf")
    events = [x["msg"] for x in records]
    chunk_done = [e for e in events if e["phase"] == "chunk_done"]
    assert [e["chunk"] for e in chunk_done] == list(range(1, 13)) and all(e["chunks"] == 12 for e in events)
    assert all(e["preview"].startswith("data:image/png;base64,") for e in chunk_done)
    assert chunk_done[-1]["sec_per_chunk"] > 0 and chunk_done[-1]["eta"] == 0 and chunk_done[3]["eta"] > 0
    last = chunk_done[-1]["timeline"]
    assert last["frames_done"] == 48 and len(last["mid"]) == 10 and len(last["selected"]) == 2
    assert chunk_done[-1]["kv"]["total_bytes"] > 0
    # during the run the view showed each chunk as it came, with its step, timing and ETA
    steps = [x for x in records if x["msg"]["phase"] == "step"]
    assert {x["msg"]["chunk"] for x in steps} == set(range(1, 13))
    for x in steps:
        m = x["msg"]
        assert f"chunk {m['chunk']} / 12 · step {m['step']} / 4" in x["shown"], x["shown"]
        assert "/ chunk · ETA" in x["shown"] and "done" not in x["shown"].split("\n")[0]

    view = page.evaluate(f"""() => {{ const v = app.graph.getNodeById({sampler}).packforcingLive;
        return {{text: v.root.innerText, chunk: v.root.dataset.chunk, chunks: v.root.dataset.chunks,
                 segments: JSON.parse(v.root.dataset.segments), img: v.img.naturalWidth, src: v.img.src,
                 imgHidden: v.img.hidden}}; }}""")
    assert (view["chunk"], view["chunks"]) == ("12", "12")
    assert "done: chunk 12 / 12" in view["text"] and "/ chunk" in view["text"] and "KV" in view["text"]
    assert "not a VAE decode" in view["text"]
    kinds = [s[2] for s in view["segments"]]
    assert kinds.count("selected") == 2 and kinds.count("mid") == 8 and "sink" in kinds and "recent" in kinds
    assert view["img"] == 16 and not view["imgHidden"]         # 128 px / 8: the newest latent frame
    assert GB(chunk_done[-1]["kv"]["total_bytes"]) in view["text"]
    widgets_do_not_overlap(page, sampler, "packforcing_live")
    shoot(page, [sampler], artifacts_dir / "web_live_run.png")
    assert ours(page) == [], ours(page)


LEGEND_CUT = """(id) => {   // legend cells of the sampler's live view that are not wholly shown
    const v = app.graph.getNodeById(id).packforcingLive, box = v.legend.getBoundingClientRect();
    const root = v.root.getBoundingClientRect(), cut = [];
    if (!box.width) return null;                   // not on the page now (the frontend re-places it)
    if (box.bottom > root.bottom + 0.5) cut.push(`legend below the view (${box.bottom} > ${root.bottom})`);
    for (const c of v.legend.children) {
        const r = c.getBoundingClientRect();
        if (c.textContent && (c.scrollWidth > c.clientWidth || r.left < box.left - 0.5 || r.right > box.right + 0.5 ||
                            r.bottom > box.bottom + 0.5))
            cut.push(`${c.innerText} (${r.left}-${r.right} x ${r.bottom}, ` +
                     `legend ${box.left}-${box.right} x ${box.bottom})`);
    }
    return cut;
}"""


def run_schedule(page: Browser, artifacts_dir, shot: str) -> None:
    """The 3-prompt schedule workflow on the tiny models, 6 chunks, switches at 2 s and 4 s; a mid bank of 2
    blocks, so that by the end a block is dropped and the legend holds every entry, the prompt's included.
    The view shows the active prompt, marks the switches, and its legend shows every entry whole, with units."""
    wf = on_tiny_models(SCHEDULE_90S, **{SAMPLER: {"width": 64, "height": 64, "length": 4 * 24 - 3},
                                         CACHE: {"mid_blocks": 2, "top_k": 1},
                                         "PackForcingSaveVideo": {"filename_prefix": "pf_web/schedule"}})
    for node in wf.values():                      # 30 s, 60 s -> 2 s, 4 s
        if node["class_type"] == "PackForcingPromptSchedule" and node["inputs"]["start_seconds"]:
            node["inputs"].update(start_seconds=node["inputs"]["start_seconds"] / 15, transition_chunks=0)
    load_api(page, wf, "schedule.json")
    sampler = int(next(k for k, n in wf.items() if n["class_type"] == SAMPLER))
    focus(page, [sampler])                        # zoom 1: the view is on the page, so its cells can be measured
    page.evaluate(f"""() => {{ window.__pfs = [];
        window.comfyAPI.api.api.addEventListener('packforcing.progress', (e) => {{
            const r = app.graph.getNodeById({sampler}).packforcingLive.root;
            const record = {{chunk: e.detail.chunk, prompts: e.detail.prompts, text: r.innerText,
                             legend: [...app.graph.getNodeById({sampler}).packforcingLive.legend.children]
                                 .map(c => c.textContent).filter(Boolean),
                             switches: r.dataset.switches, active: r.dataset.activePrompt}};
            window.__pfs.push(record);      // measured once the canvas has placed the view (its next frames)
            requestAnimationFrame(() => requestAnimationFrame(() => {{ record.cut = ({LEGEND_CUT})({sampler}) ?? 'unseen'; }}));
        }});
    }}""")
    page.evaluate("() => app.queuePrompt(0, 1)")
    page.wait_for(f"() => window.__pfs.some(r => r.chunk === 6) && "        # this run's last chunk: not the
                  f"app.graph.getNodeById({sampler}).packforcingLive.root.dataset.state === 'done'",   # stale 'done'
                  timeout=400)
    records = page.wait_for("() => window.__pfs.every(r => r.cut) && window.__pfs")
    active = {r["chunk"]: r["prompts"]["active"] for r in records}
    assert active == {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}, active
    for r in records:
        assert f"prompt {r['prompts']['active']} / 3" in r["text"], r["text"]
        assert json.loads(r["switches"]) == [[8, 2, "none"], [16, 3, "none"]] and r["active"] == str(r["prompts"]["active"])
        assert r["cut"] in ([], "unseen"), f"chunk {r['chunk']}: legend entries cut off: {r['cut']}"
        for line in r["legend"]:                  # every counter says what it counts
            assert re.fullmatch(r"(sink|recent|dropped) [\d,]+ latent frames?|(mid|top-k) [\d,]+ blocks?|now|"
                                r"prompt \d / 3( \(\d+%\))?.*", line), f"chunk {r['chunk']}: {line!r} has no unit"
    assert sum(r["cut"] == [] for r in records) >= len(records) / 2, [(r["chunk"], r["cut"]) for r in records]
    legends = " | ".join(c for r in records for c in r["legend"])
    for entry in ("sink 4 latent frames", "recent 4 latent frames", "mid 1 block", "top-k 1 block",
                  "dropped 4 latent frames", "now", "prompt 3 / 3"):
        assert entry in legends, f"{entry!r} never shown: {legends}"
    shoot(page, [sampler], artifacts_dir / shot)
    assert page.evaluate(LEGEND_CUT, sampler) == []         # done: every entry but "now", measured on the page
    assert ours(page) == [], ours(page)


def test_live_view_shows_the_active_prompt_and_marks_the_switches(server, page, artifacts_dir):
    run_schedule(page, artifacts_dir, "web_live_schedule.png")
