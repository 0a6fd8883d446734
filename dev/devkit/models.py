"""Small models of real architectures, built with ComfyUI's own classes at test time.

SD1.5 and SD3 files are detected by the stock loaders from their weights
(SD3 derives hidden = 64 * depth; SD1.5 needs 320 channels and a 768-wide
context, so it is kept to one level). Flux and SDXL fix sizes the loader
cannot infer from a small file, so tests build those from explicit configs
and wrap them in ComfyUI's real ModelPatcher in-process.
"""

import safetensors.torch
import torch

from .host import import_comfy

# SD1.5's UNet (the stock loader detects it from 320 channels and a 768-wide
# context) kept to one level: 25.8M parameters at 16x16 latents.
SD15_CONFIG = {
    "context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "num_heads": 8, "num_head_channels": -1, "image_size": 32,
    "dims": 2, "use_checkpoint": False,
}

SD3_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
    "num_patches": 1024, "pos_embed_max_size": 32, "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
}
FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
    "hidden_size": 256, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": True, "patch_size": 2,
}
SDXL_CONFIG = {
    "model_channels": 64, "use_linear_in_transformer": True, "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1, "context_dim": 2048, "adm_in_channels": 2816, "use_temporal_attention": False,
    "in_channels": 4, "out_channels": 4, "num_res_blocks": [1, 1], "channel_mult": [1, 2], "use_spatial_transformer": True,
    "legacy": False, "num_heads": -1, "num_head_channels": 32, "image_size": 32, "dims": 2, "use_checkpoint": False,
}
ARCHITECTURES = ("sd15", "sdxl", "sd3", "flux")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Fresh random weights with a decaying spectrum-free scale that keeps activations sane."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=generator) / max(fan_in, 1) ** 0.5)
        # Buffers too: SD3's pos_embed is allocated with torch.empty, and whatever memory
        # it got (NaN at times) would otherwise be saved into the file (flaky equality checks).
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=generator) * 0.02)


def build(arch: str, seed: int = 0):
    """A ComfyUI BaseModel of the given architecture with random weights."""
    import_comfy()
    import comfy.supported_models as sm

    config_class, unet_config = {
        "sd15": (sm.SD15, SD15_CONFIG), "sdxl": (sm.SDXL, SDXL_CONFIG),
        "sd3": (sm.SD3, SD3_CONFIG), "flux": (sm.Flux, FLUX_CONFIG),
    }[arch]
    model = config_class(dict(unet_config)).get_model({})
    _randomize(model.diffusion_model, seed)
    return model


def patcher(arch: str, seed: int = 0):
    """The model wrapped in ComfyUI's real ModelPatcher, on the CPU."""
    model = build(arch, seed)
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def save_diffusion_model(arch: str, path: str, seed: int = 0) -> dict:
    """Write a file the stock UNETLoader detects (sd15, sd3); returns its state dict."""
    if arch not in ("sd15", "sd3"):
        raise ValueError(f"the stock loader cannot detect a small {arch} from its file")
    state = {k: v.contiguous() for k, v in build(arch, seed).diffusion_model.state_dict().items()}
    safetensors.torch.save_file(state, path)
    return state


def save_clip_l(path: str, seed: int = 0) -> None:
    """A CLIP-L text encoder (the size is fixed by ComfyUI) with random weights, in fp16."""
    import_comfy()
    import comfy.sd1_clip

    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    _randomize(clip.transformer, seed)
    state = {k[len("transformer."):]: v.to(torch.float16).contiguous() for k, v in clip.state_dict().items() if k.startswith("transformer.")}
    safetensors.torch.save_file(state, path)


def save_taesd(path: str, seed: int = 0) -> None:
    """A tiny autoencoder (TAESD layout, which the stock VAELoader detects) with random weights."""
    import_comfy()
    import comfy.taesd.taesd

    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    _randomize(vae, seed)
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    safetensors.torch.save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, path)
