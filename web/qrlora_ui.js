// Shared helpers for the QR-LoRA node UIs: hooks, widgets, the info panel.
// Each node's UI lives in its own module (merge.js, loader.js, train.js, train_data.js, similarity.js).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

export { app, api };

let facts = null;
/**
 * What the server says of the pack, asked once (GET /qrlora/page, integration/routes.py):
 * `nodes` (the node id each of our modules draws) and `events` (live event types).
 * The scripts copy no value from the Python side; they read it here.
 */
export function pageFacts() {
  facts ??= api.fetchApi("/qrlora/page").then((r) => {
    if (!r.ok) throw new Error(`GET /qrlora/page answered ${r.status}`);
    return r.json();
  });
  return facts;
}

/** Run `fn` after `object[method]`, keeping whatever was there (other extensions' hooks). */
export function chain(object, method, fn) {
  const original = object[method];
  object[method] = function (...args) {
    const result = original?.apply(this, args);
    fn.apply(this, args);
    return result;
  };
}

/**
 * Hook a node type of ours in beforeRegisterNodeDef (which ComfyUI awaits): `setup(node)` once per
 * new node of the type that pageFacts().nodes[module] names. Resolves to whether it was that type.
 */
export async function onNodeOfType(nodeType, nodeData, module, setup) {
  const { nodes } = await pageFacts();
  if (nodeData.name !== nodes[module]) return false;
  chain(nodeType.prototype, "onNodeCreated", function () {
    setup(this);
  });
  return true;
}

export function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Hide a widget on the canvas (LiteGraph) and in the Vue node view; its value still saves. */
export function setHidden(w, hidden) {
  w.hidden = hidden;
  w.options = w.options ?? {};
  w.options.hidden = hidden;
  // The canvas lays out every widget, visible or not; a hidden one must take no height.
  if (hidden) w.computeSize = () => [0, -4];
  else if (Object.hasOwn(w, "computeSize")) delete w.computeSize;
}

/** A widget the page shows but neither saves in the workflow nor sends to the server. */
export function frontendOnly(w) {
  w.serialize = false;
  w.options = w.options ?? {};
  w.options.serialize = false;
  return w;
}

/** Grow or shrink the node to fit its visible widgets, keeping its width. */
export function fitHeight(node) {
  const [, h] = node.computeSize();
  node.setSize([node.size[0], h]);
  node.setDirtyCanvas(true, true);
}

let styled = false;
function addStyles() {
  if (styled) return;
  styled = true;
  const style = document.createElement("style");
  style.textContent = `
    .qrlora-panel { font: 11px/1.35 system-ui, sans-serif; color: var(--input-text, #ddd);
      background: var(--comfy-input-bg, #222); border-radius: 6px; padding: 4px 6px; overflow: auto;
      box-sizing: border-box; }
    .qrlora-panel table { border-collapse: collapse; width: 100%; }
    .qrlora-panel td { padding: 0 4px 0 0; vertical-align: top; word-break: break-all; }
    .qrlora-panel td:first-child { color: var(--descrip-text, #999); white-space: nowrap; word-break: normal; }
    .qrlora-panel .qrlora-note { color: var(--descrip-text, #999); white-space: pre-wrap; }
    .qrlora-panel .qrlora-error { color: #e57373; }
    .qrlora-panel canvas { width: 100%; height: 100%; display: block; }
  `;
  document.head.appendChild(style);
}

/**
 * A small read-only panel on the node (a DOM widget): rows of label/value,
 * a note, an error or a chart. The element carries data-qrlora-node=<id>
 * and data-qrlora-state, which the browser tests read.
 */
export function addPanel(node, name, { height = 96 } = {}) {
  addStyles();
  const element = document.createElement("div");
  element.className = "qrlora-panel";
  element.dataset.qrloraPanel = name;
  const w = frontendOnly(node.addDOMWidget(name, "qrlora_panel", element, {
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => height,
    getMaxHeight: () => height * 3,
  }));
  const mark = (state) => {
    element.dataset.qrloraNode = String(node.id);
    element.dataset.qrloraState = state;
  };
  const panel = {
    element,
    widget: w,
    rows(pairs, state = "ready") {
      const table = document.createElement("table");
      for (const [label, value] of pairs) {
        const tr = table.insertRow();
        tr.insertCell().textContent = label;
        tr.insertCell().textContent = value;
      }
      element.replaceChildren(table);
      mark(state);
    },
    note(text, state = "note") {
      const p = document.createElement("div");
      p.className = "qrlora-note";
      p.textContent = text;
      element.replaceChildren(p);
      mark(state);
    },
    error(text) {
      panel.note(text, "error");
      element.firstChild.className = "qrlora-error";
    },
    canvas() {
      let canvas = element.querySelector("canvas");
      if (!canvas) {
        canvas = document.createElement("canvas");
        element.replaceChildren(canvas);
      }
      return canvas;
    },
    mark,
  };
  mark("empty");
  return panel;
}

/** The first entry of a ui payload key: nodes send their ui values as lists. */
export function first(message, key) {
  const value = message?.[key];
  return Array.isArray(value) ? value[0] : value;
}
