"""Mixing adapters: W' = W + s · Q · (Σ a_i ΔR_i) when they share a basis.

Bases are compared by principal angles. When adapter i's Q spans the same
subspace as the reference Q_0 (within `tolerance`), its ΔR is carried into
the reference basis with O_i = Q_0^T Q_i (the identity when the Qs are the
same, a sign flip or rotation when they were computed elsewhere), so each
target keeps one rank-r ΔR however many adapters are mixed. Otherwise the
honest fallback is the plain sum of each adapter's own s_i Q_i ΔR_i,
stored as stacked factors; the report says which targets fell back.
"""

from dataclasses import dataclass, field

import torch

from .adapter import QRLoRA, QRTarget
from .decompose import subspace_error
from .errors import AdapterError

Q_TOLERANCE = 1e-3  # sin of the largest principal angle two "equal" bases may differ by


@dataclass
class MergeReport:
    shared: int = 0  # targets merged as one ΔR sum
    fallback: list[str] = field(default_factory=list)  # targets summed as separate deltas
    worst_angle: float = 0.0  # largest principal-angle sine among targets considered shared
    partial: int = 0  # targets missing from at least one adapter

    def text(self) -> str:
        """Plain words first (what the mix is), then the numbers behind them."""
        if not self.fallback:
            lines = ["Mixed cleanly: the adapters share one basis, so each layer holds one sum of their changes."]
        else:
            lines = [f"Mixed, but {len(self.fallback)} of {self.shared + len(self.fallback)} layers were not trained on one basis: "
                     "there the changes are simply added, and content and style may interfere."]
        lines.append(f"{self.shared} layers merged as one ΔR sum (bases agree to sin θ ≤ {self.worst_angle:.1e}).")
        if self.fallback:
            lines.append(
                f"{len(self.fallback)} layers have different bases (e.g. {self.fallback[0]}): they were summed as separate "
                "deltas, which is exact, but the adapters were not trained on one basis, so QR-LoRA's disentanglement does not hold for them."
            )
        if self.partial:
            lines.append(f"{self.partial} layers are missing from some adapters; those adapters add nothing there.")
        return "\n".join(lines)


def _check_same_shapes(adapters: list[QRLoRA]) -> None:
    shapes = {}
    for adapter in adapters:
        for name, t in adapter.targets.items():
            shape = (t.out_features, t.in_features)
            first = shapes.setdefault(name, (shape, adapter.source))
            if first[0] != shape:
                raise AdapterError(
                    f"Cannot merge {first[1]} and {adapter.source}: layer {name} is {first[0]} in one and {shape} in the other, "
                    "so they were made for different base models; merge adapters of the same base model only."
                )


def merge(adapters: list[QRLoRA], weights: list[float], tolerance: float = Q_TOLERANCE) -> tuple[QRLoRA, MergeReport]:
    if len(adapters) != len(weights) or not adapters:
        raise AdapterError("Merge needs at least one adapter and one weight per adapter.")
    _check_same_shapes(adapters)
    reference = adapters[0]
    scale = reference.scale
    report = MergeReport()
    names = list(dict.fromkeys(n for a in adapters for n in a.targets))
    targets = {}
    for name in names:
        present = [(a, w) for a, w in zip(adapters, weights) if name in a.targets]
        report.partial += len(present) < len(adapters)
        base_q = present[0][0].targets[name].q
        angles = [subspace_error(base_q, a.targets[name].q) for a, _ in present[1:]]
        shared = all(a.shared_basis for a, _ in present) and all(x <= tolerance for x in angles)
        if shared:
            report.shared += 1
            report.worst_angle = max([report.worst_angle, *angles])
            delta_r = torch.zeros_like(present[0][0].targets[name].delta_r)
            for adapter, weight in present:
                t = adapter.targets[name]
                rotation = base_q.T @ t.q  # identity when the bases are the same
                delta_r += (weight * adapter.scale / scale) * (rotation @ t.delta_r)
            q = base_q
        else:
            report.fallback.append(name)
            q = torch.cat([a.targets[name].q for a, _ in present], dim=1)
            delta_r = torch.cat([(w * a.scale / scale) * a.targets[name].delta_r for a, w in present], dim=0)
        targets[name] = QRTarget(q=q, delta_r=delta_r, fingerprint=present[0][0].targets[name].fingerprint)
    metadata = {
        "merged_from": [{"source": a.source, "weight": w} for a, w in zip(adapters, weights)],
        "trigger_words": ", ".join(dict.fromkeys(t for a in adapters if (t := a.metadata.get("trigger_words")))),
    }
    if fp := reference.metadata.get("base_fingerprint"):
        metadata["base_fingerprint"] = fp
    merged = QRLoRA(
        targets,
        rank=reference.rank,
        alpha=reference.alpha,
        format="merged",
        metadata=metadata,
        source=" + ".join(a.source for a in adapters),
        shared_basis=not report.fallback,
    )
    return merged, report
