"""Export for the Reference Scripts: an adapter in the reference implementation's own layout.

The layout stores the base's R = Q^T W, so it needs the base model
(qrlora_core/reference_formats.py says why).
"""

from comfy_api.latest import io

from ..integration import files
from ..integration.reference import base_weights
from ..qrlora_core.formats import atomic_save
from ..qrlora_core.metadata import modelspec
from ..qrlora_core.reference_formats import reference_tensors
from .adapter_socket import CATEGORY, QRLoRAType


class QRLoRAExportReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRAExportReference",
            display_name="Export for the Reference Scripts",
            category=CATEGORY,
            description="Writes the adapter in the QR-LoRA reference implementation's own layout (q / base_r / delta_r per layer, "
                        "diffusers names, alpha = rank), so its Flux and SD3 scripts run it. R comes from the connected base model.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The base model the adapter was made for (its R = Q^T W is stored)."),
                QRLoRAType.Input("qr_lora"),
                io.String.Input("filename_prefix", default="qrlora/reference"),
            ],
            outputs=[io.String.Output(display_name="filename")],
        )

    @classmethod
    def execute(cls, model, qr_lora, filename_prefix) -> io.NodeOutput:
        tensors, not_triangular = reference_tensors(qr_lora, base_weights(model))
        path, name = files.unused_path(filename_prefix)
        atomic_save(tensors, path, modelspec(qr_lora, path, "qr-lora"), root=files.loras_root())
        lines = [f"Exported {name} ({len(qr_lora.targets)} layers, reference layout)."]
        if not_triangular:
            lines.append(f"{not_triangular} layers have ΔR entries below the diagonal: run it with the reference's plain ΔR layer, "
                         "not the triangular one (which would mask them).")
        return io.NodeOutput(name, ui={"text": ["\n".join(lines)], "files": [name]})
