"""Save QR-LoRA (native or compact) and Export as LoRA, into the loras folder."""

from comfy_api.latest import io

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import PRECISIONS, export_lora, save_native
from ..integration import files
from .adapter_socket import CATEGORY, QRLoRAType


def _compact_basis(adapter) -> str:
    """The id of a basis file on disk holding exactly the Qs of `adapter` (written if needed)."""
    if not adapter.shared_basis:
        raise AdapterError("This mix falls back to summed deltas of different bases, so it has no single shared basis: save it without 'compact'.")
    qs = {name: t.q for name, t in adapter.targets.items()}
    sketches = {n: t.fingerprint for n, t in adapter.targets.items() if t.fingerprint is not None}
    return files.basis_store().keep(qs, adapter.rank, sketches, known=adapter.metadata.get("basis"))


class QRLoRASave(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRASave",
            display_name="Save QR-LoRA",
            category=CATEGORY,
            description="Saves an adapter (or a mix) in this pack's format into the loras folder.",
            is_output_node=True,
            inputs=[
                QRLoRAType.Input("qr_lora"),
                io.String.Input("filename_prefix", default="qrlora/adapter", tooltip="File name inside the loras folder; a counter is appended."),
                io.Boolean.Input("compact", default=False, tooltip="Store ΔR only; Q goes once per base model into models/qrlora_bases (half a LoRA's size)."),
                io.Combo.Input("dtype", options=list(PRECISIONS), default="fp32", tooltip="Precision of the stored ΔR."),
            ],
            outputs=[io.String.Output(display_name="filename")],
        )

    @classmethod
    def execute(cls, qr_lora, filename_prefix, compact, dtype) -> io.NodeOutput:
        path, name = files.unused_path(filename_prefix)
        save_native(qr_lora, path, basis_id=_compact_basis(qr_lora) if compact else None, dtype=PRECISIONS[dtype], root=files.loras_root())
        return io.NodeOutput(name, ui={"text": [f"Saved {name}"], "files": [name]})


class QRLoRAExportLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRAExportLoRA",
            display_name="Export as LoRA",
            category=CATEGORY,
            description="Writes the adapter (or a mix) as an ordinary LoRA (up = s·Q, down = ΔR) that any LoRA loader reads, with the same weights.",
            is_output_node=True,
            inputs=[
                QRLoRAType.Input("qr_lora"),
                io.String.Input("filename_prefix", default="qrlora/exported_lora"),
                io.Combo.Input("dtype", options=list(PRECISIONS), default="fp32"),
            ],
            outputs=[io.String.Output(display_name="filename")],
        )

    @classmethod
    def execute(cls, qr_lora, filename_prefix, dtype) -> io.NodeOutput:
        path, name = files.unused_path(filename_prefix)
        export_lora(qr_lora, path, dtype=PRECISIONS[dtype], root=files.loras_root())
        return io.NodeOutput(name, ui={"text": [f"Exported {name}"], "files": [name]})
