"""The demo's files: the toy world's trained model, its two trained adapters and its training images.

The workflows themselves are files (example_workflows/*.json, UI format); the demo
and the tests run them through devkit.workflow.to_api. The model (an SD1.5
UNet, a TAESD autoencoder) and the adapters are shipped trained in
toy_world/weights/ (see toy_world/README.md); the CLIP-L text encoder is
written from its formula (toy_world/text_encoder.py) on first use.
"""

import os

from devkit import examples

from . import adapters, model_files, pipeline, text_encoder, world

UNET = model_files.UNET_FILE
CLIP_L = model_files.CLIP_FILE
VAE = model_files.VAE_FILE
CONTENT = model_files.CONTENT_ADAPTER
STYLE = model_files.STYLE_ADAPTER
CONTENT_FOLDER = "toy_world_heart"  # training images + captions (.txt), in the input folder
STYLE_FOLDER = "toy_world_checker"
# The folder example's images: the star, a shape the base model never saw, in base styles, in mixed sizes and
# aspect ratios (squares of several sizes, 3:1 banners), some without a caption file (they take the default caption).
STAR_FOLDER = "toy_world_star"
STAR_TRIGGER = "<t>"
STAR_IMAGES = 12
STAR_LAYOUTS = ("square 128", "square 192", "wide", "square 256", "tall", "square 160")
STAR_SEED = 13
STAR_BUCKETS_AT_128 = {(128, 128): 8, (192, 64): 2, (64, 192): 2}  # (width, height) -> images, at the toy world's size
WORKFLOWS = examples.FOLDER
MIX_WORKFLOW = examples.path("qrlora_mix")
RANK = adapters.RECIPE["rank"]
LAYERS = 40  # the paper's attention + MLP targets: 10 in each of the UNet's 4 transformer blocks


def _path(base, *parts):
    path = os.path.join(base, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def page_url(server_url: str, workflow_file: str = MIX_WORKFLOW) -> str:
    """The page opened on one of the pack's example workflows (the frontend's own ?template= loader
    reads it from the pack's example_workflows/, under the pack's folder name in custom_nodes)."""
    import urllib.parse

    from devkit.server import PACK_FOLDER_NAME

    name = os.path.splitext(os.path.basename(workflow_file))[0]
    return f"{server_url}/?" + urllib.parse.urlencode({"template": name, "source": PACK_FOLDER_NAME}, quote_via=urllib.parse.quote)


def _link(source: str, target: str) -> None:
    """A hard link to the shipped file where the file system allows it (ComfyUI lists links as files), else a copy."""
    if os.path.exists(target):
        return
    try:
        os.link(source, target)
    except OSError:
        import shutil

        shutil.copyfile(source, target)


def training_folders(base: str) -> None:
    """The adapters' training images with their captions (one .txt per image), as the stock dataset loader reads them."""
    for folder, (items, captions) in ((CONTENT_FOLDER, pipeline.content_set(adapters.SEEDS["content"], adapters.IMAGES)),
                                      (STYLE_FOLDER, pipeline.style_set(adapters.SEEDS["style"], adapters.IMAGES))):
        for n, (item, caption) in enumerate(zip(items, captions)):
            stem = _path(base, "input", folder, f"{n:02}_{item.shape}_{item.style.replace(' ', '_')}")
            if not os.path.exists(stem + ".png"):
                from PIL import Image

                Image.fromarray(world.render(item)).save(stem + ".png")
                with open(stem + ".txt", "w") as f:
                    f.write(caption)


def star_folder(base: str) -> None:
    """The folder example's training images (STAR_FOLDER in the input folder), missing files only."""
    from PIL import Image

    items, _ = pipeline.content_set(STAR_SEED, STAR_IMAGES, shape="star")
    for n, item in enumerate(items):
        layout = STAR_LAYOUTS[n % len(STAR_LAYOUTS)]
        stem = _path(base, "input", STAR_FOLDER, f"{n:02}_{layout.replace(' ', '')}")
        if os.path.exists(stem + ".png"):
            continue
        picture = Image.fromarray(world.render(item))
        if layout.startswith("square"):
            side = int(layout.split()[1])
            picture = picture.resize((side, side), Image.LANCZOS)
        else:  # the shape at one end of a 3:1 banner of background
            wide = layout == "wide"
            canvas = Image.new("RGB", (3 * world.SIZE, world.SIZE) if wide else (world.SIZE, 3 * world.SIZE), world.BACKGROUND)
            offset = (n % 3) * world.SIZE
            canvas.paste(picture, (offset, 0) if wide else (0, offset))
            picture = canvas
        picture.save(stem + ".png")
        if n % 5 != 4:  # every fifth image has no caption file
            with open(stem + ".txt", "w") as f:
                f.write(item.caption(noun=f"{STAR_TRIGGER} shape"))


def build(base: str) -> None:
    """Put whatever of the demo's files is missing into the base directory."""
    for folder, name in (("diffusion_models", UNET), ("vae", VAE)):
        _link(os.path.join(model_files.WEIGHTS, name), _path(base, "models", folder, name))
    for name in (CONTENT, STYLE):
        _link(os.path.join(model_files.WEIGHTS, os.path.basename(name)), _path(base, "models", "loras", name))
    clip = _path(base, "models", "text_encoders", CLIP_L)
    if not os.path.exists(clip):
        text_encoder.save(clip)
    training_folders(base)
    star_folder(base)
