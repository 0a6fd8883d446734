"""The decomposition against float64 references on fresh random inputs."""

import pytest
import torch

from qrlora_core.decompose import decompose, decompose_many, subspace_error


def decaying(m, n, power, generator, dtype=torch.float32):
    """W = U diag(k^-p) V^T: a spectrum that decays like trained weights'."""
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=generator, dtype=torch.float64))
    s = torch.arange(1, min(m, n) + 1, dtype=torch.float64) ** -power
    return ((u * s) @ v.T).to(dtype)


def published_reference(w, rank, alpha):
    """METHOD.md's algorithm, literally: QR of the full m x n core, in float64."""
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
