"""QR-LoRA Sample Settings: the prompts (encoded once), the VAE and the sampler settings for sample images while training.

Train QR-LoRA runs them every N steps (integration/training/samples.py).
"""

from comfy_api.latest import io

import comfy.samplers

from ..integration.training.samples import SampleSettings
from ..qrlora_core.errors import AdapterError, require_encodable, require_finite
from .adapter_socket import TRAINING_CATEGORY

SampleSettingsType = io.Custom("QR_SAMPLE_SETTINGS")


class QRLoRASampleSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRASampleSettings",
            display_name="QR-LoRA Sample Settings",
            category=TRAINING_CATEGORY,
            description=(
                "Sample images while training: every N steps Train QR-LoRA generates one image per prompt with the adapter as "
                "trained so far (fixed seed), shows it on the node and keeps it as a PNG next to the checkpoints."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model you train."),
                io.Vae.Input("vae", tooltip="The VAE of the model you train (to decode the samples)."),
                io.String.Input("prompts", multiline=True, default="a photo of <c>",
                                tooltip="One prompt per line, with your trigger word; one image per prompt."),
                io.String.Input("negative", multiline=True, default="", tooltip="The negative prompt for all samples."),
                io.Int.Input("every", default=100, min=1, max=1_000_000, tooltip="Generate the samples every N optimizer steps."),
                io.Int.Input("width", default=512, min=64, max=4096, step=64),
                io.Int.Input("height", default=512, min=64, max=4096, step=64),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps per image."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="The same seed at every sampling, so the images show what training changed."),
            ],
            outputs=[SampleSettingsType.Output(display_name="samples", tooltip="Connect to Train QR-LoRA's samples input.")],
        )

    @classmethod
    def execute(cls, clip, vae, prompts, negative, every, width, height, steps, cfg, sampler_name, scheduler, seed) -> io.NodeOutput:
        require_encodable(prompts=prompts, negative=negative)  # prompts go into each sample image's metadata; the tokenizer fails on either
        require_finite(cfg=cfg)  # a NaN cfg would draw every sample as NaN, found only at the first sampling
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not lines:
            raise AdapterError("The sample prompts are empty: write one prompt per line (with your trigger word).")
        encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))
        settings = SampleSettings(every, lines, [encode(p) for p in lines], encode(negative), vae, width, height, steps, cfg,
                                  sampler_name, scheduler, seed)
        return io.NodeOutput(settings)
