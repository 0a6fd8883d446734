"""The reference implementation's other files: Q-and-R checkpoints in, its own layout out.

Both need the base model: a Q-and-R checkpoint's update subtracts the
base's top-r part, and the reference layout stores the base's R = Q^T W
(qrlora_core/reference_formats.py says why).
"""

from comfy_api.latest import io

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import atomic_save, read_safetensors
from ..qrlora_core.metadata import modelspec
from ..qrlora_core.reference_formats import reference_tensors, resolve_q_and_r
from . import keymap
from .save import unused_path
from .adapter_socket import CATEGORY, QRLoRAType


def _base_weights(model):
    key_map = keymap.lora_key_map(model)

    def base_weight(name):
        where = key_map.get(name)
        return None if where is None else keymap.target_weight(model, where)

    return base_weight


def load_q_and_r(path: str, model, source: str):
    """A Q-and-R checkpoint as an adapter whose patch is its exact update on `model`."""
    if model is None:
        raise AdapterError(
            f"{source} is the QR-LoRA reference's Q-and-R checkpoint: its update is Q·R minus the base model's top-r part, "
            "so Load QR-LoRA needs the base model: connect the model to its 'model' input."
        )
    tensors, _ = read_safetensors(path)
    adapter, missing = resolve_q_and_r(tensors, _base_weights(model), source)  # the reference's alpha = rank: s = 1
    if missing:
        adapter.metadata["note"] += f"; {len(missing)} layers are not in the connected model (e.g. {missing[0]})"
    return adapter


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
        tensors, not_triangular = reference_tensors(qr_lora, _base_weights(model))
        path, name = unused_path(filename_prefix)
        atomic_save(tensors, path, modelspec(qr_lora, path, "qr-lora"))
        lines = [f"Exported {name} ({len(qr_lora.targets)} layers, reference layout)."]
        if not_triangular:
            lines.append(f"{not_triangular} layers have ΔR entries below the diagonal: run it with the reference's plain ΔR layer, "
                         "not the triangular one (which would mask them).")
        return io.NodeOutput(name, ui={"text": ["\n".join(lines)], "files": [name]})
