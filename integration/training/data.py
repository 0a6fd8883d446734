"""Training data from images and captions: what QR-LoRA Training Data and train.py --images both run.

Each image is resized to its aspect-ratio bucket (qrlora_core/training/buckets.py),
encoded with the VAE, and its caption (or the default caption) with CLIP;
the result is one LATENT and one CONDITIONING per image, bucket by bucket.
The images and captions come as ComfyUI's own "Load Image and Text Dataset
from Folder" gives them (every image at its own size, '' for a missing caption).
"""

from dataclasses import dataclass

import torch

import comfy.utils

from ...qrlora_core.errors import AdapterError, require_encodable
from ...qrlora_core.training.buckets import bucket_sizes, check_resolution, nearest_bucket

RESIZE_METHOD = "lanczos"  # as the stock Upscale Image node offers; PIL's, clamped to [0, 1]


def single_images(images: list) -> list[torch.Tensor]:
    """Each image as (1, H, W, 3); batches connected instead of lists are split."""
    out = []
    for batch in images:
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise AdapterError("The images input must be IMAGEs (for a folder: the 'images' output of Load Image and Text Dataset from Folder).")
        if batch.shape[1] < 1 or batch.shape[2] < 1 or batch.shape[3] < 3:  # a node's odd output: no pixels, or grey without RGB
            raise AdapterError(f"An image of the images input is {batch.shape[2]} x {batch.shape[1]} pixels with {batch.shape[3]} channels, not an RGB "
                               "picture: connect images as Load Image gives them.")
        out.extend(batch[i: i + 1, :, :, :3] for i in range(batch.shape[0]))
    return out


def _captions(captions: list | None, count: int, default: str) -> tuple[list[str], int]:
    """The caption of each image, and how many took the default caption."""
    texts = [str(t).strip() for t in (captions or [])]
    require_encodable(default_caption=default, **{f"caption {i + 1}": t for i, t in enumerate(texts)})  # the tokenizer raises TypeError on an unpaired surrogate
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


@dataclass
class TrainingData:
    latents: list  # one LATENT per image, bucket by bucket
    positive: list  # one CONDITIONING per image, in the same order
    texts: list  # the caption of each, in the same order
    counts: dict  # bucket (width, height) -> images
    defaulted: int  # images that took the default caption

    def report(self, resolution: int) -> str:
        distinct = len(set(self.texts))
        return (
            f"{len(self.latents)} images in {len(self.counts)} bucket{'s' if len(self.counts) != 1 else ''} at resolution {resolution}: "
            f"{bucket_report(self.counts)}. {distinct} distinct caption{'s' if distinct != 1 else ''}"
            + (f", the default caption for {self.defaulted} image{'s' if self.defaulted != 1 else ''} without one." if self.defaulted else ".")
        )


def encode(images: list, captions: list | None, vae, clip, resolution: int, default_caption: str) -> TrainingData:
    """Bucket, resize, VAE-encode and caption-encode the images (IMAGE tensors, any sizes)."""
    check_resolution(resolution)
    singles = single_images(images)
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
    return TrainingData(latents, [encoded_captions[texts[i]] for i in order], [texts[i] for i in order],
                        {size: len(members) for size, members in grouped.items()}, defaulted)
