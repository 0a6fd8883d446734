"""Adapter files in ComfyUI's folders: `loras` for adapters, `qrlora_bases` for shared bases."""

import os
import threading
from collections import OrderedDict
from pathlib import PurePath

import folder_paths

from ..qrlora_core.adapter import QRLoRA
from ..qrlora_core.basis import BasisStore
from ..qrlora_core.errors import AdapterError, clipped, require_encodable
from ..qrlora_core.formats import BASIS_ID_KEY, read_adapter
from ..qrlora_core.safefile import Seen, content_id

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
    """Whether `path`, links resolved, lies in one of `roots`; False when it changed while being resolved (realpath
    reads a link the moment after lstat saw it: a link swapped for a folder then is EINVAL), so such a path is refused."""
    try:
        real = os.path.realpath(path)
        return any(os.path.commonpath([real, os.path.realpath(r)]) == os.path.realpath(r) for r in roots)
    except OSError:
        return False


def is_adapter_name(name: str) -> bool:
    """The one rule for what the node lists and what /prompt may name: .safetensors in any letter case."""
    return name.lower().endswith(EXTENSION)


def adapter_names() -> list[str]:
    return [n for n in folder_paths.get_filename_list(LORAS) if is_adapter_name(n)]


_lock = threading.Lock()
_basis_ids: OrderedDict[str, str | None] = OrderedDict()  # content hash -> the basis id its header names (None: none)
_fingerprints: OrderedDict[tuple, tuple] = OrderedDict()  # (prompt id, node id, list index) -> what fingerprint() returned
REMEMBERED = 256


def _bounded_set(table: OrderedDict, key, value) -> None:
    with _lock:
        table[key] = value
        table.move_to_end(key)
        while len(table) > REMEMBERED:
            table.popitem(last=False)


def _remember(path: str, seen: Seen) -> str:
    """Keep what one read saw of a file: its hash (under its stat key) and the basis its header names; its hash."""
    content_id.remember(path, seen)
    _bounded_set(_basis_ids, seen.digest, (seen.metadata or {}).get(BASIS_ID_KEY))
    return seen.digest


def _content(path: str, name: str) -> tuple[str, str | None]:
    """(content hash, the basis id its header names), by one read unless a read proved both for the file as it is."""
    digest = content_id.known(path)
    with _lock:
        if digest is not None and digest in _basis_ids:
            return digest, _basis_ids[digest]
    seen = content_id.read(path, name)
    return _remember(path, seen), (seen.metadata or {}).get(BASIS_ID_KEY)


def _basis_path(basis_id: str | None) -> str | None:
    """The file of a basis a header names, None if it names none, an invalid id, or a basis not on disk."""
    if not basis_id:
        return None
    try:
        path = basis_store().path(basis_id)
    except AdapterError:
        return None
    return path if os.path.isfile(path) else None


def loaded_identity(name: str) -> tuple[str, str | None]:
    """What an adapter loads to depends on: its content and, for a compact file, its basis file's content.

    Content, not size and mtime: a rewritten file is a new file, even with the same size and mtime.
    """
    content, basis_id = _content(adapter_path(name), name)
    basis = _basis_path(basis_id)
    return content, None if basis is None else _content(basis, f"{basis_id}.safetensors")[0]


def known_identity(name: str) -> tuple[str, str | None] | None:
    """loaded_identity without reading anything: None unless earlier reads proved every part of it."""
    content = content_id.known(adapter_path(name))
    with _lock:
        if content is None or content not in _basis_ids:
            return None
        basis = _basis_path(_basis_ids[content])
    if basis is None:
        return content, None
    basis_content = content_id.known(basis)
    return None if basis_content is None else (content, basis_content)


def load(name: str, q_and_r=None) -> tuple[QRLoRA, tuple[str, str | None]]:
    """(adapter, loaded_identity of the very bytes it was parsed from), reading each file once.

    A refusal carries that identity too (error.identity, None where not
    every byte it depends on was read), so refusals can be cached by it.
    `q_and_r`: see formats.read_adapter.
    """
    path = adapter_path(name)
    basis_reads: list[Seen | None] = []  # what the read of its basis saw, if it got that far

    def basis_loader(basis_id: str, source: str) -> dict:
        try:
            qs, seen = basis_store().read(basis_id, source)
        except AdapterError as e:
            basis_reads.append(e.seen)
            raise
        basis_reads.append(seen)
        return qs

    def identity(seen: Seen | None):
        if seen is None:
            return None
        content, basis = _remember(path, seen), _basis_path((seen.metadata or {}).get(BASIS_ID_KEY))
        if basis is None:
            return content, None
        if not basis_reads or basis_reads[0] is None:  # refused before its basis was read, or the basis vanished meanwhile
            return None
        return content, _remember(basis, basis_reads[0])

    try:
        adapter, seen = read_adapter(path, basis_loader, name, q_and_r)
    except AdapterError as e:
        e.identity = identity(e.seen)
        raise
    return adapter, identity(seen)


def _executing() -> tuple | None:
    from comfy_execution.utils import get_executing_context

    context = get_executing_context()
    return None if context is None else (context.prompt_id, context.node_id, context.list_index)


def fingerprint(names: list[str]) -> tuple:
    """The loaded_identity of each file, for a node's fingerprint_inputs: kept for the prompt and node asking (see load_fingerprinted)."""
    identities = tuple(loaded_identity(name) for name in names)
    if (node := _executing()) is not None:
        _bounded_set(_fingerprints, node, identities)
    return identities


def load_fingerprinted(names: list[str], q_and_r_for=lambda name: None) -> list[QRLoRA]:
    """load() of each file, from the very bytes fingerprint() hashed for this prompt and node, or a refusal.

    ComfyUI runs fingerprint_inputs when the prompt starts and caches what
    execute returns under it; an adapter read from other bytes (the file
    changed in between) would be served for that fingerprint from then on.
    `q_and_r_for(name)`: see formats.read_adapter.
    """
    with _lock:
        expected = _fingerprints.pop(_executing(), None)
    loaded = [load(name, q_and_r_for(name)) for name in names]
    for k, (name, (_, identity)) in enumerate(zip(names, loaded)):
        if expected is not None and (k >= len(expected) or identity != expected[k]):
            raise AdapterError(f"{clipped(name)} changed after this prompt started (while it waited to run): run the prompt again to use the file as it is now.")
    return [adapter for adapter, _ in loaded]


def adapter_path(name: str) -> str:
    """The full path of an adapter in the loras folder, refusing anything that leaves it."""
    if not isinstance(name, str):  # ComfyUI leaves a combo's value unchecked when the node validates it: /prompt may send 5 or null
        raise AdapterError(f"{clipped(repr(name))} is not a file name (it is not text): pick an adapter from the list of files in the loras folder.")
    _check_relative(name)
    if not is_adapter_name(name):
        raise AdapterError(f"'{name}' is not a .safetensors file: QR-LoRA adapters are read only from .safetensors files, never pickles.")
    path = folder_paths.get_full_path(LORAS, name)
    if path is None:
        raise AdapterError(f"{name} is not in the loras folder: put the file into models/loras and refresh the node list (press R).")
    if not _inside(path, folder_paths.get_folder_paths(LORAS)):
        raise AdapterError(f"{name} is a link to a file outside the loras folder; for safety only files inside it are loaded: copy the file into the loras folder instead.")
    return path


def loras_root() -> str:
    """The folder new files are written into (the first loras folder), which writes stay inside (formats.atomic_write's root)."""
    return folder_paths.get_folder_paths(LORAS)[0]


def clean_prefix(prefix: str) -> str:
    """A filename prefix as files are named from it: each folder and name stripped of surrounding spaces.

    Done once, where a node takes the prefix, so the name reported is the name written.
    """
    return "/".join(part.strip() for part in prefix.split("/"))


def output_path(name: str, suffix: str = EXTENSION) -> str:
    """Where a new adapter (or a training run's sample image, suffix .png) named `name` is written (first loras folder, subfolders allowed).

    `name` is made from a clean_prefix; write it with root=loras_root().
    """
    if not name.lower().endswith(suffix):  # adapters: is_adapter_name's rule
        name += suffix
    _check_relative(name)
    root = loras_root()
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


def _limit(root: str, name: str, default: int) -> int:
    try:
        return os.pathconf(root, name)
    except (OSError, ValueError):
        return default


def _check_writable(name: str, root: str) -> None:
    """Refuse, before anything runs or is made, a name the file system would refuse at the end of the work."""
    parts = PurePath(name).parts
    name_max = _limit(root, "PC_NAME_MAX", 255)
    for part in parts:
        if len(part.encode()) > name_max:
            raise AdapterError(f"'{part[:40]}…' in the file name is {len(part.encode())} bytes long, more than a file name may be ({name_max}): choose a shorter one.")
    path_max = _limit(root, "PC_PATH_MAX", 4096)
    if len(os.fsencode(os.path.join(root, name))) >= path_max:
        raise AdapterError(f"'{name[:40]}…' makes a path of {len(os.fsencode(os.path.join(root, name))):,} bytes in the loras folder, "
                           f"longer than the system allows ({path_max:,}): choose a shorter file name prefix.")
    folder = root
    for part in parts[:-1]:
        folder = os.path.join(folder, part)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise AdapterError(f"'{os.path.relpath(folder, root)}' in the loras folder is a file, not a folder, so '{name}' cannot be written: choose another file name prefix.")


def unused_path(prefix: str) -> tuple[str, str]:
    """(full path, name relative to loras) for prefix_00001.safetensors, the first free number; `prefix` as the user typed it."""
    require_encodable(filename_prefix=prefix)  # the file system refuses an unpaired surrogate with a UnicodeEncodeError
    prefix = clean_prefix(prefix)
    stem = first_free(prefix, lambda stem: os.path.exists(output_path(stem + EXTENSION)), "files")
    return output_path(stem + EXTENSION), stem + EXTENSION
