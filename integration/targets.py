"""Where an adapter's layers land in a loaded model, and the patches that put it there."""

import torch

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.fingerprint import same_weight, sketch
from ..qrlora_core.formats import delta_bound
from . import keymap
from .weight_adapter import QRLoRAPatch

FINGERPRINT_CHECKS = 8  # layers compared against the adapter's base fingerprint
SIZE_CHECKS = 8  # layers (those with the largest deltas) whose delta is compared with their weight
FAR_BEYOND = 10.0  # |ΔW| / |W| (Frobenius) past which a delta is said to be far beyond a trained one (docs/method.md, "Delta sizes")


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
    far = delta_sizes(model, adapter, found, strength)
    patches = patches_for(adapter, found)
    patched = model.clone()
    if strength != 0:
        patched.add_patches(patches, strength)
    lines = [f"Patched {len(patches)} of {len(adapter.targets)} adapter layers at strength {strength:g}."]
    if missing:
        lines.append(f"{len(missing)} layers are not in this model and were skipped (e.g. {missing[0]}).")
    if far:
        lines.append(far)
    if fingerprint_mismatches(model, adapter, found):
        lines.append("This model's weights differ from the base the adapter was trained on; results may differ from the trainer's.")
    return patched, "\n".join(lines)


def delta_sizes(model, adapter, found: dict, strength: float) -> str | None:
    """Refuse a delta that would make a weight infinite in the model's dtype; a sentence when one is far beyond any trained one.

    |ΔW| = |strength·s|·|ΔR| exactly when Q is orthonormal, so the sizes cost ΔR's norms; only the
    largest few are compared with their weights (reading every weight of a large model would cost seconds).
    """
    factor = strength * adapter.scale
    sizes = sorted(((abs(factor) * float(torch.linalg.vector_norm(adapter.targets[n].delta_r.double())), n, w) for n, w in found.items()), reverse=True)
    if not sizes:
        return None
    _, name, where = sizes[0]
    weight, t = keymap.target_weight(model, where), adapter.targets[name]
    if weight.is_floating_point() and not delta_bound(t.q, t.delta_r, factor) < torch.finfo(weight.dtype).max:
        raise AdapterError(
            f"{adapter.source or 'The adapter'} at strength {strength:g} would make layer {name} infinite in this model's {weight.dtype} weights "
            f"(its delta reaches {delta_bound(t.q, t.delta_r, factor):.3g}): its values are absurd (a damaged file, or alpha or block weights "
            "far too large); use another file or smaller weights."
        )
    worst = (0.0, "")  # a name, not None: equal ratios (an all-zero mix) compare the names next
    for size, name, where in sizes[:SIZE_CHECKS]:
        norm = float(torch.linalg.vector_norm(keymap.target_weight(model, where).detach().double()))  # a weight in training needs no graph here
        worst = max(worst, (size / max(norm, 1e-30), name))
    if worst[0] > FAR_BEYOND:
        return (f"The delta of layer {worst[1]} is {worst[0]:.3g} times the size of its weight, far beyond any trained adapter's "
                f"(more than {FAR_BEYOND:g}x): expect a broken image; check the file, its alpha, the block weights and the strength.")
    return None
