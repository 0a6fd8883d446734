"""ZipLoRA's fitted mix (Shah et al., 2023) on QR-LoRA adapters, a mixing route of the bench (mixing.py: zip; it lost
on the tuning pairs, docs/mixing.md, so it is not in the pack): learn how much of each adapter's ΔR each input
column keeps, so that the mix still does what each adapter alone does on its own images.

Per layer, with the adapters' ΔR_i on one basis Q and a merger vector m_i
(one value per input column, 1 at the start, so the first mix is the plain
ΔR sum):

    W' = W + s · Q · Σ_i (ΔR_i ⊙ m_i)

Only the m_i are learned. The host (fitted_mix_session.py)
trains them on each adapter's own training images and captions, against
that adapter alone as the teacher, plus λ · mean |m_c ⊙ m_s| over the
layers both adapters change, which pushes the two to different columns
(ZipLoRA's loss). The result is each adapter with its columns rescaled
(`fitted`): a pair that mixes at 1, 1 into the fitted mix, and still
works with Merge ΔR's sliders.
"""

import contextlib

import torch

from comfyui_qrlora.qrlora_core.adapter import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import subspace_error
from comfyui_qrlora.qrlora_core.errors import AdapterError
from comfyui_qrlora.qrlora_core.merge import Q_TOLERANCE
from comfyui_qrlora.qrlora_core.patch import add_delta, add_delta_
from comfyui_qrlora.qrlora_core.training.model import weight_wrappers


class ZipDelta(torch.nn.Module):
    """One layer of the fitted mix: frozen Q (m x r) and the adapters' ΔR (k x r x n), learned mergers (k x n).

    `teacher`: None for the mix, else the index of the one adapter whose ΔR alone the layer adds (0 where that
    adapter does not change this layer). It has the attributes QRWeightWrapper reads of a QRDelta."""

    def __init__(self, q: torch.Tensor, parts: torch.Tensor, owners: tuple, scale: float):
        super().__init__()
        self.register_buffer("q", q.detach().clone())  # ordinary tensors: a loader's inference tensors cannot be saved for backward
        self.register_buffer("parts", parts.detach().to(q).clone())
        self.mergers = torch.nn.Parameter(torch.ones(parts.shape[0], parts.shape[2], device=q.device, dtype=q.dtype))
        self.owners = tuple(owners)  # adapter index of each part
        self.scale = float(scale)
        self.triangular, self.trained_rows = False, None
        self.teacher = None

    @property
    def delta_r(self) -> torch.Tensor:
        if self.teacher is None:
            return (self.parts * self.mergers[:, None, :]).sum(0)
        if self.teacher in self.owners:
            return self.parts[self.owners.index(self.teacher)]
        return torch.zeros_like(self.parts[0])

    def mask(self, delta_r: torch.Tensor) -> torch.Tensor:
        return delta_r

    def add_to(self, matrix: torch.Tensor) -> torch.Tensor:
        return add_delta(matrix, self.q, self.delta_r, self.scale)

    def add_to_(self, matrix: torch.Tensor) -> torch.Tensor:
        return add_delta_(matrix, self.q, self.delta_r, self.scale)

    def overlap(self) -> torch.Tensor | None:
        """mean |m_0 ⊙ m_1| where both adapters change this layer (ZipLoRA's similarity term), else None."""
        return (self.mergers[0] * self.mergers[1]).abs().mean() if len(self.owners) == 2 else None


class ZipTargets:
    """The fitted mix of two adapters on the layers either changes (the TrainTargets interface a TrainingSession
    trains: wrappers, parameters, layers)."""

    def __init__(self, adapters: list[QRLoRA], names: list[str] | None = None, device=None, tolerance: float = Q_TOLERANCE):
        if len(adapters) != 2:
            raise AdapterError("A fitted mix takes exactly two adapters (content and style).")
        self.adapters = adapters
        reference = adapters[0]
        self.rank, self.alpha = reference.rank, reference.alpha
        self.layers = {}
        for name in names or list(dict.fromkeys(n for a in adapters for n in a.targets)):
            present = [(i, a.targets[name], a.scale) for i, a in enumerate(adapters) if name in a.targets]
            q = present[0][1].q
            parts = []
            for i, t, scale in present:
                if not adapters[i].shared_basis or subspace_error(q, t.q) > tolerance:
                    raise AdapterError(f"{adapters[0].source} and {adapters[1].source} were not trained on one basis (layer {name} differs): "
                                       "a fitted mix needs two QR-LoRA adapters trained on the same base model.")
                if t.delta_r.shape[0] != q.shape[1]:
                    raise AdapterError(f"{adapters[0].source} and {adapters[1].source} have different ranks at layer {name}: "
                                       "train both at one rank to fit their mix.")
                parts.append((scale / reference.scale) * (q.T @ t.q.to(q)) @ t.delta_r.to(q))  # into the first adapter's basis and scale
            where = device if device is not None else q.device
            self.layers[name] = ZipDelta(q.to(where), torch.stack(parts).to(where), [i for i, _, _ in present], reference.scale)

    def parameters(self) -> list:
        return [layer.mergers for layer in self.layers.values()]

    def wrappers(self, where: dict) -> dict:
        return weight_wrappers(self.layers, where)

    @contextlib.contextmanager
    def teacher(self, index: int):
        """Every layer adds adapter `index`'s ΔR alone (the model as that adapter alone patches it)."""
        for layer in self.layers.values():
            layer.teacher = index
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.teacher = None

    def overlap(self) -> torch.Tensor:
        """ZipLoRA's similarity term: mean over the layers both adapters change of mean |m_0 ⊙ m_1| (0 where none is shared)."""
        terms = [t for layer in self.layers.values() if (t := layer.overlap()) is not None]
        return torch.stack(terms).mean() if terms else torch.zeros(())

    @torch.no_grad()
    def fitted(self, metadata: dict | None = None) -> list[QRLoRA]:
        """Each adapter with its columns scaled by its mergers, on the first adapter's basis: mixed at 1, 1 they give
        the fitted mix exactly."""
        out = []
        for i, adapter in enumerate(self.adapters):
            targets = {}
            for name, layer in self.layers.items():
                if i in layer.owners:
                    k = layer.owners.index(i)
                    delta_r = (layer.parts[k] * layer.mergers[k][None, :]).to("cpu", torch.float32)
                    source = adapter.targets[name]
                    targets[name] = QRTarget(q=layer.q.to("cpu", torch.float32), delta_r=delta_r, fingerprint=source.fingerprint)
            other = self.adapters[1 - i].source
            meta = {**adapter.metadata, "fitted_mix_with": other, **(metadata or {})}
            out.append(QRLoRA(targets, rank=self.rank, alpha=self.alpha, format="native", metadata=meta,
                              source=f"{adapter.source} (fitted to {other})", shared_basis=True))
        return out
