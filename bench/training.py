"""Section 3: one training step (forward + backward + AdamW) at 512 px, QR-LoRA vs ComfyUI's stock LoRA training.

Both follow comfy_extras/nodes_train.py (TrainLoraNode) with its defaults:
set_model_compute_dtype(bf16), one weight wrapper per trained weight
through ModelPatcher.add_weight_wrapper, base frozen with
requires_grad_(False), gradient checkpointing on every top-level block,
bf16 autocast, MSE loss, AdamW over the adapter parameters. The
checkpointing helpers are re-stated below because importing nodes_train
pulls in ComfyUI's node API (comfy_api, av). The forward is
BaseModel.apply_model with random conditioning (T5 context of 512
tokens, pooled vector, guidance), which is what the training sampler's
guider calls.

- lora: comfy.weight_adapter.LoRAAdapter.create_train(weight, rank, alpha=1)
  on every ComfyUI weight that holds a published target (fused qkv,
  proj, MLPs, single blocks' linear1), as the node does per weight.
- qrlora: the pack's own training layer (qrlora_core/training/layer.py):
  one QRWeightWrapper per ComfyUI weight holding one QRDelta per published
  target (a row slice of a fused weight): W + s·Q·triu(ΔR), Q a frozen
  buffer, ΔR (zero-init) the only parameter, one addmm per target.
"""

import contextlib
import gc
import inspect
import re
import textwrap

import torch
import torch.utils.checkpoint

from .common import allocated_bytes, free_cache, gib, median, peak_bytes, reset_peak, timed
from .flux import target_map


@contextlib.contextmanager
def out_of_place_residuals():
    """ComfyUI 0.3.75's Flux blocks add residuals in place (`img += ...`), on tensors
    autograd has saved, so a backward through them fails (with gradient
    checkpointing: recomputed tensors do not match). For both methods alike,
    the bench swaps exactly those statements for out-of-place adds while it
    trains; everything else in the blocks is ComfyUI's code as shipped.
    """
    from comfy.ldm.flux import layers

    originals = {}
    for cls in (layers.DoubleStreamBlock, layers.SingleStreamBlock):
        source = textwrap.dedent(inspect.getsource(cls.forward))
        fixed, count = re.subn(r"^(\s+)(img|txt|x) \+= ", r"\1\2 = \2 + ", source, flags=re.M)
        if count != (4 if cls is layers.DoubleStreamBlock else 1):
            raise RuntimeError(f"{cls.__name__}.forward changed in this ComfyUI: found {count} in-place residual adds")
        namespace = {}
        exec(compile(fixed, inspect.getsourcefile(cls), "exec"), layers.__dict__, namespace)
        originals[cls] = cls.forward
        cls.forward = namespace["forward"]
    try:
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward


# -- as in comfy_extras/nodes_train.py (find_all_highest_child_module_with_forward, patch, unpatch)


def _highest_children_with_forward(model, result=None, top=True):
    if result is None:
        result = []
    if not top and hasattr(model, "forward") and not isinstance(model, (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)):
        result.append(model)
        return result
    for child in model.children():
        _highest_children_with_forward(child, result, top=False)
    return result


def _checkpoint(m):
    org_forward = m.forward

    def fwd(args, kwargs):
        return org_forward(*args, **kwargs)

    def checkpointing_fwd(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(fwd, args, kwargs, use_reentrant=False)

    m.org_forward = org_forward
    m.forward = checkpointing_fwd


def _uncheckpoint(m):
    if hasattr(m, "org_forward"):
        m.forward = m.org_forward
        del m.org_forward


def _wrappers(ctx, method, model, targets, qs):
    """{ComfyUI weight key: train module} for every weight holding a target."""
    import comfy.utils
    from comfy.weight_adapter import LoRAAdapter

    layer = ctx.core("training.layer")
    by_key = {}
    for name, where in targets.items():
        key, offset = (where, None) if isinstance(where, str) else where
        by_key.setdefault(key, []).append(((offset[1], offset[2]) if offset else None, qs[name]))
    out = {}
    for key, pieces in by_key.items():
        weight = comfy.utils.get_attr(model, key)
        if method == "lora":
            out[key] = LoRAAdapter.create_train(weight, rank=ctx.rank, alpha=1.0).to(torch.bfloat16)
        else:
            pieces = sorted(pieces, key=lambda p: p[0] or (0, 0))
            deltas = [layer.QRDelta.zeros(q.to(torch.bfloat16), weight.shape[1], scale=1.0, triangular=True) for _, q in pieces]
            out[key] = layer.QRWeightWrapper(deltas, [rows for rows, _ in pieces])
    return out


def _inputs(ctx):
    device = ctx.device
    generator = torch.Generator(device=device).manual_seed(3)
    side = ctx.train_px // 8  # latent pixels (VAE factor 8)
    latent = torch.randn(1, 16, side, side, device=device, generator=generator)
    noise = torch.randn(latent.shape, device=device, generator=generator)
    return {
        "latent": latent, "noise": noise,
        "sigma": torch.tensor([0.7], device=device),
        "context": torch.randn(1, ctx.train_tokens, 4096, device=device, generator=generator),
        "y": torch.randn(1, 768, device=device, generator=generator),
        "guidance": torch.tensor([3.5], device=device),
    }


def _run_method(ctx, method, model, targets, qs, inputs, steps):
    import comfy.model_patcher

    device = ctx.device
    mp = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    mp.set_model_compute_dtype(torch.bfloat16)
    wrappers = _wrappers(ctx, method, model, targets, qs)
    params = [p for w in wrappers.values() for p in w.parameters() if p.requires_grad]
    for key, module in wrappers.items():
        mp.add_weight_wrapper(key, module)
    blocks = _highest_children_with_forward(mp.model.diffusion_model)
    for m in blocks:
        _checkpoint(m)
    mp.model.requires_grad_(False)
    mp.patch_model(device_to=device)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ms = mp.model.model_sampling
    xt = ms.noise_scaling(inputs["sigma"], inputs["noise"], inputs["latent"], False)
    x0 = ms.noise_scaling(torch.zeros_like(inputs["sigma"]), torch.zeros_like(inputs["noise"]), inputs["latent"], False)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = mp.model.apply_model(
                xt.detach().requires_grad_(True), inputs["sigma"].clone().requires_grad_(True),
                c_crossattn=inputs["context"], y=inputs["y"], guidance=inputs["guidance"],
            )
            loss = torch.nn.functional.mse_loss(out, x0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    step()  # warm-up: optimizer state, kernels
    times, peaks, before = [], [], allocated_bytes(device)
    gc.collect()
    gc.disable()  # a collection inside a timed step would land on one method by chance
    try:
        for _ in range(steps):
            reset_peak(device)
            loss, s = timed(device, step)
            times.append(s)
            peaks.append(peak_bytes(device))
    finally:
        gc.enable()
    out = {
        "step_s": times, "peak_bytes": max(peaks), "allocated_before_step_bytes": before, "loss": loss,
        "trainable_parameters": sum(p.numel() for p in params), "wrapped_weights": len(wrappers),
    }
    mp.unpatch_model()
    for m in blocks:
        _uncheckpoint(m)
    for m in model.modules():
        if hasattr(m, "weight_function"):
            m.weight_function, m.bias_function = [], []
    del optimizer, params, wrappers, mp
    free_cache(device)
    return out


def _check_layer(ctx, model, targets, qs) -> float:
    """The QR-LoRA train module against a float64 reference, with random ΔRs, on one fused weight."""
    import comfy.utils

    wrappers = _wrappers(ctx, "qrlora", model, targets, qs)
    key = next(k for k, m in wrappers.items() if len(m.targets) > 1)
    module = wrappers[key]
    generator = torch.Generator(device=ctx.device).manual_seed(13)
    with torch.no_grad():
        for t in module.targets:
            t.delta_r.copy_(torch.randn(t.delta_r.shape, device=ctx.device, generator=generator) * 0.1)
        w = comfy.utils.get_attr(model, key).detach()
        got = module(w).double()
        reference = w.double().clone()
        names = [n for n, where in targets.items() if not isinstance(where, str) and where[0] == key or where == key]
        for i, name in enumerate(sorted(names, key=lambda n: targets[n][1][1] if not isinstance(targets[n], str) else 0)):
            start = 0 if isinstance(targets[name], str) else targets[name][1][1]
            q = qs[name].to(torch.bfloat16).double()
            reference[start : start + q.shape[0]] += q @ torch.triu(module.targets[i].delta_r.double())
    return float((got - reference).norm() / (reference - w.double()).norm())


def run(ctx) -> dict:
    device = ctx.device
    _, keymap = ctx.pack
    model = ctx.model()
    targets = target_map(model, ctx.size, keymap)
    shapes = ctx.size.targets()
    generator = torch.Generator(device=device).manual_seed(11)
    qs = {n: torch.linalg.qr(torch.randn(m, ctx.rank, device=device, generator=generator))[0] for n, (m, _) in shapes.items()}
    inputs = _inputs(ctx)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    layer_error = _check_layer(ctx, model, targets, qs)
    ctx.log(f"training: QR-LoRA train module vs float64 reference, error relative to the delta {layer_error:.1e} (bf16)")
    runs = {"lora": [], "qrlora": []}
    with out_of_place_residuals():
        for round_ in range(ctx.train_rounds):  # interleaved, so drift in clocks hits both
            for method in runs:
                ctx.log(f"training round {round_ + 1}: {method}")
                r, _ = timed(device, _run_method, ctx, method, model, targets, qs, inputs, ctx.train_steps)
                runs[method].append(r)
                ctx.log(f"  {method}: step {median(r['step_s']):.3f} s, peak {gib(r['peak_bytes']):.2f} GiB, loss {r['loss']:.4f}")
    res = {"layer_check_error": layer_error, "px": ctx.train_px, "text_tokens": ctx.train_tokens, "model_weight_bytes": weights_bytes,
           "blocks": {"double": ctx.size.depth, "single": ctx.size.single}, "rank": ctx.rank}
    for method, rs in runs.items():
        res[method] = {
            "step_s": median([s for r in rs for s in r["step_s"]]),
            "peak_bytes": max(r["peak_bytes"] for r in rs),
            "peak_above_weights_bytes": max(r["peak_bytes"] for r in rs) - weights_bytes,
            "trainable_parameters": rs[0]["trainable_parameters"],
            "wrapped_weights": rs[0]["wrapped_weights"],
            "runs": rs,
        }
    del qs
    free_cache(device)
    return res
