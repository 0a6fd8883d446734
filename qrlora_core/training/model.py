"""Finding the layers to train and building their QR-LoRA training layers.

Works on plain data: a dict of canonical adapter names -> base weight (a
2-D view, row slices of fused matrices included) and, for wiring, names ->
(weight key, row range or None). The ComfyUI side (integration/training/session.py) supplies
both from the model's own LoRA key map. The basis comes from a
`BasisStore`, so a second training on the same base loads it from disk.
"""

from dataclasses import dataclass

import torch

from ..adapter import QRLoRA, QRTarget
from ..basis import BasisStore
from ..decompose import check_rank
from ..errors import AdapterError
from ..fingerprint import digest, sketch
from .layer import LoRADelta, QRDelta, QRWeightWrapper


def weight_wrappers(layers: dict, where: dict) -> dict:
    """weight key -> QRWeightWrapper of the trained `layers` (name -> QRDelta or alike); `where` maps a name to
    (key, None) or (key, (dim, start, length))."""
    grouped: dict = {}
    for name, layer in layers.items():
        key, offset = where[name]
        if offset is not None and offset[0] != 0:
            raise AdapterError(f"Layer {name} is a column slice of {key}, which QR-LoRA training does not support: leave it out with the target pattern.")
        rows = None if offset is None else (offset[1], offset[2])
        grouped.setdefault(key, []).append((layer, rows))
    return {key: QRWeightWrapper([l for l, _ in parts], [r for _, r in parts]) for key, parts in grouped.items()}


def select(names, pattern) -> list[str]:
    """The names the target pattern finds (searched anywhere in the name, as re.search), in order."""
    return [n for n in names if pattern.search(n)]


@dataclass
class TrainTargets:
    """The QR-LoRA layers of one training run, by canonical name."""

    layers: dict  # name -> QRDelta
    rank: int
    alpha: float
    sketches: dict  # name -> fingerprint sketch of the base weight
    basis_id: str | None = None
    average: dict | None = None  # parameter index -> its exponential moving average (TrainConfig.ema_decay), else None
    average_decay: float = 0.0
    averaged_steps: int = 0

    @classmethod
    def new(cls, weights: dict, rank: int, alpha: float, triangular: bool, store: BasisStore, progress=None,
            device=None, basis_device=None, basis_budget: int | None = None, trained_rows: tuple[int, int] | None = None) -> "TrainTargets":
        """Fresh targets (ΔR = 0) on the base weights' basis, decomposed once per base and rank.

        `trained_rows`: the rows of every ΔR trained (TrainConfig.trained_rows), None for all;
        `device`: where Q and ΔR live (default: each weight's device);
        `basis_device` / `basis_budget`: where the decomposition runs and
        the working memory it may take there (BasisStore.get_or_build)."""
        check_rank({n: tuple(w.shape) for n, w in weights.items()}, rank,
                   "lower the rank to {limit} or less, or leave such layers out with the target pattern.")
        basis_id, qs, sketches = store.get_or_build(weights, rank, progress=progress, device=basis_device, memory_budget=basis_budget)
        scale = alpha / rank
        layers = {n: QRDelta.zeros(qs[n].to(device or weights[n].device), weights[n].shape[1], scale, triangular, trained_rows) for n in weights}
        return cls(layers, rank, alpha, sketches, basis_id)

    @classmethod
    def plain_lora(cls, weights: dict, rank: int, alpha: float, seed: int, device=None) -> "TrainTargets":
        """Fresh plain LoRA layers (layer.LoRADelta) on the same layers, for comparisons: no basis is built."""
        check_rank({n: tuple(w.shape) for n, w in weights.items()}, rank,
                   "lower the rank to {limit} or less, or leave such layers out with the target pattern.")
        generator = torch.Generator().manual_seed(seed % 2**63)
        layers = {n: LoRADelta.fresh(w.shape[0], w.shape[1], rank, alpha / rank, generator, device or w.device) for n, w in weights.items()}
        return cls(layers, rank, alpha, {n: sketch(w) for n, w in weights.items()})

    @classmethod
    def resume(cls, adapter: QRLoRA, weights: dict, triangular: bool, device=None, trained_rows: tuple[int, int] | None = None) -> "TrainTargets":
        """Continue an adapter: its own Q and ΔR for the layers the model has (`weights`)."""
        if not adapter.shared_basis:
            raise AdapterError(
                f"{adapter.source} is a mix of adapters with different bases, which cannot be trained further: "
                "continue from one of the adapters it was mixed from."
            )
        layers, sketches = {}, {}
        for name, weight in weights.items():
            t = adapter.targets[name]
            where = device or weight.device
            q = t.q.to(where, copy=True)  # an ordinary tensor: loaders run in inference mode, whose tensors autograd refuses
            layers[name] = QRDelta(q, t.delta_r.to(where), adapter.scale, triangular, trained_rows)
            sketches[name] = t.fingerprint if t.fingerprint is not None else sketch(weight)
        return cls(layers, adapter.rank, adapter.alpha, sketches, adapter.metadata.get("basis"))

    def parameters(self) -> list:
        return [p for layer in self.layers.values() for p in ((layer.q, layer.delta_r) if isinstance(layer, LoRADelta) else (layer.delta_r,))]

    @property
    def plain(self) -> bool:
        return any(isinstance(layer, LoRADelta) for layer in self.layers.values())

    @torch.no_grad()
    def update_average(self, decay: float) -> None:
        """Fold the current values into their exponential moving average (after each optimizer step)."""
        params = self.parameters()
        if self.average is None:
            self.average = {i: torch.zeros_like(p) for i, p in enumerate(params)}
        self.average_decay = decay
        self.averaged_steps += 1
        for i, p in enumerate(params):
            self.average[i].mul_(decay).add_(p, alpha=1 - decay)

    @torch.no_grad()
    def averaged(self) -> dict:
        """parameter index -> its moving average, bias-corrected as Adam's moments are (it starts from zero)."""
        correction = 1 - self.average_decay ** self.averaged_steps
        return {i: a / correction for i, a in self.average.items()}

    def trainable_count(self) -> int:
        """Values the optimizer holds, less the rows of ΔR outside a trained basis part (they stay 0)."""
        unused = sum((layer.delta_r.shape[0] - (layer.trained_rows[1] - layer.trained_rows[0])) * layer.delta_r.shape[1]
                     for layer in self.layers.values() if layer.trained_rows is not None)
        return sum(p.numel() for p in self.parameters()) - unused

    def wrappers(self, where: dict) -> dict:
        return weight_wrappers(self.layers, where)

    def base_fingerprint(self) -> str:
        return digest(self.sketches)

    @torch.no_grad()
    def to_adapter(self, metadata: dict | None = None, source: str = "") -> QRLoRA:
        """The trained adapter, ΔR stored masked (what is added to the model), on the CPU in float32.

        With a moving average (`update_average`), the average of each value over the steps, not its last value."""
        values = iter(self.parameters() if self.average is None else self.averaged().values())
        targets = {}
        for name, layer in self.layers.items():
            q = next(values) if isinstance(layer, LoRADelta) else layer.q
            delta_r = next(values)
            delta_r = layer.mask(delta_r)
            if isinstance(layer, LoRADelta):  # up·down stored as Q·(R·down), up = Q·R: the same delta with an orthonormal Q, as every file holds
                basis, r = torch.linalg.qr(q.detach().double())
                q, delta_r = basis, r @ delta_r.detach().double()
            targets[name] = QRTarget(q=q.detach().to("cpu", torch.float32).clone(), delta_r=delta_r.detach().to("cpu", torch.float32).clone(),
                                     fingerprint=self.sketches.get(name))
        meta = {"base_fingerprint": self.base_fingerprint(), **(metadata or {})}
        if self.basis_id:
            meta["basis"] = self.basis_id
        return QRLoRA(targets, rank=self.rank, alpha=self.alpha, format="native", metadata=meta, source=source, shared_basis=not self.plain)

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.parameters())
