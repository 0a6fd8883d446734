"""The decomposition against float64 references on fresh random inputs."""

import pytest
import torch

from comfyui_qrlora.qrlora_core.decompose import decompose, decompose_many, subspace_error, working_bytes
from devkit.spectra import SPECTRA, captured_energy


def decaying(m, n, power, generator, dtype=torch.float32):
    """W = U diag(k^-p) V^T: a spectrum that decays like trained weights'."""
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=generator, dtype=torch.float64))
    s = torch.arange(1, min(m, n) + 1, dtype=torch.float64) ** -power
    return ((u * s) @ v.T).to(dtype)


def published_reference(w, rank, alpha):
    """The published algorithm (docs/method.md, "The basis"), literally: QR of the full m x n core, in float64."""
    w = w.to(torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    scale = alpha / rank
    core = u[:, :rank] @ torch.diag(s[:rank] / scale) @ vh[:rank]
    q, r = torch.linalg.qr(core)
    return q[:, :rank], r[:rank], scale


@pytest.mark.parametrize("shape,rank,alpha", [((48, 32), 8, 8.0), ((32, 64), 4, 8.0), ((40, 40), 40, 20.0)])
def test_matches_published_algorithm_up_to_column_signs(shape, rank, alpha, rng):
    w = torch.randn(*shape, generator=rng)
    basis = decompose(w, rank, alpha, method="exact")
    q_ref, r_ref, scale = published_reference(w, rank, alpha)
    assert basis.scale == pytest.approx(scale)
    signs = torch.sign((basis.q.double() * q_ref).sum(0))
    assert torch.allclose(basis.q.double(), q_ref * signs, atol=1e-5)
    assert torch.allclose(basis.r.double(), r_ref * signs[:, None], atol=1e-4 * r_ref.abs().max())
    assert torch.allclose(basis.q.T.double() @ basis.q.double(), torch.eye(rank, dtype=torch.float64), atol=1e-5)
    assert torch.all(torch.diagonal(basis.r) > 0)  # canonical signs
    assert torch.allclose(torch.triu(basis.r[:, :rank]), basis.r[:, :rank])


@pytest.mark.parametrize("method", ["exact", "subspace"])
def test_residual_plus_scaled_qr_rebuilds_weight(method, rng):
    w = decaying(96, 64, 1.0, rng)
    basis = decompose(w, 16, alpha=32.0, method=method)
    w64 = w.double()
    u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    residual = w64 - (u[:, :16] * s[:16]) @ vh[:16]  # what the reference keeps frozen
    rebuilt = residual + basis.scale * basis.q.double() @ basis.r.double()
    assert torch.allclose(rebuilt, w64, atol=1e-5 * w64.abs().max())


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_subspace_iteration_finds_exact_top_subspace_on_decaying_spectra(power, rng):
    w = decaying(256, 192, power, rng)
    exact = torch.linalg.svd(w.double(), full_matrices=False)[0][:, :16]
    basis = decompose(w, 16, method="subspace")
    assert subspace_error(basis.q, exact) < 1e-3


def test_batched_equals_one_at_a_time(rng):
    weights = {f"layer{i}": torch.randn(24, 20, generator=rng) for i in range(3)}
    weights["odd"] = torch.randn(20, 24, generator=rng)
    batched = decompose_many(weights, 6, method="exact")
    for name, w in weights.items():
        single = decompose(w, 6, method="exact")
        assert torch.allclose(batched[name].q, single.q, atol=1e-6)


def test_one_by_one_convolution_is_its_matrix(rng):
    w = torch.randn(16, 12, 1, 1, generator=rng)
    assert torch.allclose(decompose(w, 4).q, decompose(w[:, :, 0, 0], 4).q)


@pytest.mark.parametrize("rank", [0, 13])
def test_rank_outside_layer_is_refused(rank, rng):
    with pytest.raises(ValueError, match="rank"):
        decompose(torch.randn(12, 16, generator=rng), rank)


def test_subspace_error_detects_rotation_and_difference(rng):
    q, _ = torch.linalg.qr(torch.randn(30, 5, generator=rng, dtype=torch.float64))
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=rng, dtype=torch.float64))
    assert subspace_error(q, q @ rotation) < 1e-7
    other, _ = torch.linalg.qr(torch.randn(30, 5, generator=rng, dtype=torch.float64))
    assert subspace_error(q, other) > 0.5


# ---------------------------------------------------------------- speed work: chunking, Cholesky QR, metric


def test_chunked_decompose_many_stays_within_budget_and_exact(rng):
    weights = {f"w{i}": decaying(48, 40, 1.0, rng) for i in range(5)}
    weights["tall"] = decaying(64, 24, 0.5, rng)
    chunks = []
    one = decompose_many({"w0": weights["w0"]}, 6, method="exact")["w0"]
    budget = working_bytes((48, 40), torch.float32, 6) * 2  # two 48x40 weights per chunk
    bases = decompose_many(weights, 6, method="subspace", progress=chunks.append, memory_budget=budget)
    assert sorted(chunks) == [1, 1, 2, 2]  # 5 same-shaped weights in chunks of 2, 2, 1; the tall one alone
    for name, w in weights.items():
        exact = torch.linalg.svd(w.double(), full_matrices=False)[0][:, :6]
        assert subspace_error(bases[name].q, exact) < 1e-6
    assert torch.allclose(bases["w0"].q.double().T @ one.q.double(), torch.eye(6, dtype=torch.float64), atol=1e-5)  # same canonical signs


def test_chunked_exact_equals_unchunked(rng):
    weights = {f"w{i}": torch.randn(20, 16, generator=rng) for i in range(4)}
    whole = decompose_many(weights, 5, method="exact")
    chunked = decompose_many(weights, 5, method="exact", memory_budget=1)  # at least one weight per chunk
    for name in weights:
        assert torch.allclose(whole[name].q, chunked[name].q, atol=1e-6)
        assert torch.allclose(whole[name].r, chunked[name].r, atol=1e-5)


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_subspace_q_and_r_match_published_algorithm(power, rng):
    w = decaying(200, 120, power, rng)
    basis = decompose(w, 12, alpha=24.0, method="subspace")
    q_ref, r_ref, _ = published_reference(w, 12, 24.0)
    signs = torch.sign((basis.q.double() * q_ref).sum(0))
    assert torch.allclose(basis.q.double(), q_ref * signs, atol=1e-5)
    assert torch.allclose(basis.r.double(), r_ref * signs[:, None], atol=1e-5 * r_ref.abs().max())
    assert torch.all(torch.diagonal(basis.r) > 0)


def test_an_ill_conditioned_block_gives_an_orthonormal_basis_of_the_top_subspace(rng):
    """The iteration's blocks (Cholesky QR on a float64 Gram matrix) stay orthonormal when the weight's
    spectrum spans three decades, for a stack decomposed at once, in float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        weights = {f"w{i}": decaying(300, 120, 1.5, rng, dtype) for i in range(3)}
        bases = decompose_many(weights, 24, method="subspace")
        eye = torch.eye(24, dtype=torch.float64)
        for name, w in weights.items():
            q = bases[name].q.double()
            assert torch.allclose(q.T @ q, eye, atol=1e-6), (dtype, name)
            exact = torch.linalg.svd(w.double(), full_matrices=False)[0][:, :24]
            assert subspace_error(q, exact) < 1e-6, (dtype, name)


def test_a_weight_of_lower_rank_than_asked_falls_back_to_householder_and_keeps_its_span(rng):
    """Rank 3, basis of rank 6: every block of the iteration is rank deficient (singular Gram matrix)."""
    u = torch.linalg.qr(torch.randn(50, 3, generator=rng, dtype=torch.float64))[0]
    w = u @ torch.randn(3, 40, generator=rng, dtype=torch.float64)
    q = decompose(w, 6, method="subspace").q.double()
    assert torch.isfinite(q).all()
    assert torch.allclose(q.T @ q, torch.eye(6, dtype=torch.float64), atol=1e-6)
    assert torch.linalg.norm(u - q @ (q.T @ u)) < 1e-6  # W's column space lies in span(Q)


def test_zero_weight_decomposes_without_nan(rng):
    basis = decompose(torch.zeros(40, 30), 4, method="subspace")
    assert torch.isfinite(basis.q).all() and torch.isfinite(basis.r).all()
    assert torch.allclose(basis.r, torch.zeros_like(basis.r))


def test_float32_matmul_precision_is_restored(rng):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        decompose(decaying(60, 50, 1.0, rng), 5, method="subspace")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_subspace_error_is_not_fooled_by_float32_rounding(rng):
    q, _ = torch.linalg.qr(torch.randn(4096, 64, generator=rng, dtype=torch.float64))
    assert subspace_error(q.float(), q.float()) < 1e-6
    assert subspace_error(q.float(), q) < 1e-6
    tilted = q.clone()
    tilted[:, 0] = torch.cos(torch.tensor(1e-4, dtype=torch.float64)) * q[:, 0] + torch.sin(torch.tensor(1e-4, dtype=torch.float64)) * torch.linalg.qr(torch.randn(4096, 65, generator=rng, dtype=torch.float64))[0][:, -1]
    assert subspace_error(tilted.float(), q) == pytest.approx(1e-4, rel=0.05)


def _spectrum_weight(m, n, spectrum, generator):
    u, _ = torch.linalg.qr(torch.randn(m, len(spectrum), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(spectrum), generator=generator, dtype=torch.float64))
    return ((u * spectrum) @ v.T).to(torch.bfloat16)  # stored as models store them


@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_basis_never_captures_less_energy_than_the_published_float32_svd(spectrum, rng):
    m, n, rank = 320, 256, 24
    w = _spectrum_weight(m, n, SPECTRA[spectrum](min(m, n)), rng)
    u, s, vh = torch.linalg.svd(w.to(torch.float32), full_matrices=False)  # the reference's init
    published_q = torch.linalg.qr((u[:, :rank] * s[:rank]) @ vh[:rank])[0][:, :rank]
    for method in ("subspace", "auto"):
        ours = decompose_many({"w": w}, rank, method=method)["w"].q
        assert captured_energy(ours, w) >= captured_energy(published_q, w) - 1e-12, (spectrum, method)


def test_same_weights_give_the_same_basis_on_every_run_whatever_the_global_rng(rng):
    weights = {f"w{i}": _spectrum_weight(192, 160, SPECTRA["p=0.5"](160), rng) for i in range(3)}
    torch.manual_seed(1)
    first = decompose_many(weights, 16, method="subspace")
    torch.manual_seed(2)  # a different global RNG state must not matter
    torch.rand(7)
    second = decompose_many(weights, 16, method="subspace")
    assert all(torch.equal(first[k].q, second[k].q) for k in weights)
    one_at_a_time = decompose_many(weights, 16, method="subspace", memory_budget=1)  # other chunking, same probe per matrix
    assert max(subspace_error(first[k].q, one_at_a_time[k].q) for k in weights) < 1e-6
