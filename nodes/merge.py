"""Merge ΔR: mix up to eight adapters with a weight each."""

from comfy_api.latest import io

from ..qrlora_core.errors import require_finite
from ..qrlora_core.merge import merge
from .adapter_socket import CATEGORY, QRLoRAType, STRENGTH_RANGE, describe_adapter

MAX_ADAPTERS = 8
REQUIRED_ADAPTERS = 2


class QRLoRAMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        inputs = []
        for i in range(1, MAX_ADAPTERS + 1):
            optional = i > REQUIRED_ADAPTERS
            inputs.append(QRLoRAType.Input(f"qr_lora_{i}", optional=optional, tooltip=f"Adapter {i}."))
            inputs.append(
                io.Float.Input(
                    f"weight_{i}", default=1.0, **STRENGTH_RANGE, display_mode=io.NumberDisplay.slider,
                    optional=optional, tooltip=f"How much of adapter {i} goes into the mix (negative removes it).",
                )
            )
        return io.Schema(
            node_id="QRLoRAMerge",
            display_name="Merge ΔR",
            category=CATEGORY,
            is_output_node=True,  # an output: run (and its report shown) even when all of it comes from the cache
            description="Mixes QR-LoRA adapters of the same base model: one ΔR sum per layer when they share the basis Q.",
            inputs=inputs,
            outputs=[QRLoRAType.Output(display_name="qr_lora"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        pairs = [(kwargs.get(f"qr_lora_{i}"), kwargs.get(f"weight_{i}", 1.0)) for i in range(1, MAX_ADAPTERS + 1)]
        pairs = [(a, w) for a, w in pairs if a is not None]
        require_finite(**{f"weight_{i}": kwargs.get(f"weight_{i}") for i in range(1, MAX_ADAPTERS + 1)})
        merged, report = merge([a for a, _ in pairs], [w for _, w in pairs])
        text = report.text() + "\n" + describe_adapter(merged)
        named = {"names": [a.source for a, _ in pairs], "weights": [w for _, w in pairs]}
        return io.NodeOutput(merged, text, ui={"text": [text], "qrlora_mix": [named]})
