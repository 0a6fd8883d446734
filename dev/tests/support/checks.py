"""What tests read back from the server's output folder."""

import os
import uuid

import safetensors.torch
import torch

from devkit.graph import Graph


def saved_model(comfy, prefix) -> dict:
    """The stock ModelSave node's file, keyed like the diffusion model's own state dict."""
    folder, stem = os.path.split(comfy.path("output", prefix))
    name = next(f for f in sorted(os.listdir(folder)) if f.startswith(stem) and f.endswith(".safetensors"))
    state = safetensors.torch.load_file(os.path.join(folder, name))
    return {k.split("diffusion_model.", 1)[-1]: v for k, v in state.items() if "diffusion_model." in k}


def assert_base_untouched(comfy, client, unet_name, base_state):
    """The server's cached base model, saved as it is now, equals its file bit for bit."""
    prefix = f"checks/{uuid.uuid4().hex[:8]}"
    g = Graph()
    g.add("ModelSave", model=g.add("UNETLoader", unet_name=unet_name, weight_dtype="default"), filename_prefix=prefix)
    client.run(g.prompt())
    saved = saved_model(comfy, prefix)
    for key, w in base_state.items():
        assert torch.equal(saved[key].to(w.dtype), w), f"{key} of the base model changed"
