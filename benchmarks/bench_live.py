"""Live playback benchmark: how far behind the generation the browser can play, whether playback stalls,
and what the feed costs the run.

Two parts, because the GPU machine has no browser (and one cannot be carried there):

gpu      In-process ComfyUI (as bench_comfy.py): the PackForcing Sampler's run (`nodes.generation.run`,
         compiled blocks + CUDA graphs, full-size random weights, 832x480, reference kv_pool cache) with
         live playback: the fragment route (nodes/live_routes.py) served by aiohttp on a thread, and a
         client that fetches every fragment over HTTP as soon as it is announced (as the page does on the
         websocket message). Per fragment: chunk committed (left the sampler) -> fragment stored (decoded,
         encoded, cut) -> fetched over HTTP. Playback stalls are counted on that timeline with the
         player's rule (start / resume once LIVE_DELAY s are there, then 1x). Run speed: live playback
         on vs off, with the video saved as it goes and without.

    PACKFORCING_COMFYUI=/path/to/ComfyUI python benchmarks/bench_live.py gpu --compile --seconds 120 \\
        --speed-seconds 60 --out benchmarks/results/h100_live.json

browser  Headless Chromium (here, on the CPU): the GPU run's fragment timings replayed through the same
         route and a websocket to a page whose MediaSource is fed by web/js/feeder.js, the player's
         feeder. Fragments of the same frame counts at 832x480, encoded here by the same encoder from
         synthetic frames. Per fragment: announced -> playable in the <video> (buffered); the page plays
         at 1x with the player's start / resume rule and counts stalls ('waiting' while playing).

    python benchmarks/bench_live.py browser --timings benchmarks/results/h100_live.json \\
        --out benchmarks/results/live_browser.json

The delay from a chunk leaving the sampler to its frames being playable = (committed -> stored, GPU)
+ (announced -> playable, browser); both are reported, and their sum per fragment.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from comfy_harness import pack_module  # noqa: E402

FPS = 16
LIVE_DELAY = 2.0              # web/js/player.js: seconds buffered before playing (and after a stall)
W, H = 832, 480


# ----------------------------------------------------------------------------- numbers

def summary(xs: list[float]) -> dict | None:
    if not xs:
        return None
    s = sorted(xs)
    return {"median": statistics.median(s), "p95": s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))],
            "max": s[-1], "min": s[0], "n": len(s)}


def stalls(fragments: list[dict], available: str) -> dict:
    """Playback on the timeline `available` (wall seconds at which each fragment can be appended) with
    the player's rule: start once LIVE_DELAY s of video are there, play at 1x; when the next fragment is
    not there yet, wait until LIVE_DELAY s more are (or the video's end)."""
    starts = [f["first_frame"] / FPS for f in fragments]
    durs = [f["frames"] / FPS for f in fragments]
    at = [f[available] for f in fragments]
    total = starts[-1] + durs[-1]

    def avail(video_s: float) -> float:            # wall time when the video up to video_s is there
        return max(t for s, t in zip(starts, at) if s < video_s - 1e-9)

    clock = start = avail(min(LIVE_DELAY, total))
    found = []
    for s, d, t in zip(starts, durs, at):
        if t > clock:                              # playback reached this fragment before it came
            resume = avail(min(s + LIVE_DELAY, total))
            found.append({"at_video_s": s, "wall_s": clock, "seconds": resume - clock})
            clock = resume
        clock += d
    return {"stalls": len(found), "stall_seconds": sum(x["seconds"] for x in found), "list": found[:20],
            "start_wall_s": start, "end_wall_s": clock, "video_s": total}


# ----------------------------------------------------------------------------- gpu

class RouteServer:
    """The live route in a bare aiohttp app on a thread (127.0.0.1, a free port)."""

    def __init__(self):
        from aiohttp import web
        routes = pack_module("nodes.live_routes")
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get(routes.ROUTE, routes.make_handler(web))
        self.runner = web.AppRunner(app)
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(30)

    def url(self, prompt: str, node: str, part: str) -> str:
        return f"http://127.0.0.1:{self.port}/packforcing/live/{prompt}/{node}/{part}"


class Fetcher:
    """The page's side: on each announced fragment, GET it (in order, one at a time)."""

    def __init__(self, server: RouteServer, prompt: str, node: str):
        self.server, self.prompt, self.node = server, prompt, node
        self.announced: dict[int, float] = {}
        self.fetched: dict[int, tuple[float, int]] = {}
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def send(self, msg: dict) -> None:            # live_player's websocket message
        if msg.get("phase") == "fragment":
            self.announced[msg["index"]] = time.perf_counter()
            self.jobs.put(msg["index"])
        elif msg.get("phase") == "end":
            self.jobs.put(None)

    def _run(self) -> None:
        while (i := self.jobs.get()) is not None:
            with urllib.request.urlopen(self.server.url(self.prompt, self.node, f"{i}.m4s"), timeout=30) as r:
                n = len(r.read())
            self.fetched[i] = (time.perf_counter(), n)

    def join(self) -> None:
        self.thread.join(60)


def run_once(model, vae, seconds: float, save: bool, live: bool, server: RouteServer, clock, name: str,
             size=(W, H), device="cuda") -> dict:
    generation, request, spec = (pack_module(f"nodes.{m}") for m in ("generation", "request", "spec"))
    lp = pack_module("nodes.live_player")
    cache = spec.new_cache_spec(pack_module("packforcing_core.cache.config").CacheConfig(mode="kv_pool", bank_device="same"))
    prompt = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(0))
    latent_frames = -(-int(seconds * FPS + 3) // 16) * 4
    length = 4 * latent_frames - 3
    req = request.check_request(cache, [[prompt, {}]], size[0], size[1], length, 0, "1000,750,500,250", 5.0, 4)
    fetcher = Fetcher(server, name, "1") if live else None
    playback = (name, "1", fetcher.send) if live else None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock.start()
    t0 = time.perf_counter()
    video = pack_module("nodes.streaming").LiveVideo(f"bench/{name}" if save else None, size[0], size[1], playback) \
        if (save or live) else None
    _, _, timeline = generation.run(model, req, vae if (save or live) else None, "1", False, video)
    wall = time.perf_counter() - t0
    from bench import chunk_stats
    out = {"name": name, "seconds": seconds, "video_frames": length, "save_video": save, "live_playback": live,
           "decode": save or live, "wall_s": wall, "fps": length / wall, "chunk_s": chunk_stats(clock.times),
           "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None}
    if live:
        fetcher.join()
        feed = lp.FEEDS.get(name, "1")
        frags = []
        for i, f in enumerate(feed.fragments):
            got = fetcher.fetched.get(i)
            frags.append({"first_frame": f.first_frame, "frames": f.frames, "key": f.key, "bytes": f.size,
                          "committed": f.committed - t0, "stored": f.stored - t0,
                          "announced": fetcher.announced.get(i, f.stored) - t0,
                          "fetched": (got[0] if got else float("nan")) - t0})
        out["fragments"] = frags
        out["latency_s"] = {
            "committed_to_stored": summary([f["stored"] - f["committed"] for f in frags]),
            "stored_to_fetched": summary([f["fetched"] - f["stored"] for f in frags]),
            "committed_to_fetched": summary([f["fetched"] - f["committed"] for f in frags]),
        }
        out["playback_on_fetched_timeline"] = stalls(frags, "fetched")
        out["bytes_per_video_minute"] = sum(f["bytes"] for f in frags) / (length / FPS / 60)
        out["faster_than_real_time"] = length / FPS / wall
    return out


def gpu(a) -> None:
    command = "python " + " ".join(sys.argv)
    from comfy_harness import comfy_in_process
    comfy_in_process(Path(tempfile.mkdtemp(prefix="pf-bench-live-")), ["--cpu"] if a.smoke else [])
    from bench_comfy import ChunkClock, comfy_vae, comfyui_version, dit_handle
    size, device = (W, H), "cuda"
    if a.smoke:                    # the code paths on the CPU: tiny random models, 64x64
        size, device = (64, 64), "cpu"
        model, vae = smoke_models()
    else:
        torch.backends.cudnn.benchmark = True
        model, vae = dit_handle(a.compile, False), comfy_vae(a.decoder)
    clock, server = ChunkClock(), RouteServer()
    doc = {"command": command, "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
           "torch": torch.__version__, "python": platform.python_version(), "comfyui": comfyui_version(),
           "size": f"{size[0]}x{size[1]}", "decoder": a.decoder, "compile_and_graphs": a.compile,
           "live_delay_s": LIVE_DELAY, "runs": []}
    start = time.perf_counter()
    run_once(model, vae, 6 if not a.smoke else 1, True, True, server, clock, "warmup", size, device)
    plan = [(a.seconds, False, True, "live"), (a.speed_seconds, False, False, "off"),
            (a.speed_seconds, True, True, "save_live"), (a.speed_seconds, True, False, "save")]
    for seconds, save, live, name in plan:
        left = a.budget - (time.perf_counter() - start)
        if left < seconds * a.seconds_per_video_second:
            doc["skipped"] = doc.get("skipped", []) + [name]
            continue
        r = run_once(model, vae, seconds, save, live, server, clock, name, size, device)
        print(json.dumps({k: v for k, v in r.items() if k != "fragments"}), flush=True)
        doc["runs"].append(r)
        write_gpu(a.out, doc)
    write_gpu(a.out, doc)


def smoke_models():
    import comfy.sd
    tiny, vae_mod = pack_module("packforcing_core.model.tiny"), pack_module("packforcing_core.vae.model")
    handle = pack_module("nodes.model_handle")
    cfg = tiny.tiny_config(dim=128, num_heads=1, ffn_dim=256, num_layers=2, text_dim=4096, text_len=512, freq_dim=256)
    model = handle.OwnedModel(tiny.random_model(cfg, seed=1), name="tiny")
    torch.manual_seed(0)
    return model, comfy.sd.VAE(sd=vae_mod.WanVAE(dim=8).state_dict())


def write_gpu(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    runs = {r["name"]: r for r in doc["runs"]}
    lines = [f"GPU: {doc['gpu']}, torch {doc['torch']}, ComfyUI {doc['comfyui']}, {doc['size']}, decoder "
             f"{doc['decoder']}, compiled blocks + CUDA graphs: {doc['compile_and_graphs']}.", "",
             f"Command: `{doc['command']}`", "",
             "| run | video | decode | save | live | wall s | fps | steady s/chunk | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(f"| {r['name']} | {r['seconds']:.0f} s | {r['decode']} | {r['save_video']} | {r['live_playback']} | "
                     f"{r['wall_s']:.1f} | {r['fps']:.1f} | {r['chunk_s']['steady_median']:.3f} | "
                     f"{r['peak_gib'] or 0:.2f} |")
    if "live" in runs:
        r = runs["live"]
        lines += ["", "Latency per fragment (run `live`), seconds: median / p95 / max"]
        for k, v in r["latency_s"].items():
            lines.append(f"- {k.replace('_', ' ')}: {v['median']:.3f} / {v['p95']:.3f} / {v['max']:.3f}")
        p = r["playback_on_fetched_timeline"]
        lines += [f"- playback (player's rule on the fetched timeline): {p['stalls']} stalls "
                  f"({p['stall_seconds']:.2f} s) over {p['video_s']:.1f} s of video; generation "
                  f"{r['faster_than_real_time']:.2f}x real time; {r['bytes_per_video_minute'] / 2 ** 20:.1f} MiB "
                  "of fragments per minute of video"]
    for a, b in (("live", "off"), ("save_live", "save")):
        if a in runs and b in runs:
            x, y = runs[a]["chunk_s"]["steady_median"], runs[b]["chunk_s"]["steady_median"]
            lines.append(f"- steady chunk {a} / {b}: {x:.3f} / {y:.3f} s = {100 * (x / y - 1):+.1f}%")
    if doc.get("skipped"):
        lines.append(f"- not run (time budget): {', '.join(doc['skipped'])}")
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- browser

PAGE = """<!doctype html><meta charset=utf-8><body><video muted playsinline></video><script type=module>
import { Feeder } from "/feeder.js";
const FPS = 16, DELAY = %(delay)s, MIME = %(mime)s;
const now = () => performance.timeOrigin + performance.now();
const v = document.querySelector("video"), ms = new MediaSource();
v.src = URL.createObjectURL(ms);
const rec = window.rec = {recv: [], sent: [], pos: [], playable: [], waits: [], started: null, ended: null, error: null};
const meta = [];
let waiting = true, finished = false, playing = false;
const covered = (i) => { const [f, n] = meta[i], a = f / FPS, b = (f + n) / FPS, r = v.buffered;
  for (let k = 0; k < r.length; k++) if (r.start(k) <= a + 0.5 / FPS && r.end(k) >= b - 0.5 / FPS) return true; return false; };
const ahead = () => { const r = v.buffered, t = v.currentTime;
  for (let k = 0; k < r.length; k++) if (r.start(k) <= t + 0.1 && r.end(k) > t) return r.end(k) - t; return 0; };
function check() {
  for (let i = 0; i < meta.length; i++) if (meta[i] && rec.playable[i] == null && covered(i)) rec.playable[i] = now();
  if (waiting && (ahead() >= DELAY - 0.25 || (finished && ahead() > 0))) {
    waiting = false; v.play(); if (rec.started == null) rec.started = now();
  }
}
const feeder = new Feeder(ms, { base: "/packforcing/live/replay/1/", mime: MIME, fps: FPS }, (m) => {
  if (m.type === "error") rec.error = m.message; check(); });
v.addEventListener("timeupdate", () => feeder.time({ t: v.currentTime }));
v.addEventListener("waiting", () => {
  if (rec.started == null || v.seeking || ahead() > 0.2 || finished) return;
  rec.waits.push([now(), v.currentTime]); waiting = true; v.pause(); });
v.addEventListener("ended", () => (rec.ended = now()));
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onmessage = (e) => { const d = JSON.parse(e.data);
  if (d.end) { finished = true; feeder.end(); check(); return; }
  rec.recv[d.index] = now(); rec.sent[d.index] = d.sent; rec.pos[d.index] = v.currentTime; meta[d.index] = d.meta;
  feeder.fragment({ index: d.index, meta: d.meta, firstAvail: 0 }); };
</script>"""


def synthetic_fragments(frame_counts: list[int], cache: Path) -> tuple[bytes, list[bytes], str]:
    """Fragments of these frame counts at 832x480, encoded by the live encoder from moving synthetic frames."""
    lp = pack_module("nodes.live_player")
    key = cache / f"fragments_{len(frame_counts)}_{sum(frame_counts)}.json"
    if key.exists():
        d = json.loads(key.read_text())
        blob = (cache / d["file"]).read_bytes()
        parts, at = [], d["init"]
        for n in d["sizes"]:
            parts.append(blob[at:at + n])
            at += n
        return blob[:d["init"]], parts, d["mime"]
    enc = lp.LiveEncoder(W, H, playback=("synthetic", "1", None))
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    g = torch.Generator().manual_seed(0)
    frame = 0
    for n in frame_counts:
        frames = []
        for k in range(n):
            t = frame + k
            r = (128 + 100 * torch.sin((x + 3 * t) / 37.0) * torch.cos((y - 2 * t) / 23.0))
            gch = (128 + 90 * torch.sin((x - y + 4 * t) / 29.0))
            b = (128 + 80 * torch.cos((x + y + 5 * t) / 41.0))
            img = torch.stack([r, gch, b], -1) + 4 * torch.randn(H, W, 3, generator=g)
            frames.append(img.clamp(0, 255).to(torch.uint8))
        enc.put(torch.stack(frames))
        frame += n
    enc.close()
    feed = lp.FEEDS.get("synthetic", "1")
    parts = [lp.FEEDS.read("synthetic", "1", i) for i in range(len(feed.fragments))]
    cache.mkdir(parents=True, exist_ok=True)
    (cache / (key.stem + ".bin")).write_bytes(feed.init + b"".join(parts))
    key.write_text(json.dumps({"file": key.stem + ".bin", "init": len(feed.init), "sizes": [len(p) for p in parts],
                               "mime": feed.mime}))
    return feed.init, parts, feed.mime


def browser(a) -> None:
    from aiohttp import web

    from comfy_harness import Browser
    command = "python " + " ".join(sys.argv)
    timings = json.loads(Path(a.timings).read_text())
    live = next(r for r in timings["runs"] if r["name"] == "live")
    frags = live["fragments"]
    if a.limit:
        frags = frags[:a.limit]
    init, parts, mime = synthetic_fragments([f["frames"] for f in frags], Path(a.cache))
    lp, routes = pack_module("nodes.live_player"), pack_module("nodes.live_routes")
    feed = lp.LiveFeed("replay", "1", mime, W, H, init)
    lp.FEEDS.open(feed)
    sockets = []
    loop = asyncio.new_event_loop()

    async def page(request):
        return web.Response(text=PAGE % {"delay": LIVE_DELAY, "mime": json.dumps(mime)}, content_type="text/html")

    async def feeder_js(request):
        return web.Response(text=(ROOT / "web" / "js" / "feeder.js").read_text(), content_type="text/javascript")

    async def ws_handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.append(ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/feeder.js", feeder_js)
    app.router.add_get("/ws", ws_handler)
    app.router.add_get(routes.ROUTE, routes.make_handler(web))
    runner = web.AppRunner(app)
    ready = threading.Event()
    port = []

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port.append(site._server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(30)

    def announce(msg: dict) -> None:
        for ws in sockets:
            asyncio.run_coroutine_threadsafe(ws.send_str(json.dumps(msg)), loop)

    with Browser() as b:
        b.open(f"http://127.0.0.1:{port[0]}/")
        b.wait_for("() => window.rec !== undefined", timeout=30)
        t0 = time.perf_counter() - frags[0]["stored"]
        for i, (f, data) in enumerate(zip(frags, parts)):      # the GPU run's timeline, in real time
            time.sleep(max(0.0, t0 + f["stored"] - time.perf_counter()))
            lp.FEEDS.add(feed, lp.Fragment(f["first_frame"], f["frames"], f["key"], len(data), data, None, 0.0,
                                           time.perf_counter()))
            announce({"index": i, "meta": [f["first_frame"], f["frames"], int(f["key"])], "sent": time.time() * 1000})
        announce({"end": True})
        b.wait_for("() => window.rec.ended != null || window.rec.error != null",
                   timeout=frags[-1]["first_frame"] / FPS + 120)
        rec = b.evaluate("() => window.rec")
        version = b.version
    # A fragment that arrives more than AHEAD s past the playing position (generation ahead of real
    # time) is fetched only when playback nears it: the delay is measured on those in the window,
    # i.e. while you watch within AHEAD s of live (after "live", playback is 2 s behind).
    ahead = 30.0                                           # web/js/feeder.js AHEAD
    window = [i for i, f in enumerate(frags) if rec["playable"][i] is not None and rec["sent"][i] is not None
              and f["first_frame"] / FPS <= (rec["pos"][i] or 0) + ahead]
    browser_delay = [(rec["playable"][i] - rec["sent"][i]) / 1000 for i in window]
    total = [(rec["playable"][i] - rec["sent"][i]) / 1000 + (frags[i]["stored"] - frags[i]["committed"])
             for i in window]
    steady = [t for i, t in zip(window, total) if i >= 4]
    doc = {"command": command, "timings": a.timings, "chromium": version, "size": f"{W}x{H}", "mime": mime,
           "fragments": len(frags), "playable": sum(p is not None for p in rec["playable"]), "error": rec["error"],
           "in_window": len(window), "ahead_s": ahead,
           "announced_to_playable_s": summary(browser_delay),
           "committed_to_playable_s": summary(total),
           "committed_to_playable_from_fragment_4_s": summary(steady),
           "lag_at_end_s": (frags[-1]["first_frame"] + frags[-1]["frames"]) / FPS - (rec["pos"][-1] or 0),
           "websocket_s": summary([(r - s) / 1000 for r, s in zip(rec["recv"], rec["sent"]) if r and s]),
           "stalls": len(rec["waits"]), "waits": rec["waits"][:20],
           "played_s": (rec["ended"] - rec["started"]) / 1000 if rec["ended"] and rec["started"] else None,
           "video_s": (frags[-1]["first_frame"] + frags[-1]["frames"]) / FPS,
           "gpu_bytes_per_minute": live.get("bytes_per_video_minute"),
           "replay_bytes_per_minute": sum(map(len, parts)) / ((frags[-1]["first_frame"] + frags[-1]["frames"]) / FPS / 60)}
    print(json.dumps(doc, indent=1))
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    s, t, u = doc["announced_to_playable_s"], doc["committed_to_playable_s"], doc["committed_to_playable_from_fragment_4_s"]
    md = [f"Headless Chromium {version} on the CPU of this machine, replaying `{a.timings}` "
          f"({doc['fragments']} fragments, {doc['video_s']:.1f} s of {W}x{H} video).", "",
          f"Command: `{command}`", "",
          f"Delays of the {doc['in_window']} fragments that arrived within {ahead:.0f} s of the playing position "
          "(the player fetches those at once; later ones when playback nears them: generation ran ahead of "
          f"real time and playback ended {doc['lag_at_end_s']:.1f} s behind the newest frame):", "",
          f"- announced -> playable: median {s['median']:.3f} s, p95 {s['p95']:.3f} s, max {s['max']:.3f} s",
          f"- chunk committed -> playable (GPU committed -> stored + this): median {t['median']:.3f} s, "
          f"p95 {t['p95']:.3f} s, max {t['max']:.3f} s; from the 5th fragment on: median {u['median']:.3f} s, "
          f"p95 {u['p95']:.3f} s, max {u['max']:.3f} s",
          f"- stalls while playing at 1x: {doc['stalls']} (played {doc['played_s'] or 0:.1f} s for "
          f"{doc['video_s']:.1f} s of video)",
          f"- fragments here (synthetic frames): {doc['replay_bytes_per_minute'] / 2 ** 20:.1f} MiB per minute of "
          f"video; the GPU run's (random weights): {(doc['gpu_bytes_per_minute'] or 0) / 2 ** 20:.1f} MiB"]
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write("\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="part", required=True)
    g = sub.add_parser("gpu")
    g.add_argument("--seconds", type=float, default=120, help="video of the live run (latency, stalls)")
    g.add_argument("--speed-seconds", type=float, default=60, help="video of each run-speed comparison")
    g.add_argument("--decoder", choices=("wan", "tiny"), default="wan")
    g.add_argument("--compile", action="store_true")
    g.add_argument("--budget", type=float, default=1e9, help="seconds: skip runs that would not fit")
    g.add_argument("--seconds-per-video-second", type=float, default=0.8, help="estimate used with --budget")
    g.add_argument("--smoke", action="store_true", help="CPU, tiny models, 64x64: check the code paths")
    g.add_argument("--out", default="benchmarks/results/live.json")
    b = sub.add_parser("browser")
    b.add_argument("--timings", required=True)
    b.add_argument("--limit", type=int, default=0, help="replay only the first N fragments")
    b.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "pf-bench-live"))
    b.add_argument("--out", default="benchmarks/results/live_browser.json")
    a = ap.parse_args()
    gpu(a) if a.part == "gpu" else browser(a)


if __name__ == "__main__":
    main()
