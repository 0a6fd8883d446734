"""Mix Grid: a content adapter and a style adapter at several weights each, sampled as one batch, as one labelled picture."""

import os

import comfy.samplers
from comfy_api.latest import io

from ..integration import grid
from ..integration.grid_picture import labelled_grid
from ..qrlora_core.errors import require_finite
from ..qrlora_core.grid import cells, parse_weights
from .adapter_socket import CATEGORY, STRENGTH_RANGE, QRLoRAType

WEIGHTS_TOOLTIP = (f"Weights to try, separated by commas (e.g. 0, 0.5, 1, 1.5), each from {STRENGTH_RANGE['min']:g} to {STRENGTH_RANGE['max']:g} "
                   "as the strength sliders; negative weights remove the adapter.")


def _name(adapter, fallback: str) -> str:
    """The adapter's file name without folder and extension (a Merge ΔR mix: its files joined by +)."""
    if not adapter.source:
        return fallback
    return " + ".join(os.path.splitext(os.path.basename(part))[0] for part in adapter.source.split(" + "))


class QRLoRAGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRAGrid",
            display_name="Mix Grid",
            category=CATEGORY,
            description="Samples every pair of a content weight and a style weight in one batch (each image with its own mix) "
                        "and lays them out as one picture: rows are content weights, columns style weights.",
            inputs=[
                io.Model.Input("model", tooltip="The base model, without the adapters applied."),
                QRLoRAType.Input("content", tooltip="The content adapter (or a Merge ΔR mix): its weight changes down the rows."),
                QRLoRAType.Input("style", tooltip="The style adapter (or a Merge ΔR mix): its weight changes along the columns."),
                io.String.Input("content_weights", default="0, 0.5, 1, 1.5", tooltip=WEIGHTS_TOOLTIP),
                io.String.Input("style_weights", default="0, 0.5, 1, 1.5", tooltip=WEIGHTS_TOOLTIP),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image", tooltip="The latent every cell starts from (its first image, e.g. an Empty Latent Image of batch 1)."),
                io.Vae.Input("vae"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="One seed for every cell, so the cells differ only by their weights."),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
            ],
            outputs=[
                io.Image.Output(display_name="grid", tooltip="One picture: the cells with their weights on the axes."),
                io.Image.Output(display_name="images", tooltip="The cells as a batch, row by row, without labels."),
            ],
        )

    @classmethod
    def execute(cls, model, content, style, content_weights, style_weights, positive, negative, latent_image, vae,
                seed, steps, cfg, sampler_name, scheduler, denoise) -> io.NodeOutput:
        require_finite(cfg=cfg, denoise=denoise)
        rows = parse_weights(content_weights, "content_weights", STRENGTH_RANGE["max"])
        columns = parse_weights(style_weights, "style_weights", STRENGTH_RANGE["max"])
        mix = grid.GridMix(model, [content, style], cells(rows, columns))
        latents = grid.sample(mix, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise)
        images = vae.decode(latents)
        title = [f"rows: weight of {_name(content, 'content')}", f"columns: weight of {_name(style, 'style')}"]
        picture = labelled_grid(images, [f"{w:g}" for w in rows], [f"{w:g}" for w in columns], title)
        return io.NodeOutput(picture, images)
