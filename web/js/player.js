// Live playback on the PackForcing Sampler node: the video of the running prompt at its full resolution
// and frame rate, a few seconds behind generation, with a scrubber over what exists so far, pause,
// "jump to live" and a full-size view.
//
// Feed (nodes/live_player.py): the sampler decodes every committed chunk and cuts it into one fMP4
// fragment; a websocket message `packforcing.live_video` announces the run ("start": codec, size),
// each fragment ("fragment": index, first frame, frames, keyframe) and the end ("end"). The player
// fetches the init segment and the fragments from GET /packforcing/live/{prompt}/{node}/... and
// appends them to a Media Source Extensions SourceBuffer. It keeps only a window around the playing
// position in the browser (AHEAD seconds ahead, BEHIND behind) and fetches again when you scrub
// elsewhere, so an hour-long run stays within the browser's buffer quota.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { NODE, addFixedWidget, allNodes, el, fitNode, injectStyle } from "./common.js";

export const EVENT = "packforcing.live_video";
const WIDGET = "packforcing_player";
const LIVE_WIDGET = "packforcing_live";       // live.js: the player sits just above it
const LIVE_DELAY = 2;        // seconds behind the newest frame: at the start, after "live", after a stall
const AHEAD = 30;            // seconds appended ahead of the playing position
const BEHIND = 30;           // seconds kept behind it
const VIDEO_HEIGHT = 180;
const CONTROLS = 20;
const NOTE = 14;
const MIN_WIDTH = 236;

/** m:ss.s of a time in seconds. */
export function clock(t) {
  if (!isFinite(t) || t < 0) t = 0;
  const m = Math.floor(t / 60);
  const s = t - 60 * m;
  return `${m}:${s < 10 ? "0" : ""}${s.toFixed(1)}`;
}

/** Index of the fragment holding frame `frame` ([first frame, frames, key] each, in order), or -1. */
export function fragmentAt(meta, frame) {
  let lo = 0, hi = meta.length - 1, found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (meta[mid][0] <= frame) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

function injectPlayerStyle() {
  if (document.getElementById("packforcing-player-style")) return;
  const css = `
.pf-player .pf-stage { display: flex; flex-direction: column; gap: 2px; }
.pf-player .pf-stage[hidden] { display: none; }
.pf-player video { display: block; width: 100%; height: ${VIDEO_HEIGHT}px; object-fit: contain; background: #000; border-radius: 3px; }
.pf-controls { display: flex; align-items: center; gap: 4px; height: ${CONTROLS}px; }
.pf-controls button { font: 11px ui-sans-serif, system-ui, sans-serif; padding: 0 5px; height: 18px; min-width: 22px;
  color: var(--input-text, #ddd); background: var(--comfy-menu-bg, #353535); border: 1px solid #555; border-radius: 3px; cursor: pointer; }
.pf-controls button[data-on="true"] { color: #fff; background: #c62828; border-color: #c62828; }
.pf-controls input[type=range] { flex: 1; min-width: 40px; height: 14px; margin: 0; }
.pf-controls .pf-time { font-variant-numeric: tabular-nums; white-space: nowrap; }
.pf-player-overlay { position: fixed; inset: 0; z-index: 10000; background: rgba(0,0,0,0.88); display: flex;
  flex-direction: column; align-items: center; justify-content: center; padding: 16px; box-sizing: border-box; }
.pf-player-overlay .pf-stage { width: min(100%, max(640px, var(--pf-w))); font: 12px ui-sans-serif, system-ui, sans-serif; color: #ddd; }
.pf-player-overlay video { height: auto; max-height: calc(100vh - 80px); width: 100%; }
`;
  document.head.append(el("style", { id: "packforcing-player-style" }, css));
}

class LivePlayer {
  constructor(node) {
    injectStyle();
    injectPlayerStyle();
    this.node = node;
    this.run = null;
    this.meta = [];
    this.skip = new Set();
    this.userPaused = false;
    this.waitingForData = false;
    this.root = el("div", { class: "pf-box pf-player", data: { state: "idle" } });
    this.video = el("video", { muted: "", playsinline: "", preload: "auto" });
    this.video.muted = true;
    this.playButton = el("button", { title: "pause / play", data: { pf: "play" } }, "❚❚");
    this.scrub = el("input", { type: "range", min: "0", max: "0", step: "0.0625", value: "0", data: { pf: "scrub" },
      title: "what exists so far (kept in memory, or all of it when the video is saved)" });
    this.time = el("span", { class: "pf-time pf-dim", data: { pf: "time" } }, "0:00.0");
    this.liveButton = el("button", { title: "jump to live (a few seconds behind the newest frame)", data: { pf: "live" } }, "live");
    this.popButton = el("button", { title: "full-size view", data: { pf: "pop" } }, "⛶");
    this.controls = el("div", { class: "pf-controls" }, this.playButton, this.scrub, this.time, this.liveButton, this.popButton);
    this.note = el("div", { class: "pf-row pf-dim", data: { pf: "note" } });
    this.stage = el("div", { class: "pf-stage" }, this.video, this.controls);
    this.root.append(this.stage, this.note);
    this.stage.hidden = true;
    this.note.textContent = "video: plays here while the sampler runs (live_playback)";
    this.widget = addFixedWidget(node, WIDGET, this.root, () => this.height(), MIN_WIDTH);
    placeAbove(node, this.widget, LIVE_WIDGET);
    this.bind();
  }

  height() {
    return this.stage.hidden ? NOTE : VIDEO_HEIGHT + CONTROLS + NOTE + 4;
  }

  bind() {
    const v = this.video;
    this.playButton.onclick = () => (v.paused ? this.play() : this.pause());
    this.liveButton.onclick = () => this.jumpToLive();
    this.popButton.onclick = () => (this.overlay ? this.popIn() : this.popOut());
    this.scrub.addEventListener("pointerdown", () => (this.dragging = true));
    this.scrub.addEventListener("pointerup", () => (this.dragging = false));
    this.scrub.addEventListener("input", () => this.seek(Number(this.scrub.value)));
    v.addEventListener("timeupdate", () => { this.show(); this.pump(); });
    v.addEventListener("waiting", () => this.stalled());
    v.addEventListener("playing", () => { this.waitingForData = false; this.show(); });
    v.addEventListener("pause", () => this.show());
    v.addEventListener("error", () => this.fail(v.error?.message || `media error ${v.error?.code}`));
  }

  // ------------------------------------------------------------------ the run
  setState(state) {
    this.root.dataset.state = state;
  }

  reveal() {
    if (!this.stage.hidden) return;
    this.stage.hidden = false;
    fitNode(this.node);
  }

  onMessage(d) {
    if (d.phase === "unavailable") return this.unavailable(d);
    if (d.phase === "start") return this.start(d);
    if (!this.run || d.prompt_id !== this.run.prompt) return this.attach(d.prompt_id, d.node);
    if (d.phase === "fragment") {
      this.meta[d.index] = [d.first_frame, d.frames, d.key];
      this.run.firstAvail = d.first_kept;
      this.run.frames = Math.max(this.run.frames, d.first_frame + d.frames);
    } else if (d.phase === "end") {
      this.run.finished = true;
      this.run.stopped = d.stopped;
      this.run.frames = d.frames;
    }
    this.show();
    this.pump();
  }

  unavailable(d) {
    this.reset();
    this.setState("unavailable");
    this.note.textContent = `live playback: ${d.reason}`;
    fitNode(this.node);
  }

  reset() {
    this.popIn();
    this.run = null;
    this.meta = [];
    this.skip = new Set();
    this.sb = null;
    if (this.ms && this.video.src) URL.revokeObjectURL(this.video.src);
    this.ms = null;
    this.video.removeAttribute("src");
    this.video.load();
  }

  /** A new run: a fresh MediaSource, the init segment, then the fragments as they come. */
  async start(d, manifest = null) {
    this.reset();
    const run = this.run = { prompt: d.prompt_id, node: d.node, mime: d.mime, width: d.width, height: d.height,
      fps: d.fps, frames: 0, finished: false, stopped: false, firstAvail: 0, ready: false };
    if (manifest) {
      this.meta = manifest.fragments.slice();
      Object.assign(run, { frames: manifest.frames, finished: manifest.finished, stopped: manifest.stopped,
        firstAvail: manifest.first_kept });
    }
    this.userPaused = false;
    this.waitingForData = true;
    this.reveal();
    this.setState("waiting");
    this.root.style.setProperty("--pf-w", `${d.width}px`);
    this.note.textContent = `live playback: ${d.width}×${d.height}, ${d.fps} fps`;
    fitNode(this.node);
    if (!window.MediaSource || !MediaSource.isTypeSupported(d.mime)) {
      return this.fail(`this browser cannot play ${d.mime} through Media Source Extensions`);
    }
    const ms = this.ms = new MediaSource();
    this.video.src = URL.createObjectURL(ms);
    await new Promise((resolve) => ms.addEventListener("sourceopen", resolve, { once: true }));
    if (this.run !== run) return;
    try {
      this.sb = ms.addSourceBuffer(d.mime);
      await this.append(await this.fetch(run, "init.mp4"));
    } catch (err) {
      return this.fail(err.message);
    }
    if (this.run !== run) return;
    run.ready = true;
    if (manifest) this.video.currentTime = this.liveStart();    // joined late: a few seconds behind live
    this.pump();
  }

  /** Messages of a run this page did not see start (opened or reloaded while it runs): its manifest. */
  async attach(prompt, node) {
    if (this.attaching === prompt) return;
    this.attaching = prompt;
    try {
      const r = await api.fetchApi(livePath(prompt, node, "manifest"));
      if (!r.ok) return;
      const m = await r.json();
      await this.start({ prompt_id: prompt, node, mime: m.mime, width: m.width, height: m.height, fps: m.fps }, m);
    } catch (err) {
      this.fail(err.message);
    } finally {
      this.attaching = null;
    }
  }

  fail(why) {
    this.setState("error");
    this.note.className = "pf-row pf-warn";
    this.note.textContent = `live playback stopped: ${why}`;
    this.note.title = why;
  }

  // ------------------------------------------------------------------ feeding the SourceBuffer
  async fetch(run, part) {
    const r = await api.fetchApi(livePath(run.prompt, run.node, part));
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { msg = (await r.json()).error ?? msg; } catch { /* not JSON */ }
      const err = new Error(msg);
      err.status = r.status;
      throw err;
    }
    return r.arrayBuffer();
  }

  append(data) {
    const sb = this.sb;
    return new Promise((resolve, reject) => {
      const done = () => { sb.removeEventListener("error", bad); resolve(); };
      const bad = () => { sb.removeEventListener("updateend", done); reject(new Error("the browser refused a fragment")); };
      sb.addEventListener("updateend", done, { once: true });
      sb.addEventListener("error", bad, { once: true });
      sb.appendBuffer(data);
    });
  }

  remove(start, end) {
    const sb = this.sb;
    return new Promise((resolve) => {
      sb.addEventListener("updateend", resolve, { once: true });
      sb.remove(start, end);
    });
  }

  /** One SourceBuffer operation at a time; again while there is something to do. */
  async pump() {
    if (this.pumping) { this.again = true; return; }
    this.pumping = true;
    try {
      do {
        this.again = false;
        while (this.run?.ready && this.sb && this.ms?.readyState !== "closed" && await this.step()) { /* next */ }
      } while (this.again);
    } catch (err) {
      this.fail(err.message);
    } finally {
      this.pumping = false;
    }
    this.show();
  }

  covered(i) {
    const [first, frames] = this.meta[i];
    const fps = this.run.fps, a = first / fps, b = (first + frames) / fps, eps = 0.5 / fps;
    const r = this.sb.buffered;
    for (let k = 0; k < r.length; k++) if (r.start(k) <= a + eps && r.end(k) >= b - eps) return true;
    return false;
  }

  /** The next fragment to append: from the playing position forward, through AHEAD seconds, starting
   * at a keyframe (or right after what is buffered) so the browser can decode it. -1: none. */
  next(t) {
    const run = this.run, meta = this.meta, fps = run.fps;
    const first = Math.max(run.firstAvail, fragmentAt(meta, Math.floor(t * fps)));
    for (let j = Math.max(0, first); j < meta.length && meta[j] && meta[j][0] / fps <= t + AHEAD; j++) {
      if (this.skip.has(j) || this.covered(j)) continue;
      let k = j;
      while (k > run.firstAvail && meta[k - 1] && !meta[k][2] && !this.covered(k - 1)) k--;
      if (!meta[k][2] && !(k > 0 && meta[k - 1] && this.covered(k - 1))) { this.skip.add(j); continue; }
      return this.skip.has(k) ? -1 : k;
    }
    return -1;
  }

  async step() {
    const run = this.run, t = this.video.currentTime, r = this.sb.buffered;
    for (let k = 0; k < r.length; k++) {        // drop what is far from the playing position
      if (r.start(k) < t - BEHIND - 1) { await this.remove(r.start(k), Math.min(r.end(k), t - BEHIND)); return true; }
      if (r.end(k) > t + AHEAD + 10 && r.start(k) < r.end(k)) {
        const from = Math.max(r.start(k), t + AHEAD + 5);
        if (from < r.end(k)) { await this.remove(from, r.end(k)); return true; }
      }
    }
    const i = this.next(t);
    if (i >= 0) {
      let data;
      try {
        data = await this.fetch(run, `${i}.m4s`);
      } catch (err) {
        if (err.status !== 410 && err.status !== 404) throw err;
        this.skip.add(i);                       // dropped from the server's memory meanwhile
        run.firstAvail = Math.max(run.firstAvail, i + 1);
        return true;
      }
      if (this.run !== run) return false;
      try {
        if (this.ms.readyState === "ended") this.reopened = true;
        await this.append(data);
      } catch (err) {
        if (err.name !== "QuotaExceededError") throw err;
        await this.remove(0, Math.max(0, t - 2));
        return true;
      }
      if (!this.covered(i)) this.skip.add(i);
      this.afterAppend();
      return true;
    }
    const last = this.meta.length - 1;
    if (run.finished && last >= 0 && this.ms.readyState === "open" && !this.sb.updating &&
        (this.covered(last) || this.skip.has(last))) {
      this.ms.endOfStream();                   // the whole video: it plays to its end and stops there
    }
    return false;
  }

  afterAppend() {
    if (this.root.dataset.state === "waiting" || this.waitingForData) {
      const ahead = this.bufferedAhead();
      if (ahead >= LIVE_DELAY || this.run.finished) {
        this.waitingForData = false;
        if (!this.userPaused) this.video.play().catch(() => {});
      }
    }
  }

  bufferedAhead() {
    const r = this.sb?.buffered, t = this.video.currentTime;
    for (let k = 0; r && k < r.length; k++) if (r.start(k) <= t + 0.1 && r.end(k) > t) return r.end(k) - t;
    return 0;
  }

  /** Playback reached the newest data while the run goes on: wait for LIVE_DELAY seconds of it. */
  stalled() {
    if (!this.run || this.run.finished) return;
    this.waitingForData = true;
    this.show();
  }

  // ------------------------------------------------------------------ controls
  liveEdge() {
    return this.run ? this.run.frames / this.run.fps : 0;
  }

  keptStart() {
    const f = this.meta[this.run?.firstAvail ?? 0];
    return f ? f[0] / this.run.fps : 0;
  }

  liveStart() {
    return Math.max(this.keptStart(), this.liveEdge() - LIVE_DELAY);
  }

  play() {
    this.userPaused = false;
    this.video.play().catch(() => {});
    this.show();
  }

  pause() {
    this.userPaused = true;
    this.video.pause();
    this.show();
  }

  seek(t) {
    if (!this.run) return;
    this.video.currentTime = Math.min(Math.max(t, this.keptStart()), this.liveEdge());
    this.show();
    this.pump();
  }

  jumpToLive() {
    if (!this.run) return;
    this.seek(this.liveStart());
    this.play();
  }

  popOut() {
    if (this.overlay) return;
    const close = el("button", { title: "back to the node (Esc)", data: { pf: "close" } }, "✕");
    this.controls.append(close);
    close.onclick = () => this.popIn();
    this.overlay = el("div", { class: "pf-player-overlay", data: { pf: "overlay" } }, this.stage);
    this.overlay.style.setProperty("--pf-w", `${this.run?.width ?? 832}px`);
    this.overlay.addEventListener("click", (e) => { if (e.target === this.overlay) this.popIn(); });
    this.onKey = (e) => { if (e.key === "Escape") this.popIn(); };
    document.addEventListener("keydown", this.onKey);
    document.body.append(this.overlay);
    this.root.dataset.popped = "true";
  }

  popIn() {
    if (!this.overlay) return;
    this.controls.querySelector('[data-pf="close"]')?.remove();
    this.root.prepend(this.stage);
    this.overlay.remove();
    this.overlay = null;
    document.removeEventListener("keydown", this.onKey);
    this.root.dataset.popped = "false";
  }

  show() {
    const run = this.run;
    if (!run) return;
    const t = this.video.currentTime, edge = this.liveEdge(), kept = this.keptStart();
    this.scrub.min = String(kept);
    this.scrub.max = String(Math.max(kept, edge));
    if (!this.dragging) this.scrub.value = String(t);
    const behind = edge - t;
    const where = run.finished ? (run.stopped ? "stopped" : "done") :
      behind <= LIVE_DELAY + 1 ? "live" : `−${behind.toFixed(1)} s`;
    this.time.textContent = `${clock(t)} / ${clock(edge)} · ${where}`;
    this.playButton.textContent = this.video.paused ? "▶" : "❚❚";
    this.liveButton.dataset.on = String(!run.finished && behind <= LIVE_DELAY + 1 && !this.video.paused);
    if (this.root.dataset.state !== "error") {
      this.setState(this.userPaused ? "paused" : this.waitingForData ? "waiting" :
        this.video.ended ? "ended" : this.video.paused ? "paused" : "playing");
    }
    const keptNote = run.firstAvail > 0 ? ` · from ${clock(kept)} (older parts dropped from memory)` : "";
    if (this.root.dataset.state !== "error") {
      this.note.className = "pf-row pf-dim";
      this.note.textContent = `live playback: ${run.width}×${run.height}, ${run.fps} fps${keptNote}`;
    }
    this.root.dataset.edge = String(edge);
  }
}

function livePath(prompt, node, part) {
  return `/packforcing/live/${encodeURIComponent(prompt)}/${encodeURIComponent(node)}/${part}`;
}

/** Move our widget just above another of the node's widgets (the live view), so that stays last. */
function placeAbove(node, widget, name) {
  const list = node.widgets ?? [];
  const at = list.findIndex((w) => w.name === name);
  const ours = list.indexOf(widget);
  if (at < 0 || ours < 0 || ours < at) return;
  list.splice(ours, 1);
  list.splice(at, 0, widget);
}

function findNode(id) {
  if (id == null) return null;
  const nodes = allNodes(app);
  return nodes.find((n) => String(n.id) === String(id)) ??
    nodes.find((n) => String(n.id) === String(id).split(":").pop()) ?? null;
}

app.registerExtension({
  name: "PackForcing.Player",
  async setup() {
    api.addEventListener(EVENT, (e) => {
      const player = findNode(e.detail?.node)?.packforcingPlayer;
      if (!player) return;
      try {
        player.onMessage(e.detail);
      } catch (err) {             // a message of another shape (a newer or older server side)
        player.fail(`unexpected message (${err.message})`);
      }
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE.SAMPLER) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      this.packforcingPlayer = new LivePlayer(this);
      return r;
    };
    const removed = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.packforcingPlayer?.reset();
      return removed?.apply(this, arguments);
    };
  },
});
