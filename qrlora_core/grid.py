"""A grid of mixes in one batch: sample i adds s·Q·(a_i·ΔR_content + b_i·ΔR_style)·x_i to each layer's output.

Patching the weights gives every sample of a batch the same mix, so a grid
of mixes would need one patch and one sampling run per cell. Added in the
forward instead, the delta can differ per sample at the price of two thin
matrix products per layer (rank r), and the whole grid is one batch.

Per layer, the adapters' factors are stacked: ΔR = [ΔR_1; ΔR_2] (K x n).
When they share the basis (same subspace, within merge.Q_TOLERANCE) the
second ΔR is carried into the first's basis, as Merge ΔR does, and the
output is s·Q·(Σ_t c_it ΔR_t)·x with one Q; otherwise each adapter keeps
its own basis: Σ_t c_it s_t Q_t ΔR_t x, which is the same sum of deltas
the separately patched model adds (merge.py's fallback).
"""

from dataclasses import dataclass

import torch

from .adapter import QRTarget
from .decompose import subspace_error
from .errors import AdapterError, clipped
from .merge import Q_TOLERANCE

MAX_CELLS = 64  # one batch holds every cell; beyond this a grid is hard to read and rarely fits in memory


def parse_weights(text: str, name: str, limit: float) -> list[float]:
    """'0, 0.5, 1' -> [0.0, 0.5, 1.0] (commas or spaces), refused in words when it is not a list of numbers within
    ±limit (the strength sliders' range: a weight like 1e39 is finite here but infinite in float32, NaN in the cell)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise AdapterError(f"{name} is empty: write the weights to try, separated by commas, e.g. 0, 0.5, 1.")
    values = []
    for p in parts:
        try:
            value = float(p)
        except ValueError:
            raise AdapterError(f"{name} holds '{p}', which is not a number: write the weights separated by commas, e.g. 0, 0.5, 1.") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise AdapterError(f"{name} holds '{p}', which is not a finite number: write finite weights, e.g. 0, 0.5, 1.")
        if not -limit <= value <= limit:
            raise AdapterError(f"{name} holds '{clipped(p)}', outside -{limit:g} to {limit:g}, the strengths an adapter takes: write weights in that range.")
        values.append(value)
    return values


def cells(content_weights: list[float], style_weights: list[float]) -> list[tuple[float, float]]:
    """(content, style) weight of each cell, row by row: rows are content weights, columns style weights."""
    count = len(content_weights) * len(style_weights)
    if count > MAX_CELLS:
        raise AdapterError(f"The grid has {count} cells, more than {MAX_CELLS} sampled at once: use fewer weights.")
    return [(a, b) for a in content_weights for b in style_weights]


@dataclass
class MixFactors:
    """One layer's stacked factors; `owner[k]` is the adapter that row k of delta_r belongs to."""

    q: torch.Tensor  # (m, r) when shared, else (m, K)
    delta_r: torch.Tensor  # (K, n): each adapter's s·ΔR stacked (s = alpha / rank), already in q's basis when shared
    owner: torch.Tensor  # (K,) long: adapter index of each row of delta_r
    shared: bool

    def to(self, device=None, dtype=None) -> "MixFactors":
        return MixFactors(self.q.to(device, dtype), self.delta_r.to(device, dtype), self.owner.to(device), self.shared)

    @property
    def terms(self) -> int:
        return self.delta_r.shape[0] // self.q.shape[1] if self.shared else 1


def mix_factors(targets: list[QRTarget | None], scales: list[float], orthonormal: list[bool], tolerance: float = Q_TOLERANCE) -> MixFactors:
    """Stack one layer's targets (None where an adapter lacks the layer); `orthonormal` is False for an
    adapter whose layers may hold stacked bases (a Merge ΔR fallback), which are never treated as shared."""
    present = [(i, t, s, o) for i, (t, s, o) in enumerate(zip(targets, scales, orthonormal)) if t is not None]
    if not present:
        raise AdapterError("mix_factors needs at least one adapter with this layer.")
    base_q = present[0][1].q
    shared = all(o for _, _, _, o in present) and all(subspace_error(base_q, t.q) <= tolerance for _, t, _, _ in present[1:])
    blocks = [s * ((base_q.T @ t.q) @ t.delta_r if shared else t.delta_r) for _, t, s, _ in present]  # rotation: identity for one basis
    owner = torch.cat([torch.full((b.shape[0],), i, dtype=torch.long) for (i, *_), b in zip(present, blocks)])
    q = base_q if shared else torch.cat([t.q for _, t, _, _ in present], dim=1)
    return MixFactors(q, torch.cat(blocks), owner, shared)


def mix_output(x: torch.Tensor, factors: MixFactors, coefficients: torch.Tensor) -> torch.Tensor:
    """What the mix adds to a linear layer's output for x (batch first, features last): per sample i,
    s·Q·(Σ_t c_it ΔR_t)·x_i, with `coefficients` (batch, adapters) the weight of each adapter per sample."""
    if coefficients.shape[0] != x.shape[0]:
        raise AdapterError(f"The grid's layer got a batch of {x.shape[0]} for {coefficients.shape[0]} weight rows.")
    per_row = coefficients[:, factors.owner]  # (batch, K)
    h = (x @ factors.delta_r.T) * per_row.view(x.shape[0], *(1,) * (x.dim() - 2), -1)
    if factors.shared:
        h = h.unflatten(-1, (factors.terms, factors.q.shape[1])).sum(-2)
    return h @ factors.q.T
