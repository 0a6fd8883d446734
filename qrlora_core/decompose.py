"""The frozen basis of QR-LoRA: top-r SVD of W, then QR of the scaled core.

Published algorithm (METHOD.md): core = U_r diag(S_r / s) V_r^T, reduced QR
core = Q R, keep r columns of Q and r rows of R, with s = alpha / rank.
We take the QR of the small r x n factor diag(S_r / s) V_r^T instead of
the m x n core (same Q and R, see METHOD.md) and make the diagonal of R
positive, so Q is canonical: the same W and rank give the same Q on any
device up to rounding, whatever signs the SVD picked.

Two ways to the top-r subspace:
- "exact": a full SVD in float64 (the reference answer; fine on CPU for
  small layers).
- "subspace": batched block power iteration with oversampling and a
  Rayleigh-Ritz step, mostly in float32, for many same-shaped layers at
  once on a GPU. On decaying spectra it lands far closer to the exact subspace than
  the published float32 SVD does (METHOD.md's anchors).
"""

from dataclasses import dataclass

import torch

EXACT_MAX_ELEMENTS = 1024 * 1024  # a float64 SVD of this size takes about a second on a CPU
SUBSPACE_OVERSAMPLE = 64
SUBSPACE_ITERATIONS = 12  # float32
REFINE_ITERATIONS = 2  # float64


@dataclass
class Basis:
    """Frozen factors of one target: W ~ W_res + scale * q @ r."""

    q: torch.Tensor  # (m, rank), orthonormal columns
    r: torch.Tensor  # (rank, n), upper triangular in its leading block
    scale: float

    @property
    def rank(self) -> int:
        return self.q.shape[1]


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Linear weights as they are; 1x1 convolutions as their (out, in) matrix."""
    if weight.dim() == 2:
        return weight
    if weight.dim() == 4 and weight.shape[2] * weight.shape[3] == 1:
        return weight.reshape(weight.shape[0], weight.shape[1])
    raise ValueError(f"QR-LoRA targets linear layers and 1x1 convolutions, not weights of shape {tuple(weight.shape)}")


def max_rank(weight_shape) -> int:
    return min(weight_shape[0], int(torch.Size(weight_shape[1:]).numel()))


def _qr_of_core(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, scale: float):
    """Q, R of core = u diag(s/scale) vh from the QR of the small factor."""
    small = (s / scale).unsqueeze(-1) * vh  # (..., r, n)
    q_small, r = torch.linalg.qr(small, mode="reduced")  # (..., r, r), (..., r, r?)
    # For r <= n, mode="reduced" gives q_small (r, r) and r (r, n).
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    q_small = q_small * signs.unsqueeze(-2)
    r = r * signs.unsqueeze(-1)
    return u @ q_small, r


def _exact_top(w: torch.Tensor, rank: int):
    u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
    return u[..., :rank], s[..., :rank], vh[..., :rank, :]


def _power_steps(w: torch.Tensor, x: torch.Tensor, steps: int) -> torch.Tensor:
    wt = w.transpose(-2, -1)
    for _ in range(steps):
        y, _ = torch.linalg.qr(wt @ x)
        x, _ = torch.linalg.qr(w @ y)
    return x


def _subspace_top(w: torch.Tensor, rank: int, generator=None):
    """Block power iteration on a stack (b, m, n), then Rayleigh-Ritz.

    The bulk of the iterations run in float32; float32 products alone
    stall near 1e-3 when singular values r and r+1 are close, so the last
    REFINE_ITERATIONS and the Rayleigh-Ritz step run in float64 (cheap:
    each is two products with an n x (r + oversample) block).
    """
    w32 = w if w.dtype == torch.float32 else w.to(torch.float32)
    m, n = w.shape[-2:]
    width = min(rank + SUBSPACE_OVERSAMPLE, m, n)
    probe = torch.randn(*w.shape[:-2], n, width, device=w.device, dtype=torch.float32, generator=generator)
    x, _ = torch.linalg.qr(w32 @ probe)
    x = _power_steps(w32, x, SUBSPACE_ITERATIONS)
    del w32
    w64 = w.to(torch.float64)
    x = _power_steps(w64, x.to(torch.float64), REFINE_ITERATIONS)
    uu, s, vh = torch.linalg.svd(x.transpose(-2, -1) @ w64, full_matrices=False)
    u = x @ uu
    return u[..., :rank], s[..., :rank], vh[..., :rank, :]


def _pick_method(weight: torch.Tensor, method: str) -> str:
    if method != "auto":
        return method
    if weight.device.type == "cpu" and weight.shape[-2] * weight.shape[-1] <= EXACT_MAX_ELEMENTS:
        return "exact"
    return "subspace"


def _decompose_stack(w: torch.Tensor, rank: int, scale: float, method: str, generator=None):
    if method == "exact":
        u, s, vh = _exact_top(w, rank)
    elif method == "subspace":
        u, s, vh = _subspace_top(w, rank, generator)
    else:
        raise ValueError(f"unknown decomposition method {method!r}")
    return _qr_of_core(u, s, vh, scale)


def check_rank(weight_shape, rank: int, name: str = "layer") -> None:
    limit = max_rank(weight_shape)
    if rank < 1 or rank > limit:
        raise ValueError(f"rank {rank} does not fit {name} of shape {tuple(weight_shape)}: use a rank from 1 to {limit}")


def decompose(weight: torch.Tensor, rank: int, alpha: float | None = None, method: str = "auto") -> Basis:
    """The published decomposition of one weight (alpha defaults to rank: s = 1)."""
    w = as_matrix(weight)
    check_rank(w.shape, rank)
    scale = (alpha if alpha is not None else rank) / rank
    q, r = _decompose_stack(w, rank, scale, _pick_method(w, method))
    return Basis(q.to(torch.float32), r.to(torch.float32), scale)


def decompose_many(weights: dict, rank: int, alpha: float | None = None, method: str = "auto", progress=None) -> dict:
    """Decompose many weights, batching same-shaped ones into one call.

    `weights` maps a name to a tensor; returns name -> Basis. `progress`, if
    given, is called with the number of weights just finished.
    """
    scale = (alpha if alpha is not None else rank) / rank
    groups: dict[tuple, list[str]] = {}
    for name, weight in weights.items():
        w = as_matrix(weight)
        check_rank(w.shape, rank, name)
        groups.setdefault((tuple(w.shape), w.device, w.dtype), []).append(name)
    out = {}
    for (_shape, _device, _dtype), names in groups.items():
        stack = torch.stack([as_matrix(weights[n]) for n in names])
        q, r = _decompose_stack(stack, rank, scale, _pick_method(stack, method))
        for i, name in enumerate(names):
            out[name] = Basis(q[i].to(torch.float32).contiguous(), r[i].to(torch.float32).contiguous(), scale)
        if progress is not None:
            progress(len(names))
    return out


def subspace_error(qa: torch.Tensor, qb: torch.Tensor) -> float:
    """sin of the largest principal angle between the column spaces of qa and qb."""
    if qa.shape != qb.shape:
        return 1.0
    cos = torch.linalg.svdvals(qa.to(torch.float64).T @ qb.to(torch.float64))
    smallest = float(cos.min().clamp(max=1.0))
    return (1.0 - smallest * smallest) ** 0.5
