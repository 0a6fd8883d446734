"""Small models of real architectures, built with ComfyUI's own classes at test time.

SD1.5 and SD3 files are detected by the stock loaders from their weights
(SD3 derives hidden = 64 * depth; SD1.5 needs 320 channels and a 768-wide
context, so it is kept to one level). Flux and SDXL fix sizes the loader
cannot infer from a small file, so tests build those from explicit configs
and wrap them in ComfyUI's real ModelPatcher in-process; `small_checkpoint`
adds small text encoders and a TAESD autoencoder, for whole workflows
(small_checkpoint_node.py serves it to the test server as a node).
"""

import json
import os
import types

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


def build(arch: str, seed: int = 0, **overrides):
    """A ComfyUI BaseModel of the given architecture with random weights (`overrides`: entries of its config)."""
    import_comfy()
    import comfy.supported_models as sm

    config_class, unet_config = {
        "sd15": (sm.SD15, SD15_CONFIG), "sdxl": (sm.SDXL, SDXL_CONFIG),
        "sd3": (sm.SD3, SD3_CONFIG), "flux": (sm.Flux, FLUX_CONFIG),
    }[arch]
    model = config_class({**unet_config, **overrides}).get_model({})
    _randomize(model.diffusion_model, seed)
    return model


def patcher(arch: str, seed: int = 0, **overrides):
    """The model wrapped in ComfyUI's real ModelPatcher, on the CPU."""
    model = build(arch, seed, **overrides)
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


# Text encoders of ComfyUI's own classes with their stock tokenizers, shrunk through their json configs
# (width 64, 2-3 layers; the vocabularies stay); the small models take conditioning of their widths.
SMALL_TEXT = {"num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "projection_dim": 64}
SMALL_T5 = {"num_layers": 2, "d_model": 64, "d_ff": 128, "d_kv": 32, "num_heads": 2}
# Flux: context = T5 width, vec = CLIP-L's pooled width. SDXL: context = CLIP-L + CLIP-G widths, adm = pooled + 6 x 256 sizes (class-conditional, as detection sets it).
SMALL_CHECKPOINTS = {"flux": {"context_in_dim": 64, "vec_in_dim": 64}, "sdxl": {"context_dim": 128, "adm_in_channels": 64 + 6 * 256, "num_classes": "sequential"}}
LATENT_CHANNELS = {"flux": 16, "sdxl": 4}


def _text_config(file: str, **overrides) -> dict:
    import comfy.sd1_clip  # comfy/ is a namespace package: no __file__ of its own

    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), file)) as f:
        return {**json.load(f), **overrides}


def _text_encoder(arch: str):
    """(model class, tokenizer class) of the architecture's text encoders, small."""
    import comfy.sd1_clip as sd1
    import comfy.sdxl_clip
    import comfy.text_encoders.flux
    import comfy.text_encoders.t5

    if arch == "flux":
        class SmallFluxText(comfy.text_encoders.flux.FluxClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                torch.nn.Module.__init__(self)
                self.clip_l = sd1.SDClipModel(device=device, dtype=dtype, return_projected_pooled=False, model_options=model_options,
                                              textmodel_json_config=_text_config("sd1_clip_config.json", **SMALL_TEXT))
                self.t5xxl = sd1.SDClipModel(device=device, dtype=dtype, special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                                             textmodel_json_config=_text_config("text_encoders/t5_config_xxl.json", **SMALL_T5),
                                             model_options={**model_options, "model_name": "t5xxl"})
                self.dtypes = {dtype}

        return SmallFluxText, comfy.text_encoders.flux.FluxTokenizer

    class SmallSDXLText(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = sd1.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                                          model_options=model_options, textmodel_json_config=_text_config("sd1_clip_config.json", **SMALL_TEXT))
            self.clip_g = sd1.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                                          special_tokens={"start": 49406, "end": 49407, "pad": 0}, return_projected_pooled=True,
                                          model_options=model_options, textmodel_json_config=_text_config("clip_config_bigg.json", **SMALL_TEXT))
            self.dtypes = {dtype}

    return SmallSDXLText, comfy.sdxl_clip.SDXLTokenizer


def small_checkpoint(arch: str, seed: int = 0):
    """(MODEL, CLIP, VAE) of a small Flux or SDXL with random weights: what the stock loaders give for
    flux1-dev + clip_l/t5xxl + ae, or sd_xl_base_1.0, at a size the CPU runs in seconds. The autoencoder
    is a TAESD with the architecture's latent channels (ComfyUI's VAE class detects it from its weights)."""
    import_comfy()
    import comfy.sd
    import comfy.taesd.taesd

    model = patcher(arch, seed, **SMALL_CHECKPOINTS[arch])
    model_class, tokenizer = _text_encoder(arch)
    clip = comfy.sd.CLIP(target=types.SimpleNamespace(params={}, clip=model_class, tokenizer=tokenizer))
    _randomize(clip.cond_stage_model, seed + 1)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS[arch])
    _randomize(taesd, seed + 2)
    with torch.no_grad():
        taesd.vae_scale.fill_(1.0)
        taesd.vae_shift.fill_(0.0)
    return model, clip, comfy.sd.VAE(sd=taesd.state_dict())
