// Shared helpers of the PackForcing frontend extension (budget.js, live.js). No side effects:
// ComfyUI imports every .js file under web/ as an extension module, this one registers nothing.

export const NODE = {
  CACHE: "PackForcingPackedCache",
  SET_SIZES: "PackForcingSetCacheSizes",
  SAMPLER: "PackForcingSampler",
  LOADER: "PackForcingModelLoader",
  FROM_MODEL: "PackForcingModelFromMODEL",
};

export function findWidget(node, name) {
  return node?.widgets?.find((w) => w.name === name);
}

export function widgetValue(node, name) {
  return findWidget(node, name)?.value;
}

/** Chain a callback onto an object's method (the frontend's own useChainCallback, without importing internals). */
export function chain(obj, key, fn) {
  const prev = obj[key];
  obj[key] = function (...args) {
    const r = prev?.apply(this, args);
    fn.apply(this, args);
    return r;
  };
}

/** Bytes in GB (decimal, 2 decimals); under 0.01 GB (tiny test models) in MB. */
export function gb(bytes) {
  if (bytes > 0 && bytes < 1e7) return `${(bytes / 1e6).toFixed(2)} MB`;
  return `${(bytes / 1e9).toFixed(2)} GB`;
}

export function count(n) {
  return Number(n).toLocaleString("en-US");
}

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds - 60 * m);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "data") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

/** A DOM widget of fixed height (its content height; the frontend adds the margins) and minimum width. */
export function addFixedWidget(node, name, element, getHeight, minWidth) {
  const w = node.addDOMWidget(name, name, element, {
    serialize: false, hideOnZoom: true, margin: MARGIN,
    getMinHeight: () => getHeight() + 2 * MARGIN, getMaxHeight: () => getHeight() + 2 * MARGIN,
    getValue: () => undefined, setValue: () => {},
  });
  w.serialize = false;            // not in the workflow's widgets_values either
  const layout = w.computeLayoutSize.bind(w);
  w.computeLayoutSize = (n) => ({ ...layout(n), minWidth });
  return w;
}

export const MARGIN = 6;

/** Grow the node so that every widget (ours included) fits; never shrink what the user made bigger. */
export function fitNode(node) {
  if (!node?.computeSize || !node.setSize) return;
  const min = node.computeSize();
  const w = Math.max(node.size[0], min[0]);
  const h = Math.max(node.size[1], min[1]);
  if (w !== node.size[0] || h !== node.size[1]) node.setSize([w, h]);
  node.setDirtyCanvas?.(true, true);
}

/** All nodes of the open graphs (the root graph and, inside a subgraph, the one on the canvas). */
export function allNodes(app) {
  const graphs = new Set([app.graph, app.canvas?.graph].filter(Boolean));
  return [...graphs].flatMap((g) => g._nodes ?? g.nodes ?? []);
}

/** The node a server message names: its id, or the last part of a subgraph path ("5:12"). */
export function findNode(app, id) {
  if (id == null) return null;
  const nodes = allNodes(app);
  return nodes.find((n) => String(n.id) === String(id)) ??
    nodes.find((n) => String(n.id) === String(id).split(":").pop()) ?? null;
}

let styled = false;
export function injectStyle() {
  if (styled) return;
  styled = true;
  const css = `
.pf-box { box-sizing: border-box; width: 100%; height: 100%; padding: 1px 6px; overflow: hidden;
  font: 11px/13px ui-sans-serif, system-ui, sans-serif; color: var(--input-text, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; }
.pf-row { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.pf-dim { color: var(--descrip-text, #999); }
.pf-num { font-weight: 600; color: var(--fg-color, #fff); font-variant-numeric: tabular-nums; }
.pf-warn { color: #ff8a65; font-weight: 600; }
.pf-error { color: #ff8a65; white-space: normal; overflow: hidden; max-height: 52px; }
.pf-note { color: var(--descrip-text, #999); white-space: normal; overflow: hidden; max-height: 52px; }
.pf-timeline { display: block; width: 100%; height: 14px; margin: 2px 0 1px 0; border-radius: 3px; }
.pf-legend { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); grid-auto-flow: column;
  grid-template-rows: repeat(3, 13px); grid-auto-rows: 13px; column-gap: 7px; overflow: hidden; }
.pf-legend > span { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.pf-legend > .pf-wide { grid-column: 1 / -1; grid-row: 4; }
.pf-legend i { display: inline-block; width: 8px; height: 8px; margin-right: 3px; border-radius: 2px; vertical-align: -1px; }
.pf-preview { display: flex; gap: 6px; align-items: flex-start; margin-top: 3px; height: 88px; }
.pf-preview img { display: block; max-width: 50%; height: 88px; object-fit: contain; background: #000; border-radius: 3px; }
.pf-preview .pf-caption { white-space: normal; overflow: hidden; max-height: 88px; }
`;
  document.head.append(el("style", { id: "packforcing-style" }, css));
}

// Colours of the timeline (also used by the legend).
export const COLORS = {
  future: "#2b2b2b",
  dropped: "#4a4a4a",
  sink: "#4e8cff",
  mid: "#7b5ea7",
  selected: "#ffb13b",
  recent: "#3ccf7a",
  generating: "#f5f5f5",
};
