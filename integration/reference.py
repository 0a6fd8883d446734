"""The reference implementation's Q-and-R checkpoints, resolved against a loaded model.

A Q-and-R checkpoint's update subtracts the base's top-r part, so it needs
the base weights (qrlora_core/reference_formats.py says why).
"""

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.reference_formats import resolve_q_and_r
from . import keymap


def base_weights(model):
    """name -> the model's weight for that adapter layer (None where it has none)."""
    key_map = keymap.lora_key_map(model)

    def base_weight(name):
        where = key_map.get(name)
        return None if where is None else keymap.target_weight(model, where)

    return base_weight


def q_and_r(model, source: str):
    """What read_adapter calls with a Q-and-R checkpoint's tensors: the adapter whose patch is its exact update on `model`."""

    def resolve(tensors: dict):
        if model is None:
            raise AdapterError(
                f"{source} is the QR-LoRA reference's Q-and-R checkpoint: its update is Q·R minus the base model's top-r part, "
                "so Load QR-LoRA needs the base model: connect the model to its 'model' input."
            )
        adapter, missing = resolve_q_and_r(tensors, base_weights(model), source)  # the reference's alpha = rank: s = 1
        if missing:
            adapter.metadata["note"] += f"; {len(missing)} layers are not in the connected model (e.g. {missing[0]})"
        return adapter

    return resolve
