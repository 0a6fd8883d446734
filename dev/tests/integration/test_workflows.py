"""Each example workflow (example_workflows/*.json, UI format) runs headless through /prompt,
and ComfyUI's template route lists and serves the files with their thumbnails.

The files are turned into API prompts with devkit.workflow (widget order
from /object_info), then run on the demo's small models, with smaller
images and fewer steps where that only saves time.
"""

import json
import os
import urllib.request

import numpy as np
import pytest
from PIL import Image

from comfyui_qrlora.qrlora_core.formats import load_adapter
from comfyui_qrlora.qrlora_core.similarity import delta_cosine
from devkit import folder_dataset, workflow
from toy_world import demo_assets
from devkit.server import PACK_FOLDER_NAME
from toy_world import pipeline

pytestmark = pytest.mark.server


def prompt_of(name, object_info):
    wf = workflow.load(os.path.join(demo_assets.WORKFLOWS, name + ".json"))
    return wf, workflow.to_api(wf, object_info)


def image_of(comfy, entry, node):
    info = entry["outputs"][node]["images"][0]
    return np.asarray(Image.open(comfy.path("output", info["subfolder"], info["filename"])).convert("RGB"))


def test_mix_workflow_runs_and_mixes_as_one_delta_r_sum(comfy, client, demo_models, object_info):
    wf, prompt = prompt_of("qrlora_mix", object_info)
    mixer = workflow.node_id(wf, "Mix content + style")
    size = workflow.node_id(wf, "Image size")
    assert (prompt[size]["inputs"]["width"], prompt[size]["inputs"]["height"]) == (128, 128)  # as a user gets it (the world's size)
    workflow.set_inputs(prompt, size, width=64, height=64)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), steps=2)
    rows = json.loads(prompt[mixer]["inputs"]["rows"])
    assert [(r["lora"], r["on"], r["strength"], r["role"]) for r in rows] == [
        (demo_assets.CONTENT, True, 1.0, "content"), (demo_assets.STYLE, True, 1.0, "style")]
    unet = workflow.node_id(wf, "Diffusion model")
    assert prompt[mixer]["inputs"]["model"] == [unet, 0] and prompt[workflow.node_id(wf, "Sampler")]["inputs"]["model"] == [mixer, 0]
    encode = workflow.node_id(wf, "Prompt (with the trigger words)")
    assert prompt[encode]["inputs"]["text"] == [mixer, 2], "the prompt's text is the Mixer's, with the rows' trigger words"
    entry = client.run(prompt)
    report = client.ui(entry, mixer)["text"][0]
    assert report.startswith("Mixed cleanly") and f"{demo_assets.LAYERS} layers merged as one ΔR sum" in report
    assert [r["trigger_words"] for r in client.ui(entry, mixer)["qrlora_mix"][0]["rows"]] == ["<c>", "<s> style"]
    shown = client.ui(entry, workflow.node_id(wf, "The prompt, as sent"))["text"]
    assert shown == [prompt[mixer]["inputs"]["prompt"].replace("{content}", "<c>").replace("{style}", "<s> style")]
    assert shown == [pipeline.MIX_PROMPT], "the prompt the demo scores"
    image = image_of(comfy, entry, workflow.node_id(wf, "Result"))
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_compare_workflow_reports_the_demo_adapters_similarity(comfy, client, demo_models, object_info):
    wf, prompt = prompt_of("qrlora_compare", object_info)
    entry = client.run(prompt)
    got = client.ui(entry, workflow.node_id(wf, "Content vs style"))["qrlora_similarity"][0]
    loras = os.path.join(demo_models, "models", "loras")
    expected = delta_cosine(load_adapter(os.path.join(loras, demo_assets.CONTENT)), load_adapter(os.path.join(loras, demo_assets.STYLE)))
    assert got["layers"] == list(expected) and np.allclose(got["cosine"], list(expected.values()), atol=1e-9)
    assert got["max_abs"] == max(abs(v) for v in expected.values())
    assert image_of(comfy, entry, workflow.node_id(wf, "Save the plot")).shape == (384, 768, 3)


@pytest.mark.parametrize("kind", ["content", "style"])
def test_train_workflow_trains_saves_and_samples(comfy, client, demo_models, object_info, kind):
    wf, prompt = prompt_of(f"qrlora_train_{kind}", object_info)
    train = workflow.node_id(wf, f"Train {kind} adapter")
    workflow.set_inputs(prompt, train, steps=3, rank=4)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Image size"), width=64, height=64)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), steps=2)
    entry = client.run(prompt, timeout=600)
    ui = client.ui(entry, train)
    assert len(ui["loss"]) == 3, "the train node sends its loss history in its ui payload"
    assert image_of(comfy, entry, workflow.node_id(wf, "Result")).shape == (64, 64, 3)
    assert entry["outputs"][workflow.node_id(wf, "Loss curve")]["images"]
    saved = [f for f in os.listdir(os.path.join(demo_models, "models", "loras", "qrlora")) if f.startswith(kind)]
    assert saved, f"no {kind} adapter was saved in loras/qrlora/"


def test_folder_workflow_buckets_trains_and_samples(comfy, client, demo_models, object_info):
    wf, prompt = prompt_of("qrlora_train_folder", object_info)
    data, train = workflow.node_id(wf, "Bucket, encode and caption"), workflow.node_id(wf, "Train from the folder")
    assert prompt[workflow.node_id(wf, "Image folder (images + same-name .txt captions)")]["inputs"]["folder"] == folder_dataset.FOLDER
    assert prompt[data]["inputs"]["resolution"] == 128  # as a user gets it: the toy world's size
    workflow.set_inputs(prompt, train, steps=2, rank=4, checkpoint_every=0)
    samples = workflow.node_id(wf, "Samples while training")
    assert prompt[samples]["inputs"]["every"] == 50 and prompt[train]["inputs"]["samples"] == [samples, 0]
    workflow.set_inputs(prompt, samples, every=1, width=64, height=64, steps=2)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Image size"), width=64, height=64)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), steps=2)
    entry = client.run(prompt, timeout=600)
    buckets = {(b["width"], b["height"]): b["images"] for b in client.ui(entry, data)["qrlora_buckets"]}
    assert buckets == folder_dataset.BUCKETS_AT_128
    assert len(client.ui(entry, train)["loss"]) == 2
    made = client.ui(entry, train)["qrlora_samples"]
    assert [s["step"] for s in made] == [1, 1, 2, 2], "two prompts sampled after each step"
    assert all(os.path.isfile(os.path.join(demo_models, "models", "loras", s["file"])) for s in made)
    assert image_of(comfy, entry, workflow.node_id(wf, "Result")).shape == (64, 64, 3)
    saved = [f for f in os.listdir(os.path.join(demo_models, "models", "loras", "qrlora")) if f.startswith("folder_")]
    assert saved, "no adapter was saved as loras/qrlora/folder_*"


def test_template_route_lists_each_example_once_and_serves_its_thumbnail(comfy, client):
    """What ComfyUI's template browser asks for: the pack's names, then NAME.json and NAME.jpg from example_workflows/."""
    names = sorted(f[:-5] for f in os.listdir(demo_assets.WORKFLOWS) if f.endswith(".json"))
    assert len(names) == 5
    assert sorted(client.get("/workflow_templates")[PACK_FOLDER_NAME]) == names  # once each: no second folder of copies
    for name in names:
        for ext, kind in ((".json", "application/json"), (".jpg", "image/jpeg")):
            with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{name}{ext}", timeout=30) as r:
                assert r.status == 200 and r.headers["Content-Type"] == kind, (name, ext, r.headers["Content-Type"])
                with open(os.path.join(demo_assets.WORKFLOWS, name + ext), "rb") as f:
                    assert r.read() == f.read()
