"""QR-LoRA as Hook: an adapter or a mix as ComfyUI HOOKS, so its strength can follow hook keyframes.

ComfyUI's hooks patch weights per conditioning and per step range (e.g.
content strong early, style late: two hooks with their own keyframes).
The adapter becomes the tensors the stock loaders read (stock_keys.py)
and goes through comfy.hooks.create_hook_lora, so the hook system resolves
it with the model's own key map into the same QRLoRAPatch that Apply to
Model makes.
"""

import comfy.hooks
from comfy_api.latest import io

from ..qrlora_core.errors import require_finite
from ..qrlora_core.stock_keys import state_dict
from .adapter_socket import CATEGORY, QRLoRAType, STRENGTH_RANGE


class QRLoRAHook(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRAHook",
            display_name="QR-LoRA as Hook",
            category=CATEGORY,
            description="Turns an adapter (or a mix) into HOOKS for the conditioning hook nodes; with keyframes its strength changes between steps.",
            inputs=[
                QRLoRAType.Input("qr_lora"),
                io.Float.Input("strength", default=1.0, **STRENGTH_RANGE, display_mode=io.NumberDisplay.slider, tooltip="Strength of the adapter; keyframes multiply it."),
                io.Hooks.Input("prev_hooks", optional=True, tooltip="Hooks to combine with (for example the other adapter's)."),
                io.HookKeyframes.Input("hook_kf", optional=True, tooltip="Keyframes (Create Hook Keyframe): strength multipliers from a start percent of the sampling on."),
            ],
            outputs=[io.Hooks.Output(display_name="hooks")],
        )

    @classmethod
    def execute(cls, qr_lora, strength, prev_hooks=None, hook_kf=None) -> io.NodeOutput:
        require_finite(strength=strength)
        hooks = comfy.hooks.create_hook_lora(lora=state_dict(qr_lora), strength_model=strength, strength_clip=0.0)
        if hook_kf is not None:  # Create Hook Keyframe lets a NaN multiplier through, which would patch NaN weights
            require_finite(**{f"strength_mult of keyframe {i + 1}": kf.strength for i, kf in enumerate(hook_kf.keyframes)})
            hooks.set_keyframes_on_hooks(hook_kf=hook_kf)
        combined = hooks if prev_hooks is None else prev_hooks.clone_and_combine(hooks)
        return io.NodeOutput(combined, ui={"text": [f"{len(qr_lora.targets)} layers as a hook at strength {strength:g}" + (" with keyframes" if hook_kf else "")]})
