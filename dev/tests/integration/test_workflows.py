"""Each example workflow (example_workflows/*.json, UI format) runs headless through /prompt,
and ComfyUI's template route lists and serves the files with their thumbnails.

The files are turned into API prompts with devkit.workflow (widget order
from /object_info), then run on small models, with smaller images and fewer
steps where that only saves time: the toy world's workflows on the toy
world's model as shipped; the FLUX.1 and SDXL workflows with their stock
loaders replaced by a small model of the same architecture (`on_small_models`
says exactly what is substituted), the rest of their graphs as shipped.
"""

import json
import os
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from comfyui_qrlora.qrlora_core.formats import load_adapter
from comfyui_qrlora.qrlora_core.similarity import delta_cosine
from devkit import examples, workflow
from devkit.server import PACK_FOLDER_NAME
from toy_world import demo_assets, pipeline

pytestmark = pytest.mark.server


def prompt_of(name, object_info):
    wf = workflow.load(examples.path(name))
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


def test_training_right_after_a_mix_on_the_same_server(comfy, client, demo_models, object_info):
    """A user mixes, then trains: ComfyUI undoes the mix's patch by setting the patched weights' .data back to
    backups made in inference mode, and the training that follows must still run (it failed with 'Inference
    tensors cannot be saved for backward' until the trainer copied such weights too)."""
    wf, prompt = prompt_of("qrlora_mix", object_info)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Image size"), width=64, height=64)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), steps=2)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), seed=20261206)  # a prompt the cache has not run
    client.run(prompt)
    wf, prompt = prompt_of("qrlora_train_content", object_info)
    train = workflow.node_id(wf, "Train content adapter")
    workflow.set_inputs(prompt, train, steps=2, rank=4, seed=20261206)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Image size"), width=64, height=64)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), steps=2)
    entry = client.run(prompt, timeout=600)
    assert len(client.ui(entry, train)["loss"]) == 2


def test_folder_workflow_buckets_trains_and_samples(comfy, client, demo_models, object_info):
    wf, prompt = prompt_of("qrlora_train_folder", object_info)
    data, train = workflow.node_id(wf, "Bucket, encode and caption"), workflow.node_id(wf, "Train from the folder")
    assert prompt[workflow.node_id(wf, "Image folder (images + same-name .txt captions)")]["inputs"]["folder"] == demo_assets.FOLDER
    assert prompt[data]["inputs"]["resolution"] == 128  # as a user gets it: the toy world's size
    workflow.set_inputs(prompt, train, steps=2, rank=4, checkpoint_every=0)
    samples = workflow.node_id(wf, "Samples while training")
    assert prompt[samples]["inputs"]["every"] == 25 and prompt[train]["inputs"]["samples"] == [samples, 0]
    workflow.set_inputs(prompt, samples, every=1, width=64, height=64, steps=2)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Image size"), width=64, height=64)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), steps=2)
    entry = client.run(prompt, timeout=600)
    buckets = {(b["width"], b["height"]): b["images"] for b in client.ui(entry, data)["qrlora_buckets"]}
    assert buckets == demo_assets.FOLDER_BUCKETS_AT_128
    assert len(client.ui(entry, train)["loss"]) == 2
    made = client.ui(entry, train)["qrlora_samples"]
    assert [s["step"] for s in made] == [1, 1, 2, 2], "two prompts sampled after each step"
    assert all(os.path.isfile(os.path.join(demo_models, "models", "loras", s["file"])) for s in made)
    assert image_of(comfy, entry, workflow.node_id(wf, "Result")).shape == (64, 64, 3)
    saved = [f for f in os.listdir(os.path.join(demo_models, "models", "loras", "qrlora")) if f.startswith("folder_")]
    assert saved, "no adapter was saved as loras/qrlora/folder_*"


def test_template_route_lists_each_example_once_and_serves_its_thumbnail(comfy, client):
    """What ComfyUI's template browser asks for: the pack's names, then NAME.json and NAME.jpg from example_workflows/."""
    names = sorted(f[:-5] for f in os.listdir(examples.FOLDER) if f.endswith(".json"))
    assert names == sorted(examples.TITLES.values())
    assert sorted(client.get("/workflow_templates")[PACK_FOLDER_NAME]) == names  # once each: no second folder of copies
    for name in names:
        for ext, kind in ((".json", "application/json"), (".jpg", "image/jpeg")):
            url = f"{comfy.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{urllib.parse.quote(name + ext)}"  # as the page asks
            with urllib.request.urlopen(url, timeout=30) as r:
                assert r.status == 200 and r.headers["Content-Type"] == kind, (name, ext, r.headers["Content-Type"])
                with open(os.path.join(examples.FOLDER, name + ext), "rb") as f:
                    assert r.read() == f.read()


# ------------------------------------------------------------ every example against /object_info

# The files a user brings, by the names the FLUX.1 and SDXL workflows ship with: the usual names of the models
# (their model pages' and ComfyUI's own examples'), the training folders the notes ask for, the adapters the
# training workflows write. Every other widget value must be one the server offers.
FLUX_FILES = {("UNETLoader", "unet_name", "flux1-dev.safetensors"), ("DualCLIPLoader", "clip_name1", "clip_l.safetensors"),
              ("DualCLIPLoader", "clip_name2", "t5xxl_fp16.safetensors"), ("VAELoader", "vae_name", "ae.safetensors")}
SDXL_FILES = {("CheckpointLoaderSimple", "ckpt_name", "sd_xl_base_1.0.safetensors")}
USER_FILES = {
    **{f"{arch}_train_{kind}": files | {("LoadImageTextDataSetFromFolder", "folder", f"my_{kind}")}
       for arch, files in (("flux", FLUX_FILES), ("sdxl", SDXL_FILES)) for kind in ("content", "style")},
    **{f"{arch}_mix": files for arch, files in (("flux", FLUX_FILES), ("sdxl", SDXL_FILES))},  # the Mixer's rows: the test below
}


def values_the_server_lacks(prompt, object_info):
    """(node type, input, value) of each widget value outside what /object_info allows: a combo value not among
    its options, a number outside its limits."""
    out = set()
    for node in prompt.values():
        inputs = object_info[node["class_type"]]["input"]
        specs = {**inputs.get("required", {}), **inputs.get("optional", {})}
        for name, value in node["inputs"].items():
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            if isinstance(value, list):
                continue  # a link
            if isinstance(kind, list) or kind == "COMBO":
                allowed = kind if isinstance(kind, list) else options.get("options", [])
                if value not in allowed:
                    out.add((node["class_type"], name, value))
            elif kind in ("INT", "FLOAT") and not options.get("min", value) <= value <= options.get("max", value):
                out.add((node["class_type"], name, value))
    return out


@pytest.mark.parametrize("name", list(examples.TITLES))
def test_every_example_is_valid_against_object_info(demo_models, object_info, name):
    """Every node type exists and every widget value is one the server accepts, but for the user's own files."""
    _, prompt = prompt_of(name, object_info)  # to_api names any node type the server lacks
    assert values_the_server_lacks(prompt, object_info) == USER_FILES.get(name, set())


# ------------------------------------------------------------ FLUX.1 and SDXL on small models

SMALL_NODE = "DevSmallCheckpoint"  # devkit/small_checkpoint_node.py, linked into the test server only
STOCK_LOADERS = {"UNETLoader": 0, "DualCLIPLoader": 1, "VAELoader": 2, "CheckpointLoaderSimple": None}  # -> the small node's output


def on_small_models(prompt, arch):
    """The prompt with its stock loaders replaced by one DevSmallCheckpoint of the same architecture (a small
    model, text encoders and TAESD autoencoder of ComfyUI's own classes, devkit.models.small_checkpoint): links
    from UNETLoader (flux1-dev) go to its MODEL, from DualCLIPLoader (clip_l + t5xxl, type flux) to its CLIP, from
    VAELoader (ae) to its VAE, from CheckpointLoaderSimple (sd_xl_base_1.0) to the same three. Nothing else changes."""
    loaders = {key: node["class_type"] for key, node in prompt.items() if node["class_type"] in STOCK_LOADERS}
    assert loaders, "no stock loader to replace"
    out = {key: node for key, node in prompt.items() if key not in loaders}
    for node in out.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in loaders:
                slot = STOCK_LOADERS[loaders[value[0]]]
                node["inputs"][name] = ["small", value[1] if slot is None else slot]
    out["small"] = {"class_type": SMALL_NODE, "inputs": {"arch": arch, "seed": 0}}
    return out


def small_run(prompt, wf):
    """Tiny images and few sampling steps: the graph as shipped, at a size the CPU runs in seconds."""
    workflow.set_inputs(prompt, workflow.node_id(wf, "Image size"), width=64, height=64)
    workflow.set_inputs(prompt, workflow.node_id(wf, "Sampler"), steps=2)
    return prompt


def trained_file(demo_models, prefix):
    folder = os.path.join(demo_models, "models", "loras", "qrlora")
    return "qrlora/" + sorted(f for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".safetensors"))[-1]


@pytest.mark.parametrize("arch", ["flux", "sdxl"])
def test_real_model_workflows_train_both_kinds_and_mix_them_on_small_models(comfy, client, demo_models, object_info, arch):
    """The FLUX.1 (or SDXL) train content, train style and mix workflows, one after the other as a user runs them,
    on a small model of that architecture: each trains and saves, and the mix of the two is one ΔR sum."""
    trained = {}
    for kind, folder in (("content", demo_assets.CONTENT_FOLDER), ("style", demo_assets.STYLE_FOLDER)):
        wf, prompt = prompt_of(f"{arch}_train_{kind}", object_info)
        train = workflow.node_id(wf, f"Train {kind} adapter")
        assert prompt[train]["inputs"]["steps"] == 1000 and prompt[train]["inputs"]["rank"] == 64
        assert prompt[train]["inputs"]["filename_prefix"] == f"qrlora/{arch}_{kind}"
        assert prompt[train]["inputs"]["role"] == kind
        prompt = small_run(on_small_models(prompt, arch), wf)
        workflow.set_inputs(prompt, workflow.node_id(wf, "Image folder in input/ (images + same-name .txt captions)"), folder=folder)
        workflow.set_inputs(prompt, workflow.node_id(wf, "Bucket, encode and caption"), resolution=64)
        workflow.set_inputs(prompt, train, steps=2, rank=4, checkpoint_every=0)
        workflow.set_inputs(prompt, workflow.node_id(wf, "Samples while training"), every=2, width=64, height=64, steps=1)
        entry = client.run(prompt, timeout=600)
        assert len(client.ui(entry, train)["loss"]) == 2
        assert [s["step"] for s in client.ui(entry, train)["qrlora_samples"]] == [2]
        assert image_of(comfy, entry, workflow.node_id(wf, "Result")).shape == (64, 64, 3)
        trained[kind] = trained_file(demo_models, f"{arch}_{kind}_")

    wf, prompt = prompt_of(f"{arch}_mix", object_info)
    mixer = workflow.node_id(wf, "Mix content + style")
    rows = json.loads(prompt[mixer]["inputs"]["rows"])
    assert rows == [{"lora": f"qrlora/{arch}_{kind}_00001_step001000.safetensors", "on": True, "strength": 1.0, "role": kind}
                    for kind in ("content", "style")], "the files the training templates write first"
    assert [k for k, node in prompt.items() if node["class_type"] in ("QRLoRALoader", "QRLoRAMerge", "QRLoRAApply")] == []
    encode = workflow.node_id(wf, "Prompt (with the trigger words)")
    assert prompt[encode]["inputs"]["text"] == [mixer, 2], "the prompt's text is the Mixer's, with the rows' trigger words"
    prompt = small_run(on_small_models(prompt, arch), wf)
    assert prompt[mixer]["inputs"]["model"] == ["small", 0] and prompt[workflow.node_id(wf, "Sampler")]["inputs"]["model"] == [mixer, 0]
    workflow.set_inputs(prompt, mixer, rows=json.dumps([{**row, "lora": trained[row["role"]]} for row in rows]))
    entry = client.run(prompt)
    assert "merged as one ΔR sum" in client.ui(entry, mixer)["text"][0]
    shown = client.ui(entry, workflow.node_id(wf, "The prompt, as sent"))["text"]
    assert shown == ["a photo of <c> on a beach, in <s> style"], "both adapters' trigger words, from their files"
    assert image_of(comfy, entry, workflow.node_id(wf, "Result")).shape == (64, 64, 3)
