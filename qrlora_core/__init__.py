"""QR-LoRA math in plain PyTorch: no ComfyUI import anywhere in this package.

The data path reads in one direction:
file (formats) -> QRLoRA (adapter) -> merge -> patch (W + s·Q·ΔR).
Decomposition builds the frozen basis; training/ learns ΔR against it.
"""

from .adapter import QRLoRA, QRTarget
from .decompose import Basis, decompose, decompose_many, subspace_error
from .errors import AdapterError
from .merge import MergeReport, merge
from .similarity import delta_cosine

__all__ = [
    "AdapterError",
    "Basis",
    "MergeReport",
    "QRLoRA",
    "QRTarget",
    "decompose",
    "decompose_many",
    "delta_cosine",
    "merge",
    "subspace_error",
]
