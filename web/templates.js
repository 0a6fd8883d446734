// ComfyUI 0.3.75 lists a pack's example workflows once per folder it finds
// them in; this pack ships the same files in workflows/ (the source) and
// example_workflows/ (the name the template browser expects), so the list
// would show each twice. Both folders serve the same file for a name, so
// dropping repeated names loses nothing.
import { api, app } from "./qrlora_ui.js";

app.registerExtension({
  name: "qrlora.templates",
  init() {
    const original = api.getWorkflowTemplates?.bind(api);
    if (!original) return;
    api.getWorkflowTemplates = async () => {
      const templates = await original();
      for (const [pack, names] of Object.entries(templates ?? {})) templates[pack] = [...new Set(names)];
      return templates;
    };
  },
});
