// QR-LoRA Training Data: which aspect-ratio buckets the folder's images went to, and how many each.
import { app, chain, addPanel, onNodeOfType } from "./qrlora_ui.js";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

export function bucketRows(buckets) {
  const images = buckets.reduce((sum, b) => sum + b.images, 0);
  return [
    ["buckets", `${plural(images, "image")} in ${plural(buckets.length, "bucket")}`],
    ...buckets.map((b) => [`${b.width}x${b.height}`, plural(b.images, "image")]),
  ];
}

app.registerExtension({
  name: "qrlora.train_data",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(await onNodeOfType(nodeType, nodeData, "train_data", (node) => {
      node.qrlora = { panel: addPanel(node, "buckets", { height: 90 }) };
      node.qrlora.panel.note("Queue the workflow to see which aspect-ratio buckets the images go to.");
    }))) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      const buckets = message?.qrlora_buckets;
      if (Array.isArray(buckets) && this.qrlora) this.qrlora.panel.rows(bucketRows(buckets), "executed");
    });
  },
});
