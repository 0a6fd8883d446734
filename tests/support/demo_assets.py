"""The demo's model and adapters, and its mixing workflow in API form.

Until a trained pair exists, the demo adapters are drawn, not trained: the
real QR-LoRA basis of the demo model (top-r SVD + QR per target) with
random ΔR, labelled as such in their metadata.
"""

import os

import torch

from . import models
from .graph import Graph
from .host import import_pack

UNET = "qrlora_demo_sd15.safetensors"
CLIP_L = "qrlora_demo_clip_l.safetensors"
VAE = "qrlora_demo_taesd.safetensors"
CONTENT = "qrlora_demo/content.safetensors"
STYLE = "qrlora_demo/style.safetensors"
MIX_WORKFLOW = "qrlora_mix.json"
RANK = 8
PAPER_TARGETS = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "attn2_to_q", "attn2_to_out_0", "ff_net_0_proj", "ff_net_2")


def _path(base, *parts):
    path = os.path.join(base, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _write_adapters(base: str) -> None:
    import_pack()
    from comfyui_qrlora.nodes import keymap
    from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
    from comfyui_qrlora.qrlora_core.decompose import decompose_many
    from comfyui_qrlora.qrlora_core.formats import save_native
    import comfy.sd

    model = comfy.sd.load_diffusion_model(os.path.join(base, "models", "diffusion_models", UNET))
    names = {n: t for n, t in keymap.named_targets(model).items() if n.endswith(PAPER_TARGETS)}
    bases = decompose_many({n: keymap.target_weight(model, t) for n, t in names.items()}, RANK)
    for file, trigger, seed in ((CONTENT, "a <c> dog", 1), (STYLE, "in <s> style", 2)):
        generator = torch.Generator().manual_seed(seed)
        targets = {n: QRTarget(q=b.q, delta_r=torch.triu(torch.randn(RANK, b.r.shape[1], generator=generator)) * 0.05) for n, b in bases.items()}
        adapter = QRLoRA(targets, rank=RANK, alpha=float(RANK), format="native",
                         metadata={"trigger_words": trigger, "note": "demo adapter: real basis, random ΔR (not trained)"})
        save_native(adapter, _path(base, "models", "loras", file))


def build(base: str) -> None:
    """Write whatever of the demo's files is missing into the base directory."""
    unet = _path(base, "models", "diffusion_models", UNET)
    if not os.path.exists(unet):
        models.save_diffusion_model("sd15", unet, seed=0)
    clip = _path(base, "models", "text_encoders", CLIP_L)
    if not os.path.exists(clip):
        models.save_clip_l(clip)
    vae = _path(base, "models", "vae", VAE)
    if not os.path.exists(vae):
        models.save_taesd(vae)
    if not all(os.path.exists(os.path.join(base, "models", "loras", f)) for f in (CONTENT, STYLE)):
        _write_adapters(base)


def mix_prompt(content_weight: float = 1.0, style_weight: float = 0.8, strength: float = 1.0, seed: int = 42) -> dict:
    g = Graph()
    unet = g.add("UNETLoader", unet_name=UNET, weight_dtype="default")
    clip = g.add("CLIPLoader", clip_name=CLIP_L, type="stable_diffusion")
    vae = g.add("VAELoader", vae_name=VAE)
    content = g.add("QRLoRALoader", lora_name=CONTENT)
    style = g.add("QRLoRALoader", lora_name=STYLE)
    mix = g.add("QRLoRAMerge", qr_lora_1=content[0], weight_1=content_weight, qr_lora_2=style[0], weight_2=style_weight)
    model = g.add("QRLoRAApply", model=unet, qr_lora=mix[0], strength=strength)
    positive = g.add("CLIPTextEncode", clip=clip, text="a photo of a <c> dog in <s> style")
    negative = g.add("CLIPTextEncode", clip=clip, text="")
    latent = g.add("EmptyLatentImage", width=256, height=256, batch_size=1)
    sampled = g.add("KSampler", model=model, seed=seed, steps=8, cfg=4.0, sampler_name="euler", scheduler="normal",
                    positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    g.add("SaveImage", images=g.add("VAEDecode", samples=sampled, vae=vae), filename_prefix="qrlora_demo/mix")
    return g.prompt()
