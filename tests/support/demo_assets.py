"""The demo's model, adapters and training images.

The workflows themselves are files (workflows/*.json, UI format); the demo
and the tests run them through support.workflow.to_api.

Until a trained pair exists, the demo adapters are drawn, not trained: the
real QR-LoRA basis of the demo model (top-r SVD + QR per target) with
random ΔR, labelled as such in their metadata.
"""

import os

import torch

from . import folder_dataset, models
from .host import import_pack

UNET = "qrlora_demo_sd15.safetensors"
CLIP_L = "qrlora_demo_clip_l.safetensors"
VAE = "qrlora_demo_taesd.safetensors"
CONTENT = "qrlora_demo/content.safetensors"
STYLE = "qrlora_demo/style.safetensors"
CONTENT_IMAGE = "qrlora_content.png"  # training images, in the input folder
STYLE_IMAGE = "qrlora_style.png"
WORKFLOWS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "workflows")
MIX_WORKFLOW = os.path.join(WORKFLOWS, "qrlora_mix.json")
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


def page_url(server_url: str, workflow_file: str = MIX_WORKFLOW) -> str:
    """The page opened on one of the pack's example workflows (the frontend's own ?template= loader
    reads it from the pack's example_workflows/, under the pack's folder name in custom_nodes)."""
    from .server import PACK_FOLDER_NAME

    name = os.path.splitext(os.path.basename(workflow_file))[0]
    return f"{server_url}/?template={name}&source={PACK_FOLDER_NAME}"


# The demo's model files and the tests' small ones (tests/integration/conftest.py)
# come from the same builders with the same seeds: one can be a hard link of the other.
TWINS = (
    ("diffusion_models", UNET, "tiny_sd15.safetensors"),
    ("text_encoders", CLIP_L, "tiny_clip_l.safetensors"),
    ("vae", VAE, "tiny_taesd.safetensors"),
)


def link_twins(base: str) -> None:
    """Where only one of a twin pair exists, hard-link the other to it (saves building it again)."""
    for folder, demo, tiny in TWINS:
        a, b = _path(base, "models", folder, demo), _path(base, "models", folder, tiny)
        if os.path.exists(a) != os.path.exists(b):
            os.link(*((a, b) if os.path.exists(a) else (b, a)))


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
    folder_dataset.write(os.path.join(base, "input"))
    for name, draw in ((CONTENT_IMAGE, _content_image), (STYLE_IMAGE, _style_image)):
        path = _path(base, "input", name)
        if not os.path.exists(path):
            draw().save(path)


def _content_image(size: int = 256):
    """A stand-in subject for the content workflow: a brown 'dog' shape on grass."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (150, 200, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, size * 0.7, size, size], fill=(90, 160, 70))
    draw.ellipse([size * 0.25, size * 0.45, size * 0.7, size * 0.72], fill=(140, 90, 50))  # body
    draw.ellipse([size * 0.6, size * 0.3, size * 0.82, size * 0.52], fill=(140, 90, 50))  # head
    draw.ellipse([size * 0.62, size * 0.28, size * 0.68, size * 0.4], fill=(90, 55, 30))  # ear
    for x in (0.3, 0.42, 0.55, 0.64):
        draw.rectangle([size * x, size * 0.68, size * (x + 0.04), size * 0.8], fill=(120, 75, 40))
    return image


def _style_image(size: int = 256):
    """A stand-in style for the style workflow: bold diagonal stripes in a fixed palette."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (245, 230, 200))
    draw = ImageDraw.Draw(image)
    palette = [(220, 80, 60), (40, 90, 160), (240, 190, 50)]
    for i, x in enumerate(range(-size, size, 24)):
        draw.polygon([(x, size), (x + 12, size), (x + 12 + size, 0), (x + size, 0)], fill=palette[i % 3])
    return image
