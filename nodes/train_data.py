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

from comfy_api.latest import io

from ..integration.training.data import bucket_report, encode
from ..qrlora_core.training.buckets import MAX_RESOLUTION, STEP
from .adapter_socket import TRAINING_CATEGORY


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
                io.Int.Input("resolution", default=512, min=STEP, max=MAX_RESOLUTION, step=STEP,
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
        resolution = resolution[0]
        data = encode(images, captions, vae[0], clip[0], resolution, default_caption[0])
        text = data.report(resolution)
        logging.info(f"[QR-LoRA] training data: {text}")
        buckets_ui = [{"width": w, "height": h, "images": n} for (w, h), n in data.counts.items()]
        return io.NodeOutput(data.latents, data.positive, bucket_report(data.counts), ui={"text": [text], "qrlora_buckets": buckets_ui})
