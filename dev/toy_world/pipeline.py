"""The world's graph steps, run in-process through ComfyUI's own nodes.

Each function is one node of an ordinary graph (UNETLoader, CLIPLoader,
VAELoader, CLIPTextEncode, VAEEncode, KSampler, VAEDecode, the pack's
QRLoRATrain / QRLoRAMerge / QRLoRAApply, the stock TrainLoraNode), called
the way the executor calls it. The adapter script, the benchmark and the
tests use these, so what they measure is what a user's graph runs.
"""

import os
from dataclasses import fields

import numpy as np
import torch

from . import model_files, text_encoder, world

FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras", "qrlora_bases")
SAMPLER = {"steps": 25, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}
CONTENT_TRIGGER, STYLE_TRIGGER = "<c>", "<s>"
MIX_PROMPT = f"a {CONTENT_TRIGGER} shape in {STYLE_TRIGGER} style"


def colour_words(style: str) -> str:
    """The palette names of a fixed-colour style's two colours: 'red and blue'."""
    names = {rgb: name for name, rgb in world.PALETTE.items()}
    return " and ".join(names[tuple(c)] for c in world.FIXED_COLOURS[style])


def mix_prompt(style: str | None = None) -> str:
    """The mix's prompt: MIX_PROMPT, or with `style` its colours named ('a red and blue <c> shape in <s> style')."""
    return MIX_PROMPT if style is None else f"a {colour_words(style)} {CONTENT_TRIGGER} shape in {STYLE_TRIGGER} style"


def import_host(comfyui: str | None = None, cpu: bool = True):
    """ComfyUI's packages and this pack (as `comfyui_qrlora`), importable in this process."""
    from devkit import host

    host.import_comfy(comfyui, cpu=cpu)
    return host.import_pack()


def install_models(models_dir: str) -> None:
    """Put the world's model files where the stock loaders look (links to the shipped files; the CLIP is written)."""
    for sub in FOLDERS:
        os.makedirs(os.path.join(models_dir, sub), exist_ok=True)
    for folder, name in (("diffusion_models", model_files.UNET_FILE), ("vae", model_files.VAE_FILE)):
        target = os.path.join(models_dir, folder, name)
        if not os.path.exists(target):
            os.symlink(os.path.join(model_files.WEIGHTS, name), target)
    clip = os.path.join(models_dir, "text_encoders", model_files.CLIP_FILE)
    if not os.path.exists(clip):
        text_encoder.save(clip)


def use_folders(models_dir: str, output_dir: str) -> None:
    """Point ComfyUI's folder_paths at one models folder (as --base-directory would)."""
    import folder_paths

    for sub in FOLDERS:
        folder_paths.folder_names_and_paths[sub] = ([os.path.join(models_dir, sub)], {".safetensors"})
    folder_paths.output_directory = output_dir
    folder_paths.temp_directory = os.path.join(output_dir, "temp")


def _out(result):
    """A node's outputs as a tuple, whichever API (V1 tuple or V3 NodeOutput) it uses."""
    return tuple(result.result) if hasattr(result, "result") else tuple(result)


def node(function, *args, **kwargs) -> tuple:
    """Run one node's function as ComfyUI's executor does: under torch.inference_mode(); its outputs as a tuple."""
    with torch.inference_mode():
        return _out(function(*args, **kwargs))


def load_models():
    """UNETLoader, CLIPLoader (stable_diffusion) and VAELoader on the world's files."""
    import nodes

    model = node(nodes.UNETLoader().load_unet, model_files.UNET_FILE, "default")[0]
    clip = node(nodes.CLIPLoader().load_clip, model_files.CLIP_FILE, "stable_diffusion", "default")[0]
    vae = node(nodes.VAELoader().load_vae, model_files.VAE_FILE)[0]
    return model, clip, vae


def encode_text(clip, text: str):
    import nodes

    return node(nodes.CLIPTextEncode().encode, clip, text)[0]


def encode_images(vae, images: list[np.ndarray]) -> dict:
    """VAE Encode of a batch of (H, W, 3) uint8 images."""
    import nodes

    pixels = torch.from_numpy(np.stack(images)).float() / 255.0
    return node(nodes.VAEEncode().encode, vae, pixels)[0]


def generate(model, clip, vae, prompt: str, seed: int, **sampler) -> np.ndarray:
    """EmptyLatentImage -> KSampler (empty negative prompt) -> VAEDecode: one (H, W, 3) uint8 image."""
    import nodes

    settings = {**SAMPLER, **sampler}
    latent = node(nodes.EmptyLatentImage().generate, world.SIZE, world.SIZE, 1)[0]
    positive, negative = encode_text(clip, prompt), encode_text(clip, "")
    samples = node(nodes.KSampler().sample, model, seed, settings["steps"], settings["cfg"], settings["sampler_name"],
                   settings["scheduler"], positive, negative, latent, denoise=1.0)[0]
    image = node(nodes.VAEDecode().decode, vae, samples)[0]
    return (image[0].clamp(0, 1) * 255).round().byte().cpu().numpy()


def generate_batch(model, clip, vae, prompt: str, seeds, conditioning: tuple | None = None, **sampler) -> list[np.ndarray]:
    """`generate` for several seeds in one batch: each image's noise is what KSampler draws for that seed alone
    (comfy.sample.prepare_noise on one latent), and the sampler (euler: no noise after the first) runs them together.
    `conditioning`: (positive, negative) already encoded for `prompt` and the empty prompt."""
    import comfy.sample
    import nodes

    settings = {**SAMPLER, **sampler}
    latent = node(nodes.EmptyLatentImage().generate, world.SIZE, world.SIZE, 1)[0]["samples"]
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = torch.cat([comfy.sample.prepare_noise(latent, seed) for seed in seeds])
    positive, negative = conditioning or (encode_text(clip, prompt), encode_text(clip, ""))
    with torch.inference_mode():
        samples = comfy.sample.sample(model, noise, settings["steps"], settings["cfg"], settings["sampler_name"], settings["scheduler"],
                                      positive, negative, latent.repeat(len(seeds), 1, 1, 1), denoise=1.0, disable_pbar=True, seed=seeds[0])
    images = node(nodes.VAEDecode().decode, vae, {"samples": samples})[0]
    return list((images.clamp(0, 1) * 255).round().byte().cpu().numpy())


# ------------------------------------------------------------------ training data


def content_set(seed: int, count: int, shape: str = world.HELD_OUT_SHAPE):
    """`count` images of the held-out shape in base styles and colours, captioned with what the base model already
    knows and '<c> shape' for the shape: 'a red and blue <c> shape in horizontal stripes style'.

    Naming the fill leaves the trigger only the shape to learn (as DreamBooth
    captions name what is not the concept); captioned 'a <c> shape' alone,
    the content adapter also learned its images' fills, which then fought
    the style adapter in the mix.
    """
    rng = np.random.default_rng(seed)
    items = [world.random_item(rng, (shape,), world.BASE_STYLES[i % len(world.BASE_STYLES):][:1]) for i in range(count)]
    return items, [item.caption(noun=f"{CONTENT_TRIGGER} shape") for item in items]


def style_set(seed: int, count: int, style: str = world.HELD_OUT_STYLE, name_colours: bool = False):
    """`count` base shapes in the held-out style, captioned with their real shape: 'a circle in <s> style'
    ('a red and blue circle in <s> style' with `name_colours`: the trigger then has only the pattern to learn, the
    colours being words the base model knows, as the content set names its fills)."""
    rng = np.random.default_rng(seed)
    shapes = [world.BASE_SHAPES[(i + rng.integers(len(world.BASE_SHAPES))) % len(world.BASE_SHAPES)] for i in range(count)]
    items = [world.Item(s, style, world.FIXED_COLOURS[style]) for s in shapes]
    colours = f"{colour_words(style)} " if name_colours else ""
    return items, [f"a {colours}{s} in {STYLE_TRIGGER} style" for s in shapes]


def mix_set(count: int, shape: str, style: str, name_colours: bool = False):
    """The oracle's data: `count` renderings of the target mix itself, captioned with the mix prompt."""
    items = [world.Item(shape, style, world.FIXED_COLOURS[style])] * count
    return items, [mix_prompt(style if name_colours else None)] * count


# ------------------------------------------------------------------ adapters


def train_qrlora(model, clip, vae, items, captions, prefix: str, trigger: str, **overrides):
    """The pack's QRLoRATrain, as the executor calls it (inputs as lists); returns (adapter, losses)."""
    from comfyui_qrlora.nodes.train import QRLoRATrain
    from comfyui_qrlora.qrlora_core.training import TrainConfig

    values = {f.name: f.default for f in fields(TrainConfig)}
    values.update({"filename_prefix": prefix, "trigger_words": trigger, **overrides})
    latents = encode_images(vae, [world.render(i) for i in items])
    positive = [encode_text(clip, c) for c in captions]
    adapter, _, loss_map = node(QRLoRATrain.execute, model=[model], latents=[latents], positive=positive,
                                **{k: [v] for k, v in values.items()})[:3]
    return adapter, loss_map["loss"]


def train_plain_lora(model, clip, vae, items, captions, *, rank: int, steps: int, learning_rate: float, seed: int,
                     batch_size: int = 1, training_dtype: str = "bf16", gradient_checkpointing: bool = True):
    """ComfyUI's stock TrainLoraNode with the same data, steps, rank and learning rate; returns (lora dict, losses)."""
    from comfy_extras.nodes_train import TrainLoraNode

    batch = encode_images(vae, [world.render(i) for i in items])["samples"]
    latents = [{"samples": s[None]} for s in batch]  # one latent per image, as Make Training Dataset gives them (the stock
    positive = [encode_text(clip, c) for c in captions]  # node fails on a single batch: `multi_res` is only set for lists)
    _, lora, loss_map, _ = node(
        TrainLoraNode.execute, model=[model], latents=latents, positive=positive, batch_size=[batch_size], grad_accumulation_steps=[1],
        steps=[steps], learning_rate=[learning_rate], rank=[rank], optimizer=["AdamW"], loss_function=["MSE"],
        seed=[seed], training_dtype=[training_dtype], lora_dtype=["fp32"], algorithm=["LoRA"],
        gradient_checkpointing=[gradient_checkpointing], existing_lora=["[None]"],
    )[:4]
    return lora, loss_map["loss"]


def mix_qrlora(model, content, style, content_weight: float = 1.0, style_weight: float = 1.0):
    """QRLoRAMerge (two slots) -> QRLoRAApply at strength 1."""
    from comfyui_qrlora.nodes.apply import QRLoRAApply
    from comfyui_qrlora.nodes.merge import QRLoRAMerge

    merged = node(QRLoRAMerge.execute, qr_lora_1=content, weight_1=content_weight, qr_lora_2=style, weight_2=style_weight)[0]
    return node(QRLoRAApply.execute, model=model, qr_lora=merged, strength=1.0)[0]


def mix_plain_loras(model, content_lora: dict, style_lora: dict, content_weight: float = 1.0, style_weight: float = 1.0):
    """Two plain LoRAs applied together with the stock LoraModelLoader (each at its weight): their sum."""
    from comfy_extras.nodes_train import LoraModelLoader

    patched = model
    for lora, weight in ((content_lora, content_weight), (style_lora, style_weight)):
        if weight:
            patched = node(LoraModelLoader.execute, model=patched, lora=lora, strength_model=weight)[0]
    return patched
