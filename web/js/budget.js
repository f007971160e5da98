// Budget readout on the PackedCache node: K/V memory, attention tokens per layer, longest video.
//
// The numbers come from the server (GET /packforcing/plan, nodes/routes.py), which runs
// packforcing_core.cache.config.plan, the accounting the sampler sizes its buffers with. The resolution,
// chunk length and video length are read from the first PackForcing Sampler the cache feeds
// (through Set PackedCache Sizes nodes too), the model from that sampler's loader; what is not
// connected is assumed (832x480, chunks of 4, 77 frames, Wan2.1-1.3B) and the readout says so.
// The readout refreshes when a widget of the cache, the sampler or the loader changes, or a link
// does. A server without the route (an older pack) gets "budget unavailable", no exception.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { NODE, addFixedWidget, allNodes, chain, count, duration, el, fitNode, gb, injectStyle, widgetValue } from "./common.js";

const CACHE_WIDGETS = ["mode", "sink_seconds", "recent_seconds", "mid_blocks", "top_k", "mid_bank"];
const SAMPLER_WIDGETS = ["width", "height", "chunk_frames", "length"];
const DEFAULTS = { width: 832, height: 480, chunk_frames: 4, length: 77 };
const WIDGET = "packforcing_budget";
const HEIGHT = 80;           // 6 rows of 13 px + padding
const MIN_WIDTH = 236;       // + the frontend's widget margins: nodes of ~340 px
const DEBOUNCE_MS = 120;
const MAX_WIDEN = 160;       // px: a longer file name stays cut (the row's tooltip has it whole)

/** The first sampler downstream of a cache node (through Set PackedCache Sizes), or null. */
export function samplerOf(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  const next = node.getOutputNodes?.(0) ?? [];
  for (const n of next) if (n.comfyClass === NODE.SAMPLER) return n;
  for (const n of next) {
    if (n.comfyClass === NODE.SET_SIZES) {
      const s = samplerOf(n, seen);
      if (s) return s;
    }
  }
  return null;
}

function inputNode(node, name) {
  const slot = node?.inputs?.findIndex((i) => i.name === name) ?? -1;
  return slot >= 0 ? node.getInputNode?.(slot) : null;
}

/** {dit_name, dtype} of the model feeding a sampler: the pack's loader, or UNETLoader via "from MODEL". */
function modelOf(sampler) {
  const m = inputNode(sampler, "model");
  if (!m) return {};
  if (m.comfyClass === NODE.LOADER) {
    return { dit_name: widgetValue(m, "dit_name"), dtype: widgetValue(m, "dtype"), fp8: widgetValue(m, "fp8") };
  }
  if (m.comfyClass === NODE.FROM_MODEL) {
    const u = inputNode(m, "model");
    if (u && u.comfyClass === "UNETLoader") return { dit_name: widgetValue(u, "unet_name") };
  }
  return {};
}

/** Query parameters of a cache node and what was assumed. */
export function query(node) {
  const params = {};
  for (const name of CACHE_WIDGETS) {
    const v = widgetValue(node, name);
    if (v !== undefined && v !== null) params[name] = String(v);
  }
  const sampler = samplerOf(node);
  for (const name of SAMPLER_WIDGETS) {
    const v = sampler ? widgetValue(sampler, name) : undefined;
    params[name] = String(v ?? DEFAULTS[name]);
  }
  const model = sampler ? modelOf(sampler) : {};
  if (typeof model.dit_name === "string" && model.dit_name) params.dit_name = model.dit_name;
  if (typeof model.dtype === "string" && model.dtype) params.dtype = model.dtype;
  if (typeof model.fp8 === "boolean") params.fp8 = String(model.fp8);
  return { params, sampler };
}

class Readout {
  constructor(node) {
    injectStyle();
    this.node = node;
    this.seq = 0;
    this.key = null;
    this.timer = null;
    this.root = el("div", { class: "pf-box pf-budget", data: { state: "pending" } });
    this.root.append(el("div", { class: "pf-row pf-dim" }, "KV budget: computing…"));
    this.widget = addFixedWidget(node, WIDGET, this.root, () => HEIGHT, MIN_WIDTH);
  }

  schedule(force = false) {
    const { params, sampler } = query(this.node);
    const key = JSON.stringify(params);
    if (!force && key === this.key) return;
    this.key = key;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fetch(params, sampler), DEBOUNCE_MS);
  }

  async fetch(params, sampler) {
    const seq = ++this.seq;
    let res = null, body = null;
    try {
      res = await api.fetchApi(`/packforcing/plan?${new URLSearchParams(params)}`);
      body = res.status === 404 ? null : await res.json().catch(() => null);
    } catch (e) {
      res = null;
    }
    if (seq !== this.seq) return; // a newer request is under way
    if (res && res.status === 400 && body) {
      this.show("invalid", [el("div", { class: "pf-row pf-warn" }, "⚠ these settings cannot run"),
        el("div", { class: "pf-error" }, String(body.error ?? "invalid settings"))]);
    } else if (!res || !res.ok || !body || !body.plan) {
      const why = !res ? "the server is not reachable" : res.status === 404 ?
        "the server-side PackForcing is older or missing (no /packforcing/plan route)" :
        `the server answered ${res.status}`;
      this.show("unavailable", [el("div", { class: "pf-row" }, "KV budget unavailable"),
        el("div", { class: "pf-note" }, why)]);
    } else {
      try {
        this.render(body, sampler);
      } catch (e) {                  // an answer of another shape (a newer or older server side)
        this.show("unavailable", [el("div", { class: "pf-row" }, "KV budget unavailable"),
          el("div", { class: "pf-note" }, `unexpected answer from the server (${e.message})`)]);
      }
    }
  }

  render(b, sampler) {
    const p = b.plan, mem = b.memory ?? {}, g = b.geometry, m = b.model;
    const onGpu = mem.free_bytes != null;
    const num = (pf, text) => el("span", { class: "pf-num", data: { pf } }, text);
    const dim = (text) => el("span", { class: "pf-dim" }, text);
    const row = (attrs, ...children) => el("div", { class: "pf-row", ...attrs }, ...children);
    const at = b.bounded ? "" : `at ${count(b.total_latent_frames)} latent frames: `;
    const split = at + (onGpu ? (b.host_bytes > 0 ? `${gb(b.device_bytes)} on GPU + mid bank ${gb(b.host_bytes)} in host RAM` :
      "all on GPU") : (p.bank_bytes > 0 ? `buffer ${gb(p.buffer_bytes)} + mid bank ${gb(p.bank_bytes)}` : "buffer only"));
    const limit = b.longest?.limit === "gpu" ? "GPU memory" : "host RAM";
    const longestLabel = b.bounded || !b.longest ? "longest video: " : `longest video in free ${limit}: `;
    const longest = b.bounded ? "unlimited (bounded cache)" :
      !b.longest ? "grows with the video" :
      b.longest.latent_frames === 0 ? "none (not one chunk fits)" :
      `${duration(b.longest.seconds)} (${count(b.longest.frames)} frames)`;
    const where = `${g.width}×${g.height}, chunks of ${g.chunk_frames}` +
      (sampler ? ` (sampler #${sampler.id})` : " (assumed: no sampler connected)");
    const sizes = `${m.layers} layers, ${m.heads} head${m.heads === 1 ? "" : "s"} × ${m.head_dim}, ${m.dtype}`;
    const reason = m.source.startsWith("assumed:") ? m.source.slice(9).trim() :
      m.source === "default" ? "no model loader connected" : "";
    const model = m.source === "file" ? `${m.name}: ${sizes}` : m.source === "given" ? sizes :
      `${m.name} assumed: ${sizes}`;
    // weights and one chunk's activations, known when the DiT file was read, come off the free memory
    const reserved = (b.weights_bytes ?? 0) + (b.activation_bytes ?? 0);
    const free = onGpu ? (b.free_for_kv_bytes ?? mem.free_bytes) + reserved : null;
    const forRun = reserved > 0 ? `, ${gb(reserved)} of it for weights + activations` : "";
    const weights = b.weights_bytes ? ` (weights ${gb(b.weights_bytes)})` : "";
    const rows = [
      row({}, "KV ", num("kv", gb(b.kv_bytes)), dim(" · attention "), num("tokens", count(b.attended_tokens)),
        dim(" tokens/layer")),
      row({ title: `${count(g.frame_tokens)} tokens per latent frame` }, dim(split)),
      row({}, dim(longestLabel), num("longest", longest)),
      row({ data: { pf: "resolution" }, title: where }, dim(where)),
      row({ data: { pf: "model" }, title: (reason ? `${model} (${reason})` : model) + weights }, dim(model)),
    ];
    if (b.exceeds_free) {
      rows.push(row({ class: "pf-row pf-warn", data: { pf: "warning" }, title: `${mem.device} (${mem.device_name})` },
        `⚠ exceeds free GPU memory (${gb(free)} free${forRun})`));
    } else if (b.exceeds_host) {
      rows.push(row({ class: "pf-row pf-warn", data: { pf: "warning" } },
        `⚠ mid bank exceeds free host RAM (${gb(mem.host_free_bytes)})`));
    } else {
      rows.push(row({ data: { pf: "device" }, title: onGpu ? `${mem.device} (${mem.device_name})` : "" },
        dim(onGpu ? `fits: ${gb(free)} free on ${mem.device_name}${forRun}` : "CPU: no GPU memory check")));
    }
    this.root.dataset.kvBytes = String(b.kv_bytes);
    this.root.dataset.attendedTokens = String(b.attended_tokens);
    this.show("ok", rows);
    this.widenOnce();
  }

  /** Nodes 2.0 (Vue) pads widgets more than the canvas does, and ignores a widget's minimum width: widen
   *  the node once, after the first readout, by what its longest row lacks. Later the user decides. */
  widenOnce() {
    if (this.widened) return;
    requestAnimationFrame(() => {
      const rows = [...this.root.children].filter((r) => r.clientWidth > 0);
      if (!rows.length) return;               // not laid out yet: try after the next readout
      this.widened = true;
      const lack = Math.max(0, ...rows.map((r) => r.scrollWidth - r.clientWidth));
      if (lack > 0 && lack <= MAX_WIDEN) {
        this.node.setSize([this.node.size[0] + lack + 2, this.node.size[1]]);
        this.node.setDirtyCanvas?.(true, true);
      }
      this.root.dataset.widened = String(lack);
    });
  }

  show(state, rows) {
    this.root.dataset.state = state;
    this.root.replaceChildren(...rows);
    this.node.setDirtyCanvas?.(true, false);
  }
}

function readoutOf(node) {
  return node?.packforcingBudget;
}

/** Refresh every readout (a sampler or loader widget changed, or a link did). */
export function refreshAll(force = false) {
  for (const n of allNodes(app)) readoutOf(n)?.schedule(force);
}

function watchWidgets(node, names) {
  for (const w of node.widgets ?? []) {
    if (names.includes(w.name)) chain(w, "callback", () => refreshAll());
  }
}

app.registerExtension({
  name: "PackForcing.Budget",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const kind = nodeData?.name;
    if (kind === NODE.CACHE) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        this.packforcingBudget = new Readout(this);
        watchWidgets(this, CACHE_WIDGETS);
        fitNode(this);
        this.packforcingBudget.schedule();
      });
      chain(nodeType.prototype, "onConfigure", function () {
        fitNode(this);   // a saved workflow may carry a size from before the readout existed
        this.packforcingBudget?.schedule();
      });
      // Catch-all for changes made without a widget callback (scripts, undo): compare the query
      // key at most twice a second while the node is drawn. The request only goes out on a change.
      chain(nodeType.prototype, "onDrawForeground", function () {
        const r = this.packforcingBudget;
        const now = performance.now();
        if (r && (!r.lastCheck || now - r.lastCheck > 500)) {
          r.lastCheck = now;
          r.schedule();
        }
      });
    }
    if ([NODE.CACHE, NODE.SET_SIZES, NODE.SAMPLER, NODE.LOADER, NODE.FROM_MODEL, "UNETLoader"].includes(kind)) {
      chain(nodeType.prototype, "onConnectionsChange", () => refreshAll());
    }
    if (kind === NODE.SAMPLER) chain(nodeType.prototype, "onNodeCreated", function () { watchWidgets(this, SAMPLER_WIDGETS); });
    if (kind === NODE.LOADER) chain(nodeType.prototype, "onNodeCreated", function () { watchWidgets(this, ["dit_name", "dtype"]); });
    if (kind === "UNETLoader") chain(nodeType.prototype, "onNodeCreated", function () { watchWidgets(this, ["unet_name"]); });
  },
  async afterConfigureGraph() {
    refreshAll();
  },
});
