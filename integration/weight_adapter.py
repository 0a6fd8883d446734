"""QR-LoRA as one of ComfyUI's weight adapters.

ModelPatcher keeps a list of patches per weight and calls
`calculate_weight` lazily, when (and where) it loads the weight: on the
GPU, in low-VRAM offloading, or per layer on the fly. Being a
`WeightAdapterBase` lets that machinery apply, offload and unpatch us
exactly like its own LoRA, and restore the original weights bit for bit.

The same class is registered in `comfy.weight_adapter.adapters`, the list
`comfy.lora.load_lora` asks to recognise a file's keys, so LoraLoader,
LoraLoaderModelOnly, CreateHookLora and every pack built on them read
QR-LoRA files (qrlora_core/stock_keys.py says which) into the very patch
Apply to Model makes.
"""

import logging
import weakref

import torch

import comfy.model_management
import comfy.weight_adapter
from comfy.weight_adapter.base import WeightAdapterBase

from ..qrlora_core.formats import DOWN, TRAINING_STATE_PREFIX, UP, is_q_and_r
from ..qrlora_core.patch import add_delta_, delta, delta_output
from ..qrlora_core.stock_keys import Refused, read_layer

_seen: dict[int, tuple] = {}  # id of a file's first tensor -> (a weak reference to it, what is known about that file)


def _about(lora: dict) -> dict:
    """What is known about one loaded file, for the length of its life. Its first tensor tells files apart: an id
    alone (of the dict, or the tensor) is reused once freed, so a new file of the same keys was taken for the old one."""
    first = next(iter(lora.values()), None)
    if not isinstance(first, torch.Tensor):
        return {}
    entry = _seen.get(id(first))
    if entry is None or entry[0]() is not first:
        if len(_seen) > 256:
            _seen.clear()
        entry = _seen[id(first)] = (weakref.ref(first), {})
    return entry[1]


def _warn_once(lora: dict, message: str) -> None:
    """One warning per file, not one per layer."""
    about = _about(lora)
    if "warned" not in about:
        about["warned"] = True
        logging.warning("[QR-LoRA] %s", message)


def _q_and_r(lora: dict) -> bool:
    about = _about(lora)
    if "q_and_r" not in about:
        about["q_and_r"] = is_q_and_r(lora)
    return about["q_and_r"]


def _training_state_keys(lora: dict) -> set:
    """A training checkpoint's state (train_state.*: optimizer moments, random draws) holds no weights: its keys
    count as read, once per file, so the stock loaders do not log each of them as a key not loaded."""
    about = _about(lora)
    if "state" in about:
        return set()
    about["state"] = True
    return {k for k in lora if k.startswith(TRAINING_STATE_PREFIX)}


def _is_identity(function) -> bool:
    """ComfyUI passes `lambda a: a` unless the key map gives a layout function (SD3's swap_scale_shift
    chunks rows), so the probe is a small weight-shaped matrix any such function accepts."""
    probe = torch.zeros(2, 1)
    return function(probe) is probe


class QRLoRAPatch(WeightAdapterBase):
    """One target's W += strength · s · Q · ΔR."""

    name = "qrlora"

    def __init__(self, q: torch.Tensor, delta_r: torch.Tensor, scale: float, loaded_keys: set | None = None):
        self.loaded_keys = loaded_keys or set()
        self.weights = [q, delta_r]
        self.scale = scale

    @classmethod
    def load(cls, x, lora, alpha=None, dora_scale=None, loaded_keys=None):
        """The stock loaders' question: is there a QR-LoRA layer under prefix `x` in this file?"""
        if x + UP in lora or x + ".to_out.0" + UP in lora:
            if _q_and_r(lora):
                _warn_once(lora, "This LoRA is the QR-LoRA reference's Q-and-R checkpoint (…to_out.0.to_out.0 layers): its update is "
                                 "Q_t·R_t minus the base's top-r part, which a LoRA loader cannot compute, so its layers are left "
                                 "unchanged. Load it with the Load QR-LoRA node and connect the model.")
                return _Refusal(x, lora)
            return None
        try:
            layer = read_layer(x, lora, alpha)
        except Refused as e:
            _warn_once(lora, f"A QR-LoRA layer ({x}) {e}. That layer is left unchanged (one warning per file: other refused layers are too, the rest load).")
            return None
        if layer is None:
            return None
        return cls(layer.q, layer.delta_r, layer.scale, layer.keys | _training_state_keys(lora))

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=torch.float32, original_weight=None):
        q, delta_r = self.weights
        if weight.dim() == 0 or (q.shape[0], delta_r.shape[1]) != (weight.shape[0], weight[0].numel()):
            # a file for another model through the stock loaders: skipped and logged, as ComfyUI's own adapters do
            logging.warning(f"[QR-LoRA] {key}: the adapter's layer is {q.shape[0]} x {delta_r.shape[1]}, the model's weight {tuple(weight.shape)}; "
                            "left unchanged (is the LoRA made for another model?)")
            return weight
        q, delta_r = (comfy.model_management.cast_to_device(t, weight.device, intermediate_dtype) for t in self.weights)
        factor = strength * self.scale
        if _is_identity(function) and weight.dtype == intermediate_dtype:
            return add_delta_(weight, q, delta_r, factor)  # one fused multiply-add, no m x n temporary
        weight += function(delta(q, delta_r, factor, intermediate_dtype).reshape(weight.shape)).type(weight.dtype)
        return weight

    def h(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """Newer ComfyUI's bypass mode (the model's weights stay as they are): s · (x ΔR^T) Q^T for a linear layer."""
        q, delta_r = self.weights
        return delta_output(x, q, delta_r, self.scale * getattr(self, "multiplier", 1.0))


class _Refusal(WeightAdapterBase):
    """Takes a layer another adapter would load wrongly and leaves the weight as it is (the log says why)."""

    name = "qrlora-refused"

    def __init__(self, x: str, lora: dict):
        self.loaded_keys = {k for k in (x + UP, x + DOWN, x + ".to_out.0" + UP, x + ".to_out.0" + DOWN) if k in lora}
        self.weights = []

    def calculate_weight(self, weight, *args, **kwargs):
        return weight


def register() -> None:
    """Put QRLoRAPatch into ComfyUI's adapter list, once: re-imports replace an earlier copy, never add a second."""
    adapters = comfy.weight_adapter.adapters
    adapters[:] = [a for a in adapters if getattr(a, "name", None) != QRLoRAPatch.name] + [QRLoRAPatch]
