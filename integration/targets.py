"""Where an adapter's layers land in a loaded model, and the patches that put it there."""

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.fingerprint import same_weight, sketch
from . import keymap
from .weight_adapter import QRLoRAPatch

FINGERPRINT_CHECKS = 8  # layers compared against the adapter's base fingerprint


def resolve_targets(model, adapter) -> tuple[dict, list[str]]:
    """{adapter layer name: ComfyUI key or (key, slice)} for the layers the model has; names it lacks."""
    key_map = keymap.lora_key_map(model)
    state = model.model.state_dict()
    found, missing, wrong_shape = {}, [], []
    for name, target in adapter.targets.items():
        where = key_map.get(name)
        if where is None or not keymap.in_model(state, where):
            missing.append(name)
            continue
        shape = keymap.target_shape(model, where)
        if shape != (target.out_features, target.in_features):
            wrong_shape.append(f"{name}: adapter {(target.out_features, target.in_features)}, model {shape}")
            continue
        found[name] = where
    if wrong_shape:
        raise AdapterError(
            f"{adapter.source} was made for another base model: {len(wrong_shape)} layers have other shapes "
            f"(e.g. {wrong_shape[0]}); load the model this adapter was trained on."
        )
    if not found:
        example = next(iter(adapter.targets))
        raise AdapterError(
            f"{adapter.source} matches none of this model's layers (its layers are named like '{example}'); "
            "it was made for another kind of model: load a matching base model."
        )
    return found, missing


def patches_for(adapter, found: dict) -> dict:
    """ModelPatcher patches {key or (key, slice): QRLoRAPatch} for resolved layers."""
    return {where: QRLoRAPatch(adapter.targets[name].q, adapter.targets[name].delta_r, adapter.scale) for name, where in found.items()}


def fingerprint_mismatches(model, adapter, found: dict) -> int:
    """How many of a few spread-out layers differ from the base the adapter was trained on."""
    checked = [
        (where, adapter.targets[name].fingerprint) for name, where in found.items()
        if adapter.targets[name].fingerprint is not None and keymap.convert_of(where) is None  # other layout: not comparable
    ]
    step = max(1, len(checked) // FINGERPRINT_CHECKS)
    return sum(not same_weight(fp, sketch(keymap.target_weight(model, where))) for where, fp in checked[::step][:FINGERPRINT_CHECKS])


def apply(model, adapter, strength: float):
    """(a clone of `model` patched with strength · s · Q · ΔR per layer, what was done in a few sentences).

    Apply to Model and Mix QR-LoRAs both patch through here, so a mix equals Merge ΔR + Apply bit for bit.
    """
    found, missing = resolve_targets(model, adapter)
    patches = patches_for(adapter, found)
    patched = model.clone()
    if strength != 0:
        patched.add_patches(patches, strength)
    lines = [f"Patched {len(patches)} of {len(adapter.targets)} adapter layers at strength {strength:g}."]
    if missing:
        lines.append(f"{len(missing)} layers are not in this model and were skipped (e.g. {missing[0]}).")
    if fingerprint_mismatches(model, adapter, found):
        lines.append("This model's weights differ from the base the adapter was trained on; results may differ from the trainer's.")
    return patched, "\n".join(lines)
