"""Reading safetensors files into memory the process owns, trusting no size the file states.

Why not safetensors' own loader: it memory-maps the file, so tensors keep
reading from it; a file truncated or rewritten in place under the server
then changes held weights or kills the process (SIGBUS). Here the header
is checked against the file's byte count first (dtype, shape and data
offsets must describe exactly the bytes that are there), then the file
is read front to back with plain reads, the wanted tensors into their own
buffers. Nothing is allocated that the file's bytes do not back.

A file's identity is the hash of its content: size and mtime can stay the
same across a rewrite (`cp -p`, `touch -r`, two writes within one
timestamp tick), content cannot. The one read hashes every byte it parses
(read, Seen), so an identity is always that of the bytes that were used,
never of a copy read at another moment.
"""

import hashlib
import json
import math
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

import torch

from .errors import AdapterError, clipped

MAX_HEADER = 16 * 2**20  # bytes; an adapter's header is a few hundred KB even for Flux
MAX_NAME = 512  # characters in a tensor's name; real layer names have under 200, and messages repeat them
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
READ_CHUNK = 2**20
# Linux stamps mtime/ctime from a coarse clock (a few ms), some filesystems by the second:
# a stat taken longer ago than this after the last change proves any later write shows in ctime.
TIMESTAMP_GRANULARITY_NS = 2 * 10**9


def _unreadable(name: str, why: str) -> AdapterError:
    return AdapterError(
        f"{name} is not a readable safetensors file ({why}); it may be truncated, damaged or another format "
        "(only .safetensors adapters are loaded, never pickles): download or export it again."
    )


def stat_key(s: os.stat_result) -> tuple:
    """What changes when a file is replaced or written: ctime cannot be set back by a user, unlike mtime."""
    return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns


def open_file(path: str, name: str):
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a folder, pipe or device would fail, block or never end
            raise AdapterError(f"{name} is not a regular file: pick a .safetensors file.")
        return open(path, "rb", buffering=0)  # reads exactly what is asked: a header read is a header read
    except FileNotFoundError:
        raise AdapterError(f"{name} was not found: put the file in its folder and refresh the node list (press R).") from None
    except OSError as e:
        raise AdapterError(f"{name} cannot be read ({e.strerror or e}): make the file readable by the user running ComfyUI.") from None


class Header:
    """A parsed, checked header: every tensor's dtype, shape and byte range fit the file."""

    def __init__(self, entries: dict, metadata: dict, data_start: int):
        self.entries = entries  # key -> (dtype, shape, begin, end), offsets relative to data_start
        self.metadata = metadata
        self.data_start = data_start

    def keys(self):
        return self.entries.keys()

    def shape(self, key: str) -> tuple:
        return self.entries[key][1]


def read_header(f, name: str) -> Header:
    size = os.fstat(f.fileno()).st_size
    head = _read_exact(f, 8)
    if len(head) < 8:
        raise _unreadable(name, f"only {size} bytes")
    (length,) = struct.unpack("<Q", head)
    if length > min(MAX_HEADER, size - 8):
        raise _unreadable(name, f"its header claims {length:,} bytes of a {size:,}-byte file")
    raw = _read_exact(f, length)
    if len(raw) != length:
        raise _unreadable(name, "the file ended inside its header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _unreadable(name, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _unreadable(name, "its header is not a table of tensors")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _unreadable(name, "its metadata is not text")
    body = size - 8 - length
    entries, spans = {}, []
    for key, info in header.items():
        entries[key] = _entry(key, info, name)
        spans.append(entries[key][2:])
    # The format's own rule (safetensors refuses anything else): tensors tile the data exactly.
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _unreadable(name, "its tensors' byte ranges overlap or leave gaps")
        position = end
    if position != body:
        raise _unreadable(name, f"its header describes {position:,} bytes of data but the file holds {body:,}")
    return Header(entries, metadata, 8 + length)


def _entry(key, info, name) -> tuple:
    if len(key) > MAX_NAME:
        raise _unreadable(name, f"tensor {clipped(key)!r} has a name of {len(key):,} characters, longer than any layer's")
    try:
        dtype = DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise _unreadable(name, f"tensor {clipped(key)!r} has no valid dtype, shape and offsets") from None
    if not all(type(x) is int and x >= 0 for x in (*shape, begin, end)) or begin > end:
        raise _unreadable(name, f"tensor {clipped(key)!r} has a negative or non-integer size")
    if math.prod(shape) * dtype.itemsize != end - begin:
        raise _unreadable(name, f"tensor {clipped(key)!r} of shape {clipped(list(shape))} does not fit its {end - begin:,} bytes")
    return dtype, shape, begin, end


def _read_exact(f, size: int) -> bytearray:
    """`size` bytes, or fewer only where the file ends (one read returns at most about 2 GB)."""
    buffer = bytearray(size)
    done = 0
    with memoryview(buffer) as view:
        while done < size:
            got = f.readinto(view[done:])
            if not got:
                break
            done += got
    return buffer if done == size else buffer[:done]


class Seen(NamedTuple):
    """What one read saw of a file: the hash of every byte, the stat key they held under, and when it began."""

    digest: str  # sha256 of the whole file: its identity
    stat: tuple  # stat_key, the same before and after the read
    started: int  # time.time_ns() before the first stat, for ContentIds' settled rule
    metadata: dict | None  # the header's metadata, None where the header was refused


class _Hashing:
    """A file read front to back, every byte read also hashed (no seeking: what is parsed is what is hashed)."""

    def __init__(self, f):
        self.f, self.hash = f, hashlib.sha256()

    def fileno(self) -> int:
        return self.f.fileno()

    def readinto(self, view) -> int:
        got = self.f.readinto(view)
        if got:
            self.hash.update(view[:got])
        return got

    def skip(self, size: int) -> int:
        """Read and hash `size` bytes (all that is left with size -1), keeping none; the bytes read."""
        done, scratch = 0, bytearray(READ_CHUNK)
        with memoryview(scratch) as view:
            while size < 0 or done < size:
                got = self.readinto(view if size < 0 else view[: min(READ_CHUNK, size - done)])
                if not got:
                    break
                done += got
        return done


def read_tensors(f, header: Header, keys, name: str) -> dict:
    """The given tensors, each in its own buffer (no view of the file remains); the others are read past.

    `f` stands just after the header; the data is read front to back, which
    covers every byte because the tensors tile it exactly (read_header).
    """
    keys, out = set(keys), {}
    for key, (dtype, shape, begin, end) in sorted(header.entries.items(), key=lambda item: item[1][2]):
        if key not in keys:
            if f.skip(end - begin) != end - begin:
                raise _unreadable(name, f"the file ended inside tensor {clipped(key)!r}; was it changed while being read?")
            continue
        buffer = _read_exact(f, end - begin)
        if len(buffer) != end - begin:
            raise _unreadable(name, f"the file ended inside tensor {clipped(key)!r}; was it changed while being read?")
        out[key] = torch.frombuffer(buffer, dtype=dtype).reshape(shape) if buffer else torch.empty(shape, dtype=dtype)
    return out


def read(path: str, name: str, wanted=None) -> tuple[dict, dict, Seen]:
    """(tensors, metadata, what was seen) of a file, from one read that hashes every byte it parses.

    `wanted(header)` picks the keys to keep (all by default) or raises an
    AdapterError to refuse the file. A refusal still reads to the end, so
    it carries the file's identity (`error.seen`, and it can be cached by
    it); the file is stat-ed before and after, so one that changed
    meanwhile is an error, never a mix of two versions.
    """
    started = time.time_ns()
    refusal, header, tensors = None, None, {}
    with open_file(path, name) as f:
        reader = _Hashing(f)
        try:
            before = stat_key(os.fstat(f.fileno()))
            try:
                header = read_header(reader, name)
                tensors = read_tensors(reader, header, header.keys() if wanted is None else wanted(header), name)
            except AdapterError as e:
                refusal = e
            extra = reader.skip(-1)
            after = stat_key(os.fstat(f.fileno()))
        except OSError as e:
            raise AdapterError(f"{name} could not be read ({e.strerror or e}): check the disk and try again.") from None
    if before != after:
        raise AdapterError(f"{name} changed while it was being read: run it again once the file is written.")
    seen = Seen(reader.hash.hexdigest(), before, started, None if header is None else header.metadata)
    if refusal is None and extra:
        refusal = _unreadable(name, "it grew while it was being read")
    if refusal is not None:
        refusal.seen = seen
        raise refusal
    return tensors, header.metadata, seen


class ContentIds:
    """path -> sha256 of the content, read again unless the file provably did not change.

    A remembered hash is trusted only for the exact stat key (inode, size,
    mtime, ctime) it was taken under, and only when that stat was taken
    more than a timestamp tick after the last change: then any later
    write moves ctime. Bounded: the last `size` files.
    """

    def __init__(self, size: int = 256):
        self.size = size
        self._known: OrderedDict[str, tuple[tuple, str]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, path: str) -> str | None:
        """The hash of the file as it is now if a read proved it, else None (nothing is read)."""
        try:
            key = stat_key(os.stat(path))
        except OSError:
            return None
        with self._lock:
            known = self._known.get(path)
            if known is None or known[0] != key:
                return None
            self._known.move_to_end(path)
            return known[1]

    def remember(self, path: str, seen: Seen) -> None:
        """Keep what a read saw, if its stat proves any later write will show (see the class)."""
        settled = seen.started - max(seen.stat[3], seen.stat[4]) > TIMESTAMP_GRANULARITY_NS
        with self._lock:
            if settled:
                self._known[path] = (seen.stat, seen.digest)
                self._known.move_to_end(path)
                while len(self._known) > self.size:
                    self._known.popitem(last=False)
            else:
                self._known.pop(path, None)

    def read(self, path: str, name: str) -> Seen:
        """Hash the file by reading it whole (the header parsed, no tensor kept), and remember what was seen."""
        try:
            seen = read(path, name, wanted=lambda header: [])[2]
        except AdapterError as e:
            if e.seen is None:
                raise
            seen = e.seen  # a file refused as safetensors still has an identity
        self.remember(path, seen)
        return seen


content_id = ContentIds()
