"""QR-LoRA as one of ComfyUI's weight adapters.

ModelPatcher keeps a list of patches per weight and calls
`calculate_weight` lazily, when (and where) it loads the weight: on the
GPU, in low-VRAM offloading, or per layer on the fly. Being a
`WeightAdapterBase` lets that machinery apply, offload and unpatch us
exactly like its own LoRA, and restore the original weights bit for bit.
"""

import torch

import comfy.model_management
from comfy.weight_adapter.base import WeightAdapterBase

from ..qrlora_core.patch import add_delta_


def _is_identity(function) -> bool:
    probe = torch.zeros(())
    return function(probe) is probe


class QRLoRAPatch(WeightAdapterBase):
    """One target's W += strength · s · Q · ΔR."""

    name = "qrlora"

    def __init__(self, q: torch.Tensor, delta_r: torch.Tensor, scale: float):
        self.loaded_keys = set()
        self.weights = [q, delta_r]
        self.scale = scale

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=torch.float32, original_weight=None):
        q, delta_r = (comfy.model_management.cast_to_device(t, weight.device, intermediate_dtype) for t in self.weights)
        factor = strength * self.scale
        if _is_identity(function) and weight.dtype == intermediate_dtype:
            return add_delta_(weight, q, delta_r, factor)  # one fused multiply-add, no m x n temporary
        delta = torch.mm(q, delta_r).mul_(factor).reshape(weight.shape)
        weight += function(delta).type(weight.dtype)
        return weight
