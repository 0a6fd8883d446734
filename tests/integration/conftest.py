"""Model files for the server, built once per session with ComfyUI's own classes."""

import os

import pytest
import safetensors.torch

from support import models

SD15 = "tiny_sd15.safetensors"
SD3 = "tiny_sd3.safetensors"
CLIP_L = "tiny_clip_l.safetensors"
TAESD = "tiny_taesd.safetensors"


@pytest.fixture(scope="session")
def base_models(comfy):
    """{arch: state dict} of the small models written into the server's models folder."""
    out = {}
    for arch, name in (("sd15", SD15), ("sd3", SD3)):
        path = comfy.path("models", "diffusion_models", name)
        if not os.path.exists(path):
            models.save_diffusion_model(arch, path)
        out[arch] = safetensors.torch.load_file(path)
    return out


@pytest.fixture(scope="session")
def text_and_vae(comfy):
    """A random CLIP-L (stock CLIPLoader) and TAESD (stock VAELoader) for sampling workflows."""
    os.makedirs(comfy.path("models", "text_encoders"), exist_ok=True)
    os.makedirs(comfy.path("models", "vae"), exist_ok=True)
    if not os.path.exists(comfy.path("models", "text_encoders", CLIP_L)):
        models.save_clip_l(comfy.path("models", "text_encoders", CLIP_L))
    if not os.path.exists(comfy.path("models", "vae", TAESD)):
        models.save_taesd(comfy.path("models", "vae", TAESD))
    return CLIP_L, TAESD
