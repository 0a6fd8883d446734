// Merge ΔR: adapter slots that come and go, a weight slider each, and a
// content/style balance for the common two-adapter mix.
//
// The node always has all its weight widgets (so saved workflows keep one
// layout); only the first `count` are shown. `count` is the larger of two,
// the number the user asked for with "+ adapter" / "− adapter", and the
// highest connected slot. Sockets: the shown slots, plus one empty socket
// to connect the next adapter to. How many slots there are, how many are
// required and the sockets' type come from the node's own definition
// (/object_info: qr_lora_<i> inputs), not from a copy here.
import { addPanel, app, chain, first, fitHeight, frontendOnly, onNodeOfType, refreshView, setDisabled, setHidden, widget } from "./qrlora_ui.js";

const BALANCE = "content ↔ style";
const SLOT = /^qr_lora_\d+$/;
const slots = { node: null, min: 0, max: 0, type: null }; // from the node definition, in beforeRegisterNodeDef

/** The adapter slots a Merge definition declares: {node: its id, min: required, max: all, type: their socket type}. */
export function slotsOf(nodeData) {
  const names = (group) => Object.keys(nodeData.input?.[group] ?? {}).filter((name) => SLOT.test(name));
  const required = names("required");
  return {
    node: nodeData.name,
    min: required.length,
    max: required.length + names("optional").length,
    type: nodeData.input.required[required[0]][0],
  };
}

const socket = (node, i) => node.inputs?.find((s) => s.name === `qr_lora_${i}`);
const connected = (node, i) => socket(node, i)?.link != null;

function lastConnected(node) {
  let last = 0;
  for (let i = 1; i <= slots.max; i++) if (connected(node, i)) last = i;
  return last;
}

export function slotCount(node) {
  const asked = node.properties?.qrloraSlots ?? slots.min;
  return Math.min(slots.max, Math.max(slots.min, asked, lastConnected(node)));
}

/** Weights from the balance b in [0, 1]: 0.5 keeps both at 1, the ends fade one out. */
export function weightsFromBalance(b) {
  return [Math.min(1, 2 * (1 - b)), Math.min(1, 2 * b)];
}

/** The balance that gives (w1, w2), or null when no balance does (weights set by hand outside its line). */
function balanceFromWeights(w1, w2) {
  if (Math.abs(w1 - 1) < 1e-6 && w2 >= 0 && w2 <= 1) return w2 / 2;
  if (Math.abs(w2 - 1) < 1e-6 && w1 >= 0 && w1 <= 1) return 1 - w1 / 2;
  return null;
}

/** The balance whose weights are nearest (w1, w2): where the slider stands when no balance gives them exactly. */
function nearestBalance(w1, w2) {
  let best = 0.5, distance = Infinity;
  for (let k = 0; k <= 100; k++) {
    const [a, b] = weightsFromBalance(k / 100);
    const d = (a - w1) ** 2 + (b - w2) ** 2;
    if (d < distance) [best, distance] = [k / 100, d];
  }
  return best;
}

/** The adapter file feeding slot i (the Load QR-LoRA node's pick), or null. */
function sourceName(node, i) {
  const link = socket(node, i)?.link;
  if (link == null) return null;
  const links = node.graph?.links;
  const origin = node.graph?.getNodeById((links instanceof Map ? links.get(link) : links?.[link])?.origin_id);
  const name = origin?.widgets?.find((w) => w.name === "lora_name")?.value;
  return typeof name === "string" ? name.split(/[\\/]/).pop().replace(/\.safetensors$/i, "") : null;
}

/** Each weight slider says whose weight it is: the adapter file's name where a loader feeds its slot. */
function nameWeights(node) {
  for (let i = 1; i <= slots.max; i++) {
    const w = widget(node, `weight_${i}`);
    const name = sourceName(node, i);
    w.label = name ? `${name} weight` : undefined;
  }
}

function round(v) {
  return Math.round(v * 100) / 100;
}

function refresh(node) {
  if (!node.qrlora || app.configuringGraph) return;
  const count = slotCount(node);
  const allUsed = Array.from({ length: count }, (_, i) => connected(node, i + 1)).every(Boolean);
  const sockets = Math.min(slots.max, count + (allUsed ? 1 : 0));
  for (let i = slots.max; i > sockets; i--) {
    const index = node.inputs.findIndex((s) => s.name === `qr_lora_${i}`);
    if (index >= 0 && node.inputs[index].link == null) node.removeInput(index);
  }
  for (let i = 1; i <= sockets; i++) {
    if (!socket(node, i)) node.addInput(`qr_lora_${i}`, slots.type, i > slots.min ? { shape: 7 } : undefined);
  }
  for (let i = 1; i <= slots.max; i++) setHidden(widget(node, `weight_${i}`), i > count);
  const { balance, less } = node.qrlora;
  setHidden(balance, count !== 2);
  setDisabled(less, count <= slots.min);
  nameWeights(node);
  syncBalance(node);
  fitHeight(node);
  refreshView(node);
}

/** The balance follows the weights; off its line it stands at the nearest point and says the weights are custom. */
function syncBalance(node) {
  const [w1, w2] = [widget(node, "weight_1").value, widget(node, "weight_2").value];
  const b = balanceFromWeights(w1, w2);
  const { balance } = node.qrlora;
  balance.value = round(b ?? nearestBalance(w1, w2));
  balance.label = b === null ? `${BALANCE} (custom weights)` : undefined;
}

function setBalance(node, b) {
  const [w1, w2] = weightsFromBalance(b);
  for (const [name, value] of [["weight_1", w1], ["weight_2", w2]]) {
    const w = widget(node, name);
    w.value = round(value);
    w.callback?.(w.value);
  }
  node.setDirtyCanvas(true, true);
}

function addSlot(node) {
  node.properties.qrloraSlots = Math.min(slots.max, slotCount(node) + 1);
  refresh(node);
}

function removeSlot(node) {
  const count = slotCount(node);
  if (count <= slots.min) return;
  const index = node.inputs.findIndex((s) => s.name === `qr_lora_${count}`);
  if (index >= 0 && node.inputs[index].link != null) node.disconnectInput(index);
  node.properties.qrloraSlots = count - 1;
  refresh(node);
}

/** The report in plain words, a row per adapter named by its file, then the numbers; `last`: {text, mix} from the node's run. */
function showReport(node, report, { text, mix }) {
  const pairs = (mix?.names ?? []).map((name, k) => [`${Number(mix.weights[k]).toFixed(2)} ×`, name]);
  report.report(text, pairs, "executed");
}

function setup(node) {
  node.properties = node.properties ?? {};
  const balance = frontendOnly(node.addWidget("slider", BALANCE, 0.5, (b) => setBalance(node, b), {
    min: 0, max: 1, step: 0.1, step2: 0.01, round: 0.01, precision: 2,
  }));
  balance.tooltip = "Two adapters: left keeps only the first (content), right only the second (style); the middle uses both at full weight.";
  const more = frontendOnly(node.addWidget("button", "+ adapter", null, () => addSlot(node)));
  const less = frontendOnly(node.addWidget("button", "− adapter", null, () => removeSlot(node)));
  more.tooltip = "Show one more adapter slot with its weight slider.";
  less.tooltip = "Remove the last adapter slot (disconnecting its adapter).";
  for (const name of ["weight_1", "weight_2"]) chain(widget(node, name), "callback", () => syncBalance(node));
  const report = addPanel(node, "mix_report", { height: 40 });
  report.note("After a run: how the adapters were mixed.");
  node.qrlora = { balance, more, less, report, refresh: () => refresh(node) };
  refresh(node);
}

app.registerExtension({
  name: "qrlora.merge",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(await onNodeOfType(nodeType, nodeData, "merge", setup))) return;
    Object.assign(slots, slotsOf(nodeData));
    chain(nodeType.prototype, "onConfigure", function () {
      queueMicrotask(() => {
        refresh(this);
        const last = this.properties?.qrloraReport;
        if (last && this.qrlora) showReport(this, this.qrlora.report, last);
      });
    });
    chain(nodeType.prototype, "onConnectionsChange", function () {
      refresh(this);
    });
    chain(nodeType.prototype, "onExecuted", function (message) {
      const text = first(message, "text");
      if (!text || !this.qrlora) return;
      this.properties.qrloraReport = { text, mix: first(message, "qrlora_mix") };  // shown again when the workflow reopens
      showReport(this, this.qrlora.report, this.properties.qrloraReport);
    });
  },
  afterConfigureGraph() {
    for (const node of app.graph.nodes) if (node.type === slots.node) refresh(node);
  },
});
