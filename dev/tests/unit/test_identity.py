"""One name for the pack in a process, and the development kit kept out of ComfyUI.

Outside ComfyUI the pack is the package `comfyui_qrlora` (devkit/host.py,
train.py); a second name (a top-level `qrlora_core`) would load every class
twice, and an isinstance check or a patched class would then see only one
copy. The dev kit (devkit/), the tests, the bench, the scripts and the toy
world are development code: the pack itself imports none of them.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

from devkit import host

ROOT = os.path.realpath(host.PACK_ROOT)
PACK_CODE = ("__init__.py", "train.py", "nodes", "integration", "qrlora_core")  # what ComfyUI and the headless trainer run
SKIPPED = {".git", ".venv", ".comfyui", ".run", ".cache", "__pycache__", "node_modules"}

SECOND_NAME = re.compile(r"^\s*(from|import)\s+qrlora_core\b|import_module\(\s*['\"]qrlora_core", re.M)
DEVELOPMENT = re.compile(r"^\s*(from|import)\s+\.*(devkit|support|tests|toy_world|bench|scripts)\b", re.M)
TESTS_FROM_OUTSIDE = re.compile(r"^\s*(from|import)\s+support\b|sys\.path\.\w+\(.*[\"']tests[\"']", re.M)


def python_files(*tops: str):
    """Paths (relative to the repository) of the .py files under `tops` (default: all of it)."""
    for top in tops or ("",):
        start = os.path.join(ROOT, top)
        if os.path.isfile(start):
            yield top
            continue
        for folder, subfolders, names in os.walk(start):
            subfolders[:] = [d for d in subfolders if d not in SKIPPED and not d.startswith(".")]
            yield from (os.path.relpath(os.path.join(folder, n), ROOT) for n in names if n.endswith(".py"))


def offenders(pattern: re.Pattern, files) -> list[str]:
    out = []
    for path in files:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            out += [f"{path}: {m.group(0).strip()}" for m in pattern.finditer(f.read())]
    return out


def run_python(script: str, cwd: str) -> dict:
    """Run a script in a fresh interpreter; it prints one JSON object last."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_nothing_imports_the_pack_under_a_second_name():
    files = list(python_files())
    assert any(p.startswith(os.path.join("dev", "tests")) for p in files) and any(p.startswith(os.path.join("dev", "bench")) for p in files)
    assert offenders(SECOND_NAME, files) == []


def test_the_pack_imports_no_development_code_and_no_script_imports_the_tests():
    assert offenders(DEVELOPMENT, python_files(*PACK_CODE)) == []
    outside_tests = [p for p in python_files() if not p.startswith(os.path.join("dev", "tests") + os.sep)]
    assert offenders(TESTS_FROM_OUTSIDE, outside_tests) == []


def test_collecting_every_test_loads_each_pack_module_under_one_name():
    """All test modules imported (pytest's collection), then every module of the pack's files is `comfyui_qrlora.*`."""
    found = run_python(f"""
        import json, os, sys
        import pytest
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "."])
        pack = [os.path.join({ROOT!r}, p) for p in {PACK_CODE!r}]
        names = {{}}
        for name, module in list(sys.modules.items()):
            path = os.path.realpath(getattr(module, "__file__", None) or "")
            if any(path == p or path.startswith(p + os.sep) for p in pack):
                names.setdefault(os.path.relpath(path, {ROOT!r}), []).append(name)
        print(json.dumps({{"code": int(code), "names": names}}))
    """, cwd=os.path.join(ROOT, "dev", "tests"))
    assert found["code"] == 0
    assert "qrlora_core/formats.py" in found["names"]  # what the unit tests import at collection
    second = {path: names for path, names in found["names"].items() if names != [f"{host.PACKAGE}." + _dotted(path)]}
    assert second == {}, f"pack modules loaded under another name than {host.PACKAGE}.*"


def _dotted(path: str) -> str:
    stem = path[: -len(".py")].replace(os.sep, ".")
    return stem[: -len(".__init__")] if stem.endswith(".__init__") else stem


def test_qrlora_core_is_plain_pytorch():
    """Every module of comfyui_qrlora.qrlora_core imports with no ComfyUI anywhere on the path."""
    found = run_python(f"""
        import json, pkgutil, importlib, sys
        sys.path.insert(0, {host.DEV_ROOT!r})
        from devkit import host
        core = host.module("qrlora_core")  # registered under its one name, nothing of ComfyUI imported
        names = [m.name for m in pkgutil.walk_packages(core.__path__, core.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        comfy = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes"))
        print(json.dumps({{"imported": names, "comfy": comfy}}))
    """, cwd=os.path.dirname(ROOT))
    assert f"{host.PACKAGE}.qrlora_core.training.step_loop" in found["imported"]
    assert found["comfy"] == []


def test_comfyui_loading_the_pack_imports_no_development_code():
    """ComfyUI's own custom-node loader, on the pack's folder: the nodes load, and nothing outside the pack's code does."""
    found = run_python(f"""
        import asyncio, json, os, sys
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import nodes
        loaded = asyncio.run(nodes.load_custom_node({ROOT!r}))
        other = []  # modules from the repository's files other than the pack's code (ComfyUI's and the venv's are in dot folders)
        for name, module in list(sys.modules.items()):
            where = os.path.relpath(os.path.realpath(getattr(module, "__file__", None) or "/"), {ROOT!r}).split(os.sep)
            if where[0] != ".." and not where[0].startswith(".") and where[0] not in {PACK_CODE!r}:
                other.append(name)
        print(json.dumps({{"loaded": loaded, "nodes": sorted(nodes.NODE_CLASS_MAPPINGS), "other": sorted(other)}}))
    """, cwd=host.COMFYUI_DIR)
    assert found["loaded"] and "QRLoRALoader" in found["nodes"] and "QRLoRATrain" in found["nodes"]
    assert found["other"] == []
