"""Sample images while training: what the adapter does so far, every N steps, from fixed prompts and seed.

Every N steps the trainer generates one image per prompt with ComfyUI's
own sampling (`comfy.sample.sample`, what KSampler runs) on the training
model itself, its ΔR wrappers active, without gradients and with the
global RNG put back afterwards, so samples never change what is trained.
Each set is kept as PNGs next to the checkpoints in the loras folder and
as temporary copies the page shows at once, labelled with its step
(web/train.js, through the node's live event), and listed in the node's
output when the run ends.
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

from ...qrlora_core.formats import atomic_write
from .. import files
from .names import sample_name

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
    """Generates and keeps the samples of one training run; on_made(step, made) hears of each set."""

    def __init__(self, settings: SampleSettings, run: str, on_made=lambda step, made: None):
        self.settings, self.run, self.on_made = settings, run, on_made
        self.files: list[dict] = []  # {"step", "prompt", "file" (in loras), "image" (the temp copy /view serves)} per image

    def __call__(self, session, step: int) -> None:
        """After `step` steps of the adapter's training (earlier runs of a continued adapter included)."""
        images = session.between_steps(self.settings.generate)
        shown = ui.ImageSaveHelper.save_images(images, filename_prefix="qrlora_samples/sample", folder_type=io.FolderType.temp,
                                               cls=None, compress_level=1)
        made = []
        for k, (prompt, image, copy) in enumerate(zip(self.settings.prompts, images, shown), start=1):
            name = sample_name(self.run, step, k)
            _save_png(image, files.output_path(name, ".png"), {"prompt": prompt, "seed": str(self.settings.seed), "steps": str(step)})
            made.append({"step": step, "prompt": prompt, "file": name, "image": dict(copy)})
        self.files += made
        logging.info(f"[QR-LoRA] step {step}: {len(images)} sample image(s) saved next to the checkpoints ({sample_name(self.run, step, '*')})")
        self.on_made(step, made)


def _save_png(image: torch.Tensor, path: str, text: dict) -> None:
    """Write a PNG with its prompt, seed and step as text chunks, atomically (formats.atomic_write)."""
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = bytes_io.BytesIO()
    Image.fromarray(np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)).save(buffer, format="PNG", pnginfo=info)
    atomic_write(buffer.getvalue(), path, f"the sample image {os.path.basename(path)}", root=files.loras_root())
