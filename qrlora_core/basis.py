"""Shared bases on disk: one file of Qs per (base model, rank).

Two users of one mechanism: compact adapters store ΔR only and name the
basis they were trained on, and training looks the basis up here before
decomposing, so a second run on the same base costs a file load. A basis
is keyed by the base weights' sketches (fingerprint.py) and the rank; Q
does not depend on alpha (scaling the core leaves its column space and
its QR's Q unchanged).
"""

import os

import torch

from .decompose import decompose_many
from .errors import AdapterError, clipped
from .fingerprint import digest, q_digest, sketch
from . import safefile
from .formats import BASIS_ID_KEY, atomic_save, check_finite, check_orthonormal
from .metadata import basis_modelspec

MAX_ID = 200  # characters; ids are made as r<rank>-<16 hex>, and a file name holds at most 255 bytes
BASIS_VERSION = 1  # bump when the decomposition changes what Q it produces


def basis_id(rank: int, *, sketches: dict | None = None, qs: dict | None = None) -> str:
    """The id (and file name) of a basis; the one place ids are made (docs/formats.md, "Basis files").

    From the base weights' `sketches`: what training computes before it
    decomposes, so the next run on the same base and rank finds the file
    (`r<rank>-<16 hex>`). From the `qs` themselves, for a compact save
    whose Qs no stored basis holds: the start of their exact digest
    (`r<rank>-q<16 hex>`), an id no other Q can share. Give one of the two.
    """
    if (sketches is None) == (qs is None):
        raise TypeError("basis_id takes either the base weights' sketches or the Qs")
    if qs is not None:
        return f"r{rank}-q{q_digest(qs)[:16]}"
    return f"r{rank}-{digest(sketches, rank, BASIS_VERSION)}"


def _checked_q(q: torch.Tensor, what: str) -> torch.Tensor:
    if q.dim() != 2 or not q.is_floating_point() or not 1 <= q.shape[1] <= q.shape[0]:
        raise AdapterError(f"{what} of shape {tuple(q.shape)} is not a basis (m x r, r ≤ m); the basis file is damaged, copy it again.")
    check_finite(q, what)
    check_orthonormal(q, what, "the basis file is damaged or not a basis: copy it again from where the adapter was saved.")
    return q.to(torch.float32)


class BasisStore:
    def __init__(self, folder: str):
        self.folder = folder

    def path(self, basis_id: str, source: str = "the adapter") -> str:
        """Where the basis lives; `source`, the file that named the id, is what a bad id's message blames."""
        if not basis_id or len(basis_id) > MAX_ID or os.sep in basis_id or "/" in basis_id or basis_id.startswith("."):
            raise AdapterError(f"{source} names {clipped(basis_id)!r} as its basis, which is not a valid basis id; the file is damaged, save or download it again.")
        return os.path.join(self.folder, basis_id + ".safetensors")

    def load(self, basis_id: str, source: str = "the adapter") -> dict:
        """name -> Q of a stored basis, each checked orthonormal."""
        return self.read(basis_id, source)[0]

    def read(self, basis_id: str, source: str = "the adapter") -> tuple[dict, safefile.Seen]:
        """(load's Qs, what the read saw: the basis file's identity is that of the bytes the Qs came from)."""
        path = self.path(basis_id, source)
        if not os.path.isfile(path):
            raise AdapterError(
                f"{source} is a compact adapter whose shared basis {basis_id} is not in models/{os.path.basename(self.folder)}: "
                "copy that basis file there from the machine it was trained on, or save the adapter again without 'compact'."
            )
        file = f"{basis_id}.safetensors (the basis of {source})"
        tensors, _, seen = safefile.read(path, file, lambda header: [k for k in header.keys() if k.endswith(".q")])
        try:
            return {key[: -len(".q")]: _checked_q(q, f"{file}: {key}") for key, q in tensors.items()}, seen
        except AdapterError as e:
            e.seen = seen
            raise

    def holds(self, basis_id: str, qs: dict) -> bool:
        """Whether the stored basis `basis_id` has exactly these Qs (see fingerprint.q_digest)."""
        if not os.path.isfile(self.path(basis_id)):
            return False
        try:
            stored = self.load(basis_id)
        except AdapterError:
            return False
        return qs.keys() <= stored.keys() and q_digest({n: stored[n] for n in qs}) == q_digest(qs)

    def keep(self, qs: dict, rank: int, sketches: dict, known: str | None = None) -> str:
        """The id of a stored basis holding exactly these Qs, writing one if none does (Save QR-LoRA's compact files).

        `known`, the basis the adapter was trained on, is reused when its
        file holds these very Qs; otherwise (a basis computed elsewhere, or
        none) the Qs are stored under their content id.
        """
        if known and self.holds(known, qs):
            return known
        key = basis_id(rank, qs=qs)
        if not self.holds(key, qs) and not self.save(key, qs, sketches, replace=False) and not self.holds(key, qs):
            self.save(key, qs, sketches)  # a damaged file under the content id: replaced (a concurrent save's is left)
        return key

    def save(self, basis_id: str, qs: dict, sketches: dict, replace: bool = True) -> bool:
        """Write the basis file; with replace=False an existing one stays (returns whether this wrote it)."""
        tensors = {name + ".q": q.contiguous() for name, q in qs.items()}
        tensors.update({name + ".fingerprint": s for name, s in sketches.items()})
        return atomic_save(tensors, self.path(basis_id), {BASIS_ID_KEY: basis_id, **basis_modelspec(basis_id, qs)}, replace=replace)

    def get_or_build(self, weights: dict, rank: int, method: str = "auto", progress=None, device=None, memory_budget=None) -> tuple[str, dict, dict]:
        """(basis id, name -> Q, name -> sketch) for these base weights, from disk when known.

        `device` and `memory_budget`: where the decomposition runs and how much
        working memory each chunk may take there (see decompose_many)."""
        sketches = {name: sketch(w) for name, w in weights.items()}
        key = basis_id(rank, sketches=sketches)
        if os.path.isfile(self.path(key)):
            qs = self.load(key)
            if qs.keys() >= weights.keys():
                if progress is not None:
                    progress(len(weights))
                return key, {n: qs[n] for n in weights}, sketches
        bases = decompose_many(weights, rank, method=method, progress=progress, memory_budget=memory_budget, device=device)
        qs = {name: b.q for name, b in bases.items()}
        if not self.save(key, qs, sketches, replace=False):  # another run on this base and rank wrote it meanwhile:
            stored = self.load(key)  # train on its Qs (the id's file), and leave it in place for whoever reads it now
            if stored.keys() >= weights.keys():
                return key, {n: stored[n] for n in weights}, sketches
            self.save(key, qs, sketches)
        return key, qs, sketches
