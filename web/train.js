// Train QR-LoRA: the loss curve on the node, live while it trains and in full when it finishes.
//
// Live: the node may send `qrlora.train.loss` events ({node, step, loss}) with
// PromptServer.send_sync while it trains. Finished: its ui payload carries the
// loss history as `loss` (a list of numbers). Either is drawn here.
import { api, app, chain, addPanel, drawLineChart, onNodeOfType } from "./qrlora_ui.js";

const NODE = "QRLoRATrain";
const EVENT = "qrlora.train.loss";

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

function setup(node) {
  node.qrlora = { panel: addPanel(node, "loss_curve", { height: 140 }), losses: [] };
  node.qrlora.panel.note("The loss curve appears here while the adapter trains.");
}

api.addEventListener(EVENT, ({ detail }) => {
  const node = app.graph?.getNodeById(Number(detail?.node) || detail?.node);
  if (node?.type !== NODE || !node.qrlora) return;
  if (detail.step <= node.qrlora.losses.length) node.qrlora.losses.length = Math.max(0, detail.step - 1);
  node.qrlora.losses.push(Number(detail.loss));
  draw(node, "training");
});

app.registerExtension({
  name: "qrlora.train",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!onNodeOfType(nodeType, nodeData, NODE, setup)) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      const losses = lossHistory(message);
      if (!losses || !this.qrlora) return;
      this.qrlora.losses = losses;
      draw(this, "executed");
    });
  },
});
