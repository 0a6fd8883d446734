"""Where the development host lives, and importing its `comfy` package in-process."""

import os
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFYUI_DIR = os.environ.get("QRLORA_COMFYUI", os.path.join(PACK_ROOT, ".comfyui"))


def import_comfy():
    """Make ComfyUI's packages importable here, on the CPU, without parsing pytest's argv."""
    if COMFYUI_DIR not in sys.path:
        sys.path.insert(0, COMFYUI_DIR)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (decides the device now, with args.cpu set)


def import_pack():
    """This pack as ComfyUI imports it: a package (named here `comfyui_qrlora`) with relative imports."""
    import importlib.util

    if "comfyui_qrlora" in sys.modules:
        return sys.modules["comfyui_qrlora"]
    import_comfy()
    spec = importlib.util.spec_from_file_location(
        "comfyui_qrlora", os.path.join(PACK_ROOT, "__init__.py"), submodule_search_locations=[PACK_ROOT]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_qrlora"] = module
    spec.loader.exec_module(module)
    return module
