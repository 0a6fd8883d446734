"""Load QR-LoRA: a file from the loras folder -> QR_LORA."""

from comfy_api.latest import io

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.metadata import trigger_words
from ..integration import files, reference
from .adapter_socket import CATEGORY, QRLoRAType, describe_adapter


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
                io.Model.Input("model", optional=True, tooltip="Needed only for the reference's Q-and-R checkpoints, whose update depends on the base weights."),
            ],
            outputs=[
                QRLoRAType.Output(display_name="qr_lora"),
                io.String.Output(display_name="info", tooltip="Format, rank, layers, trigger words and base fingerprint."),
                io.String.Output(display_name="trigger_words", tooltip="The adapter's trigger words, to put into your prompt ('' if the file names none)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, lora_name, model=None):
        """Refuse at queue time (HTTP 400, shown on the node) names that are not files in loras."""
        try:
            files.adapter_path(lora_name)
        except AdapterError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, lora_name, model=None):
        """Run again whenever the file's content changes, or the basis file a compact adapter uses."""
        return files.fingerprint([lora_name])

    @classmethod
    def execute(cls, lora_name, model=None) -> io.NodeOutput:
        adapter = files.load_fingerprinted([lora_name], lambda name: reference.q_and_r(model, name))[0]
        info = describe_adapter(adapter)
        return io.NodeOutput(adapter, info, trigger_words(adapter), ui={"text": [info], "qrlora": [adapter.summary()]})
