"""Headless QR-LoRA training (see docs/training.md, "Training from a shell, on several GPUs"):

    python ComfyUI/custom_nodes/comfyui-qrlora/train.py --help
    torchrun --nproc_per_node 2 ComfyUI/custom_nodes/comfyui-qrlora/train.py --model ... --data ...

A script, not `python -m`, because the pack's folder may be named
anything (comfyui-qrlora, with a hyphen, is no module name). It registers
the pack as the package `comfyui_qrlora` without running its __init__.py
(which is ComfyUI's entry point to the nodes), so the modules inside import
each other relatively, exactly as they do when ComfyUI loads the pack;
then integration/training/cli.py does the rest. ComfyUI itself imports nothing
from here.
"""

import importlib
import os
import sys
import types

PACKAGE = "comfyui_qrlora"


def register_pack() -> None:
    root = os.path.dirname(os.path.abspath(__file__))
    for name, folder in ((PACKAGE, root), (PACKAGE + ".nodes", os.path.join(root, "nodes"))):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [folder]
            sys.modules[name] = module


if __name__ == "__main__":
    register_pack()
    sys.exit(importlib.import_module(PACKAGE + ".integration.training.cli").main())
