"""Section 3: one training step at 512 px through the node's own TrainingSession, QR-LoRA vs ComfyUI's stock LoRA.

Both run through `nodes/train_session.TrainingSession`, the object
QRLoRATrain trains with: the same setup (weight wrappers on a clone via
ModelPatcher.add_weight_wrapper, the in-place residual adds of ComfyUI's
Flux blocks rewritten out of place, gradient checkpointing per top-level
block, base frozen), the same step (ComfyUI's conditioning and
calc_cond_batch under bf16 autocast, the reference objective, AdamW with
weight decay, clipping at norm 1.0). One optimizer step = one forward,
backward and update (gradient accumulation 1, batch 1). Nothing is
rewritten for the bench; only the trained adapter differs:

- lora: comfy.weight_adapter.LoRAAdapter.create_train(weight, rank, alpha=1)
  in bf16 on every ComfyUI weight that holds a published target (fused qkv,
  proj, MLPs, single blocks' linear1), as TrainLoraNode does per weight.
- qrlora: the session's own QR-LoRA targets (the basis decomposed once by
  the pack's BasisStore, then loaded): one QRWeightWrapper per weight, one
  QRDelta per published target, W + s·Q·triu(ΔR), only ΔR trained.

The model's conditioning is random: a T5 context of 512 tokens and a
pooled vector; the session sets Flux's guidance input to 1.0.
"""

import gc
import os

import torch

from .common import free_cache, gib, median, peak_bytes, reset_peak, timed
from .flux import target_map


class StockLoRA:
    """ComfyUI's LoRA training adapter on each weight the chosen targets live in, for TrainingSession."""

    def __init__(self, model, where: dict, rank: int, dtype=torch.bfloat16):
        import comfy.utils
        from comfy.weight_adapter import LoRAAdapter

        keys = sorted({key for key, _ in where.values()})
        self.modules = {k: LoRAAdapter.create_train(comfy.utils.get_attr(model, k), rank=rank, alpha=1.0).to(dtype) for k in keys}

    def wrappers(self, where) -> dict:
        return self.modules

    def parameters(self) -> list:
        return [p for m in self.modules.values() for p in m.parameters()]


def _session_module():
    from devkit import host

    return host.module("integration.training.session")


def _inputs(ctx):
    generator = torch.Generator().manual_seed(3)
    side = ctx.train_px // 8  # latent pixels (VAE factor 8)
    latents = [{"samples": torch.randn(1, 16, side, side, generator=generator)}]
    caption = [[torch.randn(1, ctx.train_tokens, 4096, generator=generator), {"pooled_output": torch.randn(1, 768, generator=generator)}]]
    return latents, [caption]


def _config(ctx):
    from devkit import host

    config = host.module("qrlora_core.training.config")
    return config.TrainConfig(rank=ctx.rank, steps=ctx.train_steps, grad_accumulation=1, batch_size=1, training_dtype="bf16",
                              gradient_checkpointing=True, seed=5)


def _run_method(ctx, method, patcher, inputs, steps):
    sessions = _session_module()
    config = _config(ctx)
    trainable = None
    if method == "lora":
        where, _ = sessions.choose_targets(patcher, config)
        trainable = StockLoRA(patcher.model, where, ctx.rank)
    device = ctx.device
    session = sessions.TrainingSession(patcher, config, *inputs, trainable=trainable)
    params = session.targets.parameters()
    with session:
        loop = session.loop

        def step(i):
            return loop.step(i, session.micro_loss)

        step(0)  # warm-up: optimizer state, kernels
        times, peaks = [], []
        gc.collect()
        gc.disable()  # a collection inside a timed step would land on one method by chance
        try:
            for i in range(steps):
                reset_peak(device)
                loss, s = timed(device, step, i + 1)
                times.append(s)
                peaks.append(peak_bytes(device))
        finally:
            gc.enable()
        out = {"step_s": times, "peak_bytes": max(peaks), "loss": loss, "trainable_parameters": sum(p.numel() for p in params),
               "wrapped_weights": len(session.wrappers), "rewritten_classes": sorted(c.__name__ for c in session.rewrites.classes)}
    del session, trainable, params
    free_cache(device)
    return out


def _check_layer(ctx, model, targets, qs) -> float:
    """The pack's training layer against a float64 reference, with random ΔRs, on one fused weight."""
    import comfy.utils

    layer = ctx.core("training.layer")
    fused = {}
    for name, where in targets.items():
        if not isinstance(where, str):
            fused.setdefault(where[0], []).append((where[1][1], name))
    key, parts = next((k, sorted(p)) for k, p in fused.items() if len(p) > 1)
    w = comfy.utils.get_attr(model, key).detach()
    deltas = [layer.QRDelta.zeros(qs[n].to(torch.bfloat16), w.shape[1], scale=1.0, triangular=True) for _, n in parts]
    module = layer.QRWeightWrapper(deltas, [(start, qs[n].shape[0]) for start, n in parts])
    generator = torch.Generator(device=ctx.device).manual_seed(13)
    with torch.no_grad():
        for t in module.targets:
            t.delta_r.copy_(torch.randn(t.delta_r.shape, device=ctx.device, generator=generator) * 0.1)
        got = module(w).double()
        reference = w.double().clone()
        for (start, name), t in zip(parts, module.targets):
            q = qs[name].to(torch.bfloat16).double()
            reference[start : start + q.shape[0]] += q @ torch.triu(t.delta_r.double())
    return float((got - reference).norm() / (reference - w.double()).norm())


def _store_basis(ctx, patcher, qs) -> None:
    """Put a basis (random orthonormal Qs) for this model into the session's BasisStore, as a first training would.

    The weights are random, so their spectra are nearly flat and an honest
    decomposition takes the slow exact path (section 1 times the basis on
    decaying spectra); the timed step is the same whatever Q holds.
    """
    from devkit import host

    sessions = _session_module()
    fingerprint, basis = host.module("qrlora_core.fingerprint"), host.module("qrlora_core.basis")
    where, _ = sessions.choose_targets(patcher, _config(ctx))
    weights = sessions.base_weights(patcher, where, ctx.device)
    sketches = {n: fingerprint.sketch(w) for n, w in weights.items()}
    store = host.module("integration.files").basis_store()
    store.save(basis.basis_id(ctx.rank, sketches=sketches), {n: qs[n].float().cpu() for n in weights}, sketches)


def run(ctx) -> dict:
    import comfy.model_patcher
    import folder_paths

    device = ctx.device
    _, keymap = ctx.pack
    model = ctx.model()
    for name in ("loras", "qrlora_bases"):  # the basis store of the session, in scratch space
        folder = os.path.join(ctx.scratch, "qrlora-bench-train", name)
        os.makedirs(folder, exist_ok=True)
        folder_paths.folder_names_and_paths[name] = ([folder], {".safetensors"})
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    targets = target_map(model, ctx.size, keymap)
    shapes = ctx.size.targets()
    generator = torch.Generator(device=device).manual_seed(11)
    qs = {n: torch.linalg.qr(torch.randn(m, ctx.rank, device=device, generator=generator))[0] for n, (m, _) in shapes.items()}
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    layer_error = _check_layer(ctx, model, targets, qs)
    _store_basis(ctx, patcher, qs)
    del qs
    ctx.log(f"training: QR-LoRA train module vs float64 reference, error relative to the delta {layer_error:.1e} (bf16)")
    inputs = _inputs(ctx)
    runs = {"lora": [], "qrlora": []}
    for round_ in range(ctx.train_rounds):  # interleaved, so drift in clocks hits both
        for method in runs:
            ctx.log(f"training round {round_ + 1}: {method}")
            r, _ = timed(device, _run_method, ctx, method, patcher, inputs, ctx.train_steps)
            runs[method].append(r)
            ctx.log(f"  {method}: step {median(r['step_s']):.3f} s, peak {gib(r['peak_bytes']):.2f} GiB, loss {r['loss']:.4f}, "
                    f"{r['trainable_parameters'] / 1e6:.1f} M trained, rewritten: {', '.join(r['rewritten_classes'])}")
    res = {"layer_check_error": layer_error, "px": ctx.train_px, "text_tokens": ctx.train_tokens, "model_weight_bytes": weights_bytes,
           "blocks": {"double": ctx.size.depth, "single": ctx.size.single}, "rank": ctx.rank, "path": "nodes/train_session.TrainingSession"}
    for method, rs in runs.items():
        res[method] = {
            "step_s": median([s for r in rs for s in r["step_s"]]),
            "peak_bytes": max(r["peak_bytes"] for r in rs),
            "peak_above_weights_bytes": max(r["peak_bytes"] for r in rs) - weights_bytes,
            "trainable_parameters": rs[0]["trainable_parameters"],
            "wrapped_weights": rs[0]["wrapped_weights"],
            "runs": rs,
        }
    free_cache(device)
    return res
