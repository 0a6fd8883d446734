"""GET /qrlora/summary: what Load QR-LoRA shows when a file is picked, before anything runs."""

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from devkit import demo_assets

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
