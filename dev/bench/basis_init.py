"""Section 1: the basis for every FLUX.1-dev target, published algorithm vs ours, and the on-disk cache.

Weights: W = U diag(k^-p) V^T in bf16, p = 0.5 and 1, one per published
target. U and V are row- and column-permuted, sign-flipped copies of one
random orthonormal matrix per dimension (one QR each, so building 342 of
them costs only gathers and one product per weight); any orthonormal U, V
give exactly this spectrum.

- published: full float32 SVD + QR of the m x n core, one matrix at a
  time, as the reference implementation does. Timed on one matrix per
  shape and p, extrapolated to all targets by shape counts.
- ours: decompose_many(method="subspace") on all targets at once.
- accuracy: sin of the largest principal angle to the exact top-r
  subspace of the bf16 weight, from a float64 eigendecomposition of its
  Gram matrix, on two matrices per shape and p.
- cache: BasisStore.get_or_build twice on the same weights (build+save, then load).
"""

import os
import tempfile

import torch

from devkit import host
from devkit.spectra import SPECTRA, captured_energy

from . import legacy_decompose
from .flux import decaying_weights
from .common import Timer, free_cache, gib, peak_bytes, reset_peak, timed


def _orthonormal(rows: int, cols: int, device, generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, device=device, dtype=torch.float32, generator=generator))[0]


def make_weights(shapes: dict, power: float, device, seed: int) -> dict:
    return dict(decaying_weights(shapes, power, device, seed))


def exact_top(w: torch.Tensor, rank: int) -> torch.Tensor:
    """Left top-r singular subspace of w (as stored), from a float64 eigendecomposition of its Gram matrix."""
    w64 = w.to(torch.float64)
    m, n = w64.shape
    if m <= n:
        return torch.linalg.eigh(w64 @ w64.T)[1][:, -rank:]
    v = torch.linalg.eigh(w64.T @ w64)[1][:, -rank:]
    return torch.linalg.qr(w64 @ v)[0]


def published(w: torch.Tensor, rank: int, scale: float = 1.0):
    """The reference implementation's init: full float32 SVD, then QR of the m x n core."""
    u, s, vh = torch.linalg.svd(w.to(torch.float32), full_matrices=False)
    core = (u[:, :rank] * (s[:rank] / scale)) @ vh[:rank]
    q, r = torch.linalg.qr(core)
    return q[:, :rank], r[:rank]


def _by_shape(shapes: dict) -> dict:
    groups = {}
    for name, shape in shapes.items():
        groups.setdefault(shape, []).append(name)
    return groups


def _phases(decompose_mod, stack: torch.Tensor, rank: int, device) -> dict:
    """Seconds of each stage of our method on one stack (diagnostic)."""
    d = decompose_mod
    out = {}
    m, n = stack.shape[-2:]
    width = min(rank + d.SUBSPACE_OVERSAMPLE, m, n)
    with Timer(device) as t:
        with d._ieee_float32():
            w32 = stack.to(torch.float32)
            x = d._orthonormalize(w32 @ torch.randn(stack.shape[0], n, width, device=device))
            x = d._power_steps(w32, x, d.SUBSPACE_ITERATIONS)
            del w32
    out["float32_iterations_s"] = t.seconds
    with Timer(device) as t:
        w64 = stack.to(torch.float64)
        x = d._power_steps(w64, x.to(torch.float64), d.REFINE_ITERATIONS)
    out["float64_refinement_s"] = t.seconds
    with Timer(device) as t:
        u, small, _ = d._rayleigh_ritz(w64, x, rank, 1.0)
    out["rayleigh_ritz_s"] = t.seconds
    with Timer(device) as t:
        d._qr_of_core(u, small)
    out["core_qr_s"] = t.seconds
    bt = w64.mT @ x
    gram = bt.mT @ bt
    del w64, bt
    _, out["eigh_device_s"] = timed(device, torch.linalg.eigh, gram)
    _, out["eigh_cpu_s"] = timed(device, lambda: torch.linalg.eigh(gram.cpu()))
    if device.type == "cuda":
        try:
            before = torch.backends.cuda.preferred_linalg_library()
            torch.backends.cuda.preferred_linalg_library("magma")
            _, out["eigh_magma_s"] = timed(device, torch.linalg.eigh, gram)
        except Exception as e:  # MAGMA may not be built in
            out["eigh_magma_s"] = f"unavailable: {type(e).__name__}"
        finally:
            torch.backends.cuda.preferred_linalg_library(before)
        for name, fn in {
            "householder_qr_one_step_s": lambda: torch.linalg.qr(x),
            "cholesky_qr_one_step_s": lambda: d._orthonormalize(x),
        }.items():
            _, out[name] = timed(device, fn)
    out["stack"] = list(stack.shape)
    return out


def run(ctx) -> dict:
    size, rank, device = ctx.size, ctx.rank, ctx.device
    decompose_mod = host.module("qrlora_core.decompose")
    basis_mod = host.module("qrlora_core.basis")
    shapes = size.targets()
    groups = _by_shape(shapes)
    accuracy_samples = [n for names in groups.values() for n in (names[0], names[-1])]
    timing_samples = [names[0] for names in groups.values()]
    res = {"targets": len(shapes), "rank": rank, "shapes": {f"{m}x{n}": len(v) for (m, n), v in groups.items()}}
    res["accuracy_samples"], res["timing_samples"] = accuracy_samples, timing_samples
    res["energy"] = energy(ctx)

    for power in (0.5, 1.0):
        tag = f"p{power:g}"
        ctx.log(f"basis init {tag}: building {len(shapes)} weights")
        weights = make_weights(shapes, power, device, seed=int(power * 10))
        warm = {n: weights[n] for names in groups.values() for n in names[:2]}
        decompose_mod.decompose_many(warm, rank, method="subspace")  # handles, kernels
        reset_peak(device)
        bases, seconds = timed(device, decompose_mod.decompose_many, weights, rank, method="subspace")
        ours = {"seconds": seconds, "peak_gib": gib(peak_bytes(device))}
        ctx.log(f"  ours: {seconds:.2f} s, peak {ours['peak_gib']:.1f} GiB")

        exact = {n: exact_top(weights[n], rank) for n in accuracy_samples}
        ours["subspace_error"] = {n: decompose_mod.subspace_error(bases[n].q, exact[n]) for n in accuracy_samples}
        ours["max_subspace_error"] = max(ours["subspace_error"].values())
        del bases

        published(weights[timing_samples[0]], rank)  # handles, workspace
        pub = {"seconds_per_matrix": {}, "subspace_error": {}}
        for name in timing_samples:
            (q, _), s = timed(device, published, weights[name], rank)
            pub["seconds_per_matrix"][name] = s
            pub["subspace_error"][name] = decompose_mod.subspace_error(q, exact[name])
        pub["seconds_extrapolated"] = sum(
            pub["seconds_per_matrix"][timing_samples[i]] * len(names) for i, names in enumerate(groups.values())
        )
        pub["max_subspace_error"] = max(pub["subspace_error"].values())
        ctx.log(f"  published: {pub['seconds_extrapolated']:.1f} s extrapolated, error {pub['max_subspace_error']:.2e}; ours error {ours['max_subspace_error']:.2e}")
        res[tag] = {"ours": ours, "published": pub, "speedup": pub["seconds_extrapolated"] / ours["seconds"]}

        if power == 1.0:
            again = decompose_mod.decompose_many(weights, rank, method="subspace")
            first = decompose_mod.decompose_many(weights, rank, method="subspace")
            res["repeatable"] = all(torch.equal(first[n].q, again[n].q) for n in weights)
            ctx.log(f"  same Q on a second run: {res['repeatable']}")
            del again, first
            res["diagnostics"] = _diagnostics(ctx, decompose_mod, weights, groups, rank)
            res["cache"] = _cache(ctx, basis_mod, weights, rank)
        del weights, exact
        free_cache(device)
    return res


def energy(ctx) -> dict:
    """||Q^T W||² / (top-r squared singular values) of ours vs the published float32 SVD, per spectrum (Q re-orthonormalized in float64)."""
    decompose_mod = host.module("qrlora_core.decompose")
    device, rank = ctx.device, ctx.rank
    m, n = next(iter(ctx.size.targets().values()))
    generator = torch.Generator(device=device).manual_seed(23)
    out = {}
    for name, spectrum in SPECTRA.items():
        k = min(m, n)
        u = _orthonormal(m, k, device, generator).double()
        v = _orthonormal(n, k, device, generator).double()
        w = ((u * spectrum(k).to(device)) @ v.T).to(torch.bfloat16)
        ours, seconds = timed(device, lambda: decompose_mod.decompose_many({"w": w}, rank, method="subspace")["w"].q)
        pub, _ = published(w, rank)
        out[name] = {"ours": captured_energy(ours, w), "published": captured_energy(pub, w), "ours_seconds": seconds}
        ctx.log(f"  energy {name}: ours {out[name]['ours']:.12f}, published {out[name]['published']:.12f} ({seconds:.2f} s)")
        del u, v, w
    return out


def _diagnostics(ctx, decompose_mod, weights, groups, rank) -> dict:
    device = ctx.device
    out = {}
    first_shape = next(iter(groups))
    stack = torch.stack([weights[n] for n in groups[first_shape][:64]])
    out["phases"] = _phases(decompose_mod, stack, rank, device)
    del stack
    # The previous implementation on every 6th weight of each shape (it stacks a whole group at once).
    every = 6 if ctx.full else 1
    seconds = 0.0
    legacy_subspace_q = legacy_decompose.subspace_q
    for shape, names in groups.items():
        subset = names[::every]
        stack = torch.stack([weights[n] for n in subset])
        legacy_subspace_q(stack[:1], rank)  # warm
        _, s = timed(device, legacy_subspace_q, stack, rank)
        seconds += s * len(names) / len(subset)
        del stack
    out["legacy_seconds_extrapolated"] = seconds
    out["legacy_sampled_every"] = every
    # A small memory budget (a 24 GB card with a model loaded): more, smaller chunks.
    budget = 2 * 1024**3 if ctx.full else 64 * 1024**2
    held = sum(w.numel() * w.element_size() for w in weights.values())
    free_cache(device)
    reset_peak(device)
    _, s = timed(device, decompose_mod.decompose_many, weights, rank, method="subspace", memory_budget=budget)
    out["small_budget"] = {"budget_bytes": budget, "seconds": s, "peak_above_weights_bytes": peak_bytes(device) - held}
    ctx.log(f"  diagnostics: legacy subspace method {seconds:.1f} s (extrapolated); phases {out['phases']}")
    free_cache(device)
    return out


def _cache(ctx, basis_mod, weights, rank) -> dict:
    device = ctx.device
    folder = tempfile.mkdtemp(prefix="qrlora-bases-", dir=ctx.scratch)
    store = basis_mod.BasisStore(folder)
    (key, qs, _), cold = timed(device, store.get_or_build, weights, rank)
    (key2, qs2, _), warm = timed(device, store.get_or_build, weights, rank)
    _, to_device = timed(device, lambda: {n: q.to(device, non_blocking=True) for n, q in qs2.items()})
    same = key == key2 and all(torch.equal(qs[n].cpu(), qs2[n]) for n in list(qs)[:8])
    path = store.path(key)
    out = {"cold_seconds": cold, "warm_seconds": warm, "warm_to_device_seconds": to_device, "same_basis": same,
           "file_bytes": os.path.getsize(path)}
    ctx.log(f"  cache: cold {cold:.2f} s, second run {warm:.3f} s (+{to_device:.3f} s to device), file {out['file_bytes'] / 1e6:.0f} MB")
    os.unlink(path)
    return out
