"""The shipped workflows (example_workflows/) as the page shows them: template cards with their
titles and thumbnails, graphs in which no node covers another, and each opening with its result in
view in a 1280 x 800 window.

The template browser is opened as a person opens it (Templates, then the
pack's category); it fetches NAME.jpg next to each NAME.json. Each file is loaded into the real page the way a drop or the template
browser loads it; once the page has settled (image previews loaded, widgets
laid out: either may grow a node past its saved size), every node's box as
the page draws it, title bar included (LGraphNode.boundingRect), is
compared with every other's.
"""

import os
import urllib.parse

import pytest
from PIL import Image

from devkit import browser, examples, workflow
from devkit.server import PACK_FOLDER_NAME

pytestmark = pytest.mark.browser

NAMES = tuple(examples.TITLES)

# Settled: every image loaded and no node's size changed for a second (a preview image is fetched
# a moment after the graph loads, and the node grows when it arrives).
SETTLED_BOXES_JS = """async () => {
    const sizes = () => JSON.stringify(app.graph.nodes.map(n => [...n.size]));
    let last = null, stableSince = performance.now();
    for (const started = performance.now(); performance.now() - started < 20000;) {
        app.canvas.setDirty(true, true);
        app.canvas.draw(true, true);
        await new Promise(r => setTimeout(r, 100));
        const now = sizes(), loading = app.graph.nodes.some(n => (n.imgs ?? []).some(img => !img.complete));
        if (now !== last || loading) { last = now; stableSince = performance.now(); }
        else if (performance.now() - stableSince > 1000) break;
    }
    return app.graph.nodes.map(n => ({title: n.title, box: [...n.boundingRect], body: [...n.pos, ...n.size]}));
}"""


def overlaps(nodes):
    """Pairs of titles whose boxes share area (touching edges is fine)."""
    hits = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                hits.append((a["title"], b["title"]))
    return hits


def settled_boxes(page, wf):
    browser.load_workflow(page, wf)
    nodes = page.evaluate(SETTLED_BOXES_JS)
    title = page.evaluate("() => LiteGraph.NODE_TITLE_HEIGHT")
    for n in nodes:  # the box the check compares is the body and its title bar above it
        x, y, w, h = n["body"]
        assert n["box"] == pytest.approx([x, y - title, w, h + title], abs=1e-3), n
    return nodes


@pytest.mark.parametrize("name", NAMES)
def test_no_node_of_a_shipped_workflow_covers_another(ui, name):
    wf = workflow.load(examples.path(name))
    nodes = settled_boxes(ui, wf)
    assert len(nodes) == len(wf["nodes"])
    assert overlaps(nodes) == [], f"{name}: nodes overlap in the page"


def test_the_check_sees_title_bars_and_nodes_the_page_grows(ui, comfy):
    """The old train workflow's fault: 'Content image' (LoadImage, saved 102 high) grows to show its
    image once loaded and covers 'Encode the image' placed under its saved size; and a node whose
    title bar alone reaches into the node above."""
    Image.new("RGB", (512, 512), (200, 60, 60)).save(comfy.path("input", "layout_check.png"))
    node = lambda id, type, title, pos, size, values: {
        "id": id, "type": type, "title": title, "pos": pos, "size": size, "flags": {}, "order": id, "mode": 0,
        "inputs": [], "outputs": [], "properties": {}, "widgets_values": values}
    grows = {"last_node_id": 2, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4, "nodes": [
        node(1, "LoadImage", "Content image", [0, 80], [300, 102], ["layout_check.png", "image"]),
        node(2, "VAEEncode", "Encode the image", [0, 228], [300, 46], []),
    ]}
    nodes = settled_boxes(ui, grows)
    assert nodes[0]["body"][3] > 228 - 30 - 80, "the page grew the image loader past the node below"
    assert overlaps(nodes) == [("Content image", "Encode the image")]

    title_only = {**grows, "nodes": [
        node(1, "VAEEncode", "Upper", [0, 100], [300, 100], []),
        node(2, "VAEEncode", "Lower", [0, 210], [300, 46], []),  # body below 200, title bar from 180
    ]}
    assert overlaps(settled_boxes(ui, title_only)) == [("Upper", "Lower")]


def test_template_browser_shows_each_workflow_with_its_thumbnail(chromium, comfy, demo_models):
    page = browser.open_comfy(chromium, comfy.url)
    try:
        fetched = {}
        prefix = f"/api/workflow_templates/{PACK_FOLDER_NAME}/"
        page.on("response", lambda r: prefix in r.url and r.url.endswith(".jpg")
                and fetched.setdefault(urllib.parse.unquote(r.url.rsplit("/", 1)[1][:-4]), r.status))
        page.locator(".side-bar-button, button").filter(has_text="Templates").first.click()
        page.locator(".p-dialog").get_by_text(PACK_FOLDER_NAME, exact=True).first.click()
        for title in examples.TITLES.values():  # the card's title: the file's name, which is the title a person reads
            page.locator(".p-dialog").get_by_text(title, exact=True).first.wait_for(timeout=30_000)
        # The dialog shows the first cards and more as one scrolls (each card's image loads when it is drawn).
        box = page.locator(".p-dialog").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6)
        for _ in range(60):
            if len(fetched) >= len(NAMES):
                break
            page.mouse.wheel(0, 400)
            page.wait_for_timeout(500)
        assert fetched == {title: 200 for title in examples.TITLES.values()}
        shown = """() => [...document.querySelectorAll('.p-dialog img')].filter(i => i.complete && i.naturalWidth > 0)
            .map(i => i.src.endsWith('default-template.png') ? 'placeholder' : i.naturalWidth)"""
        with Image.open(examples.path(NAMES[0], ".jpg")) as image:
            width = image.width
        drawn = page.evaluate(shown)
        assert drawn and set(drawn) == {width}, "every card drawn shows its thumbnail, none the placeholder"
    finally:
        page.close()


WINDOW = {"width": 1280, "height": 800}
# Where the page leaves the canvas free, and the minimap's box, measured in the page itself.
FREE_VIEW_JS = """() => {
    const box = sel => [...document.querySelectorAll(sel)].map(e => e.getBoundingClientRect()).filter(r => r.width > 0);
    const left = Math.max(0, ...box('.side-tool-bar-container').map(r => r.right));
    const top = Math.max(0, ...box('.workflow-tabs-container, .actionbar, .comfy-menu-button-wrapper').map(r => r.bottom));
    const minimap = box('.litegraph-minimap')[0];
    return {view: [left, top, window.innerWidth, window.innerHeight], minimap: minimap ? [minimap.left, minimap.top, minimap.right, minimap.bottom] : null};
}"""
RESULT_ON_SCREEN_JS = """() => {
    const {offset, scale} = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
    const screen = ([x, y, w, h]) => [rect.left + (x + offset[0]) * scale, rect.top + (y + offset[1]) * scale,
                                      rect.left + (x + w + offset[0]) * scale, rect.top + (y + h + offset[1]) * scale];
    const node = app.graph.nodes.find(n => n.type === "SaveImage");
    const parts = [...app.graph.nodes.map(n => [n.title, [...n.boundingRect]]), ...app.graph.groups.map(g => [g.title, [...(g.boundingRect ?? g._bounding)]])];
    const x0 = Math.min(...parts.map(([, b]) => b[0])), y0 = Math.min(...parts.map(([, b]) => b[1]));
    const x1 = Math.max(...parts.map(([, b]) => b[0] + b[2])), y1 = Math.max(...parts.map(([, b]) => b[1] + b[3]));
    return {title: node.title, scale, box: screen(node.boundingRect), extent: [x1 - x0, y1 - y0],
            parts: parts.map(([title, b]) => [title, screen(b)])};
}"""


@pytest.mark.parametrize("name", NAMES)
def test_each_workflow_opens_with_its_result_in_view_in_a_small_window(ui, artifacts, name):
    """Loaded as a drop or the template browser loads it (the view saved in the file is restored), in a 1280 x 800
    window: the result node (the workflow's Save Image) lies whole in the free canvas, clear of the minimap,
    at a scale at which the page still draws node text; and a graph that fits that window at such a scale shows
    whole, every node and group clear of the minimap."""
    ui.set_viewport_size(WINDOW)
    try:
        browser.next_frames(ui)
        browser.load_workflow(ui, workflow.load(examples.path(name)))
        browser.next_frames(ui)
        free, result = ui.evaluate(FREE_VIEW_JS), ui.evaluate(RESULT_ON_SCREEN_JS)
        ui.screenshot(path=os.path.join(artifacts, f"opened 1280x800 {name}.png"))
    finally:
        ui.set_viewport_size(browser.VIEWPORT)
    (left, top, right, bottom), (x0, y0, x1, y1) = free["view"], result["box"]
    assert left <= x0 and top <= y0 and x1 <= right and y1 <= bottom, f"{name}: '{result['title']}' at {result['box']}, view {free['view']}"
    if free["minimap"]:
        mx0, my0, mx1, my1 = free["minimap"]
        assert x1 <= mx0 or y1 <= my0 or x0 >= mx1 or y0 >= my1, f"{name}: the minimap {free['minimap']} covers the result {result['box']}"
    assert result["scale"] >= 0.6, "below 0.6 the page draws nodes without their text"
    # A graph small enough to show whole at a readable scale left of the minimap opens whole: every node and group
    # in the free view, none under the minimap (not only the result, with the steps that lead to it cut off).
    width, height = result["extent"]
    if min((free["minimap"][0] if free["minimap"] else right) - left, right - left) / width >= 0.6 and (bottom - top) / height >= 0.6:
        for title, (x0, y0, x1, y1) in result["parts"]:
            assert left <= x0 and top <= y0 and x1 <= right and y1 <= bottom, f"{name}: '{title}' at {[x0, y0, x1, y1]} is not in the view {free['view']}"
            if free["minimap"]:
                mx0, my0, mx1, my1 = free["minimap"]
                assert x1 <= mx0 or y1 <= my0 or x0 >= mx1 or y0 >= my1, f"{name}: the minimap {free['minimap']} covers '{title}' at {[x0, y0, x1, y1]}"
