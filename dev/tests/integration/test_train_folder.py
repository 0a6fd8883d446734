"""Training from a folder of captioned images of mixed sizes, through the real server.

The folder (devkit/folder_dataset.py) holds square, wide and tall
images, some with a same-name .txt caption and some without. The stock
"Load Image and Text Dataset from Folder" reads it, QR-LoRA Training Data
buckets, encodes and captions it (small TAESD and CLIP-L of random
weights), and Train QR-LoRA trains on it.
"""

import glob
import os

import pytest
import safetensors.torch

from devkit import folder_dataset
from devkit.graph import Graph

pytestmark = pytest.mark.server

FOLDER = "qrtrain_folder"
UNET = "tiny_sd15.safetensors"


@pytest.fixture(scope="module")
def folder(comfy, base_models, text_and_vae):
    return folder_dataset.write(comfy.path("input"), FOLDER)


def data_graph(text_and_vae, resolution=128, default_caption="a photo of a <c> dog", folder=FOLDER):
    clip_name, vae_name = text_and_vae
    g = Graph()
    load = g.add("LoadImageTextDataSetFromFolder", folder=folder)
    vae = g.add("VAELoader", vae_name=vae_name)
    clip = g.add("CLIPLoader", clip_name=clip_name, type="stable_diffusion")
    data = g.add("QRLoRATrainingData", images=load[0], captions=load[1], vae=vae, clip=clip,
                 resolution=resolution, default_caption=default_caption)
    return g, data


def test_folder_images_are_bucketed_encoded_and_captioned(comfy, client, folder, text_and_vae):
    g, data = data_graph(text_and_vae)
    g.add("SaveLatent", samples=data[0], filename_prefix="qrfolder/latent")
    offset = comfy.log_size()
    entry = client.run(g.prompt())
    ui = client.ui(entry, data.node_id)
    used = {(b["width"], b["height"]): b["images"] for b in ui["qrlora_buckets"]}
    assert used == folder_dataset.BUCKETS_AT_128
    text = ui["text"][0]
    assert text.startswith("5 images in 3 buckets at resolution 128: 128x128: 2 images, 192x64: 2 images, 64x192: 1 image.")
    assert "the default caption for 2 images without one" in text
    assert "[QR-LoRA] training data: 5 images in 3 buckets" in comfy.log_tail(offset), "the server log says which buckets it used"
    # One latent per image, bucket by bucket, each of its bucket's size (TAESD: 1/8 of the pixels).
    saved = sorted(glob.glob(comfy.path("output", "qrfolder", "latent_*.latent")))
    shapes = [tuple(safetensors.torch.load_file(p)["latent_tensor"].shape) for p in saved]
    expected = [(1, 4, h // 8, w // 8) for (w, h), n in folder_dataset.BUCKETS_AT_128.items() for _ in range(n)]
    assert shapes == expected


def test_training_from_a_folder_of_mixed_sizes(comfy, client, folder, text_and_vae):
    g, data = data_graph(text_and_vae)
    unet = g.add("UNETLoader", unet_name=UNET, weight_dtype="default")
    train = g.add(
        "QRLoRATrain", model=unet, latents=data[0], positive=data[1], rank=4, alpha=0.0, steps=3, learning_rate=1e-3,
        batch_size=2, grad_accumulation=1, seed=1, optimizer="AdamW", training_dtype="fp32", gradient_checkpointing=False,
        target_preset="attention + MLP (paper)", target_pattern="", triangular=True, checkpoint_every=0,
        filename_prefix="qrfolder/trained", trigger_words="<c>",
    )
    offset = comfy.log_size()
    entry = client.run(g.prompt(), timeout=600)
    buckets = "5 images in 3 buckets (latent width x height: images): 16x16: 2, 24x8: 2, 8x24: 1; each batch comes from one bucket."
    assert buckets in client.ui(entry, train.node_id)["text"][0]
    assert f"[QR-LoRA] training on {buckets}" in comfy.log_tail(offset)
    summary = client.ui(entry, train.node_id)["qrlora"][0]
    assert len(summary["losses"]) == 3 and all(loss == loss for loss in summary["losses"])
    assert os.path.isfile(comfy.path("models", "loras", summary["file"]))


def test_images_without_captions_and_no_default_caption_are_explained(client, folder, text_and_vae):
    g, data = data_graph(text_and_vae, default_caption="  ")
    g.add("SaveLatent", samples=data[0], filename_prefix="qrfolder/never")
    error = client.run_expecting_error(g.prompt())["exception_message"]
    assert "2 of the 5 images have no caption" in error and "write a default caption with your trigger word" in error
