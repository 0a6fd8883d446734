"""comfyui-qrlora: QR-LoRA adapters for ComfyUI (load, mix, apply, train).

ComfyUI imports this package from custom_nodes/ under whatever folder name
it was cloned to, so everything inside uses relative imports.
"""

from comfy_api.latest import ComfyExtension

from . import integration
from .nodes import DRAWN, NODES

WEB_DIRECTORY = "./web"


class QRLoRAExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> ComfyExtension:
    """ComfyUI's load hook for the pack: the routes and the weight adapter are registered here, once per load.

    (ComfyUI 0.3.75 never calls ComfyExtension.on_load, so that hook would leave them out.)
    """
    integration.register(DRAWN)
    return QRLoRAExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
