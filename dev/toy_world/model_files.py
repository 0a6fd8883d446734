"""The world's model files: names, where they live, and the UNet's configuration."""

import hashlib
import os
from functools import lru_cache

from devkit import models

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "weights")  # shipped in the repo (fp16)

UNET_FILE = "toy_world_sd15.safetensors"  # models/diffusion_models (UNETLoader)
VAE_FILE = "toy_world_taesd.safetensors"  # models/vae (VAELoader)
CLIP_FILE = "toy_world_clip_l.safetensors"  # models/text_encoders (CLIPLoader, type stable_diffusion); written at setup
CONTENT_ADAPTER = "toy_world/heart_content.safetensors"  # models/loras
STYLE_ADAPTER = "toy_world/checker_style.safetensors"

UNET_CONFIG = models.SD15_CONFIG  # the one small SD1.5 the stock loader detects (devkit.models)


@lru_cache(maxsize=None)
def unet_sha256() -> str:
    """The shipped UNet's sha256: which base world a benchmark run measured (its JSON's `base_model`)."""
    with open(os.path.join(WEIGHTS, UNET_FILE), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
