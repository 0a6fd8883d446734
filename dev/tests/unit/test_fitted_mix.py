"""ZipLoRA's fitted mix (dev/bench/fitted_mix.py) against float64 references."""

import pytest
import torch

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget, merge
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.errors import AdapterError
from bench.fitted_mix import ZipTargets

SHAPES = {"a.to_q": (20, 12), "a.ff": (36, 12), "b.to_k": (16, 10)}  # b.to_k: the style adapter's only


@pytest.fixture
def base(rng):
    return {name: torch.randn(m, n, generator=rng, dtype=torch.float64) for name, (m, n) in SHAPES.items()}


def adapter(base, names, generator, alpha=12.0, source="x", sign_flip=False):
    targets = {}
    for name in names:
        b = decompose(base[name], 6)
        q = torch.linalg.qr(b.q.double()).Q  # orthonormal to float64 rounding, so the references below are exact
        if sign_flip:
            q[:, 1::2] *= -1  # the same basis computed elsewhere: other column signs
        targets[name] = QRTarget(q=q, delta_r=torch.randn(6, b.r.shape[1], generator=generator, dtype=torch.float64))
    return QRLoRA(targets, rank=6, alpha=alpha, format="native", source=source)


@pytest.fixture
def pair(base, rng):
    content = adapter(base, ["a.to_q", "a.ff"], rng, source="content")
    style = adapter(base, list(SHAPES), rng, alpha=6.0, source="style", sign_flip=True)  # another scale, flipped signs
    return content, style


def true_delta(a: QRLoRA, name: str) -> torch.Tensor:
    t = a.targets[name]
    return a.scale * t.q.double() @ t.delta_r.double()


def patched(zipped: ZipTargets, base: dict) -> dict:
    where = {name: (f"{name}.weight", None) for name in zipped.layers}
    wrappers = zipped.wrappers(where)
    return {name: wrappers[f"{name}.weight"](base[name].clone()) for name in zipped.layers}


def test_mergers_at_one_are_the_plain_sum(base, pair):
    zipped = ZipTargets(list(pair))
    merged, _ = merge(list(pair), [1.0, 1.0])
    for name, w in patched(zipped, base).items():
        expected = base[name] + sum(true_delta(a, name) for a in pair if name in a.targets)
        assert torch.allclose(w, expected, atol=1e-10)
        assert torch.allclose(w, base[name] + true_delta(merged, name), atol=1e-10)


def test_a_teacher_is_its_adapter_alone(base, pair):
    zipped = ZipTargets(list(pair))
    for index, a in enumerate(pair):
        with zipped.teacher(index):
            got = patched(zipped, base)
        for name, w in got.items():
            expected = base[name] + (true_delta(a, name) if name in a.targets else 0)
            assert torch.allclose(w, expected, atol=1e-10), (index, name)
    assert all(layer.teacher is None for layer in zipped.layers.values())  # the mix again after the block


def test_fitted_adapters_mix_into_the_fitted_mix(base, pair, rng):
    zipped = ZipTargets(list(pair))
    with torch.no_grad():
        for layer in zipped.layers.values():
            layer.mergers.copy_(torch.rand(layer.mergers.shape, generator=rng, dtype=torch.float64) * 2 - 0.5)
    mix = patched(zipped, base)
    fitted = zipped.fitted({"note": "test"})
    merged, report = merge(fitted, [1.0, 1.0])
    assert not report.fallback
    for name in SHAPES:
        expected = base[name].clone()
        for a, layer in ((a, zipped.layers[name]) for a in pair):
            if name in a.targets:  # the column-scaled delta of each adapter, by hand: s · Q · ΔR · diag(m)
                m = layer.mergers[layer.owners.index(pair.index(a))].detach()
                expected += true_delta(a, name) * m[None, :]
        assert torch.allclose(mix[name], expected, atol=1e-9), name
        assert torch.allclose(base[name] + true_delta(merged, name), expected, atol=1e-5), name  # the files hold float32
    assert set(fitted[0].targets) == {"a.to_q", "a.ff"} and set(fitted[1].targets) == set(SHAPES)
    assert fitted[1].metadata["fitted_mix_with"] == "content"


def test_overlap_is_the_shared_layers_mean(pair, rng):
    zipped = ZipTargets(list(pair))
    with torch.no_grad():
        for layer in zipped.layers.values():
            layer.mergers.copy_(torch.randn(layer.mergers.shape, generator=rng, dtype=torch.float64))
    shared = [l for l in zipped.layers.values() if len(l.owners) == 2]
    expected = sum(float((l.mergers[0] * l.mergers[1]).abs().mean().detach()) for l in shared) / len(shared)
    assert len(shared) == 2
    assert float(zipped.overlap().detach()) == pytest.approx(expected, rel=1e-12)


def test_only_the_mergers_learn(base, pair):
    zipped = ZipTargets(list(pair))
    for p in zipped.parameters():
        p.requires_grad_(True)
    loss = sum(w.square().sum() for w in patched(zipped, base).values()) + zipped.overlap()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in zipped.parameters())
    assert all(not b.requires_grad for layer in zipped.layers.values() for b in (layer.q, layer.parts))


def test_other_bases_are_refused(base, rng):
    content = adapter(base, ["a.to_q"], rng, source="content")
    other = {"a.to_q": base["a.to_q"] + torch.randn(SHAPES["a.to_q"], generator=rng, dtype=torch.float64)}
    style = adapter(other, ["a.to_q"], rng, source="style")
    with pytest.raises(AdapterError, match="not trained on one basis"):
        ZipTargets([content, style])
    with pytest.raises(AdapterError, match="exactly two"):
        ZipTargets([content])
