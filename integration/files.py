"""Adapter files in ComfyUI's folders: `loras` for adapters, `qrlora_bases` for shared bases."""

import os
from collections import OrderedDict
from pathlib import PurePath

import folder_paths

from ..qrlora_core.basis import BasisStore
from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import BASIS_ID_KEY, load_adapter
from ..qrlora_core.reference_formats import is_q_and_r_file
from ..qrlora_core.safefile import content_id, header_of
from . import reference

LORAS = "loras"
BASIS_FOLDER = "qrlora_bases"
EXTENSION = ".safetensors"
COUNTER_LIMIT = 99_999  # <prefix>_00001 ... <prefix>_99999

folder_paths.add_model_folder_path(BASIS_FOLDER, os.path.join(folder_paths.models_dir, BASIS_FOLDER))


def basis_store() -> BasisStore:
    return BasisStore(folder_paths.get_folder_paths(BASIS_FOLDER)[0])


def _check_relative(name: str) -> None:
    if "\0" in name:
        raise AdapterError(f"{name!r} contains a NUL character, which no file name may hold: choose a plain file name.")
    parts = PurePath(name).parts
    if not name or os.path.isabs(name) or ".." in parts or name.startswith(("/", "\\")):
        raise AdapterError(f"'{name}' is not a file name inside the loras folder: pick one from the list (absolute paths and '..' are refused).")


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(r)]) == os.path.realpath(r) for r in roots)


def is_adapter_name(name: str) -> bool:
    """The one rule for what the node lists and what /prompt may name: .safetensors in any letter case."""
    return name.lower().endswith(EXTENSION)


def adapter_names() -> list[str]:
    return [n for n in folder_paths.get_filename_list(LORAS) if is_adapter_name(n)]


def identity(name: str) -> str:
    """The content hash of an adapter file: a rewritten file is a new file, even with the same size and mtime."""
    return content_id(adapter_path(name), name)[0]


_basis_ids: OrderedDict[str, str | None] = OrderedDict()  # adapter content hash -> the basis id its header names


def basis_identity(name: str, content: str | None = None) -> str | None:
    """The content hash of the shared basis a compact adapter names, None for other files or a missing basis.

    `content` is the adapter's own identity when the caller has it (saves hashing a new file twice).
    """
    content = content or identity(name)
    if content not in _basis_ids:
        _basis_ids[content] = header_of(adapter_path(name), name).metadata.get(BASIS_ID_KEY)
        while len(_basis_ids) > 256:
            _basis_ids.popitem(last=False)
    basis_id = _basis_ids[content]
    if not basis_id:
        return None
    store = basis_store()
    path = store.path(basis_id)
    return content_id(path, f"{basis_id}.safetensors")[0] if os.path.isfile(path) else None


def loaded_identity(name: str) -> tuple[str, str | None]:
    """What an adapter loads to depends on: its content and, for a compact file, its basis file's content."""
    content = identity(name)
    return content, basis_identity(name, content)


def adapter_path(name: str) -> str:
    """The full path of an adapter in the loras folder, refusing anything that leaves it."""
    _check_relative(name)
    if not is_adapter_name(name):
        raise AdapterError(f"'{name}' is not a .safetensors file: QR-LoRA adapters are read only from .safetensors files, never pickles.")
    path = folder_paths.get_full_path(LORAS, name)
    if path is None:
        raise AdapterError(f"{name} is not in the loras folder: put the file into models/loras and refresh the node list (press R).")
    if not _inside(path, folder_paths.get_folder_paths(LORAS)):
        raise AdapterError(f"{name} is a link to a file outside the loras folder; for safety only files inside it are loaded: copy the file into the loras folder instead.")
    return path


def load(name: str, model=None):
    """The adapter in loras/<name>, any format; the reference's Q-and-R files need `model`, whose weights their update depends on."""
    path = adapter_path(name)
    if is_q_and_r_file(path):
        return reference.load_q_and_r(path, model, name)
    return load_adapter(path, basis_loader=basis_store().load, source=name)


def output_path(name: str, suffix: str = EXTENSION) -> str:
    """Where a new adapter (or a training run's sample image, suffix .png) named `name` is written (first loras folder, subfolders allowed)."""
    name = name.strip()
    if not name.lower().endswith(suffix):  # adapters: is_adapter_name's rule
        name += suffix
    _check_relative(name)
    root = folder_paths.get_folder_paths(LORAS)[0]
    path = os.path.join(root, name)
    if not _inside(os.path.dirname(path) or root, [root]):
        raise AdapterError(f"'{name}' would be written outside the loras folder; choose a plain file name.")
    _check_writable(name, root)
    return path


def first_free(prefix: str, taken, what: str) -> str:
    """The first of <prefix>_00001, <prefix>_00002, ... that `taken(stem)` says is free; `what` names them in the refusal."""
    for counter in range(1, COUNTER_LIMIT + 1):
        stem = f"{prefix}_{counter:05}"
        if not taken(stem):
            return stem
    raise AdapterError(f"There are already {COUNTER_LIMIT:,} {what} named {prefix}_*: choose another file name prefix.")


NAME_MAX = 255  # bytes per path component on the file systems ComfyUI runs on


def _check_writable(name: str, root: str) -> None:
    """Refuse, before anything runs, a name the file system would refuse at the end of the work."""
    parts = PurePath(name).parts
    for part in parts:
        if len(part.encode()) > NAME_MAX:
            raise AdapterError(f"'{part[:40]}…' in the file name is {len(part.encode())} bytes long, more than a file name may be ({NAME_MAX}): choose a shorter one.")
    folder = root
    for part in parts[:-1]:
        folder = os.path.join(folder, part)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise AdapterError(f"'{os.path.relpath(folder, root)}' in the loras folder is a file, not a folder, so '{name}' cannot be written: choose another file name prefix.")


def unused_path(prefix: str) -> tuple[str, str]:
    """(full path, name relative to loras) for prefix_00001.safetensors, the first free number."""
    stem = first_free(prefix, lambda stem: os.path.exists(output_path(stem + EXTENSION)), "files")
    return output_path(stem + EXTENSION), stem + EXTENSION
