"""FLUX.1-dev's shapes and QR-LoRA's published target modules, at full size or scaled down for a smoke run."""

from dataclasses import dataclass

import torch

DOUBLE_TARGETS = (  # per transformer_blocks.N (diffusers names, as the published checkpoints spell them)
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)
SINGLE_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v")  # per single_transformer_blocks.N


@dataclass(frozen=True)
class FluxSize:
    hidden: int = 3072
    heads: int = 24
    depth: int = 19
    single: int = 38
    mlp_ratio: int = 4

    @property
    def mlp(self) -> int:
        return self.hidden * self.mlp_ratio

    def config(self) -> dict:
        """ComfyUI's Flux unet_config (FLUX.1-dev's at the default size)."""
        head = self.hidden // self.heads
        axes = [16, 56, 56] if head == 128 else [head - 2 * (head * 7 // 16), head * 7 // 16, head * 7 // 16]
        return {
            "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
            "hidden_size": self.hidden, "mlp_ratio": float(self.mlp_ratio), "num_heads": self.heads, "depth": self.depth,
            "depth_single_blocks": self.single, "axes_dim": axes, "theta": 10000, "qkv_bias": True, "guidance_embed": True,
            "patch_size": 2,
        }

    def targets(self) -> dict[str, tuple[int, int]]:
        """Published target name -> (out, in), in model order."""
        h, f = self.hidden, self.mlp
        shape = {"ff.net.0.proj": (f, h), "ff_context.net.0.proj": (f, h), "ff.net.2": (h, f), "ff_context.net.2": (h, f)}
        out = {}
        for i in range(self.depth):
            for t in DOUBLE_TARGETS:
                out[f"transformer.transformer_blocks.{i}.{t}"] = shape.get(t, (h, h))
        for i in range(self.single):
            for t in SINGLE_TARGETS:
                out[f"transformer.single_transformer_blocks.{i}.{t}"] = (h, h)
        return out


FULL = FluxSize()
SMOKE = FluxSize(hidden=256, heads=2, depth=2, single=2)


def build_model(size: FluxSize, device: torch.device, dtype=torch.bfloat16, seed: int = 0, compute_dtype=None):
    """ComfyUI's own Flux BaseModel with random weights, allocated directly on `device`.

    ComfyUI's disable_weight_init ops allocate parameters without
    initializing them, so nothing runs on the CPU for a 12B model; every
    parameter is then filled with N(0, 1/fan_in) on the device (never zeros).
    `compute_dtype` other than `dtype` gives what ComfyUI's loaders give for
    a weight_dtype such as fp8_e4m3fn: weights stored in `dtype`, layers
    casting them to `compute_dtype` per use (manual cast ops).
    """
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(size.config())
    model_config.set_inference_dtype(dtype, compute_dtype if compute_dtype not in (None, dtype) else None)
    model = model_config.get_model({}, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            if p.dtype.itemsize == 1:  # float8: no random fill of its own
                p.copy_(torch.randn(p.shape, device=device, generator=generator, dtype=torch.bfloat16) * max(fan_in, 1) ** -0.5)
            else:
                p.normal_(0.0, max(fan_in, 1) ** -0.5, generator=generator)
    model.eval()
    return model


def target_map(model, size: FluxSize, keymap) -> dict:
    """Published target name -> ComfyUI key or (key, (dim, start, length)), through ComfyUI's own LoRA key map."""
    key_map = keymap.lora_key_map(_Patcherish(model))
    wanted = size.targets()
    found = {name: key_map[name] for name in wanted if name in key_map}
    missing = [n for n in wanted if n not in found]
    if missing:
        raise RuntimeError(f"ComfyUI's key map lacks {len(missing)} published targets, e.g. {missing[0]}")
    return found


class _Patcherish:
    def __init__(self, model):
        self.model = model
