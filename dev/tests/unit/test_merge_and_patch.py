"""Merging, the patch formula and the similarity measure, against float64 references."""

import pytest
import torch

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget, delta_cosine, merge
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.patch import add_delta_, delta


def adapter(bases, generator, alpha=None, source="a", sign_flip=False):
    targets = {}
    for name, b in bases.items():
        q = b.q.clone()
        if sign_flip:
            q[:, ::2] *= -1  # the same basis as computed elsewhere: columns with other signs
        targets[name] = QRTarget(q=q, delta_r=torch.randn(b.rank, b.r.shape[1], generator=generator))
    rank = next(iter(bases.values())).rank
    return QRLoRA(targets, rank=rank, alpha=alpha or float(rank), format="native", source=source)


@pytest.fixture
def base(rng):
    return {name: torch.randn(m, n, generator=rng) for name, (m, n) in {"x.to_q": (20, 12), "x.ff": (36, 12)}.items()}


@pytest.fixture
def bases(base):
    return {name: decompose(w, 6) for name, w in base.items()}


def test_patch_is_w_plus_s_q_delta_r(base, bases, rng):
    a = adapter(bases, rng, alpha=12.0)  # s = 2
    for name, w in base.items():
        t = a.targets[name]
        got = add_delta_(w.clone(), t.q, t.delta_r, 0.7 * a.scale)
        expected = w.double() + 0.7 * 2.0 * t.q.double() @ t.delta_r.double()
        assert torch.allclose(got.double(), expected, atol=1e-5)


def test_merge_of_shared_basis_is_one_delta_r_sum(base, bases, rng):
    content, style = adapter(bases, rng, source="content"), adapter(bases, rng, source="style")
    merged, report = merge([content, style], [0.8, -0.3])
    assert report.shared == len(base) and not report.fallback and merged.shared_basis
    for name in base:
        t = merged.targets[name]
        assert t.rank == 6  # still one rank-r ΔR per layer
        expected = content.targets[name].q.double() @ (0.8 * content.targets[name].delta_r.double() - 0.3 * style.targets[name].delta_r.double())
        assert torch.allclose(delta(t.q, t.delta_r, merged.scale, torch.float64), expected, atol=1e-5)


def test_merge_carries_sign_flipped_bases_into_the_reference_basis(base, bases, rng):
    a, b = adapter(bases, rng, source="a"), adapter(bases, rng, source="b", sign_flip=True, alpha=12.0)
    merged, report = merge([a, b], [1.0, 0.5])
    assert not report.fallback
    for name in base:
        expected = delta(a.targets[name].q, a.targets[name].delta_r, a.scale, torch.float64) + 0.5 * delta(b.targets[name].q, b.targets[name].delta_r, b.scale, torch.float64)
        assert torch.allclose(delta(merged.targets[name].q, merged.targets[name].delta_r, merged.scale, torch.float64), expected, atol=1e-5)


def test_merge_of_different_bases_falls_back_to_exact_sum_and_says_so(base, bases, rng):
    other = {name: decompose(torch.randn(*w.shape, generator=rng), 6) for name, w in base.items()}
    a, b = adapter(bases, rng, source="a"), adapter(other, rng, source="b")
    merged, report = merge([a, b], [1.0, 2.0])
    assert len(report.fallback) == len(base) and not merged.shared_basis
    assert "disentanglement does not hold" in report.text()
    for name in base:
        expected = delta(a.targets[name].q, a.targets[name].delta_r, 1.0, torch.float64) + 2.0 * delta(b.targets[name].q, b.targets[name].delta_r, 1.0, torch.float64)
        assert torch.allclose(delta(merged.targets[name].q, merged.targets[name].delta_r, merged.scale, torch.float64), expected, atol=1e-5)


def test_zero_weight_contributes_nothing(base, bases, rng):
    a, b = adapter(bases, rng), adapter(bases, rng)
    merged, _ = merge([a, b], [1.0, 0.0])
    for name in base:
        assert torch.allclose(merged.targets[name].delta_r, a.targets[name].delta_r, atol=1e-6)


def test_merge_of_other_base_model_is_refused(bases, rng):
    wide = {name: decompose(torch.randn(b.q.shape[0], 14, generator=rng), 6) for name, b in bases.items()}
    with pytest.raises(ValueError, match="different base models"):
        merge([adapter(bases, rng), adapter(wide, rng)], [1, 1])


def test_similarity_is_cosine_of_flattened_delta_r_on_a_shared_basis(bases, rng):
    a, b = adapter(bases, rng), adapter(bases, rng)
    cos = delta_cosine(a, b)
    for name in bases:
        da, db = a.targets[name].delta_r.double().flatten(), b.targets[name].delta_r.double().flatten()
        assert cos[name] == pytest.approx(float(da @ db / (da.norm() * db.norm())), abs=1e-6)
    assert all(v == pytest.approx(1.0) for v in delta_cosine(a, a).values())
