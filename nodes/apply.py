"""Apply to Model: MODEL + QR_LORA -> MODEL, through ComfyUI's ModelPatcher."""

from comfy_api.latest import io

from ..integration.targets import apply
from ..qrlora_core.errors import require_finite
from .adapter_socket import CATEGORY, QRLoRAType, STRENGTH_RANGE


class QRLoRAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRAApply",
            display_name="Apply to Model",
            category=CATEGORY,
            description="Patches the model with W + strength · s · Q · ΔR per layer, applied lazily by ComfyUI like a LoRA.",
            inputs=[
                io.Model.Input("model"),
                QRLoRAType.Input("qr_lora"),
                io.Float.Input("strength", default=1.0, **STRENGTH_RANGE, display_mode=io.NumberDisplay.slider, tooltip="How strongly the adapter is applied (0 leaves the model as it is)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, qr_lora, strength) -> io.NodeOutput:
        require_finite(strength=strength)
        patched, note = apply(model, qr_lora, strength)
        return io.NodeOutput(patched, ui={"text": [note]})
