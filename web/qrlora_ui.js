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

/** Whether the page draws nodes as Vue components (Nodes 2.0, setting Comfy.VueNodes.Enabled) instead of on the canvas. */
export function vueNodes() {
  return !!app.extensionManager?.setting?.get?.("Comfy.VueNodes.Enabled");
}

/**
 * Show a node's changed sockets and widgets (added, removed, hidden, disabled) in the Vue node view too.
 * That view copies a node's sockets and widgets when the node is added to the graph and re-reads them
 * only on a few events (frontend 1.32.9, useGraphNodeManager), none of which is "a widget was hidden";
 * announcing the node as added again makes it read the node afresh. The canvas needs nothing: it draws
 * from the node itself.
 */
export function refreshView(node) {
  if (!vueNodes() || !node.graph || app.configuringGraph) return;
  node.graph.onNodeAdded?.(node);
}

/** Grey out a widget (a button that has nothing to do) on the canvas and in the Vue node view. */
export function setDisabled(w, disabled) {
  w.disabled = disabled;
  w.options = w.options ?? {};
  w.options.disabled = disabled;
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
  node.setDirtyCanvas?.(true, true);
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
    .qrlora-panel .qrlora-lead { font-weight: 600; white-space: pre-wrap; margin-bottom: 2px; }
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
  let least = height;
  const w = frontendOnly(node.addDOMWidget(name, "qrlora_panel", element, {
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => least,
    getMaxHeight: () => Math.max(least, height * 3),
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
    /**
     * A report: its first line in plain words (emphasized), rows of label/value, then the remaining lines.
     * The panel grows to show all of it: `fit` says how many text lines that takes at the node's width.
     */
    report(text, pairs = [], state = "executed") {
      const [lead, ...rest] = String(text).split("\n");
      const parts = [];
      const head = document.createElement("div");
      head.className = "qrlora-lead";
      head.textContent = lead;
      parts.push(head);
      if (pairs.length) {
        const table = document.createElement("table");
        for (const cells of pairs) {
          const tr = table.insertRow();
          for (const cell of cells) tr.insertCell().textContent = cell;
        }
        parts.push(table);
      }
      if (rest.length) {
        const more = document.createElement("div");
        more.className = "qrlora-note";
        more.textContent = rest.join("\n");
        parts.push(more);
      }
      element.replaceChildren(...parts);
      mark(state);
      const perLine = Math.max(20, Math.floor(((node.size?.[0] ?? 300) - 30) / 7));
      const lines = [lead, ...rest].reduce((n, line) => n + Math.max(1, Math.ceil(line.length / perLine)), 0) + pairs.length;
      panel.fit(lines);
      // The estimate above holds for a node off screen; one on screen grows by what it lacks once drawn.
      const grow = (tries) => requestAnimationFrame(() => {
        const lacking = element.scrollHeight - element.clientHeight;
        if (!element.isConnected || lacking <= 1 || !tries) return;
        least += lacking + 2;
        fitHeight(node);
        grow(tries - 1);
      });
      grow(3);
    },
    /** Make room for `lines` lines of text (the node grows; it never shrinks below the panel's least height). */
    fit(lines) {
      least = Math.max(height, Math.ceil(lines * 15 + 12));
      fitHeight(node);
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
