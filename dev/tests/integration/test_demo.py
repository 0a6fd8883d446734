"""`make demo`'s grid (dev/scripts/demo.py): the mixing workflow and the same workflow with each adapter alone, through /prompt."""

import json

import numpy as np
import pytest
from PIL import Image

from devkit import workflow
from scripts import demo
from toy_world import demo_assets

pytestmark = pytest.mark.server


def test_demo_grid_is_content_alone_the_mix_and_style_alone_with_their_scores(comfy, client, demo_models, object_info, capsys):
    prompt = workflow.to_api(workflow.load(demo_assets.MIX_WORKFLOW), object_info)
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 3  # the demo samples 25; the grid does not care
    runs = {"the mix": prompt, "content alone": demo.alone(prompt, demo_assets.CONTENT, "content alone"),
            "style alone": demo.alone(prompt, demo_assets.STYLE, "style alone")}
    weights = {label: [n["inputs"]["weight_" + k[len("qr_lora_"):]] for n in p.values() if n["class_type"] == "QRLoRAMerge"
                       for k in sorted(n["inputs"]) if k.startswith("qr_lora_")] for label, p in runs.items()}  # of the slots in use
    assert weights == {"the mix": [1.0, 1.0], "content alone": [1.0, 0.0], "style alone": [0.0, 1.0]}  # slot 1 holds the content file
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
