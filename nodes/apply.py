"""Apply to Model: MODEL + QR_LORA -> MODEL, through ComfyUI's ModelPatcher."""

from comfy_api.latest import io

from ..qrlora_core.errors import AdapterError, require_finite
from ..qrlora_core.fingerprint import same_weight, sketch
from . import keymap
from .adapter_socket import CATEGORY, QRLoRAType, STRENGTH_RANGE
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


class QRLoRAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRAApply",
            display_name="Apply to Model",
            category=CATEGORY,
            description="Patches the model with W + strength · s · Q · ΔR per layer, applied lazily by ComfyUI like a LoRA.",
            inputs=[
                io.Model.Input("model"),
                QRLoRAType.Input("qr_lora"),
                io.Float.Input("strength", default=1.0, **STRENGTH_RANGE, display_mode=io.NumberDisplay.slider, tooltip="How strongly the adapter is applied (0 leaves the model as it is)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, qr_lora, strength) -> io.NodeOutput:
        require_finite(strength=strength)
        found, missing = resolve_targets(model, qr_lora)
        patches = patches_for(qr_lora, found)
        patched = model.clone()
        if strength != 0:
            patched.add_patches(patches, strength)
        lines = [f"Patched {len(patches)} of {len(qr_lora.targets)} adapter layers at strength {strength:g}."]
        if missing:
            lines.append(f"{len(missing)} layers are not in this model and were skipped (e.g. {missing[0]}).")
        if fingerprint_mismatches(model, qr_lora, found):
            lines.append("This model's weights differ from the base the adapter was trained on; results may differ from the trainer's.")
        return io.NodeOutput(patched, ui={"text": ["\n".join(lines)]})
