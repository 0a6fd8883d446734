"""The in-memory adapter: per target, the frozen basis Q and the learned ΔR.

A target's weight delta is s · Q · ΔR (patch.py). delta_r is stored already
masked (the triangular variant's mask is a training detail), so what is
held here is exactly what gets added to the model.
"""

from dataclasses import dataclass, field

import torch

from .errors import AdapterError, clipped
from .patch import lora_pair


class QRShape:
    """Sizes of anything holding q (m x r) and delta_r (r x n): a stored target or a training layer."""

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    @property
    def in_features(self) -> int:
        return self.delta_r.shape[1]

    @property
    def rank(self) -> int:
        return self.q.shape[1]


SHOWN_TEXT = 1000  # characters of a file's text a summary shows (the node's text, /history, the page); trigger_words() gives all


@dataclass
class QRTarget(QRShape):
    q: torch.Tensor  # (m, k): orthonormal columns for one adapter, stacked blocks after a fallback merge
    delta_r: torch.Tensor  # (k, n)
    fingerprint: torch.Tensor | None = None  # sketch of the base weight the basis came from

    def up_down(self, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The same delta as an ordinary LoRA pair: up = s·Q, down = ΔR."""
        return lora_pair(self.q, self.delta_r, scale)


@dataclass
class QRLoRA:
    """A set of targets keyed by the name ComfyUI's LoRA key map knows them by."""

    targets: dict[str, QRTarget]
    rank: int
    alpha: float
    format: str  # "native", "compact", "published" (formats.py), "q_and_r" (reference_formats.py), or "merged" (merge.py)
    metadata: dict = field(default_factory=dict)  # trigger words, training notes, ...
    source: str = ""  # file name, for messages
    shared_basis: bool = True  # False after a merge had to fall back to summing deltas

    def __post_init__(self):
        if not self.targets:
            raise AdapterError(f"{self.source or 'The adapter'} holds no QR-LoRA layers: it is empty or not a QR-LoRA file.")

    @property
    def scale(self) -> float:
        """s = alpha / rank, one value for every target of the adapter."""
        return self.alpha / self.rank

    def summary(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "rank": self.rank,
            "alpha": self.alpha,
            "scale": self.scale,
            "layers": len(self.targets),
            "parameters": sum(t.delta_r.numel() for t in self.targets.values()),
            "shared_basis": self.shared_basis,
            "trigger_words": clipped(self.metadata.get("trigger_words", ""), SHOWN_TEXT),
            "base_fingerprint": clipped(self.metadata.get("base_fingerprint", ""), SHOWN_TEXT),
        }
