// Train QR-LoRA on the page: the loss curve (raw and smoothed), "step k of N" and the time left while it
// trains, the sample images of every sample step, and what the run ended with (saved, or stopped by Cancel).
//
// The node sends live events (their types: pageFacts().events; nodes/train.py sends them):
//   train_loss    {node, step, steps, loss, seconds}  after each step (seconds: since step 1 ended)
//   train_samples {node, step, samples: [{prompt, file, image: {filename, subfolder, type}}]}
//   train_stopped {node, step, file, text}             Cancel: what was kept (ComfyUI itself says only "interrupted")
// A run that fails (ComfyUI's execution_error on this node: diverged, out of memory) shows its message here too,
// since it says what was kept and what to change.
// Finished, its ui payload carries `loss` (the history), `text` (the summary: "... Saved <file>.")
// and `qrlora_samples` (every sample image), so a reloaded page shows the same.
import { api, app, chain, addPanel, onNodeOfType, pageFacts } from "./qrlora_ui.js";

const RAW = "rgba(108, 182, 255, 0.45)";
const SMOOTHED = "#ffb454";

export function lossHistory(message) {
  const loss = message?.loss ?? message?.loss_map?.[0]?.loss;
  if (!Array.isArray(loss)) return null;
  return (Array.isArray(loss[0]) ? loss[0] : loss).map(Number).filter(Number.isFinite);
}

/** Steps the smoothing averages over: a twentieth of the run, at least 10 (diffusion losses are noisy step to step). */
export function smoothingSpan(steps) {
  return Math.max(10, Math.round(steps / 20));
}

/** The exponential moving average over `span` steps (weight 2 / (span + 1)), debiased at the start as TensorBoard does. */
export function smoothed(values, span) {
  const keep = 1 - 2 / (span + 1);
  let average = 0;
  return values.map((v, i) => {
    average = keep * average + (1 - keep) * v;
    return average / (1 - keep ** (i + 1));
  });
}

/** "1:05", "1:02:03" */
function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const [h, m] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60)];
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

/** "step k of N · m:ss left": the rate from the steps after the first (the first also loads the model). */
export function progressLine(step, steps, seconds) {
  const parts = [`step ${step} of ${steps}`];
  if (step > 1 && step < steps && Number.isFinite(seconds)) parts.push(`${clock((seconds / (step - 1)) * (steps - step))} left`);
  return parts.join(" · ");
}

function drawChart(canvas, losses, steps) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(120, canvas.clientWidth || 240);
  const height = Math.max(60, canvas.clientHeight || 110);
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = "#999";
  if (!losses.length) {
    ctx.fillText("no steps yet", 8, height / 2);
    return null;
  }
  const span = smoothingSpan(steps);
  const smooth = smoothed(losses, span);
  const lo = Math.min(...losses);
  const hi = Math.max(...losses);
  const pad = { left: 40, right: 6, top: 14, bottom: 14 };
  const x = (i) => pad.left + (i / Math.max(1, steps - 1)) * (width - pad.left - pad.right);  // the whole run's width
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo || 1)) * (height - pad.top - pad.bottom);
  ctx.fillText(hi.toPrecision(3), 2, pad.top + 4);
  ctx.fillText(lo.toPrecision(3), 2, height - pad.bottom);
  ctx.strokeStyle = "#555";
  ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
  for (const [values, color, lineWidth] of [[losses, RAW, 1], [smooth, SMOOTHED, 2]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = lineWidth;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    if (values.length === 1) ctx.lineTo(x(0) + 1, y(values[0]));
    ctx.stroke();
  }
  canvas.title = `Loss per step (blue) and its moving average over ${span} steps (orange).`;
  const legend = [[RAW.replace("0.45", "1"), `loss ${losses.at(-1).toPrecision(4)}`], [SMOOTHED, `smoothed ${smooth.at(-1).toPrecision(4)}`]];
  let at = pad.left;
  for (const [color, text] of legend) {
    ctx.fillStyle = color;
    ctx.fillText(text, at, 10);
    at += ctx.measureText(text).width + 10;
  }
  return smooth.at(-1);
}

let styled = false;
function addStyles() {
  if (styled) return;
  styled = true;
  const style = document.createElement("style");
  style.textContent = `
    .qrlora-train .qrlora-train-chart { height: 110px; }
    .qrlora-train .qrlora-train-progress { color: var(--input-text, #ddd); }
    .qrlora-train .qrlora-train-result { white-space: pre-wrap; margin-top: 2px; }
    .qrlora-train .qrlora-train-result[data-qrlora-outcome="stopped"] { color: #ffb454; }
    .qrlora-train .qrlora-train-result[data-qrlora-outcome="failed"] { color: #e57373; }
    .qrlora-train .qrlora-train-strip { margin-top: 4px; }
    .qrlora-train .qrlora-train-strip > div { color: var(--descrip-text, #999); }
    .qrlora-train .qrlora-train-strip img { height: 72px; margin-right: 2px; image-rendering: pixelated; cursor: pointer; }
  `;
  document.head.appendChild(style);
}

function part(panel, name, tag = "div") {
  const element = document.createElement(tag);
  element.className = `qrlora-train-${name}`;
  panel.element.appendChild(element);
  return element;
}

function addTrainPanel(node) {
  addStyles();
  const panel = addPanel(node, "loss_curve", { height: 200 });
  panel.element.classList.add("qrlora-train");
  panel.element.replaceChildren();
  const progress = part(panel, "progress");
  progress.textContent = "The loss curve appears here while the adapter trains.";
  node.qrlora = {
    panel,
    progress,
    chart: part(panel, "chart", "canvas"),
    result: part(panel, "result"),
    samples: part(panel, "samples"),
    losses: [],
    steps: 0,
  };
  // Drawn at the size the canvas has: again when the node is resized (and once it is first laid out).
  new ResizeObserver(() => node.qrlora.losses.length && draw(node, panel.element.dataset.qrloraState)).observe(node.qrlora.chart);
}

function draw(node, state) {
  const { panel, chart, losses, steps } = node.qrlora;
  const last = drawChart(chart, losses, Math.max(steps, losses.length));
  panel.mark(state);
  panel.element.dataset.qrloraSteps = String(losses.length);
  panel.element.dataset.qrloraSmoothed = last == null ? "" : String(last);
}

function viewUrl({ filename, subfolder = "", type = "temp" }) {
  const query = new URLSearchParams({ filename, subfolder, type });
  return api.apiURL(`/view?${query}`);
}

/** One strip per sample step, newest on top: "step k" and its images (the prompt as each one's tooltip). */
function showSamples(node, step, made) {
  const strips = node.qrlora.samples;
  strips.querySelector(`[data-qrlora-sample-step="${step}"]`)?.remove();
  const strip = document.createElement("div");
  strip.className = "qrlora-train-strip";
  strip.dataset.qrloraSampleStep = String(step);
  const label = document.createElement("div");
  label.textContent = `step ${step}`;
  strip.appendChild(label);
  for (const { prompt, file, image } of made) {
    const img = document.createElement("img");
    img.src = viewUrl(image);
    img.title = `${prompt}\n${file}`;
    img.alt = prompt;
    img.onclick = () => window.open(img.src, "_blank");
    strip.appendChild(img);
  }
  const newer = [...strips.children].find((s) => Number(s.dataset.qrloraSampleStep) < step);
  strips.insertBefore(strip, newer ?? null);
}

function showResult(node, text, outcome) {
  node.qrlora.result.textContent = text;
  node.qrlora.result.dataset.qrloraOutcome = outcome;
}

function ourNode(detail, trainType) {
  const node = app.graph?.getNodeById(Number(detail?.node) || detail?.node);
  return node?.type === trainType && node.qrlora ? node : null;
}

function onLoss(detail, node) {
  const state = node.qrlora;
  if (detail.step <= state.losses.length) {  // a new run on this node
    state.losses.length = Math.max(0, detail.step - 1);
    if (detail.step === 1) {
      state.samples.replaceChildren();
      showResult(node, "", "running");
    }
  }
  state.losses.push(Number(detail.loss));
  state.steps = Number(detail.steps) || state.losses.length;
  state.progress.textContent = progressLine(detail.step, state.steps, Number(detail.seconds));
  draw(node, "training");
}

function onStopped(detail, node) {
  const { losses } = node.qrlora;
  node.qrlora.progress.textContent = `stopped at step ${losses.length} of ${node.qrlora.steps}`;
  showResult(node, detail.text, "stopped");
  draw(node, "stopped");
  app.extensionManager?.toast?.add({ severity: "warn", summary: `${node.title}: stopped`, detail: detail.text, life: 10_000 });
}

function onFailed(detail, node) {
  node.qrlora.progress.textContent = `failed at step ${node.qrlora.losses.length} of ${node.qrlora.steps}`;
  showResult(node, String(detail.exception_message ?? "").trim(), "failed");
  draw(node, "failed");
}

function onExecuted(node, message) {
  const losses = lossHistory(message);
  if (!losses) return;
  const state = node.qrlora;
  state.losses = losses;
  state.steps = losses.length;
  state.progress.textContent = `${losses.length} steps`;
  showResult(node, message.text?.[0] ?? "", "saved");
  const samples = message.qrlora_samples ?? [];
  state.samples.replaceChildren();
  for (const step of new Set(samples.map((s) => s.step))) showSamples(node, step, samples.filter((s) => s.step === step));
  draw(node, "executed");
}

app.registerExtension({
  name: "qrlora.train",
  async setup() {
    const { nodes, events } = await pageFacts();
    const listen = (type, handle) =>
      api.addEventListener(type, ({ detail }) => {
        const node = ourNode(detail, nodes.train);
        if (node) handle(detail, node);
      });
    listen(events.train_loss, onLoss);
    listen(events.train_samples, (detail, node) => showSamples(node, detail.step, detail.samples));
    listen(events.train_stopped, onStopped);
    api.addEventListener("execution_error", ({ detail }) => {
      const node = ourNode({ node: detail?.node_id }, nodes.train);
      if (node) onFailed(detail, node);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(await onNodeOfType(nodeType, nodeData, "train", addTrainPanel))) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      if (this.qrlora) onExecuted(this, message);
    });
  },
});
