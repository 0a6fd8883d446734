"""Mix Grid through the real server on the toy world: a 2 x 2 grid's cells are the images of four separately
patched runs (Merge ΔR at the cell's weights -> Apply to Model -> KSampler -> VAE Decode, same seed), and
the picture carries the cells and the weights beside them."""

import numpy as np
import pytest
from PIL import Image

from toy_world import demo_assets, pipeline, world

pytestmark = pytest.mark.server

CONTENT_WEIGHTS = (0.0, 1.0)
STYLE_WEIGHTS = (0.0, 1.0)
SAMPLER = {"seed": 3, "steps": 8, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}
SAME_IMAGE = 3  # of 255: a batch of four and four batches of one round apart by this much at most


def graph() -> dict:
    p = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": demo_assets.UNET, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": demo_assets.CLIP_L, "type": "stable_diffusion", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": demo_assets.VAE}},
        "content": {"class_type": "QRLoRALoader", "inputs": {"lora_name": demo_assets.CONTENT}},
        "style": {"class_type": "QRLoRALoader", "inputs": {"lora_name": demo_assets.STYLE}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": pipeline.MIX_PROMPT}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": world.SIZE, "height": world.SIZE, "batch_size": 1}},
        "grid": {"class_type": "QRLoRAGrid", "inputs": {
            "model": ["unet", 0], "content": ["content", 0], "style": ["style", 0],
            "content_weights": ", ".join(f"{w:g}" for w in CONTENT_WEIGHTS), "style_weights": ", ".join(f"{w:g}" for w in STYLE_WEIGHTS),
            "positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["latent", 0], "vae": ["vae", 0],
            **SAMPLER, "denoise": 1.0}},
        "save_grid": {"class_type": "SaveImage", "inputs": {"images": ["grid", 0], "filename_prefix": "grid_test/grid"}},
        "save_cells": {"class_type": "SaveImage", "inputs": {"images": ["grid", 1], "filename_prefix": "grid_test/cells"}},
    }
    for a in CONTENT_WEIGHTS:
        for b in STYLE_WEIGHTS:
            cell = f"{a:g}_{b:g}"
            p.update({
                f"merge_{cell}": {"class_type": "QRLoRAMerge", "inputs": {"qr_lora_1": ["content", 0], "weight_1": a, "qr_lora_2": ["style", 0], "weight_2": b}},
                f"apply_{cell}": {"class_type": "QRLoRAApply", "inputs": {"model": ["unet", 0], "qr_lora": [f"merge_{cell}", 0], "strength": 1.0}},
                f"sample_{cell}": {"class_type": "KSampler", "inputs": {
                    "model": [f"apply_{cell}", 0], **SAMPLER, "positive": ["positive", 0], "negative": ["negative", 0],
                    "latent_image": ["latent", 0], "denoise": 1.0}},
                f"decode_{cell}": {"class_type": "VAEDecode", "inputs": {"samples": [f"sample_{cell}", 0], "vae": ["vae", 0]}},
                f"save_{cell}": {"class_type": "SaveImage", "inputs": {"images": [f"decode_{cell}", 0], "filename_prefix": f"grid_test/alone_{cell}"}},
            })
    return p


def saved(comfy, entry, node) -> list[np.ndarray]:
    return [np.asarray(Image.open(comfy.path("output", i["subfolder"], i["filename"])).convert("RGB")).astype(int)
            for i in entry["outputs"][node]["images"]]


@pytest.mark.timeout(1200)
def test_a_two_by_two_grid_is_four_separately_patched_runs_with_its_weights_drawn(comfy, client, demo_models):
    entry = client.run(graph(), timeout=1200)
    cells = saved(comfy, entry, "save_cells")
    (picture,) = saved(comfy, entry, "save_grid")
    weights = [(a, b) for a in CONTENT_WEIGHTS for b in STYLE_WEIGHTS]
    assert len(cells) == len(weights)
    for cell, (a, b) in zip(cells, weights):
        (alone,) = saved(comfy, entry, f"save_{a:g}_{b:g}")
        diff = np.abs(cell - alone).max()
        print(f"cell content {a:g} style {b:g}: max abs difference to the separate run {diff} of 255")
        assert diff <= SAME_IMAGE, f"cell {(a, b)} differs from its separately patched run by {diff} of 255"
    assert min(np.abs(c - cells[0]).max() for c in cells[1:]) > 40, "the weights change the image"

    # the picture: the cells in rows and columns (the rows counted from the bottom), the labels in the margins left and above
    size, gap = world.SIZE, 4
    height, width, _ = picture.shape
    top = height - len(CONTENT_WEIGHTS) * (size + gap)
    columns_at = []
    for i, cell in enumerate(cells):
        r, c = divmod(i, len(STYLE_WEIGHTS))
        y = top + r * (size + gap)
        found = [x for x in range(width - size + 1) if np.array_equal(picture[y:y + size, x:x + size], cell)]
        assert found, f"cell {i} is not in row {r} of the picture"
        columns_at.append(found[0])
    left = columns_at[0]
    assert columns_at == [left + c * (size + gap) for _ in CONTENT_WEIGHTS for c in range(len(STYLE_WEIGHTS))], columns_at
    ink = picture.sum(axis=2) < 200
    assert ink[top:, :left].any(), "no content weights drawn beside the rows"
    assert ink[:top, left:].any(), "no style weights drawn above the columns"


def test_weights_that_are_not_numbers_are_refused_in_one_sentence(client, demo_models):
    prompt = graph()
    prompt = {k: v for k, v in prompt.items() if not k.startswith(("merge_", "apply_", "sample_", "decode_", "save_"))}
    prompt["grid"]["inputs"]["style_weights"] = "0, half"
    prompt["save_grid"] = {"class_type": "PreviewImage", "inputs": {"images": ["grid", 0]}}
    text = client.run_expecting_error(prompt)["exception_message"]
    assert "style_weights holds 'half', which is not a number" in text, text
    assert "Traceback" not in text and len(text) < 300
