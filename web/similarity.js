// ΔR Similarity: the numbers beside the plot (the plot itself is the node's image preview).
import { app, chain, first, addPanel, onNodeOfType } from "./qrlora_ui.js";

export function similarityRows(s, top = 4) {
  const ranked = s.layers.map((name, i) => [name, s.cosine[i]]).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const rows = [
    ["layers", String(s.layers.length)],
    ["mean |cos|", s.mean_abs.toFixed(4)],
    ["max |cos|", s.max_abs.toFixed(4)],
  ];
  for (const [name, c] of ranked.slice(0, top)) rows.push([c.toFixed(3), name]);
  return rows;
}

app.registerExtension({
  name: "qrlora.similarity",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(await onNodeOfType(nodeType, nodeData, "similarity", (node) => {
      node.qrlora = { panel: addPanel(node, "similarity", { height: 120 }) };
      node.qrlora.panel.note("Queue the workflow to compare the two adapters layer by layer.");
    }))) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      const stats = first(message, "qrlora_similarity");
      if (stats) this.qrlora.panel.rows(similarityRows(stats), "executed");
    });
  },
});
