"""ComfyUI's source and this pack, imported in-process under the pack's one name.

Outside ComfyUI the pack is the package `comfyui_qrlora` (train.py, the
headless trainer, registers it under that name too), so its modules import
each other relatively exactly as they do inside ComfyUI. Everything here
(tests, bench, scripts, toy world) imports the pack through `import_pack`
and then as `comfyui_qrlora.*`; a top-level `qrlora_core` would be a second
copy of every class (tests/unit/test_identity.py refuses one).
"""

import importlib
import importlib.util
import os
import runpy
import sys

DEV_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # dev/: what is not the product
PACK_ROOT = os.path.dirname(DEV_ROOT)
PACKAGE = "comfyui_qrlora"
COMFYUI_DIR = os.environ.get("QRLORA_COMFYUI", os.path.join(PACK_ROOT, ".comfyui"))


def import_comfy(comfyui_dir: str | None = None, cpu: bool = True, pinned_memory: bool = True) -> str:
    """Make ComfyUI's packages importable here, with its args set before model_management picks the device
    (and without it parsing this process's argv). Returns ComfyUI's folder."""
    comfyui_dir = os.path.abspath(comfyui_dir or COMFYUI_DIR)
    if not os.path.isfile(os.path.join(comfyui_dir, "comfy", "model_patcher.py")):
        raise SystemExit(f"ComfyUI's source is not at {comfyui_dir}: run `make setup` or pass --comfyui DIR")
    if comfyui_dir not in sys.path:
        sys.path.insert(0, comfyui_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    if not pinned_memory:
        comfy.cli_args.args.disable_pinned_memory = True
    import comfy.model_management  # noqa: F401  (decides the device now)

    return comfyui_dir


def import_pack(entry_point: bool = True):
    """The pack as the package `comfyui_qrlora`; returns it.

    entry_point=False only registers the package (train.py's register_pack):
    `comfyui_qrlora.qrlora_core` (plain PyTorch) and single node modules then
    import without ComfyUI's node API (comfy_api, av, aiohttp). True also runs
    the package's __init__.py and its load hook as ComfyUI does (the nodes,
    the weight adapter registered with ComfyUI), importing ComfyUI first; it may
    follow a registration without it (the same module objects, run now).
    """
    if PACKAGE not in sys.modules:
        runpy.run_path(os.path.join(PACK_ROOT, "train.py"), run_name=f"{PACKAGE}_train_script")["register_pack"]()
    if entry_point and getattr(sys.modules[PACKAGE], "__file__", None) is None:
        if "comfy.model_management" not in sys.modules:  # else ComfyUI is imported already, with its caller's args
            import_comfy()
        for name, folder in ((PACKAGE + ".nodes", os.path.join(PACK_ROOT, "nodes")), (PACKAGE, PACK_ROOT)):
            _run_init(sys.modules[name], folder)
        _drive(sys.modules[PACKAGE].comfy_entrypoint())  # the load hook ComfyUI calls: registers the weight adapter
    return sys.modules[PACKAGE]


def _drive(coroutine):
    """Run a coroutine that never waits (the pack's entry point) to its end, also where an event loop is already
    running (asyncio.run refuses there, and the registration would be silently skipped for the rest of the process)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the pack's entry point waited on something; run it in an event loop")


def _run_init(module, folder: str) -> None:
    """Run a registered package's __init__.py in its module object, as the import system would have."""
    spec = importlib.util.spec_from_file_location(module.__name__, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module.__spec__, module.__loader__, module.__file__, module.__package__ = spec, spec.loader, spec.origin, module.__name__
    parent, _, child = module.__name__.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)  # as importing a submodule binds it in its package
    spec.loader.exec_module(module)


def module(name: str):
    """A module of the pack by its path inside it (`qrlora_core.decompose`, `integration.keymap`), registering the pack first."""
    import_pack(entry_point=False)
    return importlib.import_module(f"{PACKAGE}.{name}")
