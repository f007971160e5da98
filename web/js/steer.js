// Steer the PackForcing Sampler while it plays: the next prompt (a prompt-embeddings file, text typed
// and encoded by the CLIP connected to the sampler, or the prompt in effect for a cut), its transition,
// re-cache and cut, at the next chunk or a chosen one; pause and resume between chunks.
//
// The controls talk to POST /packforcing/steer (nodes/steer_api.py); the server pushes the run's state
// as `packforcing.steer` (nodes/steering.py): the chunk, pending and applied changes. Every applied
// change is recorded as the Prompt Schedule entry of its chunk, and after the run "keep these changes"
// writes the record into the workflow (Prompt Schedule nodes with Load Prompt Embeddings or
// CLIPTextEncode for their prompts, chained in time order into the sampler's positive), so queueing it
// again with the same seed renders the same video.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { NODE, addFixedWidget, el, findNode, findWidget, fitNode, injectStyle } from "./common.js";

export const EVENT = "packforcing.steer";
export const ROUTE = "/packforcing/steer";
const WIDGET = "packforcing_steer";
const SCHEDULE = "PackForcingPromptSchedule";
const LOAD_EMBEDS = "PackForcingLoadPromptEmbeddings";
const ROW = 15, CONTROL_ROW = 23, LIST_ROWS = 4;
const MIN_WIDTH = 236;
const ENDED = ["finished", "interrupted", "failed"];

/** One line for a change record: "chunk 3 (2 s): b.safetensors · blend 2 · no re-cache · cut sink". */
export function describe(c) {
  const p = c.prompt ?? {};
  const what = p.text !== undefined ? `“${p.text}”` : p.embeddings !== undefined ? p.embeddings :
    p.same ? `same prompt${p.same.chunk ? ` (of chunk ${p.same.chunk})` : ""}` : "?";
  const parts = [`chunk ${c.chunk} (${c.seconds} s): ${what}`];
  if (c.transition) parts.push(`blend ${c.transition}`);
  if (!c.recache) parts.push("no re-cache");
  if (c.cut && c.cut !== "none") parts.push(`cut ${c.cut}`);
  return parts.join(" · ");
}

function inputOrigin(node, name) {
  const slot = node.findInputSlot?.(name) ?? node.inputs?.findIndex((i) => i.name === name);
  if (slot == null || slot < 0) return null;
  const link = node.getInputLink?.(slot);
  if (!link) return null;
  const origin = node.graph.getNodeById(link.origin_id);
  return origin ? { node: origin, slot: link.origin_slot } : null;
}

function connect(from, node, name) {
  from.node.connect(from.slot, node, node.findInputSlot(name));
}

function setWidget(node, name, value) {
  const w = findWidget(node, name);
  if (!w) throw new Error(`${node.comfyClass} has no widget ${name}`);
  w.value = value;
}

/** The prompt schedule feeding a sampler's positive: the output it starts from (a plain conditioning,
 *  or a first Prompt Schedule node without a schedule input), the 0 s prompt's source, and the
 *  scheduled entries after it. */
export function scheduleOf(sampler) {
  const entries = [];
  let at = inputOrigin(sampler, "positive");
  if (!at) throw new Error("the sampler's positive input is not connected");
  while (at.node.comfyClass === SCHEDULE) {
    const before = inputOrigin(at.node, "schedule");
    if (!before) break;                                   // a first entry: it is the 0 s prompt
    const seconds = findWidget(at.node, "start_seconds")?.value;
    if (typeof seconds !== "number") throw new Error(`Prompt Schedule #${at.node.id}: start_seconds is not a widget value`);
    entries.unshift({ seconds, node: at.node, cond: inputOrigin(at.node, "conditioning") });
    at = before;
  }
  const rootCond = at.node.comfyClass === SCHEDULE ? inputOrigin(at.node, "conditioning") : at;
  return { root: at, rootCond, entries };
}

/** The seed of the steered run, fixed: the frontend changes it after each queue ("control after generate"). */
function fixSeed(sampler, seed) {
  if (seed == null) return;
  setWidget(sampler, "seed", seed);
  const control = findWidget(sampler, "control_after_generate");
  if (control) control.value = "fixed";
}

/** Write applied changes into the workflow (and the run's seed, fixed); returns the Prompt Schedule
 *  nodes it added. */
export function keepChanges(sampler, changes, secondsPerChunk, seed = null) {
  const graph = sampler.graph;
  const { root, rootCond, entries } = scheduleOf(sampler);
  const chunkOf = (seconds) => Math.round(seconds / secondsPerChunk) + 1;
  const sources = [{ chunk: 1, cond: rootCond }, ...entries.map((e) => ({ chunk: chunkOf(e.seconds), cond: e.cond }))];
  const clip = inputOrigin(sampler, "clip");
  const x = sampler.pos[0] - 760;
  let y = sampler.pos[1];
  const place = (node, dx) => {
    node.pos = [x + dx, y];
    graph.add(node);
    return node;
  };
  const added = [];
  for (const c of [...changes].sort((a, b) => a.chunk - b.chunk)) {
    let cond;
    if (c.prompt.embeddings !== undefined) {
      const n = place(LiteGraph.createNode(LOAD_EMBEDS), 0);
      setWidget(n, "embeddings", c.prompt.embeddings);
      cond = { node: n, slot: 0 };
    } else if (c.prompt.text !== undefined) {
      if (!clip) throw new Error("a typed prompt needs the CLIP connected to the sampler's clip input");
      const n = place(LiteGraph.createNode("CLIPTextEncode"), 0);
      setWidget(n, "text", c.prompt.text);
      connect(clip, n, "clip");
      cond = { node: n, slot: 0 };
    } else {
      cond = sources.find((s) => s.chunk === c.prompt.same.chunk)?.cond;
      if (!cond) throw new Error(`chunk ${c.chunk} repeats the prompt of chunk ${c.prompt.same.chunk}, which is not in the workflow`);
    }
    const ps = place(LiteGraph.createNode(SCHEDULE), 380);
    setWidget(ps, "start_seconds", c.seconds);
    setWidget(ps, "transition_chunks", c.transition);
    setWidget(ps, "recache", c.recache);
    setWidget(ps, "cut", c.cut);
    connect(cond, ps, "conditioning");
    entries.push({ seconds: c.seconds, node: ps, cond });
    sources.push({ chunk: c.chunk, cond });
    added.push(ps);
    y += 190;
  }
  let prev = root;
  for (const e of entries.sort((a, b) => a.seconds - b.seconds)) {
    connect(prev, e.node, "schedule");
    prev = { node: e.node, slot: 0 };
  }
  connect(prev, sampler, "positive");
  fixSeed(sampler, seed);
  graph.setDirtyCanvas?.(true, true);
  graph.change?.();
  return added;
}

const STYLE = `
.pf-steer .pf-ctl { display: flex; gap: 4px; align-items: center; height: 21px; margin-top: 2px; white-space: nowrap; }
.pf-steer input, .pf-steer select, .pf-steer button { font: 11px ui-sans-serif, system-ui, sans-serif; height: 19px;
  box-sizing: border-box; color: var(--input-text, #ddd); background: var(--comfy-menu-bg, #353535);
  border: 1px solid var(--border-color, #4e4e4e); border-radius: 4px; padding: 0 4px; min-width: 0; }
.pf-steer button { cursor: pointer; }
.pf-steer button:disabled { opacity: 0.5; cursor: default; }
.pf-steer input[type=number] { width: 52px; }
.pf-steer input[type=checkbox] { height: auto; }
.pf-steer [data-pf=text] { flex: 1; }
.pf-steer [data-pf=source] { max-width: 45%; }
.pf-steer .pf-list { overflow-y: auto; max-height: ${LIST_ROWS * 13}px; }
.pf-steer [hidden] { display: none !important; }
`;

class SteerPanel {
  constructor(node) {
    injectStyle();
    if (!document.getElementById("packforcing-steer-style")) {
      document.head.append(el("style", { id: "packforcing-steer-style" }, STYLE));
    }
    this.node = node;
    this.run = null;              // the server's last state of the run on this node
    this.kept = false;
    const $ = (tag, attrs, ...kids) => el(tag, attrs, ...kids);
    this.status = $("div", { class: "pf-row pf-dim", data: { pf: "steer-status" } },
      "steer: change the prompt or pause while it runs");
    this.source = $("select", { data: { pf: "source" }, title: "the next prompt" });
    this.text = $("input", { type: "text", data: { pf: "text" }, placeholder: "type the next prompt" });
    this.chunk = $("input", { type: "number", min: "1", step: "1", data: { pf: "chunk" }, placeholder: "next",
      title: "the chunk it takes effect at (empty: the next one)" });
    this.transition = $("input", { type: "number", min: "0", max: "64", step: "1", value: "0",
      data: { pf: "transition" }, title: "blend the new prompt in over this many chunks" });
    this.recache = $("input", { type: "checkbox", data: { pf: "recache" } });
    this.recache.checked = true;
    this.cut = $("select", { data: { pf: "cut" }, title: "scene cut at the switch: sink keeps only the sink, all starts a new shot" },
      ...["none", "sink", "all"].map((v) => $("option", { value: v }, v)));
    this.applyBtn = $("button", { data: { pf: "apply" }, title: "queue this change for its chunk" }, "apply");
    this.cutBtn = $("button", { data: { pf: "cut-here" }, title: "a scene cut at that chunk, same prompt (cut: sink unless all is chosen)" }, "cut here");
    this.pauseBtn = $("button", { data: { pf: "pause" } }, "pause");
    this.keepBtn = $("button", { data: { pf: "keep" }, title: "add these changes to the workflow as Prompt Schedule nodes" },
      "keep these changes");
    this.message = $("span", { class: "pf-dim", data: { pf: "steer-message" } });
    this.list = $("div", { class: "pf-list pf-dim", data: { pf: "changes" } });
    this.controls = $("div", {},
      $("div", { class: "pf-ctl" }, this.source, this.text),
      $("div", { class: "pf-ctl" }, "at", this.chunk, "blend", this.transition,
        $("label", { title: "re-cache the history under the new prompt" }, this.recache, "re-cache"), "cut", this.cut),
      $("div", { class: "pf-ctl" }, this.applyBtn, this.cutBtn, this.pauseBtn, this.message));
    this.keepRow = $("div", { class: "pf-ctl" }, this.keepBtn);
    this.root = $("div", { class: "pf-box pf-steer", data: { state: "idle" } }, this.status,
      this.controls, this.list, this.keepRow);
    for (const input of [this.text, this.chunk, this.transition]) {
      input.addEventListener("keydown", (e) => e.stopPropagation());     // typing is not a canvas shortcut
    }
    this.text.addEventListener("keydown", (e) => { if (e.key === "Enter") this.apply(); });
    this.source.addEventListener("change", () => this.showText());
    this.applyBtn.addEventListener("click", () => this.apply());
    this.cutBtn.addEventListener("click", () => this.apply(true));
    this.pauseBtn.addEventListener("click", () => this.togglePause());
    this.keepBtn.addEventListener("click", () => this.keep());
    this.show("idle");
    this.widget = addFixedWidget(node, WIDGET, this.root, () => this.height(), MIN_WIDTH);
  }

  height() {
    const state = this.root.dataset.state;
    const rows = Math.min(LIST_ROWS, this.list.childElementCount);
    return ROW + (state === "running" ? 3 * CONTROL_ROW : 0) + rows * 13 + (state === "ended" ? CONTROL_ROW : 0) + 2;
  }

  show(state) {
    const changed = this.root.dataset.state !== state;
    this.root.dataset.state = state;
    this.controls.hidden = state !== "running";
    this.keepRow.hidden = state !== "ended";
    if (changed) fitNode(this.node);
  }

  showText() {
    this.text.hidden = this.source.value !== "text";
  }

  async options(d) {
    const keep = this.source.value;
    let files = [];
    try {
      const r = await api.fetchApi(`${ROUTE}?prompt_id=${encodeURIComponent(d.prompt_id)}&node=${encodeURIComponent(d.node)}`);
      if (r.ok) files = (await r.json()).embeddings ?? [];
    } catch { /* the list stays empty: text and "same" still work */ }
    const opts = [];
    if (d.text) opts.push(el("option", { value: "text" }, "type a prompt (CLIP)"));
    for (const f of files) opts.push(el("option", { value: `file:${f}` }, f));
    opts.push(el("option", { value: "same" }, "same prompt"));
    this.source.replaceChildren(...opts);
    if ([...this.source.options].some((o) => o.value === keep)) this.source.value = keep;
    this.showText();
  }

  update(d) {
    const fresh = this.run?.prompt_id !== d.prompt_id;
    this.run = d;
    this.root.dataset.node = String(this.node.id);
    this.root.dataset.promptId = d.prompt_id;
    this.root.dataset.runState = d.state;
    this.root.dataset.chunk = String(d.chunk);
    this.root.dataset.held = String(d.held_before ?? "");
    this.root.dataset.changes = JSON.stringify(d.changes);
    this.root.dataset.pending = JSON.stringify(d.pending);
    if (fresh) {
      this.kept = false;
      this.message.textContent = "";
      if (!ENDED.includes(d.state)) this.options(d);
    }
    const rows = [...d.changes.map((c) => el("div", { class: "pf-row", data: { pf: "change" } }, "✓ ", describe(c))),
      ...d.pending.map((c) => el("div", { class: "pf-row", data: { pf: "pending" } }, "… ", describe(c))),
      ...d.errors.map((e) => el("div", { class: "pf-row pf-warn" }, e))];
    this.list.replaceChildren(...rows);
    if (ENDED.includes(d.state)) return this.ended(d);
    const held = d.state === "paused" ? `paused before chunk ${d.held_before}` : d.state === "pausing" ? "pausing after this chunk…" : "playing";
    this.status.className = d.state === "running" ? "pf-row" : "pf-row pf-warn";
    this.status.textContent = `steer: ${held} · chunk ${d.chunk} / ${d.chunks}`;
    this.status.title = d.next_chunk ? `the earliest chunk a change can take: ${d.next_chunk} ` +
      `(${(d.next_chunk - 1) * d.seconds_per_chunk} s into this run)` : "the last chunk is being generated";
    this.pauseBtn.textContent = d.state === "running" ? "pause" : "resume";
    const open = d.next_chunk != null;
    this.applyBtn.disabled = this.cutBtn.disabled = !open;
    this.show("running");
    fitNode(this.node);
  }

  ended(d) {
    this.status.className = "pf-row";
    if (!d.changes.length) {
      this.status.textContent = `steer: the run ${d.state}, no changes`;
      this.show("idle");
      return;
    }
    this.status.textContent = this.kept ? this.status.textContent :
      `steer: the run ${d.state} with ${d.changes.length} change${d.changes.length > 1 ? "s" : ""}`;
    this.keepBtn.disabled = this.kept;
    this.show("ended");
    fitNode(this.node);
  }

  async post(body) {
    const run = this.run;
    const r = await api.fetchApi(ROUTE, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt_id: run.prompt_id, node: run.node, ...body }) });
    let answer = {};
    try { answer = await r.json(); } catch { answer = { error: `HTTP ${r.status}` }; }
    return { ok: r.ok, answer };
  }

  say(text, warn = false) {
    this.message.className = warn ? "pf-warn" : "pf-dim";
    this.message.textContent = text;
    this.message.title = text;
  }

  async apply(cutHere = false) {
    if (!this.run) return;
    const v = this.source.value;
    const prompt = cutHere || v === "same" ? { same: true } : v === "text" ? { text: this.text.value } :
      { embeddings: v.slice("file:".length) };
    const body = { prompt, transition: Number(this.transition.value || 0), recache: this.recache.checked,
      cut: cutHere && this.cut.value === "none" ? "sink" : this.cut.value };
    if (this.chunk.value !== "") body.chunk = Number(this.chunk.value);
    const { ok, answer } = await this.post(body);
    if (!ok) return this.say(answer.error ?? "refused", true);
    this.say(`queued for chunk ${answer.change.chunk}`);
    this.chunk.value = "";
    if (v === "text" && !cutHere) this.text.value = "";
  }

  async togglePause() {
    if (!this.run) return;
    const { ok, answer } = await this.post({ action: this.run.state === "running" ? "pause" : "resume" });
    if (!ok) this.say(answer.error ?? "refused", true);
  }

  keep() {
    const d = this.run;
    if (!d || this.kept) return;
    try {
      const added = keepChanges(this.node, d.changes, d.seconds_per_chunk, d.seed);
      this.kept = true;
      this.keepBtn.disabled = true;
      this.status.textContent = `steer: kept ${added.length} change${added.length > 1 ? "s" : ""}, seed fixed: queue to render it again`;
      this.status.title = `added Prompt Schedule nodes ${added.map((n) => `#${n.id}`).join(" ")} and set the seed to ` +
        `${d.seed} (control after generate: fixed); queued again, the workflow renders the same video`;
      this.root.dataset.kept = added.map((n) => n.id).join(",");
    } catch (err) {
      this.status.className = "pf-row pf-warn";
      this.status.textContent = `steer: could not keep the changes: ${err.message}`;
    }
  }
}

app.registerExtension({
  name: "PackForcing.Steer",
  async setup() {
    api.addEventListener(EVENT, (e) => {
      const panel = findNode(app, e.detail?.node)?.packforcingSteer;
      if (!panel) return;
      try {
        panel.update(e.detail);
      } catch (err) {               // a message of another shape (a newer or older server side)
        panel.status.textContent = `steer: unexpected message (${err.message})`;
      }
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE.SAMPLER) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      this.packforcingSteer = new SteerPanel(this);
      fitNode(this);
      return r;
    };
  },
});
