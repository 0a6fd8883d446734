"""QR-LoRA training in PEFT's layout: config (settings and their help),
layer (the math of one trained layer), model (choosing and building targets).
Plain PyTorch; the training loop itself is ComfyUI's (nodes/train.py)."""

from .config import PRESETS, TrainConfig
from .layer import QRDelta, QRWeightWrapper
from .model import TrainTargets, select

__all__ = ["PRESETS", "QRDelta", "QRWeightWrapper", "TrainConfig", "TrainTargets", "select"]
