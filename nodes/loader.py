"""Load QR-LoRA: a file from the loras folder -> QR_LORA."""

from comfy_api.latest import io

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import load_adapter
from . import files
from .types import CATEGORY, QRLoRAType, describe


class QRLoRALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRALoader",
            display_name="Load QR-LoRA",
            category=CATEGORY,
            description="Loads a QR-LoRA adapter (this pack's files or the published reference format) from the loras folder.",
            inputs=[
                io.Combo.Input("lora_name", options=files.adapter_names(), tooltip="A QR-LoRA .safetensors file in the loras folder (subfolders allowed)."),
            ],
            outputs=[
                QRLoRAType.Output(display_name="qr_lora"),
                io.String.Output(display_name="info", tooltip="Format, rank, layers, trigger words and base fingerprint."),
            ],
        )

    @classmethod
    def validate_inputs(cls, lora_name):
        """Refuse at queue time (HTTP 400, shown on the node) names that are not files in loras."""
        try:
            files.adapter_path(lora_name)
        except AdapterError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, lora_name):
        return files.identity(lora_name)

    @classmethod
    def execute(cls, lora_name) -> io.NodeOutput:
        path = files.adapter_path(lora_name)
        adapter = load_adapter(path, basis_loader=files.basis_store().load, source=lora_name)
        info = describe(adapter)
        return io.NodeOutput(adapter, info, ui={"text": [info], "qrlora": [adapter.summary()]})
