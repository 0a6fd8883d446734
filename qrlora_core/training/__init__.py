"""QR-LoRA training in PEFT's layout: config (settings and their help),
layer (the math of one trained layer), model (choosing and building targets),
objective (the losses), step_loop (the optimizer steps), distributed (one step
shared by several processes), out_of_place (autograd-safe residual updates).
Plain PyTorch; the ComfyUI side is integration/training/."""

from .config import TARGET_PRESETS, TrainConfig
from .layer import QRDelta, QRWeightWrapper
from .model import TrainTargets, select

__all__ = ["TARGET_PRESETS", "QRDelta", "QRWeightWrapper", "TrainConfig", "TrainTargets", "select"]
