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
from .errors import AdapterError
from .fingerprint import digest, sketch
from .formats import atomic_save, read_safetensors
from .metadata import basis_modelspec

BASIS_VERSION = 1  # bump when the decomposition changes what Q it produces


def basis_id(sketches: dict, rank: int) -> str:
    return f"r{rank}-{digest(sketches, rank, BASIS_VERSION)}"


class BasisStore:
    def __init__(self, folder: str):
        self.folder = folder

    def path(self, basis_id: str) -> str:
        if not basis_id or os.sep in basis_id or "/" in basis_id or basis_id.startswith("."):
            raise AdapterError(f"{basis_id!r} is not a valid basis id; the adapter file is damaged.")
        return os.path.join(self.folder, basis_id + ".safetensors")

    def load(self, basis_id: str, source: str = "the adapter") -> dict:
        """name -> Q of a stored basis."""
        path = self.path(basis_id)
        if not os.path.isfile(path):
            raise AdapterError(
                f"{source} is a compact adapter whose shared basis {basis_id} is not in {self.folder}: "
                "copy that basis file there from the machine it was trained on, or save the adapter again without 'compact'."
            )
        tensors, _ = read_safetensors(path)
        return {k[: -len(".q")]: v.to(torch.float32) for k, v in tensors.items() if k.endswith(".q")}

    def save(self, basis_id: str, qs: dict, sketches: dict) -> None:
        tensors = {name + ".q": q.contiguous() for name, q in qs.items()}
        tensors.update({name + ".fingerprint": s for name, s in sketches.items()})
        atomic_save(tensors, self.path(basis_id), {"qrlora.basis_id": basis_id, **basis_modelspec(basis_id, qs)})

    def get_or_build(self, weights: dict, rank: int, method: str = "auto", progress=None, device=None, memory_budget=None) -> tuple[str, dict, dict]:
        """(basis id, name -> Q, name -> sketch) for these base weights, from disk when known.

        `device` and `memory_budget`: where the decomposition runs and how much
        working memory each chunk may take there (see decompose_many)."""
        sketches = {name: sketch(w) for name, w in weights.items()}
        key = basis_id(sketches, rank)
        if os.path.isfile(self.path(key)):
            qs = self.load(key)
            if qs.keys() >= weights.keys():
                if progress is not None:
                    progress(len(weights))
                return key, {n: qs[n] for n in weights}, sketches
        bases = decompose_many(weights, rank, method=method, progress=progress, memory_budget=memory_budget, device=device)
        qs = {name: b.q for name, b in bases.items()}
        self.save(key, qs, sketches)
        return key, qs, sketches
