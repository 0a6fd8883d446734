"""The frozen basis of QR-LoRA: top-r SVD of W, then QR of the scaled core.

Published algorithm (docs/method.md, "The basis"): core = U_r diag(S_r / s) V_r^T, reduced QR
core = Q R, keep r columns of Q and r rows of R, with s = alpha / rank.
We take the QR of the small r x n factor diag(S_r / s) V_r^T instead of
the m x n core (same Q and R, see docs/method.md, "The basis") and make the diagonal of R
positive, so Q is canonical: the same W and rank give the same Q on any
device up to rounding, whatever signs the SVD picked.

Two ways to the top-r subspace:
- "exact": a full SVD in float64 (the reference answer; fine on CPU for
  small layers).
- "subspace": batched block power iteration with oversampling and a
  Rayleigh-Ritz step, mostly in float32, for many same-shaped layers at
  once on a GPU. On decaying spectra it lands far closer to the exact subspace than
  the published float32 SVD does (docs/method.md, "Computing the basis").

On a GPU every step of "subspace" is one batched library call: blocks are
orthonormalized by Cholesky QR on a float64 Gram matrix (Householder QR
and SVD loop over the batch inside the solver libraries, one small launch
sequence per matrix), the Rayleigh-Ritz step solves a small k x k
eigenproblem, and the final QR is that of an r x r block. decompose_many
works through same-shaped weights in chunks sized to a memory budget, so
the float32/float64 copies of a whole model never sit in memory at once.
"""

import contextlib
from dataclasses import dataclass

import torch

from .errors import AdapterError

EXACT_MAX_ELEMENTS = 1024 * 1024  # a float64 SVD of this size takes about a second on a CPU
SUBSPACE_OVERSAMPLE = 64
SUBSPACE_ITERATIONS = 16  # float32
REFINE_ITERATIONS = 2  # float64
MAX_REFINE_ITERATIONS = 24  # more float64 steps while the top-r energy still grows
ENERGY_TOLERANCE = 1e-12  # relative growth of the top-r energy counted as settled (the published float32 SVD falls 1e-11 to 1e-8 short)
FLAT_RATIO = 0.95  # smallest / r-th singular value in the block above which the iteration cannot separate the top r
PROBE_SEED = 0x5152  # the starting block's seed ("QR")
CPU_CHUNK_BUDGET = 2 * 1024**3  # bytes of working copies per chunk on the CPU
GPU_CHUNK_FRACTION = 0.5  # of the free device memory ...
GPU_CHUNK_BUDGET = 16 * 1024**3  # ... but never more than this


@dataclass
class Basis:
    """Frozen factors of one target: W ~ W_res + scale * q @ r."""

    q: torch.Tensor  # (m, rank), orthonormal columns
    r: torch.Tensor  # (rank, n), upper triangular in its leading block
    scale: float

    @property
    def rank(self) -> int:
        return self.q.shape[1]


def is_matrix_weight(shape) -> bool:
    """What QR-LoRA targets: a linear weight (m, n) or a 1x1 convolution (m, n, 1, 1)."""
    return len(shape) == 2 or (len(shape) == 4 and shape[2] * shape[3] == 1)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Linear weights as they are; 1x1 convolutions as their (out, in) matrix."""
    if not is_matrix_weight(weight.shape):
        raise AdapterError(
            f"QR-LoRA targets linear layers and 1x1 convolutions, not weights of shape {tuple(weight.shape)}: "
            "leave such layers out with the target pattern."
        )
    return weight if weight.dim() == 2 else weight.reshape(weight.shape[0], weight.shape[1])


def max_rank(weight_shape) -> int:
    """The largest rank a layer of this shape holds: min(m, n)."""
    return min(weight_shape[0], int(torch.Size(weight_shape[1:]).numel()))


def rank_fits(weight_shape, rank: int) -> bool:
    return 1 <= rank <= max_rank(weight_shape)


def check_rank(shapes: dict, rank: int, advice: str = "lower the rank to {limit} or less.", source: str = "") -> None:
    """Refuse a rank some layer cannot hold, naming the tightest one; `advice` ({limit}: its largest rank) says what to do.

    `shapes` maps layer names to weight shapes; `source`, if given, opens the sentence (a file's name).
    """
    opening = f"{source}: rank" if source else "Rank"
    if rank < 1:
        raise AdapterError(f"{opening} {rank} is not a rank a QR-LoRA can have: use a rank of 1 or more.")
    too_small = {n: s for n, s in shapes.items() if not rank_fits(s, rank)}
    if too_small:
        name, shape = min(too_small.items(), key=lambda item: max_rank(item[1]))
        limit = max_rank(shape)
        layer = f"layer {name}" if name else "the layer"
        raise AdapterError(f"{opening} {rank} is larger than {layer} allows ({tuple(shape)}, at most rank {limit}): " + advice.format(limit=limit))


def _qr_of_core(u: torch.Tensor, small: torch.Tensor):
    """Q, R of core = u @ small, where small = diag(S_r / s) V_r^T is (..., r, n) with r <= n.

    For a wide matrix, QR is decided by its leading r x r block: small[:, :r] = Q' R1
    gives small = Q' (Q'^T small). That block's QR runs on the CPU in float64
    (tiny, and the same LAPACK answer on every device); R's diagonal is made positive.
    """
    rank = small.shape[-2]
    q_small, r_lead = torch.linalg.qr(small[..., :rank].to("cpu", torch.float64))
    signs = torch.sign(torch.diagonal(r_lead, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    q_small = (q_small * signs.unsqueeze(-2)).to(device=small.device, dtype=small.dtype)
    return u @ q_small, q_small.mT @ small


def _exact_top(w: torch.Tensor, rank: int, scale: float):
    """(U_r, diag(S_r / s) V_r^T) from a full float64 SVD."""
    u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
    return u[..., :rank], (s[..., :rank] / scale).unsqueeze(-1) * vh[..., :rank, :]


@contextlib.contextmanager
def _ieee_float32():
    """float32 products in true float32: TF32 (10-bit mantissa) would stall the iteration near 1e-3."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _orthonormalize(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns with the span of x's (..., m, k): Cholesky QR on a float64 Gram matrix.

    x R^-1 loses orthogonality like eps(x.dtype) * cond(x); one product of
    an orthonormal block with a trained weight gives cond(x) ~ sigma_1 /
    sigma_k (~1e2), which float32 and float64 both absorb. A block that
    is (nearly) rank deficient, from a zero or low-rank weight, is caught by
    its Cholesky factor's diagonal and falls back to Householder QR.
    """
    x64 = x.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(x64.mT @ x64)
    diag = torch.diagonal(chol, dim1=-2, dim2=-1)
    limit = 1e-5 if x.dtype == torch.float32 else 1e-7  # smallest / largest pivot: about 1 / cond(x)
    if bool(info.any()) or bool((diag.amin(-1) <= limit * diag.amax(-1)).any()):
        return torch.linalg.qr(x)[0]
    return torch.linalg.solve_triangular(chol.mT.to(x.dtype), x, upper=True, left=False)


def _power_steps(w: torch.Tensor, x: torch.Tensor, steps: int) -> torch.Tensor:
    wt = w.mT
    for _ in range(steps):
        y = _orthonormalize(wt @ x)
        x = _orthonormalize(w @ y)
    return x


def _rayleigh_ritz(w64: torch.Tensor, x: torch.Tensor, rank: int, scale: float):
    """(U_r, diag(S_r / s) V_r^T, Ritz values) of w restricted to span(x), x orthonormal, all float64.

    The k x k problem (x^T w)(x^T w)^T is solved by a symmetric eigensolver;
    in float64 its eigenvectors are accurate to ~1e-12 even when singular
    values r and r+1 are close. The Ritz values (squared singular values
    in the block, ascending) tell how far the iteration got.
    """
    bt = w64.mT @ x  # (..., n, k) = (x^T w)^T
    values, vectors = torch.linalg.eigh(bt.mT @ bt)  # ascending eigenvalues
    top = vectors[..., -rank:].flip(-1)  # (..., k, r), largest first
    return x @ top, (bt @ top).mT / scale, values


def _svd_seeded_top(w64: torch.Tensor, rank: int, width: int, scale: float):
    """For spectra the iteration cannot separate: the published float32 SVD's top `width` left vectors,
    refined by one float64 power step and Rayleigh-Ritz (so never less energy than that SVD's top r)."""
    x = torch.linalg.svd(w64.to(torch.float32), full_matrices=False)[0][..., :width].to(torch.float64)
    x = _power_steps(w64, _orthonormalize(x), 1)
    u, small, _ = _rayleigh_ritz(w64, x, rank, scale)
    return u, small


def _probe(w: torch.Tensor, width: int, generator=None) -> torch.Tensor:
    """The starting block: one seeded (n, width) draw shared by every matrix of the stack.

    Seeded (never the global RNG) and independent of how the weights are
    chunked, so the same weights give the same Q on every run.
    """
    if generator is None:
        generator = torch.Generator(device=w.device).manual_seed(PROBE_SEED)
    probe = torch.randn(w.shape[-1], width, device=w.device, dtype=torch.float32, generator=generator)
    return probe.expand(*w.shape[:-2], *probe.shape)


def _subspace_top(w: torch.Tensor, rank: int, scale: float, generator=None):
    """Block power iteration on a stack (b, m, n), then Rayleigh-Ritz until the top-r energy settles.

    The bulk of the iterations run in float32; float32 products alone
    stall near 1e-3 when singular values r and r+1 are close, so the
    refinement and the Rayleigh-Ritz steps run in float64 (cheap: each is
    two products with an n x (r + oversample) block). Refinement goes on
    while the energy the top r Ritz vectors capture still grows (at most
    MAX_REFINE_ITERATIONS). A matrix whose spectrum is too flat for the
    iteration to separate its top r (the block's smallest Ritz value close
    to its r-th) or that has not settled gets the published float32 SVD's
    subspace, refined in float64, instead, so the basis never captures less energy than the published float32 SVD's.
    """
    m, n = w.shape[-2:]
    width = min(rank + SUBSPACE_OVERSAMPLE, m, n)
    with _ieee_float32():
        w32 = w if w.dtype == torch.float32 else w.to(torch.float32)
        x = _orthonormalize(w32 @ _probe(w32, width, generator))
        x = _power_steps(w32, x, SUBSPACE_ITERATIONS)
        del w32
    w64 = w.to(torch.float64)
    x = _power_steps(w64, x.to(torch.float64), REFINE_ITERATIONS)
    u, small, values = _rayleigh_ritz(w64, x, rank, scale)
    energy = values[..., -rank:].sum(-1)
    # too flat to separate: the block's smallest Ritz value is close to its r-th
    hard = values[..., 0] > FLAT_RATIO**2 * values[..., -rank] if width > rank else torch.zeros_like(energy, dtype=torch.bool)
    settled = torch.zeros_like(hard) if width > rank else torch.ones_like(hard)
    growth = None
    for left in range(MAX_REFINE_ITERATIONS, 0, -1):
        if bool((settled | hard).all()):
            break
        x = _power_steps(w64, x, 1)
        u, small, values = _rayleigh_ritz(w64, x, rank, scale)
        before, energy = energy, values[..., -rank:].sum(-1)
        growth, last = (energy - before).clamp(min=0), growth
        settled = settled | (growth <= ENERGY_TOLERANCE * energy)
        if last is not None:  # growth shrinks geometrically; would it settle in the iterations left?
            rate = (growth / last.clamp(min=1e-300)).clamp(max=1.0)
            needed = torch.log(ENERGY_TOLERANCE * energy / growth.clamp(min=1e-300)) / torch.log(rate.clamp(min=1e-300, max=1 - 1e-12))
            hard = hard | (~settled & (needed > left - 1))
    hard = hard | ~settled
    for i in hard.reshape(-1).nonzero().flatten().tolist():
        index = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), hard.shape))
        u[index], small[index] = _svd_seeded_top(w64[index], rank, width, scale)
    return u, small


def _pick_method(weight: torch.Tensor, method: str) -> str:
    if method != "auto":
        return method
    if weight.device.type == "cpu" and weight.shape[-2] * weight.shape[-1] <= EXACT_MAX_ELEMENTS:
        return "exact"
    return "subspace"


def _decompose_stack(w: torch.Tensor, rank: int, scale: float, method: str, generator=None):
    if method == "exact":
        u, small = _exact_top(w, rank, scale)
    elif method == "subspace":
        u, small = _subspace_top(w, rank, scale, generator)
    else:
        raise AdapterError(f"{method!r} is not a decomposition method: use 'auto', 'exact' or 'subspace'.")
    return _qr_of_core(u, small)


def decompose(weight: torch.Tensor, rank: int, alpha: float | None = None, method: str = "auto") -> Basis:
    """The published decomposition of one weight (alpha defaults to rank: s = 1)."""
    w = as_matrix(weight)
    check_rank({"": w.shape}, rank)
    scale = (alpha if alpha is not None else rank) / rank
    q, r = _decompose_stack(w, rank, scale, _pick_method(w, method))
    return Basis(q.to(torch.float32), r.to(torch.float32), scale)


def chunk_budget(device: torch.device) -> int:
    """Bytes of working copies one batched call may hold on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(free * GPU_CHUNK_FRACTION, GPU_CHUNK_BUDGET))
    return CPU_CHUNK_BUDGET


def working_bytes(shape, dtype: torch.dtype, rank: int) -> int:
    """About what decomposing one (m, n) weight holds at its peak: the stacked
    input, its float64 copy, room for as much again (the float32 copy, or the
    exact SVD's float64 factors), and the iteration's blocks."""
    m, n = shape
    item = torch.empty((), dtype=dtype).element_size()
    return m * n * (item + 16) + 8 * (m + n) * min(rank + SUBSPACE_OVERSAMPLE, m, n) * 8


@torch.no_grad()  # weights that require grad would otherwise keep every chunk's working copies alive
def decompose_many(
    weights: dict, rank: int, alpha: float | None = None, method: str = "auto", progress=None, memory_budget: int | None = None,
    device: torch.device | None = None,
) -> dict:
    """Decompose many weights, batching same-shaped ones into chunked calls.

    `weights` maps a name to a tensor; returns name -> Basis (on the weights'
    device). Same-shaped weights are stacked a chunk at a time, each chunk
    holding at most `memory_budget` bytes of working copies (default: half
    the free GPU memory up to 16 GiB, or 2 GiB on the CPU), and at least one
    weight. `device`, if given, is where the chunks are decomposed (each
    chunk is copied there, so weights may live elsewhere, e.g. in host
    memory); the bases come back on it. `progress`, if given, is called
    with the number of weights just finished.
    """
    scale = (alpha if alpha is not None else rank) / rank
    groups: dict[tuple, list[str]] = {}
    matrices = {name: as_matrix(weight) for name, weight in weights.items()}
    check_rank({name: w.shape for name, w in matrices.items()}, rank)
    for name, w in matrices.items():
        groups.setdefault((tuple(w.shape), w.device, w.dtype), []).append(name)
    out = {}
    for (shape, device_of, dtype), names in groups.items():
        where = torch.device(device) if device is not None else device_of
        budget = memory_budget if memory_budget is not None else chunk_budget(where)
        size = max(1, budget // working_bytes(shape, dtype, rank))
        for start in range(0, len(names), size):
            chunk = names[start : start + size]
            stack = torch.stack([matrices[n].to(where) for n in chunk])
            q, r = _decompose_stack(stack, rank, scale, _pick_method(stack, method))
            del stack
            for i, name in enumerate(chunk):
                out[name] = Basis(q[i].to(torch.float32).contiguous(), r[i].to(torch.float32).contiguous(), scale)
            if progress is not None:
                progress(len(chunk))
    return out


def _orthonormal64(q: torch.Tensor) -> torch.Tensor:
    """q's columns re-orthonormalized in float64 (a float32 Q is orthonormal only to ~1e-7)."""
    q = q.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(q.mT @ q)
    if bool(info.any()):
        return torch.linalg.qr(q)[0]
    return torch.linalg.solve_triangular(chol.mT, q, upper=True, left=False)


def subspace_error(qa: torch.Tensor, qb: torch.Tensor) -> float:
    """sin of the largest principal angle between the column spaces of qa and qb.

    Both are re-orthonormalized in float64 first: measured on the stored
    float32 columns directly, rounding alone reads as ~1e-4 (sin θ ~ sqrt(2ε)).
    """
    if qa.shape != qb.shape:
        return 1.0
    cos = torch.linalg.svdvals(_orthonormal64(qa).mT @ _orthonormal64(qb))
    smallest = float(cos.min().clamp(max=1.0))
    return (1.0 - smallest * smallest) ** 0.5
