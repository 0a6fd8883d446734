"""ΔR Similarity: how much two adapters overlap, layer by layer (the paper's disentanglement view)."""

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw, ImageFont

from ..qrlora_core.blocks import block_overlap, overlap_spec
from ..qrlora_core.errors import AdapterError
from ..qrlora_core.similarity import delta_cosine
from .adapter_socket import CATEGORY, QRLoRAType

WIDTH, HEIGHT = 768, 384
MARGIN = {"left": 56, "right": 16, "top": 44, "bottom": 40}
LOW, HIGH = 0.1, 0.5  # |cos| below LOW: disentangled; above HIGH: the adapters interfere


def _colour(c: float) -> tuple[int, int, int]:
    a = abs(c)
    if a < LOW:
        return (46, 150, 90)
    if a < HIGH:
        return (222, 160, 40)
    return (200, 60, 50)


def summarize(cosines: dict[str, float]) -> dict:
    values = list(cosines.values())
    return {
        "layers": list(cosines),
        "cosine": values,
        "mean_abs": float(np.mean(np.abs(values))),
        "max_abs": float(np.max(np.abs(values))),
    }


def plot(stats: dict, title: str) -> Image.Image:
    """A bar per layer, cosine in [-1, 1] around a zero line, WIDTH x HEIGHT pixels."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    left, right = MARGIN["left"], WIDTH - MARGIN["right"]
    top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]

    def y(c: float) -> float:
        return top + (1.0 - c) / 2.0 * (bottom - top)

    draw.text((left, 8), title, fill="black", font=font)
    draw.text((left, 24), f"mean |cos| {stats['mean_abs']:.3f}   max |cos| {stats['max_abs']:.3f}   "
              f"(near 0: the adapters do not interfere)", fill=(90, 90, 90), font=font)
    for tick in (-1.0, -0.5, 0.0, 0.5, 1.0):
        draw.line([(left, y(tick)), (right, y(tick))], fill=(225, 225, 225) if tick else (120, 120, 120))
        draw.text((8, y(tick) - 7), f"{tick:+.1f}", fill="black", font=font)
    band = [(left, y(LOW)), (right, y(-LOW))]
    draw.rectangle(band, outline=(160, 210, 180))
    n = len(stats["cosine"])
    step = (right - left) / n
    for i, c in enumerate(stats["cosine"]):
        x0, x1 = left + i * step + step * 0.15, left + (i + 1) * step - step * 0.15
        y0, y1 = sorted((y(0.0), y(c)))
        draw.rectangle([(x0, y0), (max(x1, x0 + 1), max(y1, y0 + 1))], fill=_colour(c))
    every = max(1, int(np.ceil(n / 24)))
    for i in range(0, n, every):
        draw.text((left + (i + 0.5) * step - 6, bottom + 6), str(i + 1), fill="black", font=font)
    draw.text((right - 110, bottom + 22), "layer (see the text)", fill=(90, 90, 90), font=font)
    return image


def report(stats: dict, name_a: str, name_b: str, only_a: int, only_b: int) -> str:
    lines = [
        f"ΔR cosine similarity, {name_a or 'adapter A'} vs {name_b or 'adapter B'}: {len(stats['layers'])} shared layers",
        f"mean |cos| {stats['mean_abs']:.4f}, max |cos| {stats['max_abs']:.4f}",
    ]
    if only_a or only_b:
        lines.append(f"not compared: {only_a} layers only in A, {only_b} only in B")
    lines += [f"{i + 1:>3}  {c:+.4f}  {name}" for i, (name, c) in enumerate(zip(stats["layers"], stats["cosine"]))]
    means = block_overlap(dict(zip(stats["layers"], stats["cosine"])))
    lines.append("mean |cos| per block: " + ", ".join(f"{b} {m:.3f}" for b, m in means.items()))
    if spec := overlap_spec(means, LOW):
        lines.append(f"blocks where they overlap (mean |cos| > {LOW}): keep them for one adapter, e.g. Block Weights '{spec}' on the other")
    return "\n".join(lines)


class QRLoRASimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRASimilarity",
            display_name="ΔR Similarity",
            category=CATEGORY,
            description=(
                "Per-layer cosine similarity of two adapters' ΔR (of their weight deltas Q·ΔR when the bases differ), "
                "as the paper measures disentanglement: near 0 means content and style do not interfere."
            ),
            is_output_node=True,
            inputs=[
                QRLoRAType.Input("qr_lora_a", tooltip="First adapter (e.g. content)."),
                QRLoRAType.Input("qr_lora_b", tooltip="Second adapter (e.g. style)."),
            ],
            outputs=[
                io.Image.Output(display_name="plot", tooltip=f"Cosine per layer as a {WIDTH}x{HEIGHT} bar chart."),
                io.String.Output(display_name="numbers", tooltip="Mean and max |cos| and the cosine of every layer and block."),
                io.String.Output(display_name="overlap_blocks", tooltip=f"Block weights 'BLOCK=0, ...' for the blocks where the adapters overlap (mean |cos| > {LOW}): "
                                                                        "wire it into Block Weights (custom) of one of the two adapters."),
            ],
        )

    @classmethod
    def execute(cls, qr_lora_a, qr_lora_b) -> io.NodeOutput:
        cosines = delta_cosine(qr_lora_a, qr_lora_b)
        if not cosines:
            raise AdapterError(
                f"{qr_lora_a.source or 'Adapter A'} and {qr_lora_b.source or 'adapter B'} share no layer of the same shape, "
                "so there is nothing to compare: pick two adapters made for the same base model."
            )
        stats = summarize(cosines)
        only_a = len(qr_lora_a.targets.keys() - cosines.keys())
        only_b = len(qr_lora_b.targets.keys() - cosines.keys())
        text = report(stats, qr_lora_a.source, qr_lora_b.source, only_a, only_b)
        title = f"dR cosine per layer: {qr_lora_a.source or 'A'} vs {qr_lora_b.source or 'B'}"  # PIL's own font has no Δ
        picture = torch.from_numpy(np.asarray(plot(stats, title), dtype=np.float32) / 255.0)[None]
        payload = {**stats, "a": qr_lora_a.source, "b": qr_lora_b.source, "only_a": only_a, "only_b": only_b}
        preview = ui.PreviewImage(picture, cls=cls).as_dict()
        overlap = overlap_spec(block_overlap(cosines), LOW)
        return io.NodeOutput(picture, text, overlap, ui={**preview, "text": [text], "qrlora_similarity": [payload]})
