"""Mix QR-LoRAs, Merge ΔR and Mix Grid in the real page: the Mixer's rows, Merge ΔR's report (named rows, all of
it shown, also after a cache hit), the content ↔ style balance, the grid's widgets, help page and picture, and both
node views (the canvas and Nodes 2.0)."""

import json
import shutil
import urllib.request

import numpy as np
import pytest
from PIL import Image

from browser.test_page import MERGE_STATE_JS, click_button, load, panel, run_from_page, show
from devkit import browser, workflow
from devkit.server import PACK_FOLDER_NAME, Client
from toy_world import demo_assets, pipeline

pytestmark = pytest.mark.browser

ADD_NODES_JS = """(types) => {
    app.graph.clear();
    return types.map(([type, x, y]) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n.id; });
}"""
SET_JS = """([id, name, value]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === name);
    w.value = value; w.callback?.(value); }"""
CONNECT_JS = """([from, slot, to, input]) => { const n = app.graph.getNodeById(to);
    app.graph.getNodeById(from).connect(slot, n, n.findInputSlot(input)); }"""
ROWS_JS = "(id) => JSON.parse(app.graph.getNodeById(id).widgets.find(w => w.name === 'rows').value)"
VUE_JS = "async (on) => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on); }"


def dismiss_toasts(page):
    """Close the page's notices (they cover the Run button), saying what they were."""
    return page.evaluate("""() => {
        const notices = [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText);
        document.querySelectorAll('.p-toast-close-button').forEach(b => b.click());
        return notices; }""")


def reopen(page):
    """Save the graph and open it again, as a workflow file is."""
    page.evaluate("""async () => { const saved = JSON.parse(JSON.stringify(app.graph.serialize()));
        await app.loadGraphData(saved, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false}); }""")


def rows_of(page, node):
    return page.evaluate(ROWS_JS, int(node))


def test_mixer_rows_come_and_go_and_are_what_the_page_sends(ui):
    (mixer,) = ui.evaluate(ADD_NODES_JS, [["QRLoRAMixer", 200, 100]])
    ui.wait_for_function("(id) => app.graph.getNodeById(id).qrlora?.report.element.dataset.qrloraState === 'selected'", arg=mixer)
    assert rows_of(ui, mixer) == [] and ui.evaluate(f"() => app.graph.getNodeById({mixer}).qrlora.less.disabled")
    show(ui, mixer)
    click_button(ui, mixer, "+ row")
    show(ui, mixer)
    click_button(ui, mixer, "+ row")
    assert [r["role"] for r in rows_of(ui, mixer)] == ["content", "style"]
    ui.evaluate(SET_JS, [mixer, "lora_1", demo_assets.CONTENT])
    ui.evaluate(SET_JS, [mixer, "lora_2", demo_assets.STYLE])
    ui.evaluate(SET_JS, [mixer, "strength_2", 0.5])
    assert rows_of(ui, mixer) == [{"lora": demo_assets.CONTENT, "on": True, "strength": 1, "role": "content"},
                                  {"lora": demo_assets.STYLE, "on": True, "strength": 0.5, "role": "style"}]
    words = panel(ui, mixer, "mix_report", "selected")
    ui.wait_for_function(f"() => document.querySelector('.qrlora-panel[data-qrlora-node=\"{mixer}\"]').innerText.includes('<s> style')")
    assert "<c>" in panel(ui, mixer, "mix_report", "selected"), words

    ui.evaluate(SET_JS, [mixer, "on_2", False])
    assert rows_of(ui, mixer)[1]["on"] is False
    sent = ui.evaluate("async () => (await app.graphToPrompt()).output")[str(mixer)]["inputs"]
    assert json.loads(sent["rows"]) == rows_of(ui, mixer) and set(sent) == {"rows", "prompt"}

    # Saved and opened again: the rows come back from the one saved value.
    reopen(ui)
    ui.wait_for_function(f"() => app.graph.getNodeById({mixer}).widgets.some(w => w.name === 'on_2')")
    assert ui.evaluate(f"() => app.graph.getNodeById({mixer}).widgets.find(w => w.name === 'on_2').value") is False
    show(ui, mixer)
    click_button(ui, mixer, "− row")
    assert [r["lora"] for r in rows_of(ui, mixer)] == [demo_assets.CONTENT]
    assert dismiss_toasts(ui) == []


def merge_graph(page):
    """Two loaders into Merge ΔR, its report into Preview as Text: (merge id, the graph's API prompt)."""
    content, style, merge, preview = page.evaluate(ADD_NODES_JS, [
        ["QRLoRALoader", 0, 100], ["QRLoRALoader", 0, 400], ["QRLoRAMerge", 400, 100], ["PreviewAny", 800, 100]])
    page.evaluate(SET_JS, [content, "lora_name", demo_assets.CONTENT])
    page.evaluate(SET_JS, [style, "lora_name", demo_assets.STYLE])
    for args in ([content, 0, merge, "qr_lora_1"], [style, 0, merge, "qr_lora_2"], [merge, 1, preview, "source"]):
        page.evaluate(CONNECT_JS, args)
    return merge


def test_merge_report_names_the_adapters_shows_all_of_it_and_shows_after_a_cache_hit(ui, comfy):
    merge = merge_graph(ui)
    ui.evaluate(SET_JS, [merge, "weight_2", 0.62])  # a mix no other test runs: the API run below fills the cache
    prompt = ui.evaluate("async () => (await app.graphToPrompt()).output")
    Client(comfy.url).run(prompt)  # as `make demo` does before the page opens
    dismiss_toasts(ui)
    _, entry = run_from_page(ui, comfy)
    cached = [m for kind, m in entry["status"]["messages"] if kind == "execution_cached"]
    assert str(merge) in cached[0]["nodes"], "the page's run was meant to be a cache hit"

    text = panel(ui, merge, "mix_report", "executed")
    lines = text.splitlines()
    assert lines[0].startswith("Mixed cleanly"), "plain words first"
    content, style = (n.split("/")[-1].removesuffix(".safetensors") for n in (demo_assets.CONTENT, demo_assets.STYLE))
    assert any(demo_assets.CONTENT in line and "1.00" in line for line in lines)
    assert any(demo_assets.STYLE in line and "0.62" in line for line in lines)
    assert "weight_1" not in text and "merged as one ΔR sum" in text
    show(ui, merge)
    browser.next_frames(ui, 4)
    whole = ui.evaluate(f"""() => {{ const e = document.querySelector('.qrlora-panel[data-qrlora-node="{merge}"]');
        return [e.scrollHeight, e.clientHeight]; }}""")
    assert whole[0] <= whole[1] + 1, f"the report is cut off: {whole}"
    labels = ui.evaluate(f"() => app.graph.getNodeById({merge}).widgets.filter(w => /^weight_[12]$/.test(w.name)).map(w => w.label)")
    assert content in labels[0] and style in labels[1], labels
    loader = ui.evaluate(f"() => app.graph.getNodeById({merge}).getInputNode(0).id")
    ui.evaluate(SET_JS, [loader, "lora_name", "refreshed_elsewhere.safetensors"])  # a new pick upstream
    label = ui.evaluate(f"() => app.graph.getNodeById({merge}).widgets.find(w => w.name === 'weight_1').label")
    assert label == "refreshed_elsewhere weight", label

    # Opened again (a saved workflow): the last report is still there.
    reopen(ui)
    assert panel(ui, merge, "mix_report", "executed").splitlines()[0] == lines[0]


def test_the_balance_never_keeps_a_stale_value(ui):
    merge = merge_graph(ui)
    balance = lambda: ui.evaluate(MERGE_STATE_JS, merge)["balance"]["value"]
    label = lambda: ui.evaluate(f"() => app.graph.getNodeById({merge}).widgets.find(w => w.name === 'content ↔ style').label ?? ''")
    ui.evaluate(SET_JS, [merge, "weight_2", 0.4])
    assert balance() == 0.2 and "custom" not in label()
    ui.evaluate(SET_JS, [merge, "weight_1", 0.3])
    ui.evaluate(SET_JS, [merge, "weight_2", 1.5])  # (0.3, 1.5): no balance gives it
    assert balance() == 0.85 and "custom weights" in label(), "the nearest balance, (0.3, 1), not the stale 0.2"
    ui.evaluate(SET_JS, [merge, "weight_2", 1.0])
    assert balance() == 0.85 and "custom" not in label()


VUE_MERGE_JS = """(id) => {
    const el = document.querySelector(`[data-node-id="${id}"]`);
    if (!el) return null;
    const leaves = [...el.querySelectorAll('*')].filter(e => !e.children.length).map(e => e.textContent.trim());
    const less = el.querySelector('button[aria-label="− adapter"]');
    return {sockets: leaves.filter(t => /^qr_lora_\\d$/.test(t)).sort(),
            weights: [...el.querySelectorAll('.lg-node-widget')].filter(w => /weight/.test(w.textContent)).length,
            balance: [...el.querySelectorAll('.lg-node-widget')].some(w => w.textContent.includes('content ↔ style')),
            less_disabled: less ? less.disabled : null};
}"""


@pytest.mark.parametrize("view", ["classic", "vue"])
def test_merge_shows_only_used_slots_in_both_node_views(ui, view):
    ui.evaluate(VUE_JS, view == "vue")
    try:
        merge, loaders = ui.evaluate("""() => { app.graph.clear();
            const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n.id; };
            return [add("QRLoRAMerge", 400, 100), [0, 1, 2].map(i => add("QRLoRALoader", 0, 60 + i * 250))]; }""")

        def state():
            if view == "classic":
                s = ui.evaluate(MERGE_STATE_JS, merge)
                less = ui.evaluate(f"() => app.graph.getNodeById({merge}).widgets.find(w => w.name === '− adapter').disabled")
                return {"sockets": s["sockets"], "weights": len(s["weights"]), "balance": not s["balance"]["hidden"], "less_disabled": less}
            ui.wait_for_selector(f'[data-node-id="{merge}"] .lg-node-widget', timeout=10_000)
            return ui.evaluate(VUE_MERGE_JS, merge)

        def press(name):
            if view == "classic":
                show(ui, merge)
                click_button(ui, merge, name)
            else:
                ui.click(f'[data-node-id="{merge}"] button[aria-label="{name}"]')

        expect = lambda sockets, weights, balance, less: {"sockets": [f"qr_lora_{i}" for i in range(1, sockets + 1)],
                                                         "weights": weights, "balance": balance, "less_disabled": less}
        assert state() == expect(2, 2, True, True), "two slots, nothing to remove"
        for i, slot in ((0, "qr_lora_1"), (1, "qr_lora_2")):
            ui.evaluate(CONNECT_JS, [loaders[i], 0, merge, slot])
        assert state() == expect(3, 2, True, True), "both used: one empty socket for the next"
        press("+ adapter")
        ui.wait_for_timeout(300)
        assert state() == expect(3, 3, False, False), "three slots: no balance, one may be removed"
        press("− adapter")
        ui.wait_for_timeout(300)
        assert state() == expect(3, 2, True, True)
        # Saved and opened again (a workflow file, a template): the same sockets and sliders.
        reopen(ui)
        ui.wait_for_timeout(500)
        assert state() == expect(3, 2, True, True), "as it was saved"
    finally:
        ui.evaluate(VUE_JS, False)
        dismiss_toasts(ui)


def test_mixer_rows_show_in_the_vue_node_view(ui):
    ui.evaluate(VUE_JS, True)
    try:
        (mixer,) = ui.evaluate(ADD_NODES_JS, [["QRLoRAMixer", 200, 100]])
        ui.wait_for_selector(f'[data-node-id="{mixer}"] button[aria-label="+ row"]', timeout=10_000)
        hidden = ui.evaluate(f"""() => [...document.querySelectorAll('[data-node-id="{mixer}"] .lg-node-widget')].map(w => w.textContent)""")
        assert not any("rows" == t.strip() for t in hidden)
        assert ui.evaluate(f"""() => document.querySelector('[data-node-id="{mixer}"] button[aria-label="− row"]').disabled""")
        ui.click(f'[data-node-id="{mixer}"] button[aria-label="+ row"]')
        ui.wait_for_function(f"""() => [...document.querySelectorAll('[data-node-id="{mixer}"] .lg-node-widget')]
            .some(w => w.textContent.includes('adapter 1'))""", timeout=10_000)
        assert len(rows_of(ui, mixer)) == 1
        assert not ui.evaluate(f"""() => document.querySelector('[data-node-id="{mixer}"] button[aria-label="− row"]').disabled""")
    finally:
        ui.evaluate(VUE_JS, False)
        dismiss_toasts(ui)


def test_the_mix_workflow_opens_in_the_vue_node_view_with_its_rows(ui):
    ui.evaluate(VUE_JS, True)
    try:
        wf = load(ui, "qrlora_mix")
        mixer = workflow.node_id(wf, "Mix content + style")
        shown = f"""() => [...document.querySelectorAll('[data-node-id="{mixer}"] .lg-node-widget')].map(w => w.textContent.trim())"""
        ui.wait_for_function(f"() => ({shown})().some(t => t.includes('adapter 2'))", timeout=15_000)
        texts = ui.evaluate(shown)
        assert sum("adapter" in t and "use" not in t for t in texts) >= 2 and not any(t.startswith("rows") for t in texts), texts
    finally:
        ui.evaluate(VUE_JS, False)
        dismiss_toasts(ui)


@pytest.mark.parametrize("view", ["classic", "vue"])
def test_preview_as_text_shows_trigger_words_as_typed_in_both_node_views(ui, view):
    """The stock preview renders Markdown, where <c> and <s> read as HTML tags ("a shape in ~~style~~")."""
    typed = "a <c> shape in <s> style & more"
    ui.evaluate(VUE_JS, view == "vue")
    try:
        (preview,) = ui.evaluate(ADD_NODES_JS, [["PreviewAny", 200, 100]])
        ui.evaluate("([id, text]) => app.graph.getNodeById(id).onExecuted({text: [text]})", [preview, typed])
        if view == "classic":
            shown = lambda: ui.evaluate(f"() => app.graph.getNodeById({preview}).widgets.find(w => w.name === 'preview').element.innerText.trim()")
        else:
            shown = lambda: ui.evaluate(f"""() => document.querySelector('[data-node-id="{preview}"] .lg-node-widgets')?.innerText.trim()""")
        for _ in range(20):
            if shown() == typed:
                break
            ui.wait_for_timeout(250)
        assert shown() == typed
    finally:
        ui.evaluate(VUE_JS, False)
        dismiss_toasts(ui)


def test_the_pages_refresh_brings_new_files_into_the_mixer_rows(ui, comfy):
    (mixer,) = ui.evaluate(ADD_NODES_JS, [["QRLoRAMixer", 200, 100]])
    ui.wait_for_function("(id) => app.graph.getNodeById(id).qrlora?.report.element.dataset.qrloraState === 'selected'", arg=mixer)
    show(ui, mixer)
    click_button(ui, mixer, "+ row")
    shutil.copy(comfy.path("models", "loras", demo_assets.STYLE), comfy.path("models", "loras", "refreshed_copy.safetensors"))
    ui.evaluate("async () => await app.refreshComboInNodes()")
    ui.wait_for_function(f"""() => app.graph.getNodeById({mixer}).widgets.find(w => w.name === 'lora_1').options.values
        .includes('refreshed_copy.safetensors')""", timeout=10_000)
    dismiss_toasts(ui)


# ------------------------------------------------------------------ Mix Grid

GRID_SOCKETS = ["model", "content", "style", "positive", "negative", "latent_image", "vae"]
GRID_WIDGETS = ["content_weights", "style_weights", "seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]
GRID_DEFAULTS = {"content_weights": "0, 0.5, 1, 1.5", "style_weights": "0, 0.5, 1, 1.5", "seed": 0, "steps": 20, "cfg": 8,
                 "sampler_name": "euler", "scheduler": "simple", "denoise": 1}
CLASSIC_NODE_JS = """(id) => { const n = app.graph.getNodeById(id);
    return {title: n.title, sockets: n.inputs.filter(s => !s.widget).map(s => s.name), outputs: n.outputs.map(s => s.name),
            widgets: n.widgets.filter(w => !w.hidden && w.name !== 'control_after_generate').map(w => [w.name, w.value])}; }"""
# Nodes 2.0 draws each widget as a form field named by its aria-label (a text box, a number box, a drop-down).
VUE_NODE_JS = """(id) => { const el = document.querySelector(`[data-node-id="${id}"]`);
    const texts = sel => [...el.querySelectorAll(sel)].map(e => e.textContent.trim()).filter(t => t);
    const fields = [...el.querySelectorAll('.lg-node-widget input[aria-label], .lg-node-widget [role="combobox"][aria-label]')];
    return {title: el.querySelector('[data-testid="node-title"]').innerText.trim(),
            sockets: texts('.lg-slot--input span'), outputs: texts('.lg-slot--output span'),
            widgets: fields.map(f => [f.getAttribute('aria-label'), f.tagName === 'INPUT' ? f.value : f.textContent.trim()])}; }"""


def declared_default(spec):
    """The value a new node's widget starts at: the declared default, for a drop-down its first choice."""
    kind, options = spec[0], spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    choices = kind if isinstance(kind, list) else options["options"]
    return choices[0]


@pytest.mark.parametrize("view", ["classic", "vue"])
def test_grid_node_shows_its_sockets_weights_and_sampler_settings_in_both_node_views(ui, object_info, view):
    required = object_info["QRLoRAGrid"]["input"]["required"]
    declared = {name: declared_default(required[name]) for name in GRID_WIDGETS}
    assert declared == GRID_DEFAULTS, "a new grid: 4 x 4 weights from 0 to 1.5, KSampler's own settings"
    ui.evaluate(VUE_JS, view == "vue")
    try:
        (grid,) = ui.evaluate(ADD_NODES_JS, [["QRLoRAGrid", 200, 100]])
        if view == "classic":
            show(ui, grid)
            shown = ui.evaluate(CLASSIC_NODE_JS, grid)
        else:
            ui.wait_for_selector(f'[data-node-id="{grid}"] .lg-node-widget input[aria-label="content_weights"]', timeout=10_000)
            shown = ui.evaluate(VUE_NODE_JS, grid)
        as_shown = (lambda v: v) if view == "classic" else (lambda v: f"{v:g}" if isinstance(v, (int, float)) else v)  # a form field holds text
        assert shown["title"] == "Mix Grid"
        assert shown["sockets"] == GRID_SOCKETS and shown["outputs"] == ["grid", "images"]
        assert shown["widgets"] == [[name, as_shown(GRID_DEFAULTS[name])] for name in GRID_WIDGETS]
        if view == "vue":  # typed into the weights' text box, as a person types: the node's value and what Run would send
            ui.fill(f'[data-node-id="{grid}"] input[aria-label="content_weights"]', "0, 1")
            ui.press(f'[data-node-id="{grid}"] input[aria-label="content_weights"]', "Tab")
            value = f"() => app.graph.getNodeById({grid}).widgets.find(w => w.name === 'content_weights').value"
            ui.wait_for_function(f"() => ({value})() === '0, 1'", timeout=10_000)
            sent = ui.evaluate("async () => (await app.graphToPrompt()).output")[str(grid)]["inputs"]
            assert sent["content_weights"] == "0, 1" and sent["style_weights"] == GRID_DEFAULTS["style_weights"]
    finally:
        ui.evaluate(VUE_JS, False)
        dismiss_toasts(ui)


def test_grid_help_page_opens_from_the_selected_node(ui, comfy, object_info):
    """Selected, the node's toolbox has an info button; it opens web/docs/QRLoRAGrid.md in the node library, its picture too."""
    (grid,) = ui.evaluate(ADD_NODES_JS, [["QRLoRAGrid", 200, 100]])
    show(ui, grid)
    missing = []
    on_response = lambda r: r.status >= 400 and missing.append(r.url)
    ui.on("response", on_response)
    before = len(ui.our_errors)
    help_panel = ".sidebar-content-container"
    try:
        ui.evaluate(f"() => {{ app.canvas.selectNode(app.graph.getNodeById({grid})); app.canvas.setDirty(true, true); }}")
        ui.click('[data-testid="info-button"]', timeout=10_000)
        # Without a help page the panel shows the node's description instead.
        description = object_info["QRLoRAGrid"]["description"][:40]
        page_text = f"() => document.querySelector('{help_panel}')?.innerText ?? ''"
        ui.wait_for_function(f"(words) => ({page_text})().includes('Choose the mix you like') || ({page_text})().includes(words)",
                             arg=description, timeout=30_000)
        text = ui.inner_text(help_panel)
        assert text.startswith("Mix Grid") and "Choose the mix you like by eye" in text, f"not the help page: {text[:300]}"
        assert "content_weights, style_weights" in text and "Outputs" in text
        picture = f"() => [...document.querySelectorAll('{help_panel} img')].find(i => i.src.endsWith('/docs/images/grid.jpg'))"
        ui.wait_for_function(f"() => ({picture})()?.complete", timeout=30_000)
        assert ui.evaluate(f"() => ({picture})().naturalWidth") == 320, "the help picture, as shipped"
        # The page asks for the page in its locale first (docs/QRLoRAGrid/en.md, which the pack does not have), then
        # docs/QRLoRAGrid.md (integration/test_help_pages.py): the one miss is the frontend's lookup, not the pack's fault.
        docs = f"{comfy.url}/extensions/{PACK_FOLDER_NAME}/docs/"
        assert missing == [docs + "QRLoRAGrid/en.md"], missing
        misses = [e for e in ui.our_errors[before:] if "404 (Not Found)" in e]
        assert len(misses) <= 1 and len(ui.our_errors[before:]) == len(misses), ui.our_errors[before:]
        del ui.our_errors[before:]
        ui.click('[data-testid="info-button"]')  # pressed again: the help closes
        ui.wait_for_selector(help_panel, state="detached", timeout=10_000)
    finally:
        ui.remove_listener("response", on_response)
        ui.evaluate("() => { const tabs = app.extensionManager.sidebarTab; if (tabs.activeSidebarTabId) tabs.toggleSidebarTab(tabs.activeSidebarTabId); }")


GRID_SIDE = 64  # pixels of each cell: the latent's size (the toy world's 128 is four times the work)
GRID_GAP = 4  # white between cells (integration/grid_picture.py)


def grid_graph(page):
    """The toy world's model, text encoder, VAE and two adapters into Mix Grid (2 x 2, 2 steps), its grid into
    Preview Image: (grid id, preview id)."""
    ids = page.evaluate(ADD_NODES_JS, [
        ["UNETLoader", 0, 0], ["CLIPLoader", 0, 130], ["VAELoader", 0, 300], ["QRLoRALoader", 0, 400], ["QRLoRALoader", 0, 520],
        ["CLIPTextEncode", 350, 0], ["CLIPTextEncode", 350, 250], ["EmptyLatentImage", 350, 480], ["QRLoRAGrid", 750, 0],
        ["PreviewImage", 1100, 0]])
    unet, clip, vae, content, style, positive, negative, latent, grid, preview = ids
    for node, name, value in ((unet, "unet_name", demo_assets.UNET), (clip, "clip_name", demo_assets.CLIP_L),
                              (clip, "type", "stable_diffusion"), (vae, "vae_name", demo_assets.VAE),
                              (content, "lora_name", demo_assets.CONTENT), (style, "lora_name", demo_assets.STYLE),
                              (positive, "text", pipeline.MIX_PROMPT), (negative, "text", ""),
                              (latent, "width", GRID_SIDE), (latent, "height", GRID_SIDE), (latent, "batch_size", 1),
                              (grid, "content_weights", "0, 1"), (grid, "style_weights", "0, 1"), (grid, "steps", 2),
                              (grid, "cfg", 5.0), (grid, "seed", 3), (grid, "control_after_generate", "fixed")):
        page.evaluate(SET_JS, [node, name, value])
    for args in ([unet, 0, grid, "model"], [content, 0, grid, "content"], [style, 0, grid, "style"], [clip, 0, positive, "clip"],
                 [clip, 0, negative, "clip"], [positive, 0, grid, "positive"], [negative, 0, grid, "negative"],
                 [latent, 0, grid, "latent_image"], [vae, 0, grid, "vae"], [grid, 0, preview, "images"]):
        page.evaluate(CONNECT_JS, args)
    return str(grid), str(preview)


def runs(blank):
    """(start, length) of each stretch of False in a 1-d boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[1], blank.astype(int), [1]])))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def test_a_small_grid_queued_from_the_page_shows_one_labelled_picture(ui, comfy):
    grid, preview = grid_graph(ui)
    dismiss_toasts(ui)
    sent, entry = run_from_page(ui, comfy, timeout=240)
    assert {k: sent[grid]["inputs"][k] for k in ("content_weights", "style_weights", "steps")} == {
        "content_weights": "0, 1", "style_weights": "0, 1", "steps": 2}
    (image,) = entry["outputs"][preview]["images"]  # one picture for the whole grid
    show(ui, preview)  # the page loads a node's image when it draws the node
    ui.wait_for_function(f"() => app.graph.getNodeById({preview}).imgs?.[0]?.complete", timeout=30_000)
    src, shown = ui.evaluate(f"""() => {{ const imgs = app.graph.getNodeById({preview}).imgs;
        return [imgs[0].src, imgs.map(i => [i.naturalWidth, i.naturalHeight])]; }}""")
    assert f"filename={image['filename']}" in src and "/view?" in src, src
    with urllib.request.urlopen(src, timeout=30) as answer:  # the picture the page shows, as it fetched it
        picture = Image.open(answer).convert("RGB")
    assert shown == [list(picture.size)], f"the page shows {shown}, /view serves {picture.size}"

    # The picture: 2 x 2 cells of the latent's size, white between them, labels left of the rows and above the columns
    # (a stretch of ink shorter than a cell: a label or a line of the title).
    side, gap = GRID_SIDE, GRID_GAP
    white = (np.asarray(picture) == 255).all(axis=2)
    height, width = white.shape
    across = runs(white[height - gap - side:height - gap].all(axis=0))  # the columns the lower row of cells inks
    cells = [r for r in across if r[1] >= side]
    assert [n for _, n in cells] == [side, side] and cells[1][0] - cells[0][0] == side + gap and across[-2:] == cells, across
    left = cells[0][0]
    assert across[0][0] + across[0][1] <= left - gap, f"no row label left of the cells: {across}"
    down = runs(white[:, left:left + side].all(axis=1))  # the rows the first column of cells inks
    cells = [r for r in down if r[1] >= side]
    assert [n for _, n in cells] == [side, side] and cells[1][0] - cells[0][0] == side + gap and down[-2:] == cells, down
    top = cells[0][0]
    assert len(down) > 2 and down[-3][0] + down[-3][1] <= top - gap, f"no labels above the cells: {down}"
    assert height == top + 2 * (side + gap) and width >= left + 2 * (side + gap), (picture.size, left, top)
