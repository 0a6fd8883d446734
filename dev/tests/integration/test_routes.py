"""GET /qrlora/summary: what Load QR-LoRA shows when a file is picked, before anything runs."""

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from toy_world import demo_assets

pytestmark = pytest.mark.server


def summary(comfy, name):
    url = f"{comfy.url}/api/qrlora/summary?lora_name={urllib.parse.quote(name)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_summary_of_an_adapter_in_loras(comfy, demo_models):
    status, body = summary(comfy, demo_assets.STYLE)
    assert status == 200
    assert (body["format"], body["rank"], body["alpha"], body["layers"]) == ("native", demo_assets.RANK, float(demo_assets.RANK), demo_assets.LAYERS)
    assert body["trigger_words"] == "<s> style" and body["source"] == demo_assets.STYLE


@pytest.mark.parametrize("name, words", [
    ("../secrets.safetensors", "absolute paths and '..' are refused"),
    ("nowhere.safetensors", "is not in the loras folder"),
])
def test_summary_refuses_names_outside_loras_with_a_sentence(comfy, demo_models, name, words):
    status, body = summary(comfy, name)
    assert status == 400 and words in body["error"]


def get_json(comfy, path):
    with urllib.request.urlopen(f"{comfy.url}/api{path}", timeout=30) as r:
        return json.loads(r.read())


def test_summary_carries_the_scale_so_the_page_computes_nothing(comfy, demo_models):
    status, body = summary(comfy, demo_assets.STYLE)
    assert status == 200 and body["scale"] == body["alpha"] / body["rank"]


def test_page_facts_name_the_nodes_the_scripts_draw_and_the_live_loss_event(comfy, object_info):
    """GET /qrlora/page is where web/*.js reads node ids and event names; each must be what the server really uses."""
    facts = get_json(comfy, "/qrlora/page")
    drawn = {"loader": "Load QR-LoRA", "merge": "Merge ΔR", "similarity": "ΔR Similarity", "train": "Train QR-LoRA",
             "train_data": "QR-LoRA Training Data", "mixer": "Mix QR-LoRAs"}
    assert set(facts["nodes"]) == set(drawn)
    for module, node in facts["nodes"].items():
        assert object_info[node]["display_name"] == drawn[module], (module, node)
    assert facts["events"]["train_loss"].startswith("qrlora.")
