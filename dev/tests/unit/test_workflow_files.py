"""The example workflow files and the UI -> API converter, without a server.

The converter is also checked against the page's own graphToPrompt in
tests/browser; here it meets the cases the example files do not have.
"""

import os
import re

import numpy as np
import pytest
from PIL import Image

from devkit import examples, workflow
from devkit.host import DEV_ROOT

NAMES = tuple(examples.TITLES)


def test_example_workflows_are_the_named_graphs_each_with_a_thumbnail():
    """example_workflows/ (the one copy: template browser, demo, tests) holds TITLE.json + TITLE.jpg for each workflow."""
    files = sorted(os.listdir(examples.FOLDER))
    assert files == sorted(t + ext for t in examples.TITLES.values() for ext in (".json", ".jpg")), "run `make workflows`"


def test_help_pictures_of_workflows_are_their_cards():
    """The nodes' help pages show some workflows' cards (web/docs/images); `make workflows` writes both, so a card
    redrawn leaves no stale picture behind (they were: two help pictures still showed the first base world)."""
    import sys

    sys.path.insert(0, os.path.join(DEV_ROOT, "scripts"))
    from build_workflows import HELP_IMAGES, HELP_PICTURE_SIZE, HELP_PICTURES

    assert HELP_PICTURES, "no help picture is a card"
    for name, picture in HELP_PICTURES.items():
        card = Image.open(examples.path(name, ".jpg")).convert("RGB").resize((HELP_PICTURE_SIZE,) * 2, Image.LANCZOS)
        shown = Image.open(os.path.join(HELP_IMAGES, picture)).convert("RGB")
        assert shown.size == card.size, picture
        off = np.abs(np.asarray(shown, dtype=float) - np.asarray(card, dtype=float)).mean()
        assert off < 3, f"web/docs/images/{picture} is not {examples.path(name, '.jpg')} ({off:.1f} off): run dev/scripts/help_images.py"


def test_file_names_are_titles_a_person_reads():
    """The template browser shows the file name as the card's title and, with '-' and '_' as spaces, as its
    description (frontend 1.32.9): words with spaces, no underscores or dashes, a capital first, and each
    real-model card says its model, each toy-world card that it is the toy model."""
    for key, title in examples.TITLES.items():
        if key in examples.URL_SAFE:  # opened by `make demo`'s URL: the page's loader takes [A-Za-z0-9_-] only
            assert re.fullmatch(r"[A-Za-z0-9-]+", title) and title[0].isupper() and title.endswith("-toy-model"), title
            continue
        assert " " in title and not set("_-/\\") & set(title) and title[0].isupper(), title
        assert title.startswith(("FLUX.1", "SDXL")) if key in examples.REAL else title.endswith("(toy model)"), title


@pytest.mark.parametrize("name", NAMES)
def test_thumbnail_is_a_jpeg_card_of_sensible_size(name):
    path = examples.path(name, ".jpg")
    with Image.open(path) as image:
        assert image.format == "JPEG"
        image.verify()  # the whole file decodes
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = pixels.shape[:2]
    assert 256 <= width <= 1024 and 256 <= height <= 1024 and 0.75 <= width / height <= 1.34, f"{width}x{height}: not a card"
    assert 5_000 <= os.path.getsize(path) <= 400_000, f"{os.path.getsize(path)} bytes"
    assert pixels.std() > 10, "a flat picture shows nothing"


@pytest.mark.parametrize("name", NAMES)
def test_workflow_file_is_a_followable_ui_graph(name):
    wf = workflow.load(examples.path(name))
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["groups"] and all(g["title"][0].isdigit() for g in wf["groups"]), "groups numbered in reading order"
    assert all(n.get("title") for n in nodes.values()), "every node has a title a person can follow"
    title = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's box starts one title bar above its pos
    inside = lambda n, g: (g["bounding"][0] <= n["pos"][0] and n["pos"][0] + n["size"][0] <= g["bounding"][0] + g["bounding"][2]
                           and g["bounding"][1] <= n["pos"][1] - title and n["pos"][1] + n["size"][1] <= g["bounding"][1] + g["bounding"][3])
    assert all(any(inside(n, g) for g in wf["groups"]) for n in nodes.values()), "every node sits whole in a group"
    for link_id, origin, origin_slot, target, target_slot, kind in wf["links"]:
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind
    linked = {i["link"] for n in nodes.values() for i in n.get("inputs", []) if i.get("link") is not None}
    assert linked == {link[0] for link in wf["links"]}
    assert [n["type"] for n in nodes.values()].count("SaveImage") == 1, "one result: the node the saved view shows"
    assert wf["extra"]["ds"]["scale"] >= 0.6, "the saved view draws node text (tests/browser checks the result is in it)"


@pytest.mark.parametrize("name", examples.REAL)
def test_real_model_workflows_use_the_stock_loaders_with_the_usual_file_names(name):
    loaders = {n["type"]: n["widgets_values"] for n in workflow.load(examples.path(name))["nodes"] if "Loader" in n["type"] and "QRLoRA" not in n["type"]}
    if name.startswith("flux"):
        assert loaders == {"UNETLoader": ["flux1-dev.safetensors", "fp8_e4m3fn"], "VAELoader": ["ae.safetensors"],
                           "DualCLIPLoader": ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"]}
    else:
        assert loaders == {"CheckpointLoaderSimple": ["sd_xl_base_1.0.safetensors"]}


OBJECT_INFO = {
    "Sampler": {
        "input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"control_after_generate": True}], "steps": ["INT", {}],
                               "name": [["a", "b"], {}]},
                  "optional": {"noise_seed": ["INT", {}], "strength": ["FLOAT", {"forceInput": True}], "flag": ["BOOLEAN", {}]}},
        "input_order": {"required": ["model", "seed", "steps", "name"], "optional": ["noise_seed", "strength", "flag"]},
        "output": ["LATENT"],
    },
    "Loader": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}, "output": ["MODEL", "FLOAT"]},
    "Patch": {"input": {"required": {"model": ["MODEL", {}], "amount": ["FLOAT", {}]}}, "output": ["MODEL"]},
}


def node(id, type, inputs=(), values=None, mode=0, outputs=()):
    return {"id": id, "type": type, "mode": mode, "inputs": list(inputs), "outputs": list(outputs), "widgets_values": values or []}


def test_widget_values_skip_frontend_only_extras():
    # seed: control combo after it; noise_seed: the frontend's old by-name rule; forceInput: no widget at all
    wf = {"nodes": [node(1, "Sampler", values=[7, "fixed", 20, "b", 3, "randomize", True, "extension widget"])], "links": []}
    assert workflow.to_api(wf, OBJECT_INFO)["1"]["inputs"] == {"seed": 7, "steps": 20, "name": "b", "noise_seed": 3, "flag": True}


def test_links_follow_reroutes_and_bypasses_and_drop_notes_and_muted_nodes():
    wf = {
        "nodes": [
            node(1, "Loader", values=["x.png", "image"], outputs=[{"links": [1]}, {"links": [4]}]),
            node(2, "Reroute", inputs=[{"name": "", "link": 1}]),
            node(3, "Patch", inputs=[{"name": "model", "type": "MODEL", "link": 2}], values=[0.5], mode=4),
            node(4, "Sampler", inputs=[{"name": "model", "type": "MODEL", "link": 3}, {"name": "strength", "type": "FLOAT", "link": 4},
                                       {"name": "steps", "type": "INT", "link": 5, "widget": {"name": "steps"}}],
                 values=[1, "fixed", 9, "a", 0, "fixed", False]),
            node(5, "Note", values=["read me"]),
            node(6, "Loader", values=["x.png", "image"], mode=2),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"], [4, 1, 1, 4, 1, "FLOAT"],
                  [5, 6, 1, 4, 2, "INT"]],
    }
    prompt = workflow.to_api(wf, OBJECT_INFO)
    assert set(prompt) == {"1", "4"}
    assert prompt["1"]["inputs"] == {"image": "x.png"}
    assert prompt["4"]["inputs"]["model"] == ["1", 0]  # through the bypassed sampler and the reroute
    assert prompt["4"]["inputs"]["strength"] == ["1", 1]
    assert "steps" not in prompt["4"]["inputs"]  # its link comes from a muted node


def test_unknown_node_types_and_dangling_links_are_named():
    with pytest.raises(workflow.WorkflowError, match="QRLoRATrain"):
        workflow.to_api({"nodes": [node(1, "QRLoRATrain")], "links": []}, OBJECT_INFO)
    with pytest.raises(workflow.WorkflowError, match="link 9"):
        workflow.to_api({"nodes": [node(1, "Sampler", inputs=[{"name": "model", "link": 9}])], "links": []}, OBJECT_INFO)
