"""comfyui-qrlora: QR-LoRA adapters for ComfyUI (load, mix, apply, train).

ComfyUI imports this package from custom_nodes/ under whatever folder name
it was cloned to, so everything inside uses relative imports.
"""

from comfy_api.latest import ComfyExtension

from .nodes import NODES

WEB_DIRECTORY = "./web"


class QRLoRAExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> ComfyExtension:
    return QRLoRAExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
