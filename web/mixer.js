// Mix QR-LoRAs: rows added and removed in the node, each a file from loras/, an on/off toggle,
// a strength and a role, with the file's trigger words (GET /qrlora/summary) shown below.
//
// The node's one saved and sent value is its `rows` input, a JSON list (nodes/mixer.py reads it;
// /prompt users write it by hand). The row widgets are the page's way to edit it: they are built
// from `rows` when the node is created or loaded and write it back on every change, and neither
// saved nor sent themselves.
import { addPanel, api, app, chain, first, fitHeight, frontendOnly, onNodeOfType, pageFacts, refreshView, setDisabled, setHidden, widget } from "./qrlora_ui.js";

const ROLES = ["content", "style", "other"];
const ROW_WIDGET = /^(lora|on|strength|role)_\d+$/;
const STRENGTH = { min: -4, max: 4, step: 0.1, step2: 0.01, round: 0.01, precision: 2 };
const summaries = new Map(); // file -> Promise of its summary (or {error})

function summaryOf(name) {
  if (!summaries.has(name)) {
    summaries.set(name, api.fetchApi(`/qrlora/summary?lora_name=${encodeURIComponent(name)}`)
      .then(async (r) => (r.ok ? r.json() : { error: (await r.json()).error ?? r.statusText }))
      .catch((e) => ({ error: String(e) })));
  }
  return summaries.get(name);
}

/** The adapter files the page knows: Load QR-LoRA's list (its definition in /object_info, or in `defs` when the page refreshes them). */
async function loraFiles(defs) {
  const { nodes } = await pageFacts();
  const definition = defs?.[nodes.loader] ?? LiteGraph.registered_node_types[nodes.loader]?.nodeData;
  const spec = definition?.input?.required?.lora_name;
  const options = Array.isArray(spec?.[0]) ? spec[0] : spec?.[1]?.options;
  return options ?? [];
}

/** The rows in the `rows` widget, or null when it holds no list of rows (the server says what is wrong when queued). */
function readRows(node) {
  try {
    const rows = JSON.parse(widget(node, "rows").value || "[]");
    return Array.isArray(rows) && rows.every((r) => typeof r?.lora === "string") ? rows : null;
  } catch {
    return null;
  }
}

function rowsFromWidgets(node) {
  const rows = [];
  for (let i = 1; widget(node, `lora_${i}`); i++) {
    rows.push({
      lora: widget(node, `lora_${i}`).value,
      on: !!widget(node, `on_${i}`).value,
      strength: widget(node, `strength_${i}`).value,
      role: widget(node, `role_${i}`).value,
    });
  }
  return rows;
}

function writeRows(node) {
  widget(node, "rows").value = JSON.stringify(rowsFromWidgets(node));
  forgetReport(node);
  showTriggerWords(node);
}

async function showTriggerWords(node) {
  const rows = rowsFromWidgets(node);
  const asked = (node.qrlora.asked = JSON.stringify(rows));
  const found = await Promise.all(rows.map((r) => (r.lora ? summaryOf(r.lora) : { error: "no file" })));
  if (asked !== node.qrlora.asked || node.qrlora.report.element.dataset.qrloraState === "executed") return;
  const pairs = rows.map((r, i) => [
    `${i + 1} ${r.on ? "on" : "off"} · ${r.role}`,
    found[i].error ? `⚠ ${found[i].error}` : `trigger words: ${found[i].trigger_words || "—"}`,
  ]);
  node.qrlora.report.report(rows.length ? "Trigger words of each row:" : "Add a row to mix an adapter into the model.", pairs, "selected");
}

function addRowWidgets(node, i, row, files) {
  const changed = () => writeRows(node);
  const lora = node.addWidget("combo", `lora_${i}`, row.lora, changed, { values: files });
  lora.label = `adapter ${i}`;
  const on = node.addWidget("toggle", `on_${i}`, row.on !== false, changed, { on: "on", off: "off" });
  on.label = `  use adapter ${i}`;
  const strength = node.addWidget("slider", `strength_${i}`, row.strength ?? 1, changed, STRENGTH);
  strength.label = "  strength";
  const role = node.addWidget("combo", `role_${i}`, ROLES.includes(row.role) ? row.role : "other", changed, { values: ROLES });
  role.label = "  role";
  for (const w of [lora, on, strength, role]) frontendOnly(w);
  lora.tooltip = "A QR-LoRA file from the loras folder.";
  on.tooltip = "Off: the row is left out of the mix (its file is not even read).";
  strength.tooltip = "How much of this adapter goes into the mix (negative removes it).";
  role.tooltip = "What the adapter is for: its trigger words fill {content}, {style} or {other} in the prompt.";
}

async function refreshFiles(node, defs) {
  const files = await loraFiles(defs);
  for (const w of node.widgets) if (/^lora_\d+$/.test(w.name)) w.options.values = files;
}

/** Rebuild the row widgets from `rows`: rows first, then the buttons and the report. */
async function build(node, rows = readRows(node)) {
  if (rows === null) {  // kept as it is, not overwritten by an empty list
    node.qrlora.report.error(`The rows input is not a list of rows: ${widget(node, "rows").value}`);
    return;
  }
  const files = await loraFiles();
  const kept = node.widgets.filter((w) => !ROW_WIDGET.test(w.name));
  node.widgets = kept;
  rows.forEach((row, n) => addRowWidgets(node, n + 1, row, files));
  const { more, less, report } = node.qrlora;
  const others = node.widgets.filter((w) => ![more, less, report.widget].includes(w));
  node.widgets = [...others, more, less, report.widget];
  setDisabled(less, rows.length === 0);
  widget(node, "rows").value = JSON.stringify(rows);
  showTriggerWords(node);
  fitHeight(node);
  refreshView(node);
}

async function addRow(node) {
  const rows = rowsFromWidgets(node);
  const files = await loraFiles();
  const role = ROLES[Math.min(rows.length, 2)];
  rows.push({ lora: rows.at(-1)?.lora ?? files[0] ?? "", on: true, strength: 1, role });
  forgetReport(node);
  await build(node, rows);
}

async function removeRow(node) {
  const rows = rowsFromWidgets(node);
  if (!rows.length) return;
  rows.pop();
  forgetReport(node);
  await build(node, rows);
}

/** The last run's report no longer describes the rows: the panel goes back to the trigger words. */
function forgetReport(node) {
  delete node.properties.qrloraReport;
  node.qrlora.report.mark("selected");
}

/** The report after a run (also on a cache hit, and kept in the node's properties for the next time the workflow opens). */
function showReport(node, text, mix) {
  const pairs = (mix?.rows ?? []).map((r) => [`${r.role} · ${r.strength.toFixed(2)}`, `${r.lora}${r.trigger_words ? ` — ${r.trigger_words}` : ""}`]);
  node.qrlora.report.report(text, pairs, "executed");
}

function setup(node) {
  node.properties = node.properties ?? {};
  setHidden(widget(node, "rows"), true);
  const more = frontendOnly(node.addWidget("button", "+ row", null, () => addRow(node)));
  const less = frontendOnly(node.addWidget("button", "− row", null, () => removeRow(node)));
  more.tooltip = "Add a row: one more adapter in the mix.";
  less.tooltip = "Remove the last row.";
  const report = addPanel(node, "mix_report", { height: 60 });
  node.qrlora = { more, less, report, build: (rows) => build(node, rows) };
  queueMicrotask(() => build(node));
}

app.registerExtension({
  name: "qrlora.mixer",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(await onNodeOfType(nodeType, nodeData, "mixer", setup))) return;
    chain(nodeType.prototype, "onConfigure", function () {
      queueMicrotask(async () => {
        await build(this);
        const last = this.properties?.qrloraReport;
        if (last) showReport(this, last.text, last.mix);
      });
    });
    chain(nodeType.prototype, "refreshComboInNode", function (defs) {
      refreshFiles(this, defs);  // the page's refresh (R): new files in loras/ join the rows' lists
    });
    chain(nodeType.prototype, "onExecuted", function (message) {
      const text = first(message, "text");
      if (!text || !this.qrlora) return;
      const mix = first(message, "qrlora_mix");
      this.properties.qrloraReport = { text, mix };
      showReport(this, text, mix);
    });
  },
});
