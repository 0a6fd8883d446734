"""Encoded training data in one safetensors file: latents and captions' conditioning.

What the node takes as LATENT + CONDITIONING, kept so a long run (or every
process of a parallel one) starts without loading the VAE and the text
encoders. Tensors:

    image.<i>                  latent of image i, (1, C, H, W) (sizes may differ between images)
    caption.<j>                text embedding of caption j, (1, tokens, width)
    caption.<j>.<option>       its tensor options, e.g. pooled_output (1, width)

Metadata: `qrlora.training_data` = format version, `qrlora.captions` =
JSON list of caption j's text and non-tensor options, `qrlora.image_captions`
= JSON list of the caption index of each image. Only safetensors: ComfyUI's
own Save Training Dataset writes pickles, which this pack never reads.
"""

import json

import torch

from ..errors import AdapterError, clipped
from ..formats import META_PREFIX, all_finite, atomic_save, read_safetensors

VERSION = 1
_VERSION_KEY, _CAPTIONS_KEY, _IMAGES_KEY = META_PREFIX + "training_data", META_PREFIX + "captions", META_PREFIX + "image_captions"


def save(path: str, latents: list[torch.Tensor], positive: list, texts: list[str] | None = None) -> None:
    """latents: one (1, C, H, W) per image; positive: one CONDITIONING per image (the same object for a shared caption)."""
    if len(positive) != len(latents):
        raise ValueError("one conditioning per image")
    tensors, captions, index, seen = {}, [], [], {}
    for i, (latent, cond) in enumerate(zip(latents, positive)):
        tensors[f"image.{i}"] = latent.detach().to("cpu", torch.float32).contiguous()
        if id(cond) not in seen:
            j = seen[id(cond)] = len(captions)
            if len(cond) != 1:
                raise ValueError("one [embedding, options] entry per caption")
            embedding, options = cond[0]
            tensors[f"caption.{j}"] = embedding.detach().to("cpu").contiguous()
            plain = {}
            for key, value in options.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"caption.{j}.{key}"] = value.detach().to("cpu").contiguous()
                elif isinstance(value, (int, float, str, bool)) or value is None:
                    plain[key] = value
            captions.append({"text": texts[i] if texts else "", "options": plain})
        index.append(seen[id(cond)])
    atomic_save(tensors, path, {_VERSION_KEY: str(VERSION), _CAPTIONS_KEY: json.dumps(captions), _IMAGES_KEY: json.dumps(index)})


def load(path: str) -> tuple[list[dict], list, list[str]]:
    """([LATENT per image], [CONDITIONING per image], caption texts) as the node's inputs take them."""
    tensors, metadata = read_safetensors(path)
    name = path.rsplit("/", 1)[-1]
    if _VERSION_KEY not in metadata:
        raise AdapterError(f"{name} is not a QR-LoRA training data file (no {_VERSION_KEY} entry): write one with train.py --save-data.")
    try:
        if int(metadata[_VERSION_KEY]) > VERSION:
            raise AdapterError(f"{name} is training data of a newer version ({clipped(metadata[_VERSION_KEY])}); update comfyui-qrlora.")
        captions = json.loads(metadata[_CAPTIONS_KEY])
        index = json.loads(metadata[_IMAGES_KEY])
        conds = []
        for j, caption in enumerate(captions):
            prefix = f"caption.{j}."
            options = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            options.update(caption.get("options", {}))
            conds.append([[tensors[f"caption.{j}"], options]])
        if any(type(j) is not int or not 0 <= j < len(conds) for j in index):  # not int(): 1.5 and -1 would pick a caption
            raise ValueError(f"{_IMAGES_KEY} {clipped(metadata[_IMAGES_KEY])}")
        latents = [{"samples": tensors[f"image.{i}"]} for i in range(len(index))]
        positive = [conds[j] for j in index]
    except AdapterError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise AdapterError(f"{name}: the training data is incomplete ({clipped(repr(e))} is missing or wrong); write it again with train.py --save-data.") from None
    for i, latent in enumerate(latents):
        samples = latent["samples"]
        if samples.dim() != 4 or samples.shape[0] != 1 or not samples.is_floating_point() or not all_finite(samples):
            raise AdapterError(f"{name}: image.{i} is not one finite floating-point latent (1, C, H, W); write the data again with train.py --save-data.")
    return latents, positive, [c.get("text", "") for c in captions]
