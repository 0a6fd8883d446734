"""ComfyUI and this pack, imported in-process for the bench.

ComfyUI's source is found at --comfyui, $QRLORA_COMFYUI or the pack's
.comfyui/ (see scripts/setup_host.sh). The pack is imported as a package
(`comfyui_qrlora`) without running its __init__.py or nodes/__init__.py,
which pull in ComfyUI's node API (comfy_api, av, aiohttp); the bench needs
only the weight adapter and the key map, which import comfy.* alone.
"""

import importlib
import importlib.util
import os
import sys
import types

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "comfyui_qrlora"


def import_comfy(comfyui_dir: str | None, cpu: bool):
    """ComfyUI's packages, with args set before model_management decides the device."""
    comfyui_dir = comfyui_dir or os.environ.get("QRLORA_COMFYUI") or os.path.join(PACK_ROOT, ".comfyui")
    comfyui_dir = os.path.abspath(comfyui_dir)
    if not os.path.isfile(os.path.join(comfyui_dir, "comfy", "model_patcher.py")):
        raise SystemExit(f"ComfyUI's source is not at {comfyui_dir}: run `make setup` or pass --comfyui DIR")
    if comfyui_dir not in sys.path:
        sys.path.insert(0, comfyui_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_pinned_memory = True  # the bench never offloads; keep host RAM untouched
    import comfy.model_management  # noqa: F401  (decides the device now)

    return comfyui_dir


def import_pack():
    """`comfyui_qrlora` with its qrlora_core and the two node modules the bench uses."""
    if PACKAGE not in sys.modules:
        pack = types.ModuleType(PACKAGE)
        pack.__path__ = [PACK_ROOT]
        sys.modules[PACKAGE] = pack
        nodes = types.ModuleType(PACKAGE + ".nodes")
        nodes.__path__ = [os.path.join(PACK_ROOT, "nodes")]
        sys.modules[PACKAGE + ".nodes"] = nodes
    weight_adapter = importlib.import_module(PACKAGE + ".nodes.weight_adapter")
    keymap = importlib.import_module(PACKAGE + ".nodes.keymap")
    return weight_adapter, keymap


def core(module: str):
    """A qrlora_core module, imported through the pack (so nodes and bench share one copy)."""
    return importlib.import_module(f"{PACKAGE}.qrlora_core.{module}")
