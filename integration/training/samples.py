"""Sample images while training: what the adapter does so far, every N steps, from fixed prompts and seed.

Every N steps the trainer generates one image per prompt with ComfyUI's
own sampling (`comfy.sample.sample`, what KSampler runs) on the training
model itself, its ΔR wrappers active, without gradients and with the
global RNG put back afterwards, so samples never change what is trained.
Each image is shown on the node at once (the progress preview, as samplers
show theirs), kept as a PNG next to the checkpoints in the loras folder,
and listed in the node's output when the run ends.
"""

import io as bytes_io
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import comfy.sample
import comfy.utils

from ...qrlora_core.formats import atomic_write
from .. import files
from .names import sample_name

PREVIEW_SIZE = 512  # longest side of the progress preview


@dataclass
class SampleSettings:
    every: int
    prompts: list  # the prompt texts, for names and PNG metadata
    positive: list  # one CONDITIONING per prompt
    negative: list
    vae: object
    width: int
    height: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    seed: int

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def generate(self, patcher) -> torch.Tensor:
        """One image per prompt (N, H, W, 3) from the model as it is now (run it without gradients);
        the global RNG is left as it was."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        images = []
        with torch.random.fork_rng(devices=devices):
            empty = torch.zeros([1, 4, self.height // 8, self.width // 8])  # as Empty Latent Image
            latent = comfy.sample.fix_empty_latent_channels(patcher, empty)
            for positive in self.positive:
                noise = comfy.sample.prepare_noise(latent, self.seed)
                samples = comfy.sample.sample(
                    patcher, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, positive, self.negative, latent,
                    seed=self.seed, disable_pbar=True,
                )
                images.append(self.vae.decode(samples.to(torch.float32)))
        return torch.cat(images)


class SamplePreviews:
    """Generates, shows and keeps the samples of one training run."""

    def __init__(self, settings: SampleSettings, run: str, total_steps: int):
        self.settings, self.run = settings, run
        self.progress = comfy.utils.ProgressBar(total_steps)
        self.files: list[dict] = []  # {"step", "prompt", "file"} per image, for the node's output
        self.shown: list = []  # the temp copies the page shows (ui images)

    def __call__(self, session, step: int, total: int) -> None:
        """After optimizer step `step` of the run, `total` steps of the adapter's training."""
        images = session.between_steps(self.settings.generate)
        for k, (prompt, image) in enumerate(zip(self.settings.prompts, images), start=1):
            name = sample_name(self.run, total, k)
            _save_png(image, files.output_path(name, ".png"), {"prompt": prompt, "seed": str(self.settings.seed), "steps": str(total)})
            self.files.append({"step": total, "prompt": prompt, "file": name})
        self.shown += ui.ImageSaveHelper.save_images(images, filename_prefix="qrlora_samples/sample", folder_type=io.FolderType.temp,
                                                     cls=None, compress_level=1)
        logging.info(f"[QR-LoRA] step {total}: {len(images)} sample image(s) saved next to the checkpoints ({sample_name(self.run, total, '*')})")
        self.progress.update_absolute(step, None, ("PNG", _strip(images), PREVIEW_SIZE))


def _strip(images: torch.Tensor) -> Image.Image:
    """The images side by side, as one PIL image (the node shows one preview at a time)."""
    row = torch.cat(list(images), dim=1)
    return Image.fromarray(np.clip(255.0 * row.cpu().numpy(), 0, 255).astype(np.uint8))


def _save_png(image: torch.Tensor, path: str, text: dict) -> None:
    """Write a PNG with its prompt, seed and step as text chunks, atomically (formats.atomic_write)."""
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = bytes_io.BytesIO()
    Image.fromarray(np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)).save(buffer, format="PNG", pnginfo=info)
    atomic_write(buffer.getvalue(), path, f"the sample image {os.path.basename(path)}")
