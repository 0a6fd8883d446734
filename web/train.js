// Train QR-LoRA: the loss curve on the node, live while it trains and in full when it finishes.
//
// Live: the node sends an event ({node, step, loss}; its type is pageFacts().events.train_loss)
// with PromptServer.send_sync after each step. Finished: its ui payload carries the
// loss history as `loss` (a list of numbers). Either is drawn here.
import { api, app, chain, addPanel, drawLineChart, onNodeOfType, pageFacts } from "./qrlora_ui.js";

export function lossHistory(message) {
  const loss = message?.loss ?? message?.loss_map?.[0]?.loss;
  if (!Array.isArray(loss)) return null;
  return (Array.isArray(loss[0]) ? loss[0] : loss).map(Number).filter(Number.isFinite);
}

function draw(node, state) {
  const { panel, losses } = node.qrlora;
  drawLineChart(panel.canvas(), losses, { label: "loss" });
  panel.mark(state);
  panel.element.dataset.qrloraSteps = String(losses.length);
}

function addLossPanel(node) {
  node.qrlora = { panel: addPanel(node, "loss_curve", { height: 140 }), losses: [] };
  node.qrlora.panel.note("The loss curve appears here while the adapter trains.");
}

function onLoss({ detail }, trainNode) {
  const node = app.graph?.getNodeById(Number(detail?.node) || detail?.node);
  if (node?.type !== trainNode || !node.qrlora) return;
  if (detail.step <= node.qrlora.losses.length) node.qrlora.losses.length = Math.max(0, detail.step - 1);
  node.qrlora.losses.push(Number(detail.loss));
  draw(node, "training");
}

app.registerExtension({
  name: "qrlora.train",
  async setup() {
    const { nodes, events } = await pageFacts();
    api.addEventListener(events.train_loss, (event) => onLoss(event, nodes.train));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(await onNodeOfType(nodeType, nodeData, "train", addLossPanel))) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      const losses = lossHistory(message);
      if (!losses || !this.qrlora) return;
      this.qrlora.losses = losses;
      draw(this, "executed");
    });
  },
});
