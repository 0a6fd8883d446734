"""A small, cheap sketch of a base weight, to tell whether two weights are the same.

sketch(W) = G · W · v / sqrt(m n) for fixed pseudo-random G (16 x m) and
v (n): one matrix-vector product, so it costs a read of W. Equal weights
give equal sketches up to rounding; another model's weights give a
different one. Adapters store it per layer so a base mismatch is detected,
and the basis store keys its files by it.
"""

import functools
import hashlib

import torch

SKETCH_SIZE = 16
MATCH_TOLERANCE = 0.1  # relative; fp8 copies of the same weights differ by up to ~6% (e5m2), another model by ~140%


@functools.lru_cache(maxsize=64)
def _probes(m: int, n: int):
    generator = torch.Generator().manual_seed(1_000_003 * m + n)
    return torch.randn(SKETCH_SIZE, m, generator=generator), torch.randn(n, generator=generator)


@torch.no_grad()  # a float32 copy of the weight must not stay alive in an autograd graph
def sketch(weight: torch.Tensor) -> torch.Tensor:
    w = weight.reshape(weight.shape[0], -1)
    m, n = w.shape
    g, v = _probes(m, n)
    wv = w.to(torch.float32) @ v.to(w.device)
    return (g.to(w.device) @ wv).cpu() / (m * n) ** 0.5


def same_weight(a: torch.Tensor, b: torch.Tensor, tolerance: float = MATCH_TOLERANCE) -> bool:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return bool(torch.linalg.vector_norm(a - b) <= tolerance * torch.linalg.vector_norm(a).clamp(min=1e-12))


def digest(sketches: dict, *extra) -> str:
    """A short id for a whole set of layers (sketches rounded to 4 significant digits)."""
    h = hashlib.sha256(repr(extra).encode())
    for name in sorted(sketches):
        h.update(name.encode())
        h.update(" ".join(f"{x:.4g}" for x in sketches[name].tolist()).encode())
    return h.hexdigest()[:16]


def q_digest(qs: dict) -> str:
    """The exact identity of a set of bases (name -> Q), over their float32 bits.

    A compact adapter stores it when written, so it is applied only with
    the very Q it was made on: another machine's basis for the same base
    gets the same basis id (ids come from rounded sketches) but another Q.
    """
    h = hashlib.sha256()
    for name in sorted(qs):
        q = qs[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(q.shape)};".encode())
        h.update(q.numpy().tobytes())
    return h.hexdigest()
