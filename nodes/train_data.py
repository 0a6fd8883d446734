"""QR-LoRA Training Data: a folder of captioned images -> latents and captions for Train QR-LoRA.

It takes what ComfyUI's own "Load Image and Text Dataset from Folder"
gives (every image at its own size, and the text of its same-name .txt or
'' where there is none), so the stock dataset nodes (shuffle, caption
prefixes, kohya `N_name` repeat folders) work in front of it. Each image is
resized to its aspect-ratio bucket (qrlora_core/training/buckets.py),
encoded with the VAE, and its caption (or the default caption) with CLIP;
the outputs are one LATENT and one CONDITIONING per image, bucket by
bucket, which is what Train QR-LoRA and the stock dataset savers take.
"""

import logging

import torch
from comfy_api.latest import io

import comfy.utils

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.training.buckets import STEP, bucket_sizes, nearest_bucket
from .adapter_socket import TRAINING_CATEGORY

RESIZE_METHOD = "lanczos"  # as the stock Upscale Image node offers; PIL's, clamped to [0, 1]


def _single_images(images: list) -> list[torch.Tensor]:
    """Each image as (1, H, W, 3); batches connected instead of lists are split."""
    out = []
    for batch in images:
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise AdapterError("The images input must be IMAGEs (for a folder: the 'images' output of Load Image and Text Dataset from Folder).")
        out.extend(batch[i: i + 1, :, :, :3] for i in range(batch.shape[0]))
    return out


def _captions(captions: list | None, count: int, default: str) -> tuple[list[str], int]:
    """The caption of each image, and how many took the default caption."""
    texts = [str(t).strip() for t in (captions or [])]
    if not texts:
        texts = [""] * count
    elif len(texts) == 1 and count > 1:
        texts = texts * count
    elif len(texts) != count:
        raise AdapterError(
            f"There are {len(texts)} captions for {count} images: connect the 'texts' output of the same folder node as the images "
            "(one caption per image), or one caption for all."
        )
    missing = [i for i, t in enumerate(texts) if not t]
    if missing and not default.strip():
        raise AdapterError(
            f"{len(missing)} of the {count} images have no caption (.txt file of the same name) and the default caption is empty: "
            "write a default caption with your trigger word, or add the .txt files."
        )
    return [t or default.strip() for t in texts], len(missing)


def bucket_report(counts: dict) -> str:
    """'640x384: 3 images, 512x512: 1 image' — bucket (width x height) -> how many images went there."""
    return ", ".join(f"{w}x{h}: {n} image{'s' if n != 1 else ''}" for (w, h), n in counts.items())


class QRLoRATrainingData(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRATrainingData",
            display_name="QR-LoRA Training Data",
            category=TRAINING_CATEGORY,
            description=(
                "Turns a folder of images and captions (Load Image and Text Dataset from Folder) into training data: "
                "each image is resized to the nearest aspect-ratio bucket of about resolution x resolution pixels "
                "(sides multiples of 64), encoded with the VAE, and its caption with CLIP. Connect both outputs to Train QR-LoRA."
            ),
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The training images, any sizes (a list, as the folder loader gives)."),
                io.Vae.Input("vae", tooltip="The VAE of the model you train."),
                io.Clip.Input("clip", tooltip="The text encoder of the model you train."),
                io.Int.Input("resolution", default=512, min=STEP, max=4096, step=STEP,
                             tooltip="Training resolution R: each image is resized to the bucket (w x h, multiples of 64, about R² pixels) "
                                     "nearest its aspect ratio, scaled to cover it and centre-cropped."),
                io.String.Input("default_caption", default="a photo of <c>",
                                tooltip="The caption, with your trigger word, of every image without a .txt file of the same name."),
                io.String.Input("captions", optional=True, force_input=True,
                                tooltip="One caption per image ('' where there is none), as the folder loader gives."),
            ],
            outputs=[
                io.Latent.Output(display_name="latents", is_output_list=True, tooltip="One latent per image, bucket by bucket."),
                io.Conditioning.Output(display_name="positive", is_output_list=True, tooltip="One encoded caption per image, in the same order."),
                io.String.Output(display_name="buckets", tooltip="Which buckets were used: size -> number of images."),
            ],
        )

    @classmethod
    def execute(cls, images, vae, clip, resolution, default_caption, captions=None) -> io.NodeOutput:
        vae, clip, resolution, default_caption = vae[0], clip[0], resolution[0], default_caption[0]
        singles = _single_images(images)
        if not singles:
            raise AdapterError("There are no training images: put .png, .jpg or .webp files into the folder and pick it in the folder node.")
        texts, defaulted = _captions(captions, len(singles), default_caption)
        buckets = bucket_sizes(resolution)
        grouped: dict = {}
        for i, image in enumerate(singles):
            grouped.setdefault(nearest_bucket(image.shape[2], image.shape[1], buckets), []).append(i)
        grouped = dict(sorted(grouped.items(), key=lambda item: (-len(item[1]), item[0])))

        progress = comfy.utils.ProgressBar(len(singles))
        latents, order = [], []
        for (width, height), members in grouped.items():
            pixels = torch.cat([
                comfy.utils.common_upscale(singles[i].movedim(-1, 1), width, height, RESIZE_METHOD, "center").movedim(1, -1)
                for i in members
            ])
            encoded = vae.encode(pixels)
            latents += [{"samples": encoded[j: j + 1]} for j in range(len(members))]
            order += members
            progress.update(len(members))

        encoded_captions: dict = {}
        for i in order:
            if texts[i] not in encoded_captions:
                encoded_captions[texts[i]] = clip.encode_from_tokens_scheduled(clip.tokenize(texts[i]))
        positive = [encoded_captions[texts[i]] for i in order]

        counts = {size: len(members) for size, members in grouped.items()}
        report = bucket_report(counts)
        text = (
            f"{len(singles)} images in {len(counts)} bucket{'s' if len(counts) != 1 else ''} at resolution {resolution}: {report}. "
            f"{len(encoded_captions)} distinct caption{'s' if len(encoded_captions) != 1 else ''}"
            + (f", the default caption for {defaulted} image{'s' if defaulted != 1 else ''} without one." if defaulted else ".")
        )
        logging.info(f"[QR-LoRA] training data: {text}")
        buckets_ui = [{"width": w, "height": h, "images": n} for (w, h), n in counts.items()]
        return io.NodeOutput(latents, positive, report, ui={"text": [text], "qrlora_buckets": buckets_ui})
