// Load QR-LoRA: what the picked file is (format, rank, layers, trigger words,
// base fingerprint), from GET /qrlora/summary when a file is picked and from
// the node's `qrlora` ui payload after it runs.
import { api, app, chain, first, addPanel, onNodeOfType, widget } from "./qrlora_ui.js";

export function summaryRows(s) {
  const rows = [
    ["format", s.format + (s.shared_basis === false ? " (mixed bases)" : "")],
    ["rank", `${s.rank} · alpha ${s.alpha} · scale ${Number(s.scale).toPrecision(3)}`],
    ["layers", `${s.layers} · ${Number(s.parameters).toLocaleString("en")} ΔR values`],
    ["trigger", s.trigger_words || "—"],
    ["base", s.base_fingerprint || "—"],
  ];
  return rows;
}

async function fetchSummary(node) {
  const name = widget(node, "lora_name")?.value;
  const panel = node.qrlora.panel;
  if (!name) {
    panel.note("Pick a QR-LoRA file from the loras folder.");
    return;
  }
  const asked = (node.qrlora.asked = name);
  panel.note(`reading ${name} …`, "loading");
  try {
    const response = await api.fetchApi(`/qrlora/summary?lora_name=${encodeURIComponent(name)}`);
    const body = await response.json();
    if (asked !== node.qrlora.asked) return; // another file was picked meanwhile
    if (!response.ok) panel.error(body.error ?? `${response.status} ${response.statusText}`);
    else panel.rows(summaryRows(body), "selected");
  } catch (e) {
    if (asked === node.qrlora.asked) panel.error(`Could not read ${name}: ${e}`);
  }
}

/** The nodes this loader feeds that name their inputs after its file (Merge ΔR's weight sliders) follow a new pick. */
function tellConsumers(node) {
  const links = node.graph?.links;
  for (const id of node.outputs?.[0]?.links ?? []) {
    const link = links instanceof Map ? links.get(id) : links?.[id];
    node.graph.getNodeById(link?.target_id)?.qrlora?.refresh?.();
  }
}

function setup(node) {
  node.qrlora = { panel: addPanel(node, "adapter_info", { height: 84 }) };
  chain(widget(node, "lora_name"), "callback", () => {
    fetchSummary(node);
    tellConsumers(node);
  });
  queueMicrotask(() => fetchSummary(node));
}

app.registerExtension({
  name: "qrlora.loader",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(await onNodeOfType(nodeType, nodeData, "loader", setup))) return;
    chain(nodeType.prototype, "onConfigure", function () {
      queueMicrotask(() => fetchSummary(this));
    });
    chain(nodeType.prototype, "onExecuted", function (message) {
      const summary = first(message, "qrlora");
      if (summary) this.qrlora.panel.rows(summaryRows(summary), "executed");
    });
  },
});
