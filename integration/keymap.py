"""Where an adapter's layer names land in a ComfyUI model.

Names are the spellings ComfyUI's own LoRA key map knows
(`comfy.lora.model_lora_keys_unet`): `transformer.<diffusers path>` for
Flux, SD3 and other DiTs (the published checkpoints' names), kohya's
`lora_unet_<diffusers path with _>` for SD1.5/SDXL UNets, and
`diffusion_model.<ComfyUI path>` for anything else. The map resolves them
to a ComfyUI weight key, or to (key, (dim, start, length)) for a row slice
of a fused matrix (Flux/SD3 qkv, Flux single blocks' linear1).
"""

import math

import torch

import comfy.lora
import comfy.utils
from comfy.model_patcher import get_key_weight

from ..qrlora_core.decompose import is_matrix_weight

TRANSFORMER_PREFIX = "transformer."
UNET_PREFIX = "lora_unet_"


def lora_key_map(model_patcher) -> dict:
    return comfy.lora.model_lora_keys_unet(model_patcher.model, {})


def split_target(target) -> tuple[str, tuple | None]:
    """(ComfyUI key, row slice or None); key-map values may also carry a convert function."""
    return (target, None) if isinstance(target, str) else (target[0], target[1])


def convert_of(target):
    """The layout function ComfyUI's key map gives a target (SD3's swap_scale_shift), or None.

    ModelPatcher applies it to a patch's delta, which the adapter holds in
    the diffusers layout; the model's own weight is in ComfyUI's layout.
    """
    return None if isinstance(target, str) or len(target) < 3 else target[2]


def in_model(state: dict, target) -> bool:
    """Whether the key a target names is in the model's state dict and its row slice fits. The key
    map is built from the config, so it names keys some models lack (SD3's last block has no context MLP)."""
    key, offset = split_target(target)
    weight = state.get(key)
    if weight is None:
        return False
    return offset is None or (offset[0] < weight.dim() and offset[1] + offset[2] <= weight.shape[offset[0]])


def target_shape(model_patcher, target) -> tuple[int, int]:
    """(out, in) of the matrix a target addresses, slices included."""
    key, offset = split_target(target)
    shape = list(comfy.utils.get_attr(model_patcher.model, key).shape)
    if offset is not None:
        shape[offset[0]] = offset[2]
    return shape[0], math.prod(shape[1:])


def target_weight(model_patcher, target):
    """The weight (or its row slice) a target addresses as this patcher makes it (see patched_weight), 2-D."""
    key, offset = split_target(target)
    return rows_of(patched_weight(model_patcher, key), offset)


def rows_of(weight, offset):
    """The row slice `offset` (or all) of a weight, as a 2-D (out, in) view."""
    if offset is not None:
        weight = weight.narrow(offset[0], offset[1], offset[2])
    return weight.reshape(weight.shape[0], -1)


def _is_trainable(weight) -> bool:
    return weight is not None and is_matrix_weight(weight.shape)


def named_targets(model_patcher) -> dict:
    """Every linear / 1x1-conv weight of the model under its canonical adapter name.

    Prefers the diffusers names ComfyUI maps (so our adapters line up with
    published ones), and falls back to ComfyUI's own key names.
    """
    key_map = lora_key_map(model_patcher)
    names = {k: v for k, v in key_map.items() if k.startswith(TRANSFORMER_PREFIX)}
    if not names:
        diffusers = comfy.utils.unet_to_diffusers(model_patcher.model.model_config.unet_config)
        spelled = (UNET_PREFIX + k[: -len(".weight")].replace(".", "_") for k in diffusers if k.endswith(".weight"))
        names = {k: key_map[k] for k in spelled if k in key_map}
    if not names:
        names = {k: v for k, v in key_map.items() if k.startswith("diffusion_model.") and isinstance(v, str) and k + ".weight" == v}
    # Layers stored in another layout (convert_of) are left out: their weight here is not the one their name means.
    state = model_patcher.model.state_dict()
    return {k: v for k, v in sorted(names.items()) if convert_of(v) is None and _is_trainable(state.get(split_target(v)[0]))}


def patched_weight(model_patcher, key: str):
    """A weight as this patcher makes it: its own patches applied, none that another clone left in place.

    ComfyUI patches the one shared model in place for whichever clone was
    loaded last (keeping the originals in the clones' shared backup), so
    the stored tensor alone may carry someone else's LoRA. No copy is made
    when the stored weight already is the answer.
    """
    weight, _, convert = get_key_weight(model_patcher.model, key)
    backup = model_patcher.backup.get(key)
    if backup is not None:
        weight = backup.weight
    if convert is None and key not in model_patcher.patches:
        return weight
    out = weight.to(torch.float32, copy=True)
    if convert is not None:
        out = convert(out, inplace=True)
    if key in model_patcher.patches:
        out = comfy.lora.calculate_weight(model_patcher.patches[key], out, key)
    return out if convert is not None else out.to(weight.dtype)
