// Live playback on the PackForcing Sampler node: the video of the running prompt at its full resolution
// and frame rate, a few seconds behind generation, with a scrubber over what exists so far, pause,
// "jump to live" and a full-size view.
//
// Feed (nodes/live_player.py): the sampler decodes every committed chunk and cuts it into one fMP4
// fragment; a websocket message `packforcing.live_video` announces the run ("start": codec, size),
// each fragment ("fragment": index, first frame, frames, keyframe) and the end ("end"). A Feeder
// (feeder.js) fetches the init segment and the fragments from GET /packforcing/live/{prompt}/{node}/...
// and appends them to a Media Source Extensions SourceBuffer, keeping only a window around the playing
// position, so an hour-long run stays within the browser's buffer quota; scrubbing elsewhere fetches
// that part again.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { NODE, addFixedWidget, el, fitNode, findNode, injectStyle } from "./common.js";
import { Feeder } from "./feeder.js";

export const EVENT = "packforcing.live_video";
const WIDGET = "packforcing_player";
const LIVE_WIDGET = "packforcing_live";       // live.js: the player sits just above it
const LIVE_DELAY = 2;        // seconds behind the newest frame: at the start, after "live", after a stall
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
    this.feed = null;
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
    this.popButton = el("button", { title: "full-size view", data: { pf: "pop" } }, "full");
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
    const position = () => this.feed?.send({ type: "time", t: v.currentTime });
    v.addEventListener("timeupdate", () => { this.show(); position(); });
    v.addEventListener("seeking", position);
    v.addEventListener("waiting", () => this.stalled());
    v.addEventListener("seeked", () => this.checkWaiting());
    v.addEventListener("canplay", () => this.checkWaiting());
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
    const run = this.run;
    if (d.phase === "fragment") {
      run.meta[d.index] = [d.first_frame, d.frames, d.key];
      run.firstAvail = d.first_kept;
      run.frames = Math.max(run.frames, d.first_frame + d.frames);
      this.feed?.send({ type: "fragment", index: d.index, meta: run.meta[d.index], firstAvail: run.firstAvail });
    } else if (d.phase === "end") {
      Object.assign(run, { finished: true, stopped: d.stopped, frames: d.frames });
      this.feed?.send({ type: "end" });
      this.checkWaiting();
    }
    this.show();
  }

  unavailable(d) {
    this.reset();
    this.setState("unavailable");
    this.note.className = "pf-row pf-dim";
    this.note.textContent = `live playback: ${d.reason}`;
  }

  reset() {
    this.popIn();
    this.run = null;
    this.feed?.close();
    this.feed = null;
    this.video.removeAttribute("src");
    this.video.load();
  }

  /** A new run (or one joined late, from its manifest): a fresh MediaSource and its feeder. */
  start(d, manifest = null) {
    this.reset();
    const run = this.run = { prompt: d.prompt_id, node: d.node, mime: d.mime, width: d.width, height: d.height,
      fps: d.fps, frames: 0, finished: false, stopped: false, firstAvail: 0, meta: [] };
    if (manifest) {
      Object.assign(run, { meta: manifest.fragments.slice(), frames: manifest.frames, finished: manifest.finished,
        stopped: manifest.stopped, firstAvail: manifest.first_kept });
    }
    this.userPaused = false;
    this.waitingForData = true;
    this.reveal();
    this.setState("waiting");
    this.note.className = "pf-row pf-dim";
    this.note.textContent = `live playback: ${d.width}×${d.height}, ${d.fps} fps`;
    if (!window.MediaSource || !MediaSource.isTypeSupported(d.mime)) {
      return this.fail(`this browser cannot play ${d.mime} through Media Source Extensions`);
    }
    const t = manifest ? this.liveStart() : 0;           // joined late: a few seconds behind live
    const base = new URL(api.apiURL(livePath(run.prompt, run.node, "")), location.href).href;
    this.feed = openFeed(this.video, { base, mime: d.mime, fps: d.fps, meta: run.meta, firstAvail: run.firstAvail,
      finished: run.finished, t }, (m) => this.fromFeed(run, m));
    if (t) this.video.currentTime = t;
  }

  fromFeed(run, m) {
    if (run !== this.run) return;
    if (m.type === "error") return this.fail(m.message);
    if (m.type === "dropped") run.firstAvail = Math.max(run.firstAvail, m.firstAvail);
    if (m.type === "appended") this.afterAppend();
    this.show();
  }

  /** Messages of a run this page did not see start (opened or reloaded while it runs): its manifest. */
  async attach(prompt, node) {
    if (this.attaching === prompt) return;
    this.attaching = prompt;
    try {
      const r = await api.fetchApi(livePath(prompt, node, "manifest"));
      if (!r.ok) return;
      const m = await r.json();
      this.start({ prompt_id: prompt, node, mime: m.mime, width: m.width, height: m.height, fps: m.fps }, m);
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

  afterAppend() {
    this.checkWaiting();
    clearTimeout(this.recheck);     // and once more: the element's buffered ranges may follow a moment later
    this.recheck = setTimeout(() => this.checkWaiting(), 150);
  }

  /** Waiting for data: play again once LIVE_DELAY seconds are buffered ahead (any, when the run ended). */
  checkWaiting() {
    if (!this.waitingForData || !this.run) return;
    const ahead = this.bufferedAhead();
    if (ahead >= LIVE_DELAY - 0.25 || (this.run.finished && ahead > 0)) {
      this.waitingForData = false;
      if (!this.userPaused) this.video.play().catch(() => {});
    }
    this.show();
  }

  bufferedAhead() {
    const r = this.video.buffered, t = this.video.currentTime;
    for (let k = 0; k < r.length; k++) if (r.start(k) <= t + 0.1 && r.end(k) > t) return r.end(k) - t;
    return 0;
  }

  /** Playback reached the newest data while the run goes on: wait for LIVE_DELAY seconds of it. */
  stalled() {
    if (!this.run || this.run.finished || this.video.seeking || this.bufferedAhead() > 0.2) return;   // a seek's own wait
    this.waitingForData = true;
    this.video.pause();               // not the user's pause: resumes by itself (checkWaiting)
    this.show();
  }

  // ------------------------------------------------------------------ controls
  liveEdge() {
    return this.run ? this.run.frames / this.run.fps : 0;
  }

  keptStart() {
    const f = this.run?.meta[this.run.firstAvail];
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
    this.root.dataset.edge = String(edge);
    if (this.root.dataset.state === "error") return;
    this.setState(this.userPaused ? "paused" : this.waitingForData ? "waiting" :
      this.video.ended ? "ended" : this.video.paused ? "paused" : "playing");
    const keptNote = run.firstAvail > 0 ? ` · from ${clock(kept)} (older parts dropped from memory)` : "";
    this.note.className = "pf-row pf-dim";
    this.note.textContent = `live playback: ${run.width}×${run.height}, ${run.fps} fps${keptNote}`;
  }
}

/** The MediaSource of a run (a blob: URL on the <video>) and its Feeder. Returns {send(message), close()}. */
function openFeed(video, init, onMessage) {
  const ms = new MediaSource();
  const url = URL.createObjectURL(ms);
  video.src = url;
  const feeder = new Feeder(ms, init, onMessage);
  return { ms, send: (m) => feeder[m.type]?.(m), close: () => { feeder.close(); URL.revokeObjectURL(url); } };
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

// The server decodes a run for playback only when the page that queued it shows the player: tell it
// this page's websocket client id (again after a reconnect, which may bring a new one).
let watching = null;
function watch() {
  const id = api.clientId;
  if (!id || id === watching) return;
  watching = id;
  api.fetchApi("/packforcing/live/watch", { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify({ client_id: id }) })
    .then((r) => { if (!r.ok) watching = null; }, () => { watching = null; });
}

app.registerExtension({
  name: "PackForcing.Player",
  async setup() {
    watch();
    api.addEventListener("status", watch);                 // the first one comes with the client id
    api.addEventListener("reconnected", () => { watching = null; watch(); });
    api.addEventListener(EVENT, (e) => {
      const player = findNode(app, e.detail?.node)?.packforcingPlayer;
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
