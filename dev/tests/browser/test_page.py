"""The pack as a person uses it: the ComfyUI page in headless Chromium against the real server.

Workflows are loaded the way a drop or the template browser loads them
(app.loadGraphData), queued with the page's Run button, and watched until
the server reports them done and the page shows their results. Sliders and
buttons are moved with the mouse on the canvas.
"""

import json
import os

import pytest

from devkit import browser, examples, workflow
from toy_world import demo_assets
from devkit.server import PACK_FOLDER_NAME, Client

pytestmark = pytest.mark.browser

NAMES = ("qrlora_mix", "qrlora_compare", "qrlora_train_content", "qrlora_train_style", "qrlora_train_folder")

LINK_PROBLEMS_JS = """() => {
    const problems = [];
    const links = app.graph.links instanceof Map ? [...app.graph.links.values()] : Object.values(app.graph.links ?? {});
    for (const link of links) {
        const origin = app.graph.getNodeById(link.origin_id), target = app.graph.getNodeById(link.target_id);
        if (!origin || !target) { problems.push(`link ${link.id} joins a missing node`); continue; }
        const input = target.inputs?.[link.target_slot], output = origin.outputs?.[link.origin_slot];
        if (!input || input.link !== link.id) problems.push(`link ${link.id} is not the link of ${target.title}'s input ${link.target_slot}`);
        if (!output || !(output.links ?? []).includes(link.id)) problems.push(`link ${link.id} is not listed by ${origin.title}'s output`);
        if (input && output && !LiteGraph.isValidConnection(output.type, input.type)) problems.push(`link ${link.id}: ${output.type} into ${input.type}`);
    }
    for (const node of app.graph.nodes) for (const input of node.inputs ?? [])
        if (input.link != null && !links.some(l => l.id === input.link)) problems.push(`${node.title}.${input.name} points at missing link ${input.link}`);
    return problems;
}"""

WIDGET_BOX_JS = """({id, name}) => {
    app.canvas.draw(true, true);  // widget positions (w.y) are laid out when the node is drawn
    const node = app.graph.getNodeById(id), w = node.widgets.find(w => w.name === name);
    const rect = app.canvas.canvas.getBoundingClientRect(), margin = 15, h = LiteGraph.NODE_WIDGET_HEIGHT;
    const [x0, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + margin, node.pos[1] + w.y + h / 2]);
    const [x1] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] - margin, 0]);
    return {left: rect.left + x0, right: rect.left + x1, y: rect.top + y, value: w.value};
}"""

SHOW_NODE_JS = """(id) => {
    const node = app.graph.getNodeById(id);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [700 - node.pos[0] - node.size[0] / 2, 450 - node.pos[1] - node.size[1] / 2];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
}"""

MERGE_STATE_JS = """(id) => {
    const node = app.graph.getNodeById(id);
    return {
        sockets: node.inputs.filter(s => s.name.startsWith("qr_lora_")).map(s => s.name).sort(),
        connected: node.inputs.filter(s => s.name.startsWith("qr_lora_") && s.link != null).map(s => s.name).sort(),
        weights: node.widgets.filter(w => w.name.startsWith("weight_") && !w.hidden).map(w => w.name),
        values: Object.fromEntries(node.widgets.filter(w => w.name.startsWith("weight_")).map(w => [w.name, w.value])),
        balance: (b => ({value: b.value, hidden: !!b.hidden}))(node.widgets.find(w => w.name === "content ↔ style")),
    };
}"""


def load(page, name):
    wf = workflow.load(examples.path(name))
    missing = browser.load_workflow(page, wf)
    assert missing == [], f"{name}: the page lacks node types {missing}"
    return wf


def as_the_server_reads(prompt, object_info):
    """The prompt without titles and without inputs the node does not declare (the server ignores both;
    the page sends frontend-only widgets too, e.g. Preview as Text's display)."""
    def declared(node):
        spec = object_info[node["class_type"]]["input"]
        return {k: v for k, v in node["inputs"].items() if k in spec.get("required", {}) or k in spec.get("optional", {})}
    return {k: {**v, "inputs": declared(v), "_meta": None} for k, v in prompt.items()}


def show(page, node_id):
    """Center the node at scale 1 and wait until the canvas has drawn it there."""
    page.evaluate(SHOW_NODE_JS, int(node_id))
    page.wait_for_function("(id) => app.canvas.visible_nodes.some(n => n.id === id)", arg=int(node_id), timeout=10_000)
    browser.next_frames(page)


def widget_box(page, node_id, name):
    return page.evaluate(WIDGET_BOX_JS, {"id": int(node_id), "name": name})


def drag_slider(page, node_id, name, value, lo=-4.0, hi=4.0):
    """Press on the slider and drag it to where `value` sits, as a person would."""
    box = widget_box(page, node_id, name)
    at = lambda v: box["left"] + (box["right"] - box["left"]) * (v - lo) / (hi - lo)
    page.mouse.move(at(box["value"]), box["y"])
    page.mouse.down()
    page.mouse.move(at((box["value"] + value) / 2), box["y"], steps=4)
    page.mouse.move(at(value), box["y"], steps=4)
    page.mouse.up()
    return widget_box(page, node_id, name)["value"]


LAYOUT_JS = """(id) => { const n = app.graph.getNodeById(id);
    return JSON.stringify([n.inputs.map(s => s.name), n.widgets.map(w => w.name + (w.hidden ? ':hidden' : ''))]); }"""


def click_button(page, node_id, name):
    """Click a button widget and wait until the node's sockets or widgets change (what the pack's buttons do)."""
    before = page.evaluate(LAYOUT_JS, int(node_id))
    box = widget_box(page, node_id, name)
    page.mouse.click((box["left"] + box["right"]) / 2, box["y"])
    page.wait_for_function(f"([id, before]) => ({LAYOUT_JS})(id) !== before", arg=[int(node_id), before], timeout=10_000)


def run_from_page(page, comfy, timeout=300):
    """Press Run; return (what the page sent to POST /prompt, the finished /history entry)."""
    browser.close_dialogs(page)
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as answer:
        page.get_by_role("button", name="Run", exact=True).click()
    assert answer.value.ok, f"/prompt refused the page's workflow: {answer.value.text()}"
    sent = answer.value.request.post_data_json["prompt"]
    entry = Client(comfy.url).wait(answer.value.json()["prompt_id"], timeout)
    assert entry["status"]["status_str"] == "success", f"the run failed: {Client.error(entry)}"
    return sent, entry


def panel(page, node_id, name, state, timeout=30_000):
    """The text of a node's info panel once it reaches `state` (see web/qrlora_ui.js)."""
    selector = f'.qrlora-panel[data-qrlora-panel="{name}"][data-qrlora-node="{node_id}"][data-qrlora-state="{state}"]'
    page.wait_for_selector(selector, state="attached", timeout=timeout)
    return page.eval_on_selector(selector, "e => e.innerText")


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_with_no_missing_nodes_or_broken_links(ui, object_info, name):
    wf = load(ui, name)
    assert ui.evaluate(LINK_PROBLEMS_JS) == []
    assert ui.evaluate("() => app.graph.nodes.length") == len(wf["nodes"])
    # What the Run button would send is exactly what the suite's converter makes of the file.
    sent = ui.evaluate("async () => (await app.graphToPrompt()).output")
    api = workflow.to_api(wf, object_info)
    assert as_the_server_reads(sent, object_info) == as_the_server_reads(api, object_info)
    assert all(set(api[k]["inputs"]) <= set(sent[k]["inputs"]) for k in api), "the converter invents no inputs"


def test_mix_workflow_runs_from_the_page_and_shows_its_results(ui, comfy, artifacts):
    wf = load(ui, "qrlora_mix")
    ids = {t: workflow.node_id(wf, t) for t in ("Mix content + style", "The prompt, as sent", "Result")}
    sent, entry = run_from_page(ui, comfy)
    assert entry["outputs"][ids["Result"]]["images"]

    report = panel(ui, ids["Mix content + style"], "mix_report", "executed")
    assert report.startswith("Mixed cleanly") and "merged as one ΔR sum" in report
    assert demo_assets.CONTENT in report and "<c>" in report and "<s> style" in report, report
    # The prompt as typed, trigger words included (the stock preview renders Markdown, where <c> read as a tag).
    shown = ui.evaluate(f"() => app.graph.getNodeById({ids['The prompt, as sent']}).widgets.find(w => w.name === 'preview').element.innerText")
    assert shown.strip() == "a <c> shape in <s> style"
    show(ui, ids["Result"])  # the page loads a node's image when it draws the node, as a person scrolls to it
    ui.wait_for_function(f"() => app.graph.getNodeById({ids['Result']}).imgs?.[0]?.complete", timeout=30_000)

    # The whole graph, its result image included, at a zoom where the canvas still draws its text: the page as
    # large as the graph's nodes (title bars included) need at that zoom.
    scale, left, top = 0.8, 90, 200
    x0, y0, x1, y1 = ui.evaluate("""() => app.graph.nodes.reduce(([a, b, c, d], n) => [Math.min(a, n.pos[0]),
        Math.min(b, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT), Math.max(c, n.pos[0] + n.size[0]), Math.max(d, n.pos[1] + n.size[1])],
        [Infinity, Infinity, -Infinity, -Infinity])""")
    ui.set_viewport_size({"width": int((x1 - x0) * scale) + left + 60, "height": int((y1 - y0) * scale) + top + 260})  # below: room for the minimap
    try:
        ui.evaluate(f"""() => {{ app.canvas.ds.scale = {scale}; app.canvas.ds.offset = [{left / scale} - {x0}, {top / scale} - {y0}];
                                 app.canvas.setDirty(true, true); }}""")
        browser.next_frames(ui)
        shown = ui.evaluate(f"""() => {{ const n = app.graph.getNodeById({ids['Result']}), [x, y] = app.canvas.ds.convertOffsetToCanvas(n.pos);
                                        return [x, y, x + n.size[0] * {scale}, y + n.size[1] * {scale}, innerWidth, innerHeight]; }}""")
        assert 0 <= shown[0] and shown[2] <= shown[4] and 0 <= shown[1] and shown[3] <= shown[5], f"the result image is off the page: {shown}"
        ui.screenshot(path=os.path.join(artifacts, "qrlora_mix_after_run.png"))
    finally:
        ui.set_viewport_size(browser.VIEWPORT)


def test_compare_workflow_runs_from_the_page_and_shows_the_numbers(ui, comfy):
    wf = load(ui, "qrlora_compare")
    node = workflow.node_id(wf, "Content vs style")
    _, entry = run_from_page(ui, comfy)
    stats = entry["outputs"][node]["qrlora_similarity"][0]
    text = panel(ui, node, "similarity", "executed")
    assert f"{stats['mean_abs']:.4f}" in text and f"{stats['max_abs']:.4f}" in text
    assert str(len(stats["layers"])) in text
    ui.wait_for_function(f"() => app.graph.getNodeById({node}).imgs?.[0]?.naturalWidth === 768", timeout=30_000)


@pytest.mark.parametrize("kind", ["content", "style"])
def test_train_workflow_runs_from_the_page_and_draws_the_loss_curve(ui, comfy, kind):
    wf = load(ui, f"qrlora_train_{kind}")
    train = workflow.node_id(wf, f"Train {kind} adapter")
    ui.evaluate("""([train, size, sampler]) => {
        const set = (id, name, v) => { app.graph.getNodeById(id).widgets.find(w => w.name === name).value = v; };
        set(train, "steps", 3); set(train, "rank", 4); set(size, "width", 64); set(size, "height", 64); set(sampler, "steps", 2);
    }""", [int(train), int(workflow.node_id(wf, "Image size")), int(workflow.node_id(wf, "Sampler"))])
    _, entry = run_from_page(ui, comfy, timeout=600)
    text = panel(ui, train, "loss_curve", "executed")
    saved = entry["outputs"][train]["qrlora"][0]["file"]
    assert saved.startswith(f"qrlora/{kind}_") and f"Saved {saved}." in text, text  # the run's summary, on the node
    assert "3 steps" in text and ui.get_attribute(f'.qrlora-panel[data-qrlora-node="{train}"]', "data-qrlora-steps") == "3"
    # The loss as an image: ComfyUI's own Plot Loss Graph node, fed by loss_map.
    graph = workflow.node_id(wf, "Loss curve")
    assert ui.evaluate(f"() => app.graph.getNodeById({graph}).type") == "LossGraphNode"
    assert entry["outputs"][graph]["images"]


def test_folder_workflow_runs_from_the_page_and_shows_buckets_and_samples(ui, comfy):
    wf = load(ui, "qrlora_train_folder")
    titles = ("Bucket, encode and caption", "Train from the folder", "Samples while training", "Image size", "Sampler", "Result")
    ids = {t: workflow.node_id(wf, t) for t in titles}
    ui.evaluate("""([data, train, samples, size, sampler]) => {
        const set = (id, name, v) => { app.graph.getNodeById(id).widgets.find(w => w.name === name).value = v; };
        set(data, "resolution", 128); set(data, "default_caption", "a <t> shape seen from the page");  // not a cached run
        set(train, "steps", 2); set(train, "rank", 4); set(train, "checkpoint_every", 0);
        set(samples, "every", 1); set(samples, "width", 64); set(samples, "height", 64); set(samples, "steps", 2);
        set(size, "width", 64); set(size, "height", 64); set(sampler, "steps", 2);
    }""", [int(ids[t]) for t in titles[:-1]])
    sent, entry = run_from_page(ui, comfy, timeout=600)
    assert sent[ids["Bucket, encode and caption"]]["inputs"]["resolution"] == 128
    buckets = {(b["width"], b["height"]): b["images"] for b in entry["outputs"][ids["Bucket, encode and caption"]]["qrlora_buckets"]}
    assert buckets == demo_assets.FOLDER_BUCKETS_AT_128
    assert f"{demo_assets.FOLDER_IMAGES} images in 1 bucket" in panel(ui, ids["Bucket, encode and caption"], "buckets", "executed")
    train = ids["Train from the folder"]
    panel(ui, train, "loss_curve", "executed")
    assert [s["step"] for s in entry["outputs"][train]["qrlora_samples"]] == [1, 1, 2, 2]
    # Every sample set shows on the node, one strip per step, newest first, each labelled with its step.
    assert sample_strips(ui, train) == [("step 2", 2), ("step 1", 2)]
    assert entry["outputs"][ids["Result"]]["images"]


def test_moving_a_mixer_strength_slider_reaches_the_servers_prompt(ui, comfy):
    wf = load(ui, "qrlora_mix")
    mixer = workflow.node_id(wf, "Mix content + style")
    show(ui, mixer)
    ui.wait_for_function(f"() => app.graph.getNodeById({mixer}).widgets.some(w => w.name === 'strength_2')", timeout=10_000)
    value = drag_slider(ui, mixer, "strength_2", 0.25)
    assert abs(value - 0.25) < 0.1, f"the drag left strength_2 at {value}"

    sent, entry = run_from_page(ui, comfy)
    rows = json.loads(sent[mixer]["inputs"]["rows"])
    assert [r["strength"] for r in rows] == [1.0, value] and [r["role"] for r in rows] == ["content", "style"]
    assert json.loads(entry["prompt"][2][mixer]["inputs"]["rows"]) == rows  # what the server ran
    assert not any(k.startswith(("strength_", "lora_", "on_", "role_")) for k in sent[mixer]["inputs"]), "the row widgets are the page's, not sent"


def test_merge_slots_come_and_go_and_the_balance_sets_both_weights(ui):
    ids = ui.evaluate("""() => {
        app.graph.clear();
        const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
        const merge = add("QRLoRAMerge", 400, 100);
        const loaders = [0, 1, 2].map(i => add("QRLoRALoader", 0, 60 + i * 200));
        return {merge: merge.id, loaders: loaders.map(n => n.id)};
    }""")
    merge = str(ids["merge"])
    state = lambda: ui.evaluate(MERGE_STATE_JS, ids["merge"])
    connect = lambda i, slot: ui.evaluate("""([from, to, slot]) => { const m = app.graph.getNodeById(to);
        app.graph.getNodeById(from).connect(0, m, m.findInputSlot(slot)); }""", [ids["loaders"][i], ids["merge"], slot])

    s = state()
    assert (s["sockets"], s["weights"], s["balance"]["hidden"]) == (["qr_lora_1", "qr_lora_2"], ["weight_1", "weight_2"], False)
    connect(0, "qr_lora_1")
    connect(1, "qr_lora_2")
    assert state()["sockets"] == ["qr_lora_1", "qr_lora_2", "qr_lora_3"], "both used: one empty socket for the next adapter"

    show(ui, merge)
    click_button(ui, merge, "+ adapter")
    s = state()
    assert s["weights"] == ["weight_1", "weight_2", "weight_3"] and s["balance"]["hidden"], "three slots: no two-way balance"
    connect(2, "qr_lora_3")
    assert state()["sockets"] == [f"qr_lora_{i}" for i in range(1, 5)]

    click_button(ui, merge, "− adapter")
    s = state()
    assert s["connected"] == ["qr_lora_1", "qr_lora_2"] and s["weights"] == ["weight_1", "weight_2"]
    assert s["sockets"] == ["qr_lora_1", "qr_lora_2", "qr_lora_3"] and not s["balance"]["hidden"]

    show(ui, merge)
    drag_slider(ui, merge, "content ↔ style", 0.9, lo=0.0, hi=1.0)
    s = state()
    assert s["balance"]["value"] > 0.8 and s["values"]["weight_2"] == 1.0
    assert s["values"]["weight_1"] == pytest.approx(2 * (1 - s["balance"]["value"]), abs=0.011)
    sent = ui.evaluate("async () => (await app.graphToPrompt()).output")[merge]["inputs"]
    assert sent["weight_1"] == s["values"]["weight_1"] and sent["weight_2"] == 1.0
    assert "qr_lora_3" not in sent and "content ↔ style" not in sent


def test_loader_shows_what_a_file_is_when_it_is_picked(ui, comfy):
    with open(comfy.path("models", "loras", "not_a_qrlora.safetensors"), "wb") as f:
        import safetensors.torch
        import torch
        f.write(safetensors.torch.save({"weight": torch.zeros(2)}))
    node = str(ui.evaluate("""() => { app.graph.clear(); const n = LiteGraph.createNode("QRLoRALoader");
        n.pos = [200, 200]; app.graph.add(n); return n.id; }"""))
    pick = """([id, name]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === "lora_name");
        w.options.values = [...new Set([...w.options.values, name])]; w.value = name; w.callback?.(name); }"""
    ui.evaluate(pick, [int(node), demo_assets.STYLE])
    text = panel(ui, node, "adapter_info", "selected")
    assert "native" in text and "<s> style" in text and f"{demo_assets.LAYERS} ·" in text
    ui.evaluate(pick, [int(node), "not_a_qrlora.safetensors"])
    assert "holds no QR-LoRA layers" in panel(ui, node, "adapter_info", "error")


SEND_JS = """async ([events]) => {
    const facts = await (await window.comfyAPI.api.api.fetchApi("/qrlora/page")).json();
    app.graph.clear();
    const n = LiteGraph.createNode(facts.nodes.train);
    n.pos = [200, 200]; n.size = [420, 700]; app.graph.add(n);
    for (const [name, detail] of events) window.comfyAPI.api.api.dispatchCustomEvent(facts.events[name], {node: n.id, ...detail});
    return [n.id, facts];
}"""


def send_to_new_train_node(page, events):
    """A new Train QR-LoRA node, and `events` ([name in pageFacts().events, detail]) sent to it as nodes/train.py sends them."""
    return page.evaluate(SEND_JS, [events])


def sample_strips(page, node_id):
    """[(label, images loaded)] of the node's sample strips, top to bottom, once every image has loaded."""
    strips = f'.qrlora-panel[data-qrlora-node="{node_id}"] [data-qrlora-sample-step]'
    page.wait_for_function(f"() => [...document.querySelectorAll('{strips} img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30_000)
    return [tuple(s) for s in page.eval_on_selector_all(
        strips, "all => all.map(s => [s.firstChild.innerText, [...s.querySelectorAll('img')].filter(i => i.naturalWidth > 0).length])")]


def test_train_node_shows_live_loss_smoothed_progress_and_time_left(ui):
    """web/train.js listens for the event types GET /qrlora/page names (nodes/train.py sends them), on the node they name."""
    losses = [0.5, 0.25, 0.125, 0.5]
    node, facts = send_to_new_train_node(ui, [["train_loss", {"step": k, "steps": 200, "loss": v, "seconds": 10.0 * (k - 1)}]
                                              for k, v in enumerate(losses, start=1)])
    assert facts["nodes"]["train"] == "QRLoRATrain"
    text = panel(ui, node, "loss_curve", "training")
    assert "step 4 of 200 · 32:40 left" in text, text  # 10 s a step after the first, 196 steps to go
    box = f'.qrlora-panel[data-qrlora-node="{node}"]'
    assert ui.get_attribute(box, "data-qrlora-steps") == "4"
    keep = 1 - 2 / (10 + 1)  # a span of 10 steps: a twentieth of 200, at least 10
    ema = [sum((1 - keep) * keep ** (k - i) * losses[i] for i in range(k + 1)) / (1 - keep ** (k + 1)) for k in range(len(losses))]
    assert float(ui.get_attribute(box, "data-qrlora-smoothed")) == pytest.approx(ema[-1], rel=1e-9)
    assert ema[-1] != losses[-1]


def test_train_node_shows_every_sample_set_labelled_newest_first(ui, comfy):
    temp = comfy.path("temp", "qrlora_samples")
    os.makedirs(temp, exist_ok=True)
    from PIL import Image

    for k in range(3):
        Image.new("RGB", (32, 32), (80 * k, 0, 0)).save(os.path.join(temp, f"page_test_{k}.png"))
    image = lambda k: {"filename": f"page_test_{k}.png", "subfolder": "qrlora_samples", "type": "temp"}
    made = lambda step, ks: ["train_samples", {"step": step, "samples": [
        {"step": step, "prompt": f"prompt {k}", "file": f"run_step{step:06}_sample{k}.png", "image": image(k)} for k in ks]}]
    node, _ = send_to_new_train_node(ui, [["train_loss", {"step": 1, "steps": 100, "loss": 0.5, "seconds": 0}],
                                          made(50, [0, 1]), made(100, [2])])
    assert sample_strips(ui, node) == [("step 100", 1), ("step 50", 2)]


def test_train_node_says_what_a_stop_kept(ui):
    text = "Stopped at step 7; kept qrlora/x_00001_step000007.safetensors."
    node, _ = send_to_new_train_node(ui, [*(["train_loss", {"step": k, "steps": 100, "loss": 1 / k, "seconds": k}] for k in range(1, 8)),
                                          ["train_stopped", {"step": 7, "file": "qrlora/x_00001_step000007.safetensors", "text": text}]])
    assert text in panel(ui, node, "loss_curve", "stopped")
    ui.wait_for_selector(f".p-toast-message:has-text('{text}')", timeout=10_000)


def test_train_node_shows_why_a_run_failed(ui):
    """ComfyUI's execution_error for the node (e.g. a diverged run) shows on it too: its message says what was kept."""
    text = "Training stopped at step 3: the loss became nan (it diverged); the last good state (step 2) is in qrlora/x_00001_step000002.safetensors."
    node, _ = send_to_new_train_node(ui, [["train_loss", {"step": k, "steps": 10, "loss": 1 / k, "seconds": k}] for k in (1, 2)])
    ui.evaluate("""([id, text]) => window.comfyAPI.api.api.dispatchCustomEvent("execution_error",
        {prompt_id: "x", node_id: String(id), node_type: "QRLoRATrain", exception_message: text + "\\n", exception_type: "AdapterError",
         traceback: [], executed: [], current_inputs: {}, current_outputs: []})""", [node, text])
    assert text in panel(ui, node, "loss_curve", "failed")
    browser.close_dialogs(ui)  # ComfyUI's own error dialog


def test_cancel_from_the_page_says_which_checkpoint_it_kept(ui, comfy):
    """Cancel during a real run from the page: ComfyUI reports only the interrupt; the node says where the training is."""
    wf = load(ui, "qrlora_train_content")
    train = workflow.node_id(wf, "Train content adapter")
    ui.evaluate("""(train) => { const w = name => app.graph.getNodeById(train).widgets.find(w => w.name === name);
        w("steps").value = 400; w("rank").value = 4; w("checkpoint_every").value = 2; w("filename_prefix").value = "qrpage/stopped"; }""",
                int(train))
    browser.close_dialogs(ui)
    with ui.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as answer:
        ui.get_by_role("button", name="Run", exact=True).click()
    prompt_id = answer.value.json()["prompt_id"]
    ui.wait_for_function(f"() => Number(document.querySelector('.qrlora-panel[data-qrlora-node=\"{train}\"]')?.dataset.qrloraSteps) >= 3",
                         timeout=300_000)
    ui.evaluate("() => app.extensionManager.command.execute('Comfy.Interrupt')")  # what the Cancel button runs
    entry = Client(comfy.url).wait(prompt_id, timeout=120)
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]
    text = panel(ui, train, "loss_curve", "stopped")
    kept = [f for f in os.listdir(comfy.path("models", "loras", "qrpage")) if f.startswith("stopped_")]
    last = max(kept)
    step = int(last.split("_step")[1].split(".")[0])
    assert f"Stopped at step {step}; kept qrpage/{last}." in text, (text, kept)
    assert 3 <= step < 400


def test_demo_url_opens_the_mix_workflow_and_templates_list_each_example_once(chromium, comfy, demo_models):
    page = chromium.new_page(viewport=browser.VIEWPORT)
    try:
        page.goto(demo_assets.page_url(comfy.url))  # what `make demo` prints
        page.wait_for_function("window.app?.graph?.nodes?.some(n => n.title === 'Mix content + style')", timeout=90_000)
        titles = page.evaluate("() => app.graph.nodes.map(n => n.title)")
        assert len(titles) == len(workflow.load(demo_assets.MIX_WORKFLOW)["nodes"])
        templates = page.evaluate("async () => await window.comfyAPI.api.api.getWorkflowTemplates()")
        assert sorted(templates[PACK_FOLDER_NAME]) == sorted(examples.TITLES.values())
    finally:
        page.close()
