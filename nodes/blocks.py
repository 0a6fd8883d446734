"""QR-LoRA Block Weights: a weight per transformer / UNet block, before Apply or Merge."""

from comfy_api.latest import io

from ..qrlora_core.blocks import BLOCK_PRESETS, apply_block_weights
from .adapter_socket import CATEGORY, QRLoRAType, describe_adapter


class QRLoRABlockWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRABlockWeights",
            display_name="Block Weights",
            category=CATEGORY,
            description="Scales each block's ΔR by a weight (per transformer / UNet block), e.g. content from early blocks and style from late ones. "
                        "Put one before Merge ΔR per adapter, or before Apply to Model.",
            inputs=[
                QRLoRAType.Input("qr_lora"),
                io.Combo.Input("preset", options=list(BLOCK_PRESETS), default=next(iter(BLOCK_PRESETS)), tooltip="A named split; used when the text below is empty."),
                io.String.Input("block_weights", default="", multiline=True,
                                tooltip="When not empty, used instead of the preset: entries like OUT01=0, IN04-IN08=0.5, D0-9=1, S=0.3, EARLY=1, LATE=0, *=1, "
                                        "or a LoRA Block Weight vector (17/26 values for SD1.x, 12/20 for SDXL). See docs/blocks.md in the pack."),
            ],
            outputs=[QRLoRAType.Output(display_name="qr_lora"), io.String.Output(display_name="blocks")],
        )

    @classmethod
    def execute(cls, qr_lora, preset, block_weights) -> io.NodeOutput:
        spec = block_weights if block_weights.strip() else BLOCK_PRESETS[preset]
        weighted, used = apply_block_weights(qr_lora, spec)
        text = "block weights: " + ", ".join(f"{block} {weight:g}" for block, weight in used.items())
        return io.NodeOutput(weighted, text, ui={"text": [text + "\n" + describe_adapter(weighted)]})
