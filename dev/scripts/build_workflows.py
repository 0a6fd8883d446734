"""`make workflows`: writes example_workflows/ (the graphs and their thumbnails) with the real server and page.

Each workflow is described below as groups of nodes (with titles a person
can follow) and links. This script turns that into the page's own format:
it asks /object_info for every node's inputs, outputs and widget order,
loads the draft into the ComfyUI page (headless Chromium), lets the page
size the nodes (and settle: images loaded, notes grown to show their whole
text), places them in columns by the boxes the page draws (title bar
included), draws the groups around them, and saves what the page
serializes, so the files are exactly what ComfyUI itself would save.

The groups are wrapped into rows, and the view saved with each file
(extra.ds, which the page restores on load) frames the whole graph in a
1280 x 800 window, every group clear of the minimap, or, where that would
be too small to read, the result.

Then it runs every toy-world workflow as shipped through the server's
/prompt, on the toy world's model and adapters, and writes
`example_workflows/TITLE.jpg` next to each `TITLE.json` from what that run
produced (the file name ComfyUI's template browser asks for:
/api/workflow_templates/<pack>/TITLE.jpg; devkit/examples.py says why files
are named by their titles). The FLUX.1 and SDXL workflows need models no
machine here has: their cards are drawn (what the workflow does, in words),
and the tests run their graphs on small models of those architectures.

example_workflows/ is the only copy: ComfyUI's template browser, the demo
and the tests all read it. Run this again after changing a workflow here,
the nodes, or the toy world's adapters.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devkit import browser, examples, workflow as ui_workflow  # noqa: E402
from toy_world import adapters, demo_assets, pipeline, world  # noqa: E402
from devkit.host import PACK_ROOT  # noqa: E402
from devkit.server import Client, ComfyServer, make_base_directory  # noqa: E402
from devkit.workflow import widget_names  # noqa: E402

EXAMPLES = examples.FOLDER  # example_workflows/
THUMBNAIL_SIZE = 512  # square: the template browser shows each card's image in a square
THUMBNAIL_BACKGROUND = (32, 32, 32)  # the page's dark canvas

MIX_NOTE = (
    "One row per adapter: a file from the loras folder, on/off, its strength (how much goes into the mix; negative "
    "subtracts it) and its role. The rows' trigger words fill {content}, {style} and {other} in the node's prompt. "
    "'+ row' adds an adapter, '− row' removes the last.\n\n"
    "Adapters trained on the same base model share the basis Q, so the mix is one ΔR sum per layer; the node's "
    "report says so, or that it fell back to adding the deltas."
)
TRAIN_NOTE = (
    "The training set is a folder in ComfyUI's input/: images, each with a .txt caption of the same name "
    "(the stock dataset loader's layout). Put your own folder there and pick it above.\n\n"
    "Only ΔR is trained; Q and R come from the base weights (SVD + QR), so adapters of this base mix cleanly.\n\n"
    "The loss curve draws on the Train node while it runs. The adapter is saved as loras/qrlora/{kind}_*.safetensors: "
    "load it with Load QR-LoRA and mix it in the template '{mix}'. Use the trigger word '{trigger}' in your prompts."
)
FOLDER_NOTE = (
    "This folder holds {shape}s, in squares of several sizes, 4:3 landscapes and 3:4 portraits. "
    "Put your images (.png, .jpg, .webp; any sizes) into a folder inside ComfyUI's input folder, each with a .txt "
    "file of the same name holding its caption with your trigger word ('{trigger}'); images without one take the "
    "default caption. Kohya-style subfolders named '10_name' are repeated 10 times.\n\n"
    "Each image goes to the aspect-ratio bucket nearest its shape (about resolution² pixels, sides multiples of 64) "
    "and batches are drawn within one bucket; the data node lists the buckets it used. At this toy model's 128 px "
    "a 4:3 image's nearest bucket is the square one (it is centre-cropped to it); its other buckets are 3:1 and 4:1 "
    "banners (192 x 64, 256 x 64), in which the toy world's shapes are too small to learn from: with two of them in "
    "this folder, 100 steps drew blobs.\n\n"
    "The sample images appear on the Train node as they are made and are kept next to the checkpoints "
    "(loras/qrlora/folder_*_sample*.png). To go on later, load a checkpoint with Load QR-LoRA into the Train node's "
    "qr_lora input: it resumes exactly where that checkpoint stopped."
)
COMPARE_NOTE = (
    "One bar per layer: the cosine similarity of the two adapters' ΔR (the paper's disentanglement measure). "
    "Bars inside the green band (|cos| < 0.1) mean the adapters change the layer independently, so mixing them "
    "keeps both; tall bars mean they fight over that layer."
)
NOTE_INFO = {"Note": {"input": {"required": {"text": ["STRING", {"multiline": True}]}}, "output": [], "output_name": []}}

BLUE, GREEN, PURPLE, BROWN = "#3f5f7f", "#3f6f4f", "#5f4f7f", "#6f5a3f"
# The sampler seed the workflows ship with, chosen on the toy world's first base model, where the shipped pair drew a
# checkered heart at 8 of 17 seeds, this one among them; on the richer one, with the rank-32 adapters, at each of 0-7
# (docs/mixing.md, session 20).
DEMO_SEED = 1
FOLDER_STEPS = 100  # the folder example's training: the world's recipe (dev/toy_world/adapters.py) at a quarter of its steps, a few CPU minutes


def N(key, node_type, title, box_w=300, box_h=0, **widgets):
    """A node: its key in this script, type, title, least width/height on the canvas, widget values by name."""
    return {"key": key, "type": node_type, "title": title, "width": box_w, "height": box_h, "widgets": widgets}


def G(title, color, *columns):
    return {"title": title, "color": color, "columns": [list(c) for c in columns]}


def model_group(title="1 · Base model (toy world, SD1.5 architecture)"):
    return G(title, BLUE, [
        N("unet", "UNETLoader", "Diffusion model", unet_name=demo_assets.UNET, weight_dtype="default"),
        N("clip", "CLIPLoader", "Text encoder (CLIP-L)", clip_name=demo_assets.CLIP_L, type="stable_diffusion"),
        N("vae", "VAELoader", "VAE", vae_name=demo_assets.VAE),
    ])


def generate_group(title, prompt, prefix, model_from, negative=""):
    """Prompt, sampler, decode, save. `prompt` is the text, or None when a link brings it (the mix's trigger words)."""
    sampler = pipeline.SAMPLER
    nodes = G(title, BROWN, [
        N("prompt", "CLIPTextEncode", "Prompt (with the trigger words)", box_w=360, text=prompt or ""),
        N("negative", "CLIPTextEncode", "Negative prompt", box_w=360, text=negative),
        N("latent", "EmptyLatentImage", "Image size", box_w=360, width=world.SIZE, height=world.SIZE, batch_size=1),
    ], [
        N("sampler", "KSampler", "Sampler", seed=DEMO_SEED, _control="fixed", steps=sampler["steps"], cfg=sampler["cfg"],
          sampler_name=sampler["sampler_name"], scheduler=sampler["scheduler"], denoise=1.0),
        N("decode", "VAEDecode", "Decode"),
    ], [
        N("save", "SaveImage", "Result", box_w=380, box_h=330, filename_prefix=prefix),
    ])
    links = [
        (*model_from, "sampler", "model"), ("clip", 0, "prompt", "clip"), ("clip", 0, "negative", "clip"),
        ("prompt", 0, "sampler", "positive"), ("negative", 0, "sampler", "negative"), ("latent", 0, "sampler", "latent_image"),
        ("sampler", 0, "decode", "samples"), ("vae", 0, "decode", "vae"), ("decode", 0, "save", "images"),
    ]
    return nodes, links


MIX_TEMPLATE = "a {content} shape in {style}"  # the mix's prompt; the Mixer fills in its rows' trigger words


def mix_group(title: str, content: str, style: str, box_w: int, template: str, note: str):
    """The Mix QR-LoRAs group of every mix example: a content row and a style row, the node's prompt shown as sent."""
    rows = [{"lora": content, "on": True, "strength": 1.0, "role": "content"},
            {"lora": style, "on": True, "strength": 1.0, "role": "style"}]
    return G(title, GREEN, [
        N("mixer", "QRLoRAMixer", "Mix content + style", box_w=box_w, rows=json.dumps(rows), prompt=template),
    ], [
        N("note", "Note", "How the mix works", text=note),
        N("shown", "PreviewAny", "The prompt, as sent", box_w=300),
    ])


def mix():
    generate, generate_links = generate_group(
        "3 · Generate with both trigger words", None, "qrlora_demo/mix", ("mixer", 0))
    groups = [
        model_group(),
        mix_group("2 · Mix content + style adapters", demo_assets.CONTENT, demo_assets.STYLE, 380, MIX_TEMPLATE, MIX_NOTE),
        generate,
    ]
    links = [
        ("unet", 0, "mixer", "model"),  # any format loads, the reference's Q-and-R files too
        ("mixer", 2, "prompt", "text"), ("mixer", 2, "shown", "source"), *generate_links,
    ]
    return groups, links, [[("out", "save")]]


def train(kind: str):
    content = kind == "content"
    folder = demo_assets.CONTENT_FOLDER if content else demo_assets.STYLE_FOLDER
    trigger = pipeline.CONTENT_TRIGGER if content else f"{pipeline.STYLE_TRIGGER} style"
    prompt = f"a {pipeline.CONTENT_TRIGGER} shape in horizontal stripes style" if content else f"a ring in {pipeline.STYLE_TRIGGER} style"
    recipe = adapters.RECIPE
    generate, generate_links = generate_group(
        "4 · Try the trained adapter", prompt, f"qrlora_train/{kind}", ("train", 1))
    groups = [
        model_group(),
        G("2 · Training images + captions", PURPLE, [
            N("images", "LoadImageTextDataSetFromFolder", f"{kind.capitalize()} images and captions (a folder in input/)", folder=folder),
        ], [
            N("dataset", "MakeTrainingDataset", "Encode images (VAE) and captions (CLIP)"),
        ]),
        G(f"3 · Train the {kind} adapter", GREEN, [
            N("train", "QRLoRATrain", f"Train {kind} adapter", box_w=340, box_h=640, rank=recipe["rank"], alpha=0.0,
              steps=adapters.STEPS, learning_rate=recipe["learning_rate"], batch_size=recipe["batch_size"], grad_accumulation=1,
              seed=adapters.SEEDS[kind], optimizer="AdamW", training_dtype=recipe["training_dtype"],
              gradient_checkpointing=recipe["gradient_checkpointing"], **adapters.TARGETS[kind],
              triangular=True, checkpoint_every=0, filename_prefix=f"qrlora/{kind}", trigger_words=trigger),
        ], [
            N("note", "Note", "About training", box_w=380, text=TRAIN_NOTE.format(kind=kind, trigger=trigger, mix=examples.TITLES["qrlora_mix"])),
            N("loss", "LossGraphNode", "Loss curve", box_w=380, box_h=300),
        ]),
        generate,
    ]
    links = [
        ("images", 0, "dataset", "images"), ("images", 1, "dataset", "texts"), ("vae", 0, "dataset", "vae"), ("clip", 0, "dataset", "clip"),
        ("unet", 0, "train", "model"), ("dataset", 0, "train", "latents"), ("dataset", 1, "train", "positive"),
        ("train", 2, "loss", "loss"), *generate_links,
    ]
    return groups, links, [[("in", "images"), ("out", "save")], [("out", "loss")]]


def train_folder():
    trigger = demo_assets.FOLDER_TRIGGER
    prompt = f"a {trigger} shape in dots style"
    generate, generate_links = generate_group("4 · Try the trained adapter", prompt, "qrlora_train/folder", ("train", 1))
    recipe = adapters.RECIPE
    groups = [
        model_group(),
        G("2 · Training images from a folder", PURPLE, [
            N("folder", "LoadImageTextDataSetFromFolder", "Image folder (images + same-name .txt captions)", box_w=360,
              folder=demo_assets.FOLDER),
            N("note", "Note", "About the folder", box_w=360, box_h=300, text=FOLDER_NOTE.format(shape=demo_assets.FOLDER_SHAPE, trigger=trigger)),
        ], [
            N("data", "QRLoRATrainingData", "Bucket, encode and caption", box_w=340, resolution=world.SIZE,  # the toy model's size
              default_caption=f"a {trigger} shape"),
        ]),
        G("3 · Train the adapter, with samples every 25 steps", GREEN, [
            N("samples", "QRLoRASampleSettings", "Samples while training", box_w=340,
              prompts=f"{prompt}\na {trigger} shape in vertical stripes style", negative="", every=25,
              width=world.SIZE, height=world.SIZE, steps=pipeline.SAMPLER["steps"], cfg=pipeline.SAMPLER["cfg"],
              sampler_name=pipeline.SAMPLER["sampler_name"], scheduler=pipeline.SAMPLER["scheduler"], seed=DEMO_SEED),
        ], [
            N("train", "QRLoRATrain", "Train from the folder", box_w=340, box_h=640, rank=recipe["rank"], alpha=0.0,
              steps=FOLDER_STEPS, learning_rate=recipe["learning_rate"], batch_size=recipe["batch_size"], grad_accumulation=1,
              seed=adapters.SEEDS["content"], optimizer="AdamW",
              training_dtype=recipe["training_dtype"], gradient_checkpointing=recipe["gradient_checkpointing"],
              **adapters.TARGETS["content"], triangular=True, checkpoint_every=25, filename_prefix="qrlora/folder", trigger_words=trigger),
        ], [
            N("loss", "LossGraphNode", "Loss curve", box_w=380, box_h=300),
        ]),
        generate,
    ]
    links = [
        ("folder", 0, "data", "images"), ("folder", 1, "data", "captions"), ("vae", 0, "data", "vae"), ("clip", 0, "data", "clip"),
        ("unet", 0, "train", "model"), ("data", 0, "train", "latents"), ("data", 1, "train", "positive"),
        ("clip", 0, "samples", "clip"), ("vae", 0, "samples", "vae"), ("samples", 0, "train", "samples"),
        ("train", 2, "loss", "loss"), *generate_links,
    ]
    return groups, links, [[("in", "folder"), ("out", "save")], [("out", "loss")]]


def compare():
    groups = [
        G("1 · Two adapters, same base", GREEN, [
            N("content", "QRLoRALoader", "Content adapter", lora_name=demo_assets.CONTENT),
            N("style", "QRLoRALoader", "Style adapter", lora_name=demo_assets.STYLE),
        ]),
        G("2 · ΔR cosine per layer", PURPLE, [
            N("note", "Note", "Reading the plot", box_w=420, text=COMPARE_NOTE),
            N("similarity", "QRLoRASimilarity", "Content vs style", box_w=420, box_h=480),
        ]),
        # A group of its own, as short as the plot: the graph's lower right corner stays free for the minimap, so the
        # whole graph opens clear of it at a scale the page draws text at.
        G("3 · The plot", BROWN, [
            N("save", "SaveImage", "Save the plot", box_w=480, box_h=300, filename_prefix="qrlora_compare/similarity"),
        ]),
    ]
    links = [("content", 0, "similarity", "qr_lora_a"), ("style", 0, "similarity", "qr_lora_b"), ("similarity", 0, "save", "images")]
    return groups, links, [[("out", "save")]]


# FLUX.1-dev and SDXL with the stock loaders and the file names their model pages and ComfyUI's own examples use.
# Training: the reference's rank, learning rate and targets, one image per step (the measured step times in the README
# are for these settings), 512 px for FLUX.1 and 1024 px (its native size) for SDXL; sampling: each model's usual settings.
ARCHS = {
    "flux": {"label": "FLUX.1 dev", "resolution": 512, "image": 1024, "latent": "EmptySD3LatentImage", "guidance": 3.5,
             "sampler": {"steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}, "negative": ""},
    "sdxl": {"label": "SDXL", "resolution": 1024, "image": 1024, "latent": "EmptyLatentImage", "guidance": None,
             "sampler": {"steps": 30, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"}, "negative": "blurry, low quality"},
}
REAL_STEPS = 1000
REAL_TRIGGERS = {"content": "<c>", "style": "<s> style"}
REAL_FOLDERS = {"content": "my_content", "style": "my_style"}  # folders the user makes in ComfyUI's input/
REAL_TRY = {"content": "a photo of <c> on a beach", "style": "a lighthouse on a cliff, in <s> style"}
REAL_MIX_TEMPLATE = "a photo of {content} on a beach, in {style}"
REAL_TRAIN_NOTE = (
    "Put images of your {kind} (the toy world's adapters learn from 16) into a folder in ComfyUI's input/ "
    "({folder} here), each with a .txt caption of the same name that uses the trigger words '{trigger}'. {advice} "
    "The trainer's role is {kind}: it picks the blocks a {kind} adapter trains on this model (docs/roles.md in the pack).\n\n"
    "Any sizes: each image goes to the aspect-ratio bucket nearest its shape at about {resolution}² pixels. "
    "1000 steps of one image each; a checkpoint and two sample images every 250 steps "
    "(loras/qrlora/{prefix}_*). Only ΔR is trained; Q comes from the base weights, so every adapter trained on "
    "this base mixes with the others as one ΔR sum: train the other kind with the other template, then mix "
    "them in \"{mix}\".{memory}"
)
REAL_ADVICE = {
    "content": "Show the subject in different places, poses and light, and name in the caption what is not "
               "the subject ('a photo of <c> on a wooden table, soft light'), so the trigger word takes only the subject.",
    "style": "Show the style on different subjects, and name the subject in each caption ('a house in <s> style'), "
             "so the trigger words take only the style.",
}
FLUX_MEMORY = ("\n\nThe diffusion model loads as fp8_e4m3fn, which trains on a 24 GB card; with 40 GB or more, "
               "choose 'default' (bf16).")
REAL_MIX_NOTE = (
    "One row per adapter: the two files you trained with the other two templates (loras/qrlora/...; pick yours in "
    "each row), on/off, its strength (how much goes into the mix; negative subtracts it) and its role. Adapters "
    "trained on the same base share the basis Q, so the mix is one ΔR sum per layer; the node's report says so. "
    "The rows' trigger words, read from their files, fill {content} and {style} in the node's prompt.\n\n"
    "Stock loaders read these files too (LoRA Loader, rgthree's Power Lora Loader): two of them in a row give the "
    "same sum."
)


def real_model_group(arch: str):
    """The base model's group and where MODEL, CLIP and VAE come from."""
    if arch == "flux":
        return G("1 · Base model: FLUX.1 dev (stock loaders)", BLUE, [
            N("unet", "UNETLoader", "Diffusion model (FLUX.1 dev)", unet_name="flux1-dev.safetensors", weight_dtype="fp8_e4m3fn"),
            N("clip", "DualCLIPLoader", "Text encoders (CLIP-L + T5-XXL)", clip_name1="clip_l.safetensors",
              clip_name2="t5xxl_fp16.safetensors", type="flux"),
            N("vae", "VAELoader", "VAE", vae_name="ae.safetensors"),
        ]), {"model": ("unet", 0), "clip": ("clip", 0), "vae": ("vae", 0)}
    return G("1 · Base model: SDXL 1.0 (stock loader)", BLUE, [
        N("checkpoint", "CheckpointLoaderSimple", "Checkpoint (SDXL base 1.0)", ckpt_name="sd_xl_base_1.0.safetensors"),
    ]), {"model": ("checkpoint", 0), "clip": ("checkpoint", 1), "vae": ("checkpoint", 2)}


def real_generate_group(arch: str, title: str, prompt, prefix: str, model_from, loaded: dict):
    """Prompt (FLUX.1: with its guidance), sampler, decode, save; `prompt` None when a link brings the text."""
    spec = ARCHS[arch]
    size = spec["image"]
    prompt_column = [N("prompt", "CLIPTextEncode", "Prompt (with the trigger words)", box_w=360, text=prompt or "")]
    if spec["guidance"] is not None:
        prompt_column.append(N("guidance", "FluxGuidance", "Guidance", box_w=360, guidance=spec["guidance"]))
    prompt_column += [
        N("negative", "CLIPTextEncode", "Negative prompt", box_w=360, text=spec["negative"]),
        N("latent", spec["latent"], "Image size", box_w=360, width=size, height=size, batch_size=1),
    ]
    nodes = G(title, BROWN, prompt_column, [
        N("sampler", "KSampler", "Sampler", seed=0, _control="randomize", denoise=1.0, **spec["sampler"]),
        N("decode", "VAEDecode", "Decode"),
    ], [
        N("save", "SaveImage", "Result", box_w=420, box_h=460, filename_prefix=prefix),
    ])
    positive = ("guidance", 0) if spec["guidance"] is not None else ("prompt", 0)
    links = [
        (*model_from, "sampler", "model"), (*loaded["clip"], "prompt", "clip"), (*loaded["clip"], "negative", "clip"),
        (*positive, "sampler", "positive"), ("negative", 0, "sampler", "negative"), ("latent", 0, "sampler", "latent_image"),
        ("sampler", 0, "decode", "samples"), (*loaded["vae"], "decode", "vae"), ("decode", 0, "save", "images"),
    ]
    if spec["guidance"] is not None:
        links.append(("prompt", 0, "guidance", "conditioning"))
    return nodes, links


def train_real(arch: str, kind: str):
    spec = ARCHS[arch]
    trigger, prefix = REAL_TRIGGERS[kind], f"qrlora/{arch}_{kind}"
    model, loaded = real_model_group(arch)
    generate, generate_links = real_generate_group(
        arch, "4 · Try the trained adapter", REAL_TRY[kind], f"qrlora_train/{arch}_{kind}", ("train", 1), loaded)
    default_caption = "a photo of <c>" if kind == "content" else "an image in <s> style"
    note = REAL_TRAIN_NOTE.format(kind=kind, folder=REAL_FOLDERS[kind], trigger=trigger, advice=REAL_ADVICE[kind],
                                  resolution=spec["resolution"], prefix=f"{arch}_{kind}", mix=examples.TITLES[f"{arch}_mix"],
                                  memory=FLUX_MEMORY if arch == "flux" else "")
    groups = [
        model,
        G(f"2 · Your {kind} images + captions", PURPLE, [
            N("folder", "LoadImageTextDataSetFromFolder", "Image folder in input/ (images + same-name .txt captions)", box_w=380,
              folder=REAL_FOLDERS[kind]),
            N("note", "Note", f"How to train {kind}", box_w=380, box_h=300, text=note),
        ], [
            N("data", "QRLoRATrainingData", "Bucket, encode and caption", box_w=340, resolution=spec["resolution"],
              default_caption=default_caption),
        ]),
        G(f"3 · Train the {kind} adapter", GREEN, [
            N("samples", "QRLoRASampleSettings", "Samples while training", box_w=340, prompts=REAL_TRY[kind], negative=spec["negative"],
              every=250, width=spec["resolution"], height=spec["resolution"], seed=0, **spec["sampler"]),
        ], [
            N("train", "QRLoRATrain", f"Train {kind} adapter", box_w=340, box_h=640, rank=64, alpha=0.0, steps=REAL_STEPS,
              learning_rate=1e-4, batch_size=1, grad_accumulation=1, seed=0, optimizer="AdamW", training_dtype="bf16",
              gradient_checkpointing=True, target_preset="attention + MLP (paper)", target_pattern="", triangular=True,
              checkpoint_every=250, filename_prefix=prefix, trigger_words=trigger, role=kind),
        ], [
            N("loss", "LossGraphNode", "Loss curve", box_w=380, box_h=300),
        ]),
        generate,
    ]
    links = [
        ("folder", 0, "data", "images"), ("folder", 1, "data", "captions"), (*loaded["vae"], "data", "vae"), (*loaded["clip"], "data", "clip"),
        (*loaded["model"], "train", "model"), ("data", 0, "train", "latents"), ("data", 1, "train", "positive"),
        (*loaded["clip"], "samples", "clip"), (*loaded["vae"], "samples", "vae"), ("samples", 0, "train", "samples"),
        ("train", 2, "loss", "loss"), *generate_links,
    ]
    return groups, links, None


def real_adapter_name(arch: str, kind: str) -> str:
    """The file the training template writes first: <prefix>_00001_step<steps>.safetensors."""
    return f"qrlora/{arch}_{kind}_00001_step{REAL_STEPS:06}.safetensors"


def mix_real(arch: str):
    """The toy mix's graph (Mix QR-LoRAs, its prompt into the generation) on the stock loaders of FLUX.1 or SDXL."""
    model, loaded = real_model_group(arch)
    generate, generate_links = real_generate_group(
        arch, "3 · Generate with both trigger words", None, f"qrlora_mix/{arch}", ("mixer", 0), loaded)
    groups = [
        model,
        mix_group("2 · Mix your content + style adapters", real_adapter_name(arch, "content"), real_adapter_name(arch, "style"), 420,
                  REAL_MIX_TEMPLATE, REAL_MIX_NOTE),
        generate,
    ]
    links = [
        (*loaded["model"], "mixer", "model"),  # any format loads, the reference's Q-and-R files too
        ("mixer", 2, "prompt", "text"), ("mixer", 2, "shown", "source"), *generate_links,
    ]
    return groups, links, None


# key (devkit/examples.py: its file's title) -> () -> (groups, links, thumbnail rows: what the card shows,
# ("out", node) = that node's output image from the shipped run, ("in", node) = the first training image of that
# node's folder; None for the FLUX.1 and SDXL workflows, whose cards are drawn)
WORKFLOW_SPECS = {
    "qrlora_mix": mix,
    "qrlora_train_content": lambda: train("content"),
    "qrlora_train_style": lambda: train("style"),
    "qrlora_compare": compare,
    "qrlora_train_folder": train_folder,
    **{f"{arch}_train_{kind}": (lambda arch=arch, kind=kind: train_real(arch, kind)) for arch in ARCHS for kind in ("content", "style")},
    **{f"{arch}_mix": (lambda arch=arch: mix_real(arch)) for arch in ARCHS},
}


# What the files open to: a 1280 x 800 window (a small laptop's browser), where the page leaves the canvas free
# from x 60 (the side bar) and y 130 (the tabs and the workflow's name) to the window's edges, and the minimap
# covers the corner from (1015, 535) (measured in frontend 1.32.9; tests/browser measures the page itself).
WINDOW = (1280, 800)
VIEW = (70, 140, 1270, 790)
MINIMAP = (1015, 535)
MIN_SCALE = 0.6  # below it the page stops drawing node text (its minimum font size for detail, 8 px, of 14 px text)


def _default(spec):
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
    return options[0] if options else None


def _specs(groups):
    return [spec for group in groups for column in group["columns"] for spec in column]


def draft(groups, links, info: dict) -> tuple[dict, dict, dict]:
    """A UI-format draft (nodes, links), the layout the page should apply, and the node id of each key."""
    specs = _specs(groups)
    ids = {spec["key"]: n for n, spec in enumerate(specs, start=1)}
    types = {spec["key"]: spec["type"] for spec in specs}
    link_rows, inputs_of, outputs_of = [], {}, {}
    for link_id, (src, slot, dst, name) in enumerate(links, start=1):
        kind = info[types[src]]["output"][slot]
        link_rows.append([link_id, ids[src], slot, ids[dst], name, kind])
        inputs_of.setdefault(dst, {})[name] = (link_id, kind)
        outputs_of.setdefault(src, {}).setdefault(slot, []).append(link_id)
    nodes = []
    for spec in specs:
        node_info = info[spec["type"]]
        names = widget_names(node_info)
        values = []
        widgets = spec["widgets"]
        for name in names:
            if name is None:
                values.append(widgets.get("_control") or widgets.get("_upload"))
                continue
            section = "required" if name in node_info["input"].get("required", {}) else "optional"
            values.append(widgets.get(name, _default(node_info["input"][section][name])))
        unknown = set(widgets) - set(names) - {"_control", "_upload"}
        if unknown:
            raise SystemExit(f"{spec['title']}: {spec['type']} has no widgets {sorted(unknown)}")
        node_inputs = []
        for name, (link_id, kind) in inputs_of.get(spec["key"], {}).items():
            node_inputs.append({"name": name, "type": kind, "link": link_id, **({"widget": {"name": name}} if name in names else {})})
        node_outputs = [
            {"name": n, "type": t, "links": outputs_of.get(spec["key"], {}).get(i, []), "slot_index": i}
            for i, (n, t) in enumerate(zip(node_info.get("output_name", node_info["output"]), node_info["output"]))
        ]
        nodes.append({
            "id": ids[spec["key"]], "type": spec["type"], "title": spec["title"], "pos": [0, 0],
            "size": [spec["width"], 100], "flags": {}, "order": len(nodes), "mode": 0,
            "inputs": node_inputs, "outputs": node_outputs,
            "properties": {"Node name for S&R": spec["type"]}, "widgets_values": values,
        })
    for row in link_rows:  # the page wants input slot indexes; it re-derives them from names on load
        target = next(n for n in nodes if n["id"] == row[3])
        row[4] = next(i for i, s in enumerate(target["inputs"]) if s["name"] == row[4])
    layout = {
        "groups": [{"title": g["title"], "color": g["color"], "columns": [[ids[s["key"]] for s in c] for c in g["columns"]]} for g in groups],
        "widths": {ids[s["key"]]: s["width"] for s in specs},
        "heights": {ids[s["key"]]: s["height"] for s in specs},
        "view": VIEW, "minimap": MINIMAP, "min_scale": MIN_SCALE,
    }
    workflow = {"last_node_id": len(nodes), "last_link_id": len(link_rows), "nodes": nodes, "links": link_rows,
                "groups": [], "config": {}, "extra": {}, "version": 0.4}
    return workflow, layout, ids


# The page's sizes are the truth: a node is as wide as its title (with its badges) needs, a note as tall
# as its text needs, and a node that grows once loaded (an image preview) is measured after it grew.
# Columns are then stacked by the boxes the page draws, title bar included.
LAYOUT_JS = """async ({workflow, layout}) => {
    await app.loadGraphData(workflow, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
    const TITLE = LiteGraph.NODE_TITLE_HEIGHT, GROUP_TITLE = 34, PAD = 16, GAP = 36;
    const nodes = layout.groups.flatMap(g => g.columns.flat()).map(id => app.graph.getNodeById(id));
    const settle = async () => {  // until every image loaded and no size changed for a second (as tests/browser waits)
        const sizes = () => JSON.stringify(nodes.map(n => [...n.size]));
        let last = null, stableSince = performance.now();
        for (const started = performance.now(); performance.now() - started < 20000;) {
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);  // drawing lays out the widgets, which may grow a node
            await new Promise(r => setTimeout(r, 100));
            const now = sizes(), loading = nodes.some(n => (n.imgs ?? []).some(img => !img.complete));
            if (now !== last || loading) { last = now; stableSince = performance.now(); }
            else if (performance.now() - stableSince > 1000) break;
        }
    };
    const ctx = app.canvas.ctx;
    const titleWidth = node => {
        ctx.font = app.canvas.title_text_font;
        const badges = (node.badges ?? []).map(b => typeof b === "function" ? b() : b)
            .reduce((sum, b) => sum + (b?.text ? b.getWidth(ctx) + 12 : 0), 0);
        return Math.ceil(2 * TITLE + ctx.measureText(node.title).width + badges + 12);  // the page truncates past width - 2 * TITLE
    };
    const groupTitleWidth = title => { ctx.font = "18px Arial"; return Math.ceil(ctx.measureText(title).width + 2 * PAD); };
    await settle();
    for (const node of nodes) {
        const [w, h] = node.computeSize();
        node.size = [Math.max(w, layout.widths[node.id], titleWidth(node)), Math.max(h, layout.heights[node.id], node.size[1])];
    }
    await settle();
    for (let round = 0; round < 4; round++) {  // notes: grow until the whole text shows
        let grown = false;
        for (const node of nodes) for (const w of node.widgets ?? []) {
            const el = w.element;
            if (node.type === "Note" && el instanceof HTMLTextAreaElement && el.scrollHeight > el.clientHeight + 1) {
                node.size = [node.size[0], node.size[1] + (el.scrollHeight - el.clientHeight) / app.canvas.ds.scale + 8];
                grown = true;
            }
        }
        if (!grown) break;
        await settle();
    }
    // Each group's columns, placed from the group's corner.
    const boxes = layout.groups.map(g => {
        let colX = PAD, bottom = 0;
        const places = [];
        for (const column of g.columns) {
            let y = GROUP_TITLE + PAD + TITLE, colWidth = 0;
            for (const id of column) {
                const node = app.graph.getNodeById(id);
                places.push([node, colX, y]);
                y += node.size[1] + TITLE + PAD;
                colWidth = Math.max(colWidth, node.size[0]);
            }
            colX += colWidth + GAP;
            bottom = Math.max(bottom, y);
        }
        return {g, places, width: Math.max(colX - GAP + PAD, groupTitleWidth(g.title)), height: bottom};
    });
    // Rows, groups in reading order: of every wrapping, the one the view shows largest.
    const wrap = limit => {
        const rows = [[]];
        let x = 0;
        for (const box of boxes) {
            if (rows.at(-1).length && x + box.width > limit) { rows.push([]); x = 0; }
            rows.at(-1).push(box);
            x += box.width + BETWEEN;
        }
        return rows;
    };
    const BETWEEN = 60;
    const extent = rows => [Math.max(...rows.map(r => r.reduce((w, b) => w + b.width, 0) + BETWEEN * (r.length - 1))),
                            rows.reduce((h, r) => h + Math.max(...r.map(b => b.height)), 0) + BETWEEN * (rows.length - 1)];
    const fitScale = ([w, h], view) => Math.min(1, (view[2] - view[0]) / w, (view[3] - view[1]) / h);
    let rows = null;
    for (let k = 1, limit = 0; k <= boxes.length; k++) {
        limit += boxes[k - 1].width + (k > 1 ? BETWEEN : 0);
        const candidate = wrap(limit);
        if (!rows || fitScale(extent(candidate), layout.view) > fitScale(extent(rows), layout.view)) rows = candidate;
    }
    let y = 0;
    for (const row of rows) {
        let x = 0;
        for (const box of row) {
            for (const [node, px, py] of box.places) node.pos = [x + px, y + py];
            box.pos = [x, y];
            const group = new LiteGraph.LGraphGroup(box.g.title);
            group.font_size = 18;  // groupTitleWidth's font
            group.color = box.g.color;
            group.pos = [x, y];
            group.size = [box.width, box.height];
            app.graph.add(group);
            x += box.width + BETWEEN;
        }
        y += Math.max(...row.map(b => b.height)) + BETWEEN;
    }
    // The view saved with the file (extra.ds, restored on load): the whole graph, centred, where it fits at a scale
    // whose text the page still draws and every group (so every node, the result's too) clears the minimap; else
    // that scale, on the result's group from its top left corner (the steps that lead to the result, and the result).
    const [w, h] = extent(rows);
    const result = app.graph.nodes.find(n => n.type === "SaveImage");
    const screen = (scale, offset, [x0, y0, x1, y1]) => [(x0 + offset[0]) * scale, (y0 + offset[1]) * scale, (x1 + offset[0]) * scale, (y1 + offset[1]) * scale];
    const clear = (r, k) => r[2] <= k[0] || r[3] <= k[1];
    const allClear = (scale, offset) => boxes.every(b => clear(screen(scale, offset, [b.pos[0], b.pos[1], b.pos[0] + b.width, b.pos[1] + b.height]), layout.minimap));
    const centred = view => {
        const scale = fitScale([w, h], view);
        return [scale, [(view[0] + (view[2] - view[0] - w * scale) / 2) / scale, (view[1] + (view[3] - view[1] - h * scale) / 2) / scale]];
    };
    let [scale, offset] = centred(layout.view);
    if (!allClear(scale, offset)) [scale, offset] = centred([...layout.view.slice(0, 2), layout.minimap[0], layout.view[3]]);
    if (scale < layout.min_scale) {
        scale = layout.min_scale;
        const own = boxes.find(b => b.places.some(([node]) => node === result));
        offset = [layout.view[0] / scale - own.pos[0], layout.view[1] / scale - own.pos[1]];
    }
    app.canvas.ds.offset = offset;
    app.canvas.ds.scale = scale;
    const data = JSON.parse(JSON.stringify(app.graph.serialize()));
    for (const n of data.nodes) {  // a node of a type the page lacks serializes as it was loaded: keep its new place
        const live = app.graph.getNodeById(n.id);
        n.pos = [...live.pos];
        n.size = [...live.size];
    }
    return data;
}"""


def build(names, url: str, info: dict) -> dict:
    """name -> (the workflow as the page saves it, node id of each key in its spec)."""
    out = {}
    with browser.chromium() as b:
        page = browser.open_comfy(b, url)
        for name in names:
            groups, links, _ = WORKFLOW_SPECS[name]()
            draft_workflow, layout, ids = draft(groups, links, info)
            saved = page.evaluate(LAYOUT_JS, {"workflow": draft_workflow, "layout": layout})
            saved["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-qrlora/workflows/{name}"))  # stable across rebuilds
            out[name] = (saved, ids)
        if page.errors:
            raise SystemExit(f"the page reported errors: {page.errors}")
    return out


def _write(path: str, data: bytes) -> None:
    """Whole or not at all: an interrupted rebuild leaves the previous file."""
    with open(path + ".partial", "wb") as f:
        f.write(data)
    os.replace(path + ".partial", path)


def write_workflow(name: str, saved: dict) -> None:
    _write(examples.path(name), (json.dumps(saved, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"wrote {examples.path(name)} ({len(saved['nodes'])} nodes, {len(saved['links'])} links, {len(saved['groups'])} groups)")


def _fit(image, width: int, height: int):
    """The image scaled to fit the box (a small image enlarged a lot keeps crisp pixels)."""
    from PIL import Image

    scale = min(width / image.width, height / image.height)
    resample = Image.NEAREST if scale >= 2 else Image.LANCZOS
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)


def _square(image):
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def thumbnail(rows, ids: dict, saved: dict, entry: dict, base: str, info: dict):
    """One square picture of the run: each row of panels a band of equal height, panels side by side, centred."""
    from PIL import Image

    def panel(kind, key):
        if kind == "out":
            image = entry["outputs"][str(ids[key])]["images"][0]
            return Image.open(os.path.join(base, image["type"], image["subfolder"], image["filename"])).convert("RGB")
        node = next(n for n in saved["nodes"] if n["id"] == ids[key])
        folder = ui_workflow.widget_values(node, info[node["type"]])["folder"]
        path = os.path.join(base, "input", folder)
        first = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))[0]
        return _square(Image.open(os.path.join(path, first)).convert("RGB"))

    card = Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), THUMBNAIL_BACKGROUND)
    band = THUMBNAIL_SIZE // len(rows)
    for r, row in enumerate(rows):
        cell = THUMBNAIL_SIZE // len(row)
        for c, (kind, key) in enumerate(row):
            image = _fit(panel(kind, key), cell, band)
            card.paste(image, (c * cell + (cell - image.width) // 2, r * band + (band - image.height) // 2))
    return card


def write_thumbnail(name: str, saved: dict, ids: dict, client: Client, base: str, info: dict) -> None:
    """Run the workflow as shipped and draw its card from what the run made."""
    started = time.time()
    entry = client.run(ui_workflow.to_api(saved, info), timeout=3600)
    _, _, rows = WORKFLOW_SPECS[name]()
    card = thumbnail(rows, ids, saved, entry, base, info)
    buffer = io.BytesIO()
    card.save(buffer, "JPEG", quality=88, optimize=True)
    _write(examples.path(name, ".jpg"), buffer.getvalue())
    print(f"wrote {examples.path(name, '.jpg')} (from its run on the server: {time.time() - started:.0f} s)")
    write_help_picture(name)


# The help pages' pictures (web/docs/images) that are workflows' cards: drawn with the card, at the help panel's size.
HELP_PICTURES = {"qrlora_mix": "mix.jpg", "qrlora_compare": "compare.jpg", "qrlora_train_content": "train.jpg",
                 "qrlora_train_folder": "folder.jpg"}
HELP_PICTURE_SIZE = 256
HELP_IMAGES = os.path.join(PACK_ROOT, "web", "docs", "images")


def write_help_picture(name: str) -> None:
    """The help page's copy of a workflow's card (the web folder is all the page can fetch from the pack)."""
    from PIL import Image

    if name in HELP_PICTURES:
        card = Image.open(examples.path(name, ".jpg")).convert("RGB").resize((HELP_PICTURE_SIZE, HELP_PICTURE_SIZE), Image.LANCZOS)
        buffer = io.BytesIO()
        card.save(buffer, "JPEG", quality=88, optimize=True)
        _write(os.path.join(HELP_IMAGES, HELP_PICTURES[name]), buffer.getvalue())
        print(f"wrote {os.path.join(HELP_IMAGES, HELP_PICTURES[name])} (its card, {HELP_PICTURE_SIZE} px)")


CARD_COLOURS = {"flux": (40, 52, 90), "sdxl": (70, 45, 80)}


def drawn_card(name: str):
    """The card of a FLUX.1 or SDXL workflow: what it does, in words (no machine here runs those models)."""
    from PIL import Image, ImageDraw, ImageFont

    arch, _, what = name.partition("_")
    steps = {"train_content": ("Train a", "CONTENT", "adapter", "your subject, from your", "captioned images"),
             "train_style": ("Train a", "STYLE", "adapter", "your style, from your", "captioned images"),
             "mix": ("Mix", "CONTENT + STYLE", "adapters", "on one shared basis,", "with both trigger words")}[what]
    card = Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), THUMBNAIL_BACKGROUND)
    draw = ImageDraw.Draw(card)
    draw.rectangle([0, 0, THUMBNAIL_SIZE, 150], fill=CARD_COLOURS[arch])
    font = lambda size: ImageFont.load_default(size=size)
    draw.text((THUMBNAIL_SIZE // 2, 75), ARCHS[arch]["label"], font=font(64), fill=(240, 240, 240), anchor="mm")
    for text, y, size, colour in zip(steps, (200, 262, 322, 380, 418), (40, 52, 40, 30, 30), [(220, 220, 220), (250, 200, 60)] + [(220, 220, 220)] * 3):
        draw.text((THUMBNAIL_SIZE // 2, y), text, font=font(size), fill=colour, anchor="mm")
    return card


def write_drawn_card(name: str) -> None:
    buffer = io.BytesIO()
    drawn_card(name).save(buffer, "JPEG", quality=88, optimize=True)
    _write(examples.path(name, ".jpg"), buffer.getvalue())
    print(f"wrote {examples.path(name, '.jpg')} (drawn)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(WORKFLOW_SPECS), help="which workflows, by key (default: all)")
    parser.add_argument("--layout-only", action="store_true", help="write the graphs and drawn cards, keep the cards made from runs")
    args = parser.parse_args()
    unknown = set(args.names) - set(WORKFLOW_SPECS)
    if unknown:
        raise SystemExit(f"no such workflow: {', '.join(sorted(unknown))} (there are {', '.join(WORKFLOW_SPECS)})")
    reason = browser.available()
    if reason:
        raise SystemExit(f"cannot build the workflows: {reason}")
    started = time.time()
    os.makedirs(EXAMPLES, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qrlora-workflows-") as base:
        make_base_directory(base, PACK_ROOT)
        demo_assets.build(base)  # the toy world's model, adapters and training folders: the runs use them, the page lists them
        server = ComfyServer(base).start()
        try:
            client = Client(server.url)
            info = {**NOTE_INFO, **client.object_info()}
            built = build(args.names, server.url, info)
            for name, (saved, _) in built.items():
                write_workflow(name, saved)
            for name, (saved, ids) in built.items():
                if name in examples.REAL:
                    write_drawn_card(name)
                elif not args.layout_only:
                    write_thumbnail(name, saved, ids, client, base, info)
        finally:
            server.stop()
    print(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
