"""Mix QR-LoRAs through the real server's /prompt, on the toy world's model and adapters:
the same model as Load ×2 -> Merge ΔR -> Apply, rows turned off are ignored, bad rows are refused in one sentence."""

import json
import uuid

import pytest
import torch

from devkit.graph import Graph
from support.checks import saved_model
from toy_world import demo_assets

pytestmark = pytest.mark.server


def rows(*items):
    return json.dumps([dict(zip(("lora", "on", "strength", "role"), item)) for item in items])


def test_mix_equals_merge_then_apply_bit_for_bit_and_rows_turned_off_are_ignored(comfy, client, demo_models):
    a, b = 0.7, -0.4
    ours, theirs = f"checks/mix_{uuid.uuid4().hex[:8]}", f"checks/merge_{uuid.uuid4().hex[:8]}"
    g = Graph()
    unet = g.add("UNETLoader", unet_name=demo_assets.UNET, weight_dtype="default")
    mix = g.add("QRLoRAMixer", model=unet, prompt="a {content} shape in {style}", rows=rows(
        (demo_assets.STYLE, True, b, "style"),
        (demo_assets.CONTENT, False, 3.0, "content"),  # off: neither loaded nor mixed
        ("no/such/file.safetensors", False, 1.0, "other"),  # off: not even looked for
        (demo_assets.CONTENT, True, a, "content"),
    ))
    g.add("ModelSave", model=mix[0], filename_prefix=ours)
    words, prompt = g.add("PreviewAny", source=mix[1]), g.add("PreviewAny", source=mix[2])
    merged = g.add("QRLoRAMerge", qr_lora_1=g.add("QRLoRALoader", lora_name=demo_assets.STYLE)[0], weight_1=b,
                   qr_lora_2=g.add("QRLoRALoader", lora_name=demo_assets.CONTENT)[0], weight_2=a)
    g.add("ModelSave", model=g.add("QRLoRAApply", model=unet, qr_lora=merged[0], strength=1.0), filename_prefix=theirs)
    entry = client.run(g.prompt())

    mixed, reference = saved_model(comfy, ours), saved_model(comfy, theirs)
    assert mixed.keys() == reference.keys()
    assert all(torch.equal(mixed[k], reference[k]) for k in mixed), "the mix differs from Merge ΔR + Apply"
    assert client.ui(entry, words.node_id)["text"] == ["<c>, <s> style"], "content's words first, then style's"
    assert client.ui(entry, prompt.node_id)["text"] == ["a <c> shape in <s> style"]
    ui = client.ui(entry, mix.node_id)
    assert ui["text"][0].startswith("Mixed cleanly") and f"{demo_assets.LAYERS} layers merged as one ΔR sum" in ui["text"][0]
    assert [(r["lora"], r["strength"]) for r in ui["qrlora_mix"][0]["rows"]] == [(demo_assets.STYLE, b), (demo_assets.CONTENT, a)]


def test_all_rows_off_passes_the_model_through(comfy, client, demo_models):
    base, ours = f"checks/base_{uuid.uuid4().hex[:8]}", f"checks/off_{uuid.uuid4().hex[:8]}"
    g = Graph()
    unet = g.add("UNETLoader", unet_name=demo_assets.UNET, weight_dtype="default")
    mix = g.add("QRLoRAMixer", model=unet, rows=rows((demo_assets.CONTENT, False, 1.0, "content")))
    g.add("ModelSave", model=mix[0], filename_prefix=ours)
    g.add("ModelSave", model=unet, filename_prefix=base)
    entry = client.run(g.prompt())
    passed, original = saved_model(comfy, ours), saved_model(comfy, base)
    assert all(torch.equal(passed[k], original[k]) for k in original)
    assert client.ui(entry, mix.node_id)["text"] == ["No row is on: the model passes through unchanged."]


@pytest.mark.parametrize("bad, says", [
    ("[{\"lora\": ", "rows is not JSON"),
    ('{"lora": "a.safetensors"}', "rows must be a JSON list"),
    ('[{"strength": 1}]', "row 1 must be an object with a 'lora' file name"),
    (rows((demo_assets.CONTENT, True, "1", "content")), "row 1's strength is '1'"),
    (rows((demo_assets.CONTENT, True, 9.0, "content")), "row 1's strength is 9.0"),
    (rows((demo_assets.CONTENT, "yes", 1.0, "content")), "row 1's 'on' is 'yes'"),
    (rows((demo_assets.CONTENT, True, 1.0, "background")), "row 1's role is 'background'"),
    ('[{"lora": "a.safetensors", "weight": 1}]', "row 1 has keys a row does not take (weight)"),
    (rows((demo_assets.CONTENT, True, 1.0, "content"), ("missing.safetensors", True, 1.0, "style")), "missing.safetensors is not in the loras folder"),
    (rows(("../escape.safetensors", True, 1.0, "style")), "is not a file name inside the loras folder"),
    (rows(*[(demo_assets.CONTENT, True, 0.1, "content")] * 9), "9 rows are on, more than the 8 a mix takes"),  # each loads its file
    ("[" * 100_000, "rows is not JSON a mixer can read"),  # nested deeper than the parser recurses
    ('[{"lora": "a.safetensors", "strength": 1' + "0" * 5000 + "}]", "row"),  # past int's digit limit (3.11+: not JSON; 3.10: a strength out of range)
    ('[{"lora": "a.safetensors", "strength": 1' + "0" * 400 + "}]", "row 1's strength is 1000"),  # beyond float: isfinite overflowed
])
def test_bad_rows_are_refused_before_running_in_one_sentence(comfy, client, demo_models, bad, says):
    g = Graph()
    mix = g.add("QRLoRAMixer", model=g.add("UNETLoader", unet_name=demo_assets.UNET, weight_dtype="default"), rows=bad)
    g.add("PreviewAny", source=mix[1])
    status, body = client.post("/prompt", {"prompt": g.prompt()})
    assert status == 400
    errors = [e for node in body["node_errors"].values() for e in node["errors"]]
    assert len(errors) == 1 and says in errors[0]["details"], body
    sentence = errors[0]["details"].strip()
    assert sentence.count(". ") == 0 and sentence.endswith("."), f"not one sentence: {sentence}"


def test_rows_sent_as_a_list_get_a_sentence_not_an_exception(client, demo_models):
    """ComfyUI calls a 3-item list a bad link and still runs the node's own check, which raised TypeError on it."""
    g = Graph()
    mix = g.add("QRLoRAMixer", model=g.add("UNETLoader", unet_name=demo_assets.UNET, weight_dtype="default"), rows=[1, 2, 3])
    g.add("PreviewAny", source=mix[1])
    status, body = client.post("/prompt", {"prompt": g.prompt()})
    errors = [e for node in body["node_errors"].values() for e in node["errors"]]
    assert status == 400 and not [e for e in errors if e["type"] == "exception_during_inner_validation"], errors
    assert any("rows must be text holding JSON, not a list" in e["details"] for e in errors), errors
