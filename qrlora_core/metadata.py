"""Standard metadata for every file the pack writes: Stability AI's model spec (`modelspec.*`).

Model managers, the ComfyUI frontend and LoRA browsers read these keys to
show a title, the base model and the trigger phrase, so our files carry
them next to our own `qrlora.*` keys. The base architecture is read from
the adapter's layer names and shapes (no file of ours needs to record it):
Flux has single-stream blocks, SD3 joint blocks only, and a UNet's
cross-attention width tells SD1.x (768), SD2.x (1024) and SDXL (2048) apart.
"""

import datetime
import json
import os

SPEC_VERSION = "1.0.0"
IMPLEMENTATION = "https://arxiv.org/abs/2507.04599"  # QR-LoRA; files written by comfyui-qrlora
BASE_MODELS = {  # base -> modelspec.architecture
    "flux": "flux-1-dev", "sd3": "stable-diffusion-v3-medium", "sdxl": "stable-diffusion-xl-v1-base",
    "sd2": "stable-diffusion-v2", "sd1": "stable-diffusion-v1",
}
CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def base_of(adapter) -> str | None:
    """'flux', 'sd3', 'sdxl', 'sd2', 'sd1' or None, from the adapter's layer names and shapes."""
    return _base_from({name: t.in_features for name, t in adapter.targets.items()})


def _base_from(in_features: dict) -> str | None:
    """The base from {layer name: its input width, or None where unknown}."""
    names = in_features
    if any(n.startswith("transformer.single_transformer_blocks.") for n in names):
        return "flux"
    if any(n.startswith("transformer.transformer_blocks.") for n in names):
        return "sd3"
    for name, width in names.items():
        if width is not None and name.startswith("lora_unet_") and name.endswith("_attn2_to_k"):
            return CONTEXT_WIDTHS.get(width)
    if any(n.startswith("lora_unet_") for n in names) and not any(n.startswith("lora_unet_down_blocks_0_attentions_") for n in names):
        return "sdxl"  # SDXL has no attention in its first level (SD1.x and SD2.x do, and need the width to tell apart)
    return None


def modelspec(adapter, path: str, network: str) -> dict:
    """`modelspec.*` keys for a file at `path`; `network` is 'qr-lora' (our formats) or 'lora' (exports)."""
    base = base_of(adapter)
    architecture = BASE_MODELS.get(base, "unknown")
    meta = {
        "modelspec.sai_model_spec": SPEC_VERSION,
        "modelspec.architecture": f"{architecture}/{network}",
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": adapter.metadata.get("title") or os.path.splitext(os.path.basename(path))[0],
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.description": f"QR-LoRA ({adapter.format}), rank {adapter.rank}, {len(adapter.targets)} layers, written by comfyui-qrlora",
    }
    if trigger := adapter.metadata.get("trigger_words"):
        meta["modelspec.trigger_phrase"] = trigger
    if merged := adapter.metadata.get("merged_from"):
        meta["modelspec.merged_from"] = ", ".join(_merged_sources(merged))
    return meta


def _merged_sources(merged) -> list[str]:
    """The source names a `merged_from` entry lists: ours is a JSON list of {source, weight}; any other
    value (a file may say anything) is shown as it is."""
    if isinstance(merged, str):  # as read back from a file
        try:
            merged = json.loads(merged)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            return [merged]
    if not isinstance(merged, list):
        return [json.dumps(merged) if not isinstance(merged, str) else merged]
    return [str(m.get("source", m)) if isinstance(m, dict) else str(m) for m in merged]


def basis_modelspec(basis_id: str, qs: dict) -> dict:
    """`modelspec.*` keys for a shared basis file (Q per layer of one base model and rank)."""
    architecture = BASE_MODELS.get(_base_from(dict.fromkeys(qs)), "unknown")
    return {
        "modelspec.sai_model_spec": SPEC_VERSION,
        "modelspec.architecture": f"{architecture}/qr-lora-basis",
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": basis_id,
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.description": f"QR-LoRA shared basis: Q of {len(qs)} layers, for compact adapters and training (comfyui-qrlora)",
    }


def trigger_words(adapter) -> str:
    """The words a prompt needs for this adapter ('' if none are known)."""
    return adapter.metadata.get("trigger_words", "") or ""
