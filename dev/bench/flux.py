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


def decaying_weights(shapes: dict, power: float, device, seed: int, gaussian_norm: bool = False):
    """(name, W) for each name -> (m, n) in `shapes`: W = U diag(k^-power) V^T in bf16, k = 1..min(m, n).

    U and V are row- and column-permuted, sign-flipped copies of one random
    orthonormal matrix per dimension (one QR each, so a weight costs only
    gathers and one product); any orthonormal U, V give exactly this spectrum.
    Yielded one at a time, so the caller holds one weight's working copies.
    With `gaussian_norm` the spectrum is scaled to the Frobenius norm of an
    N(0, 1/n) matrix (sqrt(m)), so a layer keeps the size of its outputs.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    bases = {}
    for name, (m, n) in shapes.items():
        k = min(m, n)
        for dim in (m, n):
            if (dim, k) not in bases:
                bases[(dim, k)] = torch.linalg.qr(torch.randn(dim, k, device=device, dtype=torch.float32, generator=generator))[0]

        def scrambled(dim):
            b = bases[(dim, k)]
            rows = torch.randperm(dim, device=device, generator=generator)
            cols = torch.randperm(k, device=device, generator=generator)
            signs = torch.randint(0, 2, (dim, 1), device=device, generator=generator, dtype=torch.float32) * 2 - 1
            return b[rows][:, cols] * signs

        s = torch.arange(1, k + 1, device=device, dtype=torch.float32) ** -power
        if gaussian_norm:
            s *= m**0.5 / s.square().sum().sqrt()
        yield name, ((scrambled(m) * s) @ scrambled(n).T).to(torch.bfloat16)


def give_decaying_spectra(model, size: FluxSize, keymap, power: float = 0.5, seed: int = 1) -> None:
    """Every published target of a build_model model gets a decaying spectrum, as trained checkpoints have.

    build_model's Gaussian weights have nearly flat spectra, which no
    iterative method can separate: the basis build takes its slow exact
    path (about 200 s for FLUX.1-dev's 342 targets on an H200). Real
    checkpoint weights decay; W = U diag(k^-power) V^T, scaled to the
    Gaussian fill's Frobenius norm (activations keep their size), lets
    the basis converge as on a real model. Stored in the model's dtype
    (float8 rounds it, as an fp8 checkpoint would).
    """
    import comfy.utils

    targets = target_map(model, size, keymap)
    with torch.no_grad():
        for name, w in decaying_weights(size.targets(), power, next(model.parameters()).device, seed, gaussian_norm=True):
            key, offset = keymap.split_target(targets[name])
            weight = comfy.utils.get_attr(model, key)
            (weight.narrow(*offset) if offset is not None else weight).copy_(w)


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
