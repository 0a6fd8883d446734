// Preview as Text (the stock PreviewAny node) shows what it is given as typed, trigger words included.
//
// The stock node renders its text as Markdown (frontend 1.32.9: a Tiptap editor on the canvas, marked +
// DOMPurify in the Vue node view), where a trigger word such as <c> or <s> reads as an HTML tag: the
// mix's prompt "a <c> shape in <s> style" showed as "a shape in ~~style~~". Backslash-escaping the
// characters that start HTML (<, >, &) makes both renderers show them as text; the rest of the
// Markdown keeps its meaning. Nothing is sent differently: the node's text input is untouched.
import { app, chain } from "./qrlora_ui.js";

const HTML_START = /[<>&]/g;

/** Markdown that both of the page's renderers show as `text`, character for character where HTML could start. */
export function asTyped(text) {
  return String(text).replace(HTML_START, (c) => `\\${c}`);
}

app.registerExtension({
  name: "qrlora.preview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "PreviewAny") return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      const preview = this.widgets?.find((w) => w.name === "preview");
      const text = message?.text?.[0];
      if (preview && typeof text === "string") preview.value = asTyped(text);
    });
  },
});
