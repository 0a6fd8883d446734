"""`make demo`'s grid (dev/scripts/demo.py): the mixing workflow and the same workflow with each adapter alone, through /prompt."""

import json

import numpy as np
import pytest
from PIL import Image

from devkit import workflow
from scripts import demo
from toy_world import demo_assets

pytestmark = pytest.mark.server


def mix_weights(prompt: dict) -> dict:
    """{adapter file: its weight in the mix} of a prompt that mixes with Mix QR-LoRAs (rows) or Merge ΔR (loader slots)."""
    out = {}
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "QRLoRAMixer":
            out.update({row["lora"]: float(row["strength"]) if row["on"] else 0.0 for row in json.loads(inputs["rows"])})
        elif node["class_type"] == "QRLoRAMerge":
            out.update({prompt[source[0]]["inputs"]["lora_name"]: float(inputs["weight_" + name[len("qr_lora_"):]])
                        for name, source in inputs.items() if name.startswith("qr_lora_")})
    return out


def test_demo_grid_is_content_alone_the_mix_and_style_alone_with_their_scores(comfy, client, demo_models, object_info):
    prompt = workflow.to_api(workflow.load(demo_assets.MIX_WORKFLOW), object_info)
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 3  # the demo samples 25; the grid does not care
    runs = {"the mix": prompt, "content alone": demo.alone(prompt, demo_assets.CONTENT, "content alone"),
            "style alone": demo.alone(prompt, demo_assets.STYLE, "style alone")}
    weights = {label: mix_weights(p) for label, p in runs.items()}
    content, style = demo_assets.CONTENT, demo_assets.STYLE
    assert weights == {"the mix": {content: 1.0, style: 1.0}, "content alone": {content: 1.0, style: 0.0}, "style alone": {content: 0.0, style: 1.0}}
    paths = {label: demo.saved_images(comfy.base, client.run(p))[0] for label, p in runs.items()}
    assert len(set(paths.values())) == 3
    pixels = {label: np.asarray(Image.open(p).convert("RGB")) for label, p in paths.items()}
    assert not np.array_equal(pixels["the mix"], pixels["content alone"]) and not np.array_equal(pixels["the mix"], pixels["style alone"])
    panels = [(label, paths[label], demo.world_scores(paths[label])) for label in ("content alone", "the mix", "style alone")]
    sheet = Image.open(demo.grid(panels, comfy.path("output", "qrlora_demo_test", "grid.png")))
    size = pixels["the mix"].shape[0] * 2
    assert sheet.width == 3 * (size + 8) + 8 and sheet.height > size
    for i, label in enumerate(("content alone", "the mix", "style alone")):  # each panel is its image, enlarged 2x
        x = 8 + i * (size + 8)
        panel = np.asarray(sheet.convert("RGB"))[8:8 + size, x:x + size]
        assert np.array_equal(panel[::2, ::2], pixels[label]), label
    assert all(s is not None and {"shape_iou", "pattern", "success"} <= set(s) for _, _, s in panels)


def test_alone_switches_off_the_other_rows_of_a_mixer_too():
    rows = [{"lora": "a.safetensors", "on": True, "strength": 1.0, "role": "content"},
            {"lora": "b.safetensors", "on": True, "strength": 0.8, "role": "style"}]
    prompt = {"1": {"class_type": "QRLoRAMixer", "inputs": {"rows": json.dumps(rows)}},
              "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "demo/mix"}}}
    out = demo.alone(prompt, "b.safetensors", "style alone")
    assert [r["on"] for r in json.loads(out["1"]["inputs"]["rows"])] == [False, True]
    assert out["2"]["inputs"]["filename_prefix"] == "demo/mix_style_alone" and prompt["2"]["inputs"]["filename_prefix"] == "demo/mix"
