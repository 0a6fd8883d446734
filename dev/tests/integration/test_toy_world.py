"""The toy world proves the method on the CPU, through the real server.

Both adapters are trained briefly by Train QR-LoRA on the shipped base model
(which never saw a heart or a checkerboard), from the stock dataset nodes
(a folder of images with .txt captions -> Make Training Dataset), mixed with
Merge ΔR, applied, sampled with KSampler, and the image is scored against
the world's definition (toy_world/scores.py): the shape must be the heart
and the fill the checkerboard. The same graph with the merge replaced by
either adapter alone must fail that check, which shows the check needs
both adapters, mixed.

Each adapter is the mean ΔR of its checkpoints at AVERAGED_STEPS (Merge ΔR
of the checkpoints, weight 1/3 each: they share the basis Q, so this is
exact). Training at the recipe's rate swings from checkpoint to checkpoint
(docs/toy-world.md, Disentanglement on the toy world); on this CPU the single
checkpoints at 75, 100, 125 and 150 steps drew a checkered heart at 1, 1,
6 and 2 of sampler seeds 0-7, their mean over 75-125 at 7 of 8.
"""

import os
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from comfyui_qrlora.qrlora_core.training import TrainConfig
from toy_world import demo_assets
from toy_world import adapters, pipeline, scores, world

pytestmark = pytest.mark.server

AVERAGED_STEPS = (75, 100, 125)  # checkpoints of one run, averaged (see the module's docstring)
SAMPLE_SEEDS = (0, 1, 2, 3)
MIX_SUCCESSES = 2  # of SAMPLE_SEEDS: the claim is a rate (bench/disentangle.py), not one lucky seed
KINDS = ("content", "style")


def loaders() -> dict:
    """The world's UNETLoader, CLIPLoader and VAELoader: the first nodes of both graphs."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": demo_assets.UNET, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": demo_assets.CLIP_L, "type": "stable_diffusion", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": demo_assets.VAE}},
    }


def training_graph() -> dict:
    """Train both adapters from their folders with the shipped recipe, a checkpoint every 25 steps: an API prompt."""
    # every input of the train node at its default (the node's widgets are TrainConfig's fields), the shipped recipe on top
    recipe = {**{f.name: f.default for f in fields(TrainConfig)}, **adapters.RECIPE, "steps": max(AVERAGED_STEPS), "checkpoint_every": 25}
    p = loaders()
    for kind, folder, trigger in (("content", demo_assets.CONTENT_FOLDER, pipeline.CONTENT_TRIGGER),
                                  ("style", demo_assets.STYLE_FOLDER, f"{pipeline.STYLE_TRIGGER} style")):
        p[f"{kind}_images"] = {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": folder}}
        p[f"{kind}_data"] = {"class_type": "MakeTrainingDataset", "inputs": {
            "images": [f"{kind}_images", 0], "texts": [f"{kind}_images", 1], "vae": ["vae", 0], "clip": ["clip", 0]}}
        p[f"{kind}_train"] = {"class_type": "QRLoRATrain", "inputs": {
            "model": ["unet", 0], "latents": [f"{kind}_data", 0], "positive": [f"{kind}_data", 1], **recipe, **adapters.TARGETS[kind],
            "seed": adapters.SEEDS[kind], "filename_prefix": f"toy_world_ci/{kind}", "trigger_words": trigger}}
    return p


def sampling_graph(checkpoints: dict, content_weight: float, style_weight: float, seed: int, prefix: str) -> dict:
    """Load the checkpoints, Merge ΔR (each kind's mean at its weight), apply, sample MIX_PROMPT: an API prompt."""
    p = loaders()
    merge = {}
    for kind, weight in zip(KINDS, (content_weight, style_weight)):
        for name in checkpoints[kind]:
            slot = len(merge) // 2 + 1
            p[f"load_{slot}"] = {"class_type": "QRLoRALoader", "inputs": {"lora_name": name}}
            merge.update({f"qr_lora_{slot}": [f"load_{slot}", 0], f"weight_{slot}": weight / len(checkpoints[kind])})
    p.update({
        "merge": {"class_type": "QRLoRAMerge", "inputs": merge},
        "apply": {"class_type": "QRLoRAApply", "inputs": {"model": ["unet", 0], "qr_lora": ["merge", 0], "strength": 1.0}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": pipeline.MIX_PROMPT}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": world.SIZE, "height": world.SIZE, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "seed": seed, **pipeline.SAMPLER, "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    })
    return p


def trained_checkpoints(comfy, client) -> dict:
    """Run the training graph; kind -> the checkpoint names (as Load QR-LoRA takes them) at AVERAGED_STEPS."""
    client.run(training_graph(), timeout=3000)
    folder = comfy.path("models", "loras", "toy_world_ci")
    names = sorted(os.listdir(folder))
    out = {}
    for kind in KINDS:
        out[kind] = [f"toy_world_ci/{n}" for step in AVERAGED_STEPS for n in names if n.startswith(kind) and n.endswith(f"_step{step:06}.safetensors")]
        assert len(out[kind]) == len(AVERAGED_STEPS), f"{kind} checkpoints missing: {names}"
    return out


def generated(comfy, client, checkpoints, content_weight, style_weight, seed) -> dict:
    prompt = sampling_graph(checkpoints, content_weight, style_weight, seed, f"toy_world_ci/mix_{content_weight:g}_{style_weight:g}")
    entry = client.run(prompt, timeout=600)
    info = entry["outputs"]["save"]["images"][0]
    image = np.asarray(Image.open(comfy.path("output", info["subfolder"], info["filename"])).convert("RGB"))
    s = scores.score(image, world.HELD_OUT_SHAPE, world.HELD_OUT_STYLE, world.CHECKER_COLOURS)
    print(f"weights content {content_weight:g} style {style_weight:g}, sampler seed {seed}: "
          f"heart IoU {s['shape_iou']:.3f} (best shape {s['best_shape']}), checker pattern {s['pattern']:.3f} "
          f"(best style {s['best_style']}) -> {'checkered heart' if s['success'] else 'not a checkered heart'}")
    return s


@pytest.mark.timeout(3600)
def test_two_briefly_trained_adapters_mix_into_a_checkered_heart_and_neither_alone_does(comfy, client, demo_models):
    print(f"training seeds {adapters.SEEDS}, checkpoints {AVERAGED_STEPS} averaged; sampler seeds {SAMPLE_SEEDS}")
    checkpoints = trained_checkpoints(comfy, client)
    mixed = [generated(comfy, client, checkpoints, 1.0, 1.0, seed) for seed in SAMPLE_SEEDS]
    content_only = [generated(comfy, client, checkpoints, 1.0, 0.0, seed) for seed in SAMPLE_SEEDS]
    style_only = [generated(comfy, client, checkpoints, 0.0, 1.0, seed) for seed in SAMPLE_SEEDS]
    assert sum(s["success"] for s in mixed) >= MIX_SUCCESSES, f"the mix drew fewer than {MIX_SUCCESSES} checkered hearts: {mixed}"
    assert not any(s["success"] for s in content_only), f"the content adapter alone drew a checkered heart: {content_only}"
    assert not any(s["success"] for s in style_only), f"the style adapter alone drew a checkered heart: {style_only}"
    # and each alone keeps its own part: mostly the heart without the pattern, the pattern without the heart
    assert sum(s["best_shape"] == world.HELD_OUT_SHAPE for s in content_only) >= MIX_SUCCESSES, content_only
    assert all(s["best_style"] == world.HELD_OUT_STYLE for s in style_only), style_only
