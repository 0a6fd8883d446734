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
# The folder example's images: the heart (the shape the toy world's content adapter learns in 100 steps) in base
# styles, in several sizes and shapes: squares of 128 to 256 px, 4:3 landscapes and 3:4 portraits with the shape in
# the middle; every sixth without a caption file (it takes the default caption). At the toy world's resolution (128)
# a 4:3 image's nearest bucket is the square one (it is centre-cropped to it); the only other buckets are 3:1 and 4:1
# banners, 8 latents high, where the shape is 40 px: with 2 of 16 images in them, 100 steps drew blobs, not hearts
# (as 4 of 12 did with the star, the shape this example trained before); without them, hearts (docs/toy-world.md).
FOLDER = "toy_world_sizes"
FOLDER_TRIGGER = "<t>"
FOLDER_SHAPE = world.HELD_OUT_SHAPE
FOLDER_IMAGES = 16
FOLDER_LAYOUTS = ("square 128", "landscape 256x192", "square 192", "portrait 192x256",
                  "square 256", "landscape 160x120", "square 160", "portrait 120x160")
FOLDER_SEED = 13
FOLDER_BUCKETS_AT_128 = {(128, 128): FOLDER_IMAGES}  # (width, height) -> images, at the toy world's size
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
    image_folder(base, CONTENT_FOLDER, *pipeline.content_set(adapters.SEEDS["content"], adapters.IMAGES))
    image_folder(base, STYLE_FOLDER, *pipeline.style_set(adapters.SEEDS["style"], adapters.IMAGES))


def image_folder(base: str, folder: str, items: list, captions: list) -> None:
    """Rendered world items in input/<folder>, each with its caption in a .txt of the same name (missing files only)."""
    from PIL import Image

    for n, (item, caption) in enumerate(zip(items, captions)):
        stem = _path(base, "input", folder, f"{n:02}_{item.shape}_{item.style.replace(' ', '_')}")
        if not os.path.exists(stem + ".png"):
            Image.fromarray(world.render(item)).save(stem + ".png")
            with open(stem + ".txt", "w") as f:
                f.write(caption)


def sizes_folder(base: str) -> None:
    """The folder example's training images (FOLDER in the input folder), missing files only."""
    from PIL import Image

    items, _ = pipeline.content_set(FOLDER_SEED, FOLDER_IMAGES, shape=FOLDER_SHAPE)
    for n, item in enumerate(items):
        layout = FOLDER_LAYOUTS[n % len(FOLDER_LAYOUTS)]
        stem = _path(base, "input", FOLDER, f"{n:02}_{layout.replace(' ', '_')}")
        if os.path.exists(stem + ".png"):
            continue
        size = layout.split()[1]
        width, height = (int(v) for v in size.split("x")) if "x" in size else (int(size), int(size))
        # The world's picture in the middle of a canvas of the layout's aspect ratio (background around it), scaled.
        canvas = Image.new("RGB", (max(world.SIZE, round(world.SIZE * width / height)), max(world.SIZE, round(world.SIZE * height / width))),
                           world.BACKGROUND)
        canvas.paste(Image.fromarray(world.render(item)), ((canvas.width - world.SIZE) // 2, (canvas.height - world.SIZE) // 2))
        canvas.resize((width, height), Image.LANCZOS).save(stem + ".png")
        if n % 6 != 5:  # every sixth image has no caption file
            with open(stem + ".txt", "w") as f:
                f.write(item.caption(noun=f"{FOLDER_TRIGGER} shape"))


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
    sizes_folder(base)
