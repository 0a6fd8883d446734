"""What the pack's nodes share: the socket type that carries an adapter between them, how an
adapter is described on a node, the node menu categories and the strength sliders' range."""

from comfy_api.latest import io

from ..qrlora_core.adapter import QRLoRA

QRLoRAType = io.Custom("QR_LORA")
CATEGORY = "QR-LoRA"
TRAINING_CATEGORY = CATEGORY + "/training"
STRENGTH_RANGE = {"min": -4.0, "max": 4.0, "step": 0.01}


def describe_adapter(adapter: QRLoRA) -> str:
    s = adapter.summary()
    parts = [f"{s['format']} · rank {s['rank']} · alpha {s['alpha']:g} · {s['layers']} layers · {s['parameters']:,} ΔR values"]
    if s["trigger_words"]:
        parts.append(f"trigger words: {s['trigger_words']}")
    if s["base_fingerprint"]:
        parts.append(f"base: {s['base_fingerprint']}")
    if not s["shared_basis"]:
        parts.append("mixed bases (merged by summing deltas)")
    return "\n".join(parts)
