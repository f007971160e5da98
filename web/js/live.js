// Live sampling view on the PackForcing Sampler node.
//
// The sampler pushes a `packforcing.progress` websocket message (nodes/progress.py) at the start of
// every chunk, after every committed chunk and at most every 0.25 s in between; nothing polls. The
// view shows chunk i of N, the step, seconds per chunk, ETA, the K/V bytes the cache holds, a
// timeline of the video (sink / mid blocks / recent / dropped / the chunk being generated) with the
// mid blocks the current chunk attends to (its top-k) highlighted, and a preview of the newest
// latent frame. The preview is a linear latent -> RGB approximation computed on the server (no VAE
// decode), and it says so.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { COLORS, NODE, addFixedWidget, allNodes, count, duration, el, fitNode, findNode, gb, injectStyle } from "./common.js";

export const EVENT = "packforcing.progress";
const WIDGET = "packforcing_live";
const IDLE_HEIGHT = 17;
const LEGEND_ROW = 13;
const FULL_HEIGHT = 166 + 2 * LEGEND_ROW;   // 3 rows + timeline + legend (3 rows) + preview
const VIDEO_ROW = 16;         // the link to the video written as it goes
const MIN_WIDTH = 236;        // + the frontend's widget margins: nodes of ~340 px

/** Segments [start, end, kind] of the timeline, in latent frames; pure, for tests too. */
export function segments(t, total) {
  const done = t.frames_done;
  const end = Math.max(total ?? 0, done, t.generating ? t.generating[1] : 0);
  const kept = [];
  if (t.sink[1] > t.sink[0]) kept.push([t.sink[0], t.sink[1], "sink"]);
  const selected = new Set(t.selected ?? []);
  for (const [index, first, frames] of t.mid ?? []) {
    kept.push([first, first + frames, selected.has(index) ? "selected" : "mid"]);
  }
  if (t.recent[1] > t.recent[0]) kept.push([t.recent[0], t.recent[1], "recent"]);
  kept.sort((a, b) => a[0] - b[0]);
  const out = [];
  let at = 0;
  for (const s of kept) {
    if (s[0] > at) out.push([at, s[0], "dropped"]);
    out.push(s);
    at = Math.max(at, s[1]);
  }
  if (done > at) out.push([at, done, "dropped"]);
  if (t.generating) out.push([t.generating[0], t.generating[1], "generating"]);
  const last = t.generating ? t.generating[1] : done;
  if (end > last) out.push([last, end, "future"]);
  return out;
}

/** Legend row of a run with a prompt schedule: "prompt i / n" (blend %), and what the marks mean. */
export function promptLabel(p) {
  const blend = p.blend < 1 ? ` (${Math.round(p.blend * 100)}%)` : "";
  const title = "active prompt of the schedule; white marks: switches, red: scene cuts";
  return el("span", { class: "pf-wide", title },
    el("i", { style: "background:#fff" }), "prompt ",
    el("span", { class: "pf-num", data: { pf: "prompt" } }, `${p.active} / ${p.count}`), blend,
    el("span", { class: "pf-dim" }, " · marks: switches, red: cuts"));
}

/** Legend cells, column by column: latent frames on the left, mid blocks on the right; null: an empty
 * cell (the grid keeps its place). */
export function legendItems(segs, t) {
  const frames = (k) => segs.filter((s) => s[2] === k).reduce((n, s) => n + s[1] - s[0], 0);
  const nMid = (t.mid ?? []).length, nSel = (t.selected ?? []).length, dropped = frames("dropped");
  const lf = (n) => `${count(n)} latent frame${n === 1 ? "" : "s"}`;
  const blocks = (n) => `${count(n)} block${n === 1 ? "" : "s"}`;
  return [
    ["sink", `sink ${lf(frames("sink"))}`], ["recent", `recent ${lf(frames("recent"))}`],
    dropped ? ["dropped", `dropped ${lf(dropped)}`] : null,
    nMid ? ["mid", `mid ${blocks(nMid - nSel)}`] : null, nMid ? ["selected", `top-k ${blocks(nSel)}`] : null,
    t.generating ? ["generating", "now"] : null,
  ];
}

class LiveView {
  constructor(node) {
    injectStyle();
    this.node = node;
    this.state = "idle";
    this.prompt = null;
    this.root = el("div", { class: "pf-box pf-live", data: { state: "idle" } });
    this.status = el("div", { class: "pf-row pf-dim" }, "live view: chunks, cache timeline, preview when it runs");
    this.timing = el("div", { class: "pf-row" });
    this.memory = el("div", { class: "pf-row" });
    this.canvas = el("canvas", { class: "pf-timeline", height: "14" });
    this.legend = el("div", { class: "pf-legend pf-dim" });
    this.img = el("img", { alt: "latent preview" });
    this.caption = el("div", { class: "pf-caption pf-dim" });
    this.preview = el("div", { class: "pf-preview" }, this.img, this.caption);
    this.details = el("div", {}, this.timing, this.memory, this.canvas, this.legend, this.preview);
    this.details.hidden = true;
    this.img.hidden = true;
    this.caption.textContent = "a preview of the newest latent frame appears after each chunk";
    this.root.append(this.status, this.details);
    const height = () => (this.state === "idle" ? IDLE_HEIGHT :
      FULL_HEIGHT + (this.videoLink ? VIDEO_ROW : 0) + (this.hasPrompts ? LEGEND_ROW : 0));
    this.widget = addFixedWidget(node, WIDGET, this.root, height,
      MIN_WIDTH);
  }

  setState(state) {
    const grow = this.state === "idle" && state !== "idle";
    this.state = state;
    this.root.dataset.state = state;
    if (grow) {
      this.details.hidden = false;
      fitNode(this.node);
    }
  }

  update(d) {
    if (d.prompt_id !== this.prompt) {       // a new run: start over
      this.prompt = d.prompt_id;
      this.img.hidden = true;
    }
    if (d.phase === "stopped") return this.stopped(d);
    this.status.title = this.timing.title = "";
    this.setState(d.phase === "chunk_done" && d.chunk === d.chunks ? "done" : "running");
    const last = d.phase === "chunk_done" && d.chunk === d.chunks;
    const step = last ? "" : d.phase === "chunk_done" ? " · committed" : ` · step ${d.step} / ${d.steps}`;
    this.status.className = "pf-row";
    this.status.replaceChildren(last ? "done: " : "", "chunk ",
      el("span", { class: "pf-num", data: { pf: "chunk" } }, `${d.chunk} / ${d.chunks}`),
      el("span", { class: "pf-dim" }, `${step} · video ${count(d.frames_done)} / ${count(d.total_frames)} latent frames`));
    this.timing.replaceChildren(
      el("span", { class: "pf-num", data: { pf: "spc" } }, d.sec_per_chunk == null ? "–" : duration(d.sec_per_chunk)),
      " / chunk · ETA ", el("span", { class: "pf-num", data: { pf: "eta" } }, duration(d.eta)),
      el("span", { class: "pf-dim" }, ` · elapsed ${duration(d.elapsed)}`));
    const kv = d.kv;
    this.memory.replaceChildren("KV ", el("span", { class: "pf-num", data: { pf: "kv" } }, kv ? gb(kv.total_bytes) : "–"),
      el("span", { class: "pf-dim" }, kv ? ` · buffer ${gb(kv.buffer_bytes)}${kv.bank_bytes ? ` + mid bank ${gb(kv.bank_bytes)}` : ""}` : ""));
    this.root.dataset.chunk = String(d.chunk);
    this.root.dataset.chunks = String(d.chunks);
    this.draw(d.timeline, d.total_frames, d.prompts);
    this.showVideo(d.video);
    if (d.preview) {
      this.img.src = d.preview;
      this.img.hidden = false;
      this.caption.replaceChildren(`latent frame ${d.preview_frame} (newest chunk): linear latent→RGB preview, `,
        "an approximation, not a VAE decode");
    }
    this.node.setDirtyCanvas?.(true, false);
  }

  /** The file the sampler writes as it goes: a link that plays what is rendered so far. */
  showVideo(v) {
    if (!v) return;
    const q = new URLSearchParams({ filename: v.filename, subfolder: v.subfolder ?? "", type: v.type ?? "output" });
    const href = api.apiURL(`/view?${q}`);
    if (this.videoLink?.getAttribute("href") === href) return;
    const link = el("a", { href, target: "_blank", class: "pf-row", style: "display:block;color:#8ab4f8",
      data: { pf: "video" } }, `▶ ${v.filename} (plays what is rendered so far)`);
    if (this.videoLink) this.videoLink.replaceWith(link);
    else this.memory.after(link);
    this.videoLink = link;
    fitNode(this.node);
  }

  draw(t, total, prompts) {
    if (!t) return;
    const segs = segments(t, total);
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(50, c.clientWidth || this.root.clientWidth - 12 || 200);
    c.width = Math.round(width * ratio);
    c.height = Math.round(14 * ratio);
    const ctx = c.getContext("2d");
    ctx.scale(ratio, ratio);
    const end = Math.max(1, segs.length ? segs[segs.length - 1][1] : 1);
    const x = (f) => (f / end) * width;
    for (const [a, b, kind] of segs) {
      ctx.fillStyle = COLORS[kind];
      const x0 = x(a), w = Math.max(1, x(b) - x0);
      ctx.fillRect(x0, 0, w, 14);
      if (kind === "mid" || kind === "selected") {   // block borders, so neighbours stay apart
        ctx.fillStyle = "rgba(0,0,0,0.55)";
        ctx.fillRect(x0, 0, Math.min(1, w), 14);
      }
    }
    for (const [frame, n, cut] of prompts?.switches ?? []) {     // prompt switches: a mark each
      ctx.fillStyle = cut === "none" ? "#fff" : "#f55";
      ctx.fillRect(Math.min(width - 2, x(frame)), 0, 2, 14);
    }
    this.root.dataset.switches = JSON.stringify(prompts?.switches ?? []);
    this.root.dataset.activePrompt = prompts ? String(prompts.active) : "";
    const item = (i) => (i ? el("span", { data: { pf: i[0] } }, el("i", { style: `background:${COLORS[i[0]]}` }), i[1])
      : el("span"));
    this.legend.replaceChildren(...legendItems(segs, t).map(item), ...(prompts ? [promptLabel(prompts)] : []));
    const block = (t.mid ?? [])[0]?.[2];
    this.legend.title = "sink / recent / dropped: latent frames of the video (1 latent frame = 4 frames); " +
      `mid / top-k: compressed blocks${block ? ` of ${block} latent frames` : ""}, ` +
      "top-k: the ones the current chunk attends to";
    if (!!prompts !== !!this.hasPrompts) {        // the prompt row comes with the first schedule message
      this.hasPrompts = !!prompts;
      fitNode(this.node);
    }
    this.root.dataset.segments = JSON.stringify(segs);
    this.root.dataset.selected = (t.selected ?? []).join(",");
  }

  stop(why) {
    if (this.state !== "running") return;
    this.setState("stopped");
    this.status.className = "pf-row pf-warn";
    this.status.replaceChildren(`stopped (${why}) at chunk ${this.root.dataset.chunk} / ${this.root.dataset.chunks}`);
    this.clearEta();
  }

  /** The sampler's own word after a cancel or an error: what was saved and how to continue. */
  stopped(d) {
    this.setState("stopped");
    this.root.dataset.saved = String(!!d.saved);
    const what = d.saved ? `progress saved (${count(d.frames_done)} / ${count(d.total_frames)} latent frames)` :
      "nothing saved";
    this.status.className = "pf-row pf-warn";
    this.status.replaceChildren(el("span", { data: { pf: "stopped" } }, `stopped: ${what}`));
    this.status.title = `stopped: ${what}; ${d.hint}`;
    this.timing.replaceChildren(el("span", { data: { pf: "hint" } }, String(d.hint ?? "")));
    this.timing.title = String(d.hint ?? "");
  }

  clearEta() {               // a stopped run has no ETA
    const eta = this.timing.querySelector('[data-pf="eta"]');
    if (eta) eta.textContent = "–";
  }

  /** No live messages came (an older server-side pack) but the run finished: show its summary. */
  summary(report) {
    if (this.state !== "idle" || !report) return;
    this.setState("done");
    this.status.className = "pf-row";
    this.status.replaceChildren(`done: ${count(report.frames)} frames (${count(report.latent_frames)} latent)`);
    if (report.kv_bytes) this.memory.replaceChildren(`KV ${gb(report.kv_bytes.total_bytes)}`);
    this.draw(report, report.frames_done);
  }
}

app.registerExtension({
  name: "PackForcing.Live",
  async setup() {
    api.addEventListener(EVENT, (e) => {
      const d = e.detail;
      const view = findNode(app, d?.node)?.packforcingLive;
      if (!view) return;
      try {
        view.update(d);
      } catch (err) {               // a message of another shape (a newer or older server side)
        view.status.className = "pf-row pf-dim";
        view.status.textContent = `live view: unexpected message (${err.message})`;
      }
    });
    const stopAll = (why) => () => {
      for (const n of allNodes(app)) n.packforcingLive?.stop(why);
    };
    api.addEventListener("execution_interrupted", stopAll("interrupted"));
    api.addEventListener("execution_error", stopAll("error"));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE.SAMPLER) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      this.packforcingLive = new LiveView(this);
      fitNode(this);
      return r;
    };
    const configure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = configure?.apply(this, arguments);
      fitNode(this);
      return r;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = executed?.apply(this, arguments);
      this.packforcingLive?.summary(output?.packforcing?.[0]);
      return r;
    };
  },
});
