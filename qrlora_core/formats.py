"""Reading and writing adapter files. Safetensors only, never pickle.

Formats
- published: the reference implementation's diffusers checkpoint,
  `<name>.lora.q.weight` (Q), `<name>.lora.base_r.weight` (R),
  `<name>.lora.delta_r.weight` (ΔR); no alpha (s = 1).
- native: ours. Per target `<name>.qr.q`, `<name>.qr.fingerprint` and
  either `<name>.qr.delta_r` or, when ΔR is upper triangular,
  `<name>.qr.delta_r_upper` (its upper-trapezoid entries only). Metadata
  under `qrlora.*` (FORMAT_VERSION, rank, alpha, trigger words, ...).
- compact: native without the per-target Q; `qrlora.basis_id` names the
  shared basis file for that base model (see basis.py), and
  `qrlora.basis_q_digest` binds the file to that basis's exact Qs.
- lora: an ordinary LoRA (up = s·Q, down = ΔR) for any tool; export only.

Reading trusts no size in a file (safefile.py checks the header against
the bytes) and holds nothing that still reads from the file. Every write
goes to a temporary file in the target folder and is renamed
into place, so a failed or interrupted write never leaves a partial file.
"""

import contextlib
import errno
import json
import math
import os
import secrets

import safetensors.torch
import torch

from . import safefile
from .adapter import QRLoRA, QRTarget
from .decompose import rank_fits
from .errors import AdapterError, clipped
from .fingerprint import SKETCH_SIZE, q_digest
from .metadata import modelspec

FORMAT_VERSION = 1
META_PREFIX = "qrlora."
PUBLISHED_SUFFIXES = {"q": ".lora.q.weight", "base_r": ".lora.base_r.weight", "delta_r": ".lora.delta_r.weight"}
UP, DOWN = ".lora.up.weight", ".lora.down.weight"  # ordinary LoRA pairs, also the reference's Q-and-R checkpoints
DOUBLED_OUT = ".to_out.0.to_out.0"  # how the Q-and-R script names its output projections
NATIVE_Q, NATIVE_DELTA, NATIVE_DELTA_UPPER, NATIVE_FINGERPRINT = ".qr.q", ".qr.delta_r", ".qr.delta_r_upper", ".qr.fingerprint"
NATIVE_SCALE = ".qr.scale"  # s = alpha / rank per layer, float64: the stock loaders see tensors only
BASIS_DIGEST = "basis_q_digest"  # compact files: q_digest of the Qs they were saved with
BASIS_ID_KEY = META_PREFIX + "basis_id"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the nodes' precision names
TRAINING_STATE_PREFIX = "train_state."  # a checkpoint's optimizer and RNG state (training/state.py); load_adapter never reads it


# ---------------------------------------------------------------- writing


def atomic_save(tensors: dict, path: str, metadata: dict | None = None, root: str | None = None, replace: bool = True) -> bool:
    """Write a safetensors file so that `path` is either untouched or complete (see atomic_write); whether it was written."""
    data = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(data, path, root=root, replace=replace)


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@contextlib.contextmanager
def _folder(root: str, parts: list, keep: bool = True):
    """A descriptor of the folder root/parts[0]/..., each part opened below the last without following a link.

    What was checked is where files land: a folder swapped for a link
    meanwhile is an OSError (ELOOP), never a write elsewhere. Folders
    missing on the way are made, and removed again if the block fails
    (or when it ends, unless `keep`), so a refused write leaves no empty folders.
    """
    os.makedirs(root, exist_ok=True)  # the checked folder itself (e.g. models/qrlora_bases on first use)
    fds, made = [os.open(root, _FOLDER)], []  # made: (index of the parent's fd, name)
    try:
        for part in parts:
            try:
                os.mkdir(part, dir_fd=fds[-1])
                made.append((len(fds) - 1, part))
            except FileExistsError:
                pass
            fds.append(os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fds[-1]))
        yield fds[-1]
        if not keep:
            _remove_made(fds, made)
    except BaseException:
        _remove_made(fds, made)
        raise
    finally:
        for fd in fds:
            os.close(fd)


def _remove_made(fds: list, made: list) -> None:
    for index, part in reversed(made):
        try:
            os.rmdir(part, dir_fd=fds[index])
        except OSError:  # something else was put there meanwhile: not ours to remove
            break


def _relative_parts(path: str, root: str | None) -> tuple[str, list]:
    """(root, [folders..., file name]) for `path` inside `root` (default: its own folder)."""
    root = root or os.path.dirname(os.path.abspath(path))
    parts = os.path.relpath(os.path.abspath(path), root).split(os.sep)
    if ".." in parts or parts == ["."]:
        raise AdapterError(f"{os.path.basename(path)} would be written outside its folder; choose a plain file name.")
    return root, parts


def atomic_write(data: bytes, path: str, what: str | None = None, root: str | None = None, replace: bool = True) -> bool:
    """Write `data` to `path` so that `path` is either untouched or complete: every file the pack writes goes through here.

    `root` is the checked folder `path` lies in (default: its own folder);
    the folders below it are walked with descriptors, never following a
    link (_folder). The bytes go to a temporary `.partial-*` file in the
    same folder, renamed into place once complete, so a failed write (a
    full disk, a file-size limit, a vanished folder) is an OSError with its
    errno, said in words about `what` (default: the file's name); the
    temporary file and any folders made for it are removed whatever stops
    the write, and any earlier file at `path` is left as it was.

    replace=False never replaces a file already at `path` (returns False
    then, True once written): for files named by their content, where a
    second writer's copy must not pull the first one from under a reader.
    """
    name = what or os.path.basename(path)
    root, parts = _relative_parts(path, root)
    try:
        with _folder(root, parts[:-1]) as folder:
            tmp = f".partial-{secrets.token_hex(8)}{os.path.splitext(path)[1]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return _put_in_place(tmp, parts[-1], folder, replace)
            finally:  # renamed away when written; else what stopped the write left it, or a link placed it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=folder)
    except OSError as e:
        raise AdapterError(f"Could not write {name}: {_write_failure(e)}") from None


def _put_in_place(tmp: str, target: str, folder: int, replace: bool) -> bool:
    """Move the finished `tmp` to `target` in `folder` (a descriptor); without `replace`, never over a file there."""
    if replace:
        os.replace(tmp, target, src_dir_fd=folder, dst_dir_fd=folder)
        return True
    try:
        os.link(tmp, target, src_dir_fd=folder, dst_dir_fd=folder)  # fails where a file is: never replaces
        return True
    except FileExistsError:
        return False
    except OSError as e:  # a file system without hard links (some network and FUSE mounts): check, then rename
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    try:
        os.stat(target, dir_fd=folder, follow_symlinks=False)
        return False
    except FileNotFoundError:
        os.replace(tmp, target, src_dir_fd=folder, dst_dir_fd=folder)
        return True


def probe_write(path: str, root: str | None = None) -> None:
    """Make and remove an empty `path` and the folders it needs: an OSError now where writing it later would fail."""
    root, parts = _relative_parts(path, root)
    with _folder(root, parts[:-1], keep=False) as folder:
        os.close(os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder))
        os.unlink(parts[-1], dir_fd=folder)


def _write_failure(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{e.strerror}; the disk may be full. Free some space and run it again; no partial file was left and earlier files are untouched."
    if e.errno == errno.ENAMETOOLONG:
        return "the file name is too long; choose a shorter file name prefix."
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ELOOP):  # a link where a folder was checked: ENOTDIR or ELOOP
        return "a part of its folder path is a file or a link, not a folder (files are written only into real folders); choose another file name prefix."
    return f"{e.strerror or e}. Check that the folder is writable; no partial file was left and earlier files are untouched."


def _pack_upper(delta_r: torch.Tensor) -> torch.Tensor | None:
    """The entries with column >= row, or None if ΔR is taller than wide or has anything below the diagonal."""
    if delta_r.shape[0] > delta_r.shape[1] or torch.any(torch.tril(delta_r, diagonal=-1) != 0):
        return None
    rows, cols = torch.triu_indices(*delta_r.shape, device=delta_r.device)
    return delta_r[rows, cols]


def unpack_upper(packed: torch.Tensor, rank: int, name: str, source: str) -> torch.Tensor:
    """The r x n matrix whose upper trapezoid `packed` holds, row by row.

    n is solved from r·n - r(r-1)/2 = len(packed) and must be at least r
    (the layer's rank fits its width), which bounds r·n by twice the
    packed values the file really holds: nothing is allocated beyond that.
    """
    count = packed.numel()
    n = (count + rank * (rank - 1) // 2) // rank if rank >= 1 else 0
    if packed.dim() != 1 or rank < 1 or rank > n or rank * n - rank * (rank - 1) // 2 != count:
        raise AdapterError(f"{source}: layer {name} has a packed ΔR of {count} values, which does not fit rank {rank}; the file is damaged, export it again.")
    out = packed.new_zeros(rank, n)
    start = 0
    for row in range(rank):
        out[row, row:] = packed[start:start + n - row]
        start += n - row
    return out


def _in_precision(tensor: torch.Tensor, dtype, name: str, path: str) -> torch.Tensor:
    """`tensor` cast to the file's precision, refused where the cast took a finite value beyond its range: it would be
    written as infinity."""
    if dtype is None:
        return tensor
    out = tensor.to(dtype)
    if not all_finite(out) and all_finite(tensor):
        precision = next((k for k, v in PRECISIONS.items() if v == out.dtype), str(out.dtype))
        advice = "save it in fp32 or bf16, or lower" if out.dtype == torch.float16 else "lower"
        raise AdapterError(f"{os.path.basename(path)}: layer {name} has values beyond what {precision} holds (they would be written as infinity), "
                           f"so nothing was written; {advice} the weights that scaled it up (Block Weights, Merge ΔR).")
    return out


def scale_tensor(scale: float) -> torch.Tensor:
    """A native layer's `.qr.scale`: s = alpha / rank as one float64, for ComfyUI's own loaders, which see tensors only (stock_keys.py)."""
    return torch.tensor(float(scale), dtype=torch.float64)


def native_metadata(adapter: QRLoRA, **extra) -> dict:
    meta = {"format_version": str(FORMAT_VERSION), "rank": str(adapter.rank), "alpha": repr(float(adapter.alpha))}
    meta["shared_basis"] = "1" if adapter.shared_basis else "0"
    facts = {k: v for k, v in adapter.metadata.items() if k not in ("basis_id", BASIS_DIGEST)}
    for key, value in {**facts, **extra}.items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return {META_PREFIX + k: v for k, v in meta.items()}


def save_native(adapter: QRLoRA, path: str, basis_id: str | None = None, dtype=None, extra: tuple[dict, dict] | None = None,
                root: str | None = None) -> None:
    """Native file; with `basis_id`, the compact variant (ΔR only, Q from the shared basis).

    `extra` = (tensors, metadata) stored alongside, e.g. a checkpoint's training state (training/state.py);
    `root`: the checked folder `path` lies in (atomic_write).
    """
    tensors = dict(extra[0]) if extra else {}
    for name, target in adapter.targets.items():
        delta_r = _in_precision(target.delta_r, dtype, name, path)
        packed = _pack_upper(delta_r)
        if packed is None:
            tensors[name + NATIVE_DELTA] = delta_r
        else:
            tensors[name + NATIVE_DELTA_UPPER] = packed
        if basis_id is None:
            tensors[name + NATIVE_Q] = target.q
            tensors[name + NATIVE_SCALE] = scale_tensor(adapter.scale)
        if target.fingerprint is not None:
            tensors[name + NATIVE_FINGERPRINT] = target.fingerprint.to(torch.float32)
    facts = {"basis_id": basis_id, BASIS_DIGEST: q_digest({n: t.q for n, t in adapter.targets.items()})} if basis_id else {}
    atomic_save(tensors, path, {**native_metadata(adapter, **facts), **modelspec(adapter, path, "qr-lora"), **(extra[1] if extra else {})}, root)


def export_lora(adapter: QRLoRA, path: str, dtype=None, root: str | None = None) -> None:
    """An ordinary LoRA with the same weights: up = s·Q, down = ΔR.

    Names under `transformer.` get diffusers/PEFT keys (lora_A/lora_B, no
    alpha, so scale 1 everywhere); others (kohya `lora_unet_...`) get
    lora_up/lora_down with alpha = rank, which is also scale 1.
    """
    tensors = {}
    for name, target in adapter.targets.items():
        up, down = (_in_precision(t, dtype, name, path) for t in target.up_down(adapter.scale))
        if name.startswith("transformer."):
            tensors[name + ".lora_B.weight"], tensors[name + ".lora_A.weight"] = up, down
        else:
            tensors[name + ".lora_up.weight"], tensors[name + ".lora_down.weight"] = up, down
            tensors[name + ".alpha"] = torch.tensor(float(down.shape[0]))
    meta = {"ss_network_module": "networks.lora", META_PREFIX + "exported_from": adapter.source or "merged QR-LoRA"}
    meta.update(modelspec(adapter, path, "lora"))
    atomic_save(tensors, path, meta, root)


# ---------------------------------------------------------------- reading


def read_safetensors(path: str, wanted=None, name: str | None = None) -> tuple[dict, dict]:
    """Tensors and metadata of a file, in memory this process owns, or an AdapterError a person can act on.

    `wanted(header)` names the tensors to read once the header is checked (all by default).
    """
    tensors, metadata, _ = safefile.read(path, name or os.path.basename(path), wanted)
    return tensors, metadata


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite, in any floating dtype a file may hold (float8 has no isfinite on the CPU:
    its values all fit float16, NaN and infinity included)."""
    if not tensor.is_floating_point():
        return True
    if tensor.dtype.itemsize == 1:
        tensor = tensor.to(torch.float16)
    return bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, what: str) -> None:
    if not all_finite(tensor):
        raise AdapterError(f"{what} contains NaN or infinite values; the file is broken (a diverged training?), use another checkpoint.")


FLOAT32_MAX = torch.finfo(torch.float32).max


def delta_bound(q: torch.Tensor, delta_r: torch.Tensor, scale: float) -> float:
    """An upper bound on the largest entry of s·Q·ΔR, from ΔR's norm (Q's columns have unit length), in float64."""
    return abs(scale) * float(torch.linalg.vector_norm(delta_r.to(torch.float64))) * math.sqrt(q.shape[1])


def check_delta(q: torch.Tensor, delta_r: torch.Tensor, scale: float, what: str) -> None:
    """Refuse a layer whose delta s·Q·ΔR could leave float32 (ΔR or alpha near 1e38): it would turn the weight infinite."""
    bound = delta_bound(q, delta_r, scale)
    if not bound < FLOAT32_MAX:
        raise AdapterError(f"{what}: its delta s·Q·ΔR reaches {bound:.3g} (scale {scale:.3g}), beyond any weight a model holds (float32 ends at 3.4e38); "
                           "the file is damaged or its values were made absurd, use another file.")


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    """Q and ΔR as the adapter holds them, whatever precision the file stored (fp16, bf16, fp64, fp8)."""
    return tensor.to(torch.float32)


def _check_target(name: str, q: torch.Tensor, delta_r: torch.Tensor, source: str, rank: int | None = None) -> QRTarget:
    """Validate one layer from its tensors alone. A Q wider than the file's `rank` is a stack of bases
    (a mix that summed its adapters' deltas, or a Q-and-R pair): each `rank` columns of it must be a basis."""
    if q.dim() != 2 or delta_r.dim() != 2 or q.shape[1] != delta_r.shape[0]:
        raise AdapterError(
            f"{source}: layer {name} has Q of shape {clipped(tuple(q.shape))} and ΔR of shape {clipped(tuple(delta_r.shape))}, "
            "which do not fit together (Q must be m x r and ΔR r x n); the file is damaged or not a QR-LoRA."
        )
    if not (q.is_floating_point() and delta_r.is_floating_point()):
        raise AdapterError(f"{source}: layer {name} stores Q as {q.dtype} and ΔR as {delta_r.dtype}, not floating-point numbers; the file is damaged or not a QR-LoRA.")
    if q.shape[1] == 0:
        raise AdapterError(f"{source}: layer {name} has rank 0; such an adapter changes nothing, train or export it with a rank of 1 or more.")
    block = rank or q.shape[1]
    if not rank_fits((q.shape[0], delta_r.shape[1]), min(block, q.shape[1])):
        raise AdapterError(
            f"{source}: layer {name} has rank {min(block, q.shape[1])}, more than its {q.shape[0]} x {delta_r.shape[1]} layer allows; "
            "the file is damaged or not a QR-LoRA."
        )
    check_finite(q, f"{source}: Q of layer {name}")
    check_finite(delta_r, f"{source}: ΔR of layer {name}")
    for start in range(0, q.shape[1], block):
        part = "" if block >= q.shape[1] else f" (columns {start + 1}-{min(start + block, q.shape[1])})"
        check_orthonormal(q[:, start:start + block], f"{source}: Q of layer {name}{part}", "the file is damaged or not a QR-LoRA: export it again.")
    return QRTarget(q=_float32(q), delta_r=_float32(delta_r))


def check_unit_columns(q: torch.Tensor) -> float:
    """How far the longest or shortest column of Q is from unit length (0 for a basis or a stack of bases), at m·k cost."""
    lengths = torch.linalg.vector_norm(q.to(torch.float32), dim=0)
    return float((lengths - 1).abs().max()) if lengths.numel() else 0.0


ORTHONORMAL_PROBES = 8
# The most that rounding excuses in a stored Q, here and in stock_keys.py: fp8-rounded bases of real layers
# (64 to 12288 rows) measure at most 0.05, in both checks; fp8's own eps (0.125, 0.25) would pass a zeroed Q.
Q_ROUNDING_CAP = 0.1


def check_orthonormal(q: torch.Tensor, what: str, advice: str) -> None:
    """Refuse a Q whose columns are not orthonormal (QᵀQ = I), to the precision it is stored in.

    Checked on random probes V: (QV)ᵀ(QV) = Vᵀ(QᵀQ)V equals VᵀV exactly
    when QᵀQ = I, at m·r·8 operations instead of the m·r² of QᵀQ.
    """
    tolerance = min(max(1e-3, 20 * torch.finfo(q.dtype).eps), Q_ROUNDING_CAP)
    generator = torch.Generator().manual_seed(q.shape[1])
    v = torch.randn(q.shape[1], ORTHONORMAL_PROBES, generator=generator, dtype=torch.float64)
    qv = q.to(torch.float64) @ v
    expected = v.T @ v
    error = float(torch.linalg.matrix_norm(qv.T @ qv - expected) / torch.linalg.matrix_norm(expected))
    if not error <= tolerance:
        raise AdapterError(f"{what} is not orthonormal (QᵀQ differs from the identity by {error:.2g}); {advice}")


def _check_fingerprint(fingerprint, name: str, source: str):
    if fingerprint is None:
        return None
    if fingerprint.shape != (SKETCH_SIZE,) or not fingerprint.is_floating_point():
        raise AdapterError(f"{source}: layer {name} has a base fingerprint of shape {clipped(tuple(fingerprint.shape))}, not {SKETCH_SIZE} numbers; the file is damaged, save it again.")
    check_finite(fingerprint, f"{source}: the base fingerprint of layer {name}")
    return fingerprint.to(torch.float32)


def is_q_and_r(keys) -> bool:
    """The reference's Q-and-R checkpoint layout (reference_formats.py): up/down pairs carrying its doubled `to_out.0` names."""
    return any(k.endswith(DOUBLED_OUT + UP) for k in keys)


def detect_format(keys, metadata: dict) -> str:
    """'native', 'compact', 'published', 'q_and_r', 'lora' (an ordinary LoRA) or 'unknown', from the header alone."""
    if META_PREFIX + "format_version" in metadata:
        return "compact" if metadata.get(BASIS_ID_KEY) else "native"
    if any(k.endswith(PUBLISHED_SUFFIXES["q"]) for k in keys):
        return "published"
    if is_q_and_r(keys):
        return "q_and_r"
    if any(k.endswith((".lora_up.weight", ".lora_B.weight", UP)) for k in keys):
        return "lora"
    return "unknown"


def _load_published(tensors: dict, source: str) -> QRLoRA:
    suffix = PUBLISHED_SUFFIXES["q"]
    targets, ranks = {}, set()
    for key in tensors:
        if not key.endswith(suffix):
            continue
        name = key[: -len(suffix)]
        delta_key = name + PUBLISHED_SUFFIXES["delta_r"]
        if delta_key not in tensors:
            raise AdapterError(f"{source}: layer {name} has Q but no ΔR ({delta_key}); the file is incomplete, download it again.")
        targets[name] = _check_target(name, tensors[key], tensors[delta_key], source)
        ranks.add(targets[name].rank)
        check_delta(targets[name].q, targets[name].delta_r, 1.0, f"{source}: layer {name}")
    if len(ranks) > 1:
        raise AdapterError(f"{source}: its layers have different ranks {sorted(ranks)}; a QR-LoRA file has one rank, the file is damaged.")
    rank = ranks.pop()
    return QRLoRA(targets, rank=rank, alpha=float(rank), format="published", source=source)


def _meta_int(metadata: dict, key: str, source: str) -> int:
    try:
        return int(metadata[META_PREFIX + key])
    except (KeyError, ValueError):
        raise AdapterError(f"{source}: its metadata lacks a valid {META_PREFIX + key}; the file is damaged, save or export it again.") from None


def _load_native(tensors: dict, metadata: dict, source: str, basis_loader) -> QRLoRA:
    version = _meta_int(metadata, "format_version", source)
    if version > FORMAT_VERSION:
        raise AdapterError(f"{source} uses QR-LoRA file format version {version}, newer than this pack reads ({FORMAT_VERSION}): update comfyui-qrlora.")
    if version < 1:
        raise AdapterError(f"{source} claims QR-LoRA file format version {version}, which never existed (versions start at 1); the file is damaged, save it again.")
    rank = _meta_int(metadata, "rank", source)
    try:
        alpha = float(metadata.get(META_PREFIX + "alpha", rank))
    except ValueError:
        raise AdapterError(f"{source}: its alpha {clipped(metadata.get(META_PREFIX + 'alpha'))!r} is not a number; the file is damaged.") from None
    except OverflowError:  # no alpha, and a rank beyond float's range to default it to
        raise AdapterError(f"{source}: its rank {clipped(rank)} is not a number a scale can be made of; the file is damaged, save it again.") from None
    if rank < 1 or not 0 < alpha < float("inf"):  # alpha 0 would silently change nothing, a negative one turn every delta around
        raise AdapterError(f"{source}: rank {clipped(rank)} and alpha {alpha} do not make a valid scale (both must be positive); the file is damaged, save it again.")
    basis_id = metadata.get(BASIS_ID_KEY)
    names = {k[: -len(s)] for k in tensors for s in (NATIVE_DELTA, NATIVE_DELTA_UPPER) if k.endswith(s)}
    shared_q = _bound_basis(basis_id, names, metadata, source, basis_loader) if basis_id else {}
    qs = {name: tensors.get(name + NATIVE_Q, shared_q.get(name)) for name in sorted(names)}
    widest = max((q.shape[1] for q in qs.values() if q is not None and q.dim() == 2), default=rank)
    if rank > widest:  # a mix's rank is its first adapter's, which that adapter's layers hold: no save writes a wider one
        raise AdapterError(f"{source}: its rank {clipped(rank)} is more than its widest layer holds ({widest}), so its scale alpha / rank "
                           "would shrink every change to nearly nothing; the file is damaged, save it again.")
    targets = {}
    for name, q in qs.items():
        if q is None:
            raise AdapterError(f"{source}: layer {name} has ΔR but no Q, neither in the file nor in its basis {basis_id}; save the adapter again without 'compact'.")
        if name + NATIVE_DELTA in tensors:
            delta_r = tensors[name + NATIVE_DELTA]
        else:
            delta_r = unpack_upper(tensors[name + NATIVE_DELTA_UPPER], q.shape[1] if q.dim() == 2 else 0, name, source)
        target = _check_target(name, q, delta_r, source, rank)
        check_delta(target.q, target.delta_r, alpha / rank, f"{source}: layer {name}")
        target.fingerprint = _check_fingerprint(tensors.get(name + NATIVE_FINGERPRINT), name, source)
        targets[name] = target
    shared = all(t.rank == rank for t in targets.values())  # from the tensors: what a file says about itself is not checked
    meta = {k[len(META_PREFIX):]: v for k, v in metadata.items() if k.startswith(META_PREFIX)}
    for fact in ("format_version", "rank", "alpha", "shared_basis", BASIS_DIGEST):
        meta.pop(fact, None)
    if basis_id:  # which basis it uses is kept as information; only a compact file's header names basis_id
        meta["basis"] = meta.pop("basis_id")
    kind = "compact" if basis_id else "native"
    return QRLoRA(targets, rank=rank, alpha=alpha, format=kind, metadata=meta, source=source, shared_basis=shared)


def _bound_basis(basis_id: str, names, metadata: dict, source: str, basis_loader) -> dict:
    """The Qs of a compact adapter's basis, only if they are bit for bit the ones it was saved with."""
    stored = metadata.get(META_PREFIX + BASIS_DIGEST)
    if not stored:
        raise AdapterError(
            f"{source} is a compact adapter without the fingerprint of its basis ({META_PREFIX + BASIS_DIGEST}), so it cannot be "
            "checked against the basis file; the file is incomplete: save the adapter again, or save it without 'compact'."
        )
    qs = basis_loader(basis_id, source)
    missing = sorted(names - qs.keys())
    if missing:  # a compact save keeps no Q of its own, so each layer's is in its basis, and the digest covers them all
        raise AdapterError(
            f"{source} is a compact adapter whose basis {basis_id} lacks {len(missing)} of its {len(names)} layers (e.g. {clipped(missing[0])}): "
            "the basis file in models/qrlora_bases is another one; copy the basis file from where the adapter was saved, "
            "or save the adapter again without 'compact'."
        )
    if q_digest({n: qs[n] for n in names}) != stored:
        raise AdapterError(
            f"{source} was saved on another basis than the file {basis_id}.safetensors in models/qrlora_bases now holds "
            "(a basis computed on another machine, or a changed file): copy the basis file from where the adapter was saved, "
            "or save the adapter again without 'compact'."
        )
    return qs


def _needed(kind: str, keys) -> list:
    """The tensors a format's loader reads (the published format's R is not needed)."""
    suffixes = {
        "published": (PUBLISHED_SUFFIXES["q"], PUBLISHED_SUFFIXES["delta_r"]),
        "native": (NATIVE_Q, NATIVE_DELTA, NATIVE_DELTA_UPPER, NATIVE_FINGERPRINT),
        "compact": (NATIVE_Q, NATIVE_DELTA, NATIVE_DELTA_UPPER, NATIVE_FINGERPRINT),
    }.get(kind, ())
    return [k for k in keys if k.endswith(suffixes)] if suffixes else []


def load_adapter(path: str, basis_loader=None, source: str | None = None, q_and_r=None) -> QRLoRA:
    """Any QR-LoRA file (native, compact or published) as a QRLoRA (read_adapter without what the read saw)."""
    return read_adapter(path, basis_loader, source, q_and_r)[0]


def read_adapter(path: str, basis_loader=None, source: str | None = None, q_and_r=None) -> tuple[QRLoRA, safefile.Seen]:
    """(adapter, what the read saw): the adapter parsed from the very bytes whose hash `seen.digest` is.

    `basis_loader(basis_id, source)` returns {name: Q} for compact files;
    `q_and_r(tensors)` turns the reference's Q-and-R checkpoint into an
    adapter (it needs the base model). The format is told from the header,
    so the data of a file of another kind (a checkpoint, an ordinary LoRA)
    is only hashed, never held. A refusal carries what was seen (error.seen).
    """
    source = source or os.path.basename(path)
    kind = "unknown"

    def wanted(header):
        nonlocal kind
        keys = list(header.keys())
        kind = detect_format(keys, header.metadata)
        if kind == "q_and_r":
            if q_and_r is None:
                raise AdapterError(f"{source} is the QR-LoRA reference's Q-and-R checkpoint: load it with Load QR-LoRA and connect the base model to its 'model' input.")
            return keys
        if kind == "lora":
            raise AdapterError(f"{source} is an ordinary LoRA, not a QR-LoRA: load it with the stock 'Load LoRA' node.")
        if kind == "unknown":
            raise AdapterError(f"{source} holds no QR-LoRA layers (no '*.lora.q.weight' or '*.qr.*' tensors): pick a QR-LoRA file.")
        if kind == "compact" and basis_loader is None:
            raise AdapterError(f"{source} is a compact adapter and needs its shared basis file, which nobody told us where to find.")
        return _needed(kind, keys)

    tensors, metadata, seen = safefile.read(path, source, wanted)
    try:
        if kind == "published":
            return _load_published(tensors, source), seen
        if kind == "q_and_r":
            return q_and_r(tensors), seen
        return _load_native(tensors, metadata, source, basis_loader), seen
    except AdapterError as e:
        e.seen = seen
        raise
