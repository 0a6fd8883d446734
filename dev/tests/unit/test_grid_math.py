"""The grid's per-sample mix (qrlora_core/grid.py) against the separately patched layer, in float64.

For each cell (a, b) the layer's output on that cell's sample must equal
(W + Δ_ab) x, with Δ_ab the delta the pack's own path patches in: Merge ΔR
of the two adapters at (a, b), then s·Q·ΔR (the merged target's delta).
"""

import pytest
import torch

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget, merge
from comfyui_qrlora.qrlora_core.errors import AdapterError
from comfyui_qrlora.qrlora_core.grid import MAX_CELLS, cells, mix_factors, mix_output, parse_weights
from comfyui_qrlora.qrlora_core.patch import delta

M, N, RANK = 24, 16, 4
WEIGHTS = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.5, 1.5), (-1.0, 2.0)]


def orthonormal(generator, m=M, r=RANK):
    return torch.linalg.qr(torch.randn(m, r, generator=generator, dtype=torch.float64))[0]


def adapter(targets: dict, rank=RANK, alpha=2.0, source="a") -> QRLoRA:
    return QRLoRA(targets, rank=rank, alpha=alpha, format="native", source=source)


def target(q, generator, rank=RANK):
    return QRTarget(q=q, delta_r=torch.randn(rank, N, generator=generator, dtype=torch.float64))


def pair(kind: str, generator):
    """(content, style) on one layer whose bases are: the same Q, the same subspace in another basis, or unrelated."""
    q = orthonormal(generator)
    if kind == "same":
        q_style = q
    elif kind == "rotated":
        q_style = q @ torch.linalg.qr(torch.randn(RANK, RANK, generator=generator, dtype=torch.float64))[0]
    else:
        q_style = orthonormal(generator)
    return adapter({"layer": target(q, generator)}, alpha=2.0, source="content"), adapter({"layer": target(q_style, generator)}, alpha=6.0, source="style")


def patched_delta(adapter: QRLoRA) -> torch.Tensor:
    """s·Q·ΔR of the adapter's layer, as Apply to Model adds it (patch.delta)."""
    t = adapter.targets["layer"]
    return delta(t.q, t.delta_r, adapter.scale, torch.float64)


def patched_output(x, weight, content, style, a, b):
    """(W + Δ) x with Δ from the Apply path: Merge ΔR at (a, b), the merged target's s·Q·ΔR."""
    merged, _ = merge([content, style], [a, b])
    return x @ (weight + patched_delta(merged)).T


@pytest.mark.parametrize("kind,shared", [("same", True), ("rotated", True), ("unrelated", False)])
def test_each_sample_gets_the_output_of_the_model_patched_with_its_own_mix(kind, shared, rng):
    content, style = pair(kind, rng)
    factors = mix_factors([content.targets["layer"], style.targets["layer"]], [content.scale, style.scale], [True, True])
    assert factors.shared is shared
    weight = torch.randn(M, N, generator=rng, dtype=torch.float64)
    x = torch.randn(len(WEIGHTS), 7, N, generator=rng, dtype=torch.float64)  # (batch, tokens, features)
    out = x @ weight.T + mix_output(x, factors, torch.tensor(WEIGHTS, dtype=torch.float64))
    for i, (a, b) in enumerate(WEIGHTS):
        torch.testing.assert_close(out[i], patched_output(x[i], weight, content, style, a, b), rtol=1e-12, atol=1e-12)


def test_a_layer_only_one_adapter_has_gets_only_that_adapters_weight(rng):
    content, _ = pair("same", rng)
    factors = mix_factors([None, content.targets["layer"]], [1.0, content.scale], [True, True])
    x = torch.randn(3, N, generator=rng, dtype=torch.float64)
    coefficients = torch.tensor([[5.0, 0.0], [5.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
    out = mix_output(x, factors, coefficients)
    delta = patched_delta(content)
    for i in range(3):
        torch.testing.assert_close(out[i], coefficients[i, 1] * (x[i] @ delta.T), rtol=1e-12, atol=1e-12)


def test_an_adapter_merged_on_mixed_bases_keeps_its_stacked_factors(rng):
    """A Merge ΔR fallback holds stacked [Q_1 Q_2] columns that are not one orthonormal basis: never 'shared'."""
    content, style = pair("unrelated", rng)
    mixed, report = merge([content, style], [1.0, 0.5])
    assert report.fallback
    factors = mix_factors([mixed.targets["layer"], content.targets["layer"]], [mixed.scale, content.scale], [mixed.shared_basis, True])
    assert not factors.shared
    x = torch.randn(2, N, generator=rng, dtype=torch.float64)
    out = mix_output(x, factors, torch.tensor([[1.0, 0.0], [2.0, -1.0]], dtype=torch.float64))
    for i, (a, b) in enumerate([(1.0, 0.0), (2.0, -1.0)]):
        again, _ = merge([mixed, content], [a, b])
        torch.testing.assert_close(out[i], x[i] @ patched_delta(again).T, rtol=1e-12, atol=1e-12)


def test_weights_are_read_as_a_person_writes_them():
    assert parse_weights("0, 0.5,1  1.5", "content_weights", 4.0) == [0.0, 0.5, 1.0, 1.5]
    assert parse_weights("-1 4 -4", "w", 4.0) == [-1.0, 4.0, -4.0]
    for text in ("", " , ", "0, half", "nan", "1, inf", "0, 1e39", "4.01"):  # 1e39: finite here, infinite in float32
        with pytest.raises(AdapterError, match="content_weights"):
            parse_weights(text, "content_weights", 4.0)
    assert cells([0.0, 1.0], [2.0, 3.0, 4.0]) == [(0.0, 2.0), (0.0, 3.0), (0.0, 4.0), (1.0, 2.0), (1.0, 3.0), (1.0, 4.0)]
    with pytest.raises(AdapterError, match="cells"):
        cells([0.0] * (MAX_CELLS + 1), [1.0])
