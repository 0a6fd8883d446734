"""The world's model files: names, where they live, and the UNet's configuration."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "weights")  # shipped in the repo (fp16)

UNET_FILE = "toy_world_sd15.safetensors"  # models/diffusion_models (UNETLoader)
VAE_FILE = "toy_world_taesd.safetensors"  # models/vae (VAELoader)
CLIP_FILE = "toy_world_clip_l.safetensors"  # models/text_encoders (CLIPLoader, type stable_diffusion); written at setup
CONTENT_ADAPTER = "toy_world/heart_content.safetensors"  # models/loras
STYLE_ADAPTER = "toy_world/checker_style.safetensors"

# SD1.5's UNet (the stock loader detects it from 320 channels and a 768-wide
# context) kept to one level: 25.8M parameters at 16x16 latents.
UNET_CONFIG = {
    "context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "num_heads": 8, "num_head_channels": -1, "image_size": 32,
    "dims": 2, "use_checkpoint": False,
}
