"""Section 2: patching a FLUX.1-dev-sized model through ComfyUI's real ModelPatcher.

One cycle = clone the patcher, add the patches (not timed: node time),
then patch_model (the load with patches applied, timed) and unpatch_model
(timed). The model stays resident on the device with ModelPatcher's
load and offload devices both set to it (ComfyUI's --gpu-only / high-VRAM
layout), so the cycle measures the patch math, not a 24 GB host copy.

Cases, each a median of timed cycles after a warm-up:
- empty: a clone with no patches (ModelPatcher's own walk over the model);
- noop: a do-nothing patch on every target weight (ComfyUI's float32
  copy, rounding back and parameter swap per weight, without any math);
- qrlora k: one QR-LoRA (k = 1) or a merge of k adapters sharing one
  basis (qrlora_core.merge: one rank-r ΔR per target), one QRLoRAPatch per target;
- lora k: k plain LoRAs of the same rank (up = s·Q, down = ΔR_i, bf16 as
  LoRA files usually are), one stock LoRA patch each per target, as
  chained LoraLoaders give.
Adapter tensors sit where loaders put them (host memory: QR-LoRA float32,
LoRA bf16) or, in a second pass, already on the device.

Also: the memory floor for the targets alone (each target's bf16 bytes
read and written once, over the measured device-to-device copy rate) and
our direct bf16 addmm of the merged ΔR into every target, outside ComfyUI.
"""

import torch

from .common import copy_bandwidth, event_times, free_cache, median, sync, timed
from .flux import target_map

KS = (1, 2, 4, 8)
DELTA_STD = 0.1  # ΔR entries; makes s·Q·ΔR about as large as the weights, so a wrong patch shows


def _noop_patch_class():
    from comfy.weight_adapter.base import WeightAdapterBase

    class NoopPatch(WeightAdapterBase):
        name = "noop"

        def __init__(self):
            self.loaded_keys = set()
            self.weights = []

        def calculate_weight(self, weight, *args, **kwargs):
            return weight

    return NoopPatch


def _adapters(ctx, shapes: dict, count: int):
    """One shared basis (random orthonormal Q per target) and `count` random ΔRs, in host memory as loaded."""
    adapter_mod = ctx.core("adapter")
    device, rank = ctx.device, ctx.rank
    generator = torch.Generator(device=device).manual_seed(7)
    qs = {n: torch.linalg.qr(torch.randn(m, rank, device=device, generator=generator))[0].cpu() for n, (m, _) in shapes.items()}
    adapters = []
    for i in range(count):
        targets = {
            n: adapter_mod.QRTarget(q=qs[n], delta_r=(torch.randn(rank, k, device=device, generator=generator) * DELTA_STD).cpu())
            for n, (_, k) in shapes.items()
        }
        adapters.append(adapter_mod.QRLoRA(targets, rank=rank, alpha=float(rank), format="native", source=f"adapter{i}"))
    return adapters


def _on(tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor if device is None else tensor.to(device)


def qr_patches(weight_adapter, targets: dict, adapter, device=None) -> dict:
    """{ComfyUI key or (key, slice): QRLoRAPatch}, as nodes/apply.build_patches makes them."""
    return {
        targets[n]: weight_adapter.QRLoRAPatch(_on(t.q, device), _on(t.delta_r, device), adapter.scale)
        for n, t in adapter.targets.items()
    }


def lora_state_dict(adapter, device=None, dtype=torch.bfloat16) -> dict:
    """A plain LoRA file's tensors (diffusers names) with up = s·Q, down = ΔR."""
    sd = {}
    for n, t in adapter.targets.items():
        up, down = t.up_down(adapter.scale)
        sd[n + ".lora_B.weight"] = _on(up.to(dtype), device)
        sd[n + ".lora_A.weight"] = _on(down.to(dtype), device)
    return sd


def run(ctx) -> dict:
    import comfy.lora
    import comfy.model_patcher
    import comfy.utils

    device, size, rank = ctx.device, ctx.size, ctx.rank
    weight_adapter, keymap = ctx.pack
    merge_mod = ctx.core("merge")
    model = ctx.model()
    targets = target_map(model, size, keymap)
    shapes = size.targets()
    base = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    key_map = keymap.lora_key_map(base)
    res = {"targets": len(targets), "rank": rank, "adapter_dtypes": {"qrlora": "float32", "lora": "bfloat16"}}

    ctx.log("patching: making adapters")
    adapters = _adapters(ctx, shapes, max(KS))
    merged, merge_seconds = {1: adapters[0]}, {}
    for k in KS[1:]:
        (merged[k], report), merge_seconds[k] = timed(device, merge_mod.merge, adapters[:k], [1.0] * k)
        if report.fallback or merged[k].targets[next(iter(shapes))].rank != rank:
            raise RuntimeError(f"merging {k} adapters on one basis fell back: {report.text()}")
    res["merge_seconds"] = merge_seconds
    lora_sds = [lora_state_dict(a) for a in adapters]

    def cycle(patch_sets):
        mp = base.clone()
        for patches in patch_sets:
            mp.add_patches(patches, 1.0)
        sync(device)
        _, load = timed(device, mp.patch_model, device_to=device)
        _, unload = timed(device, mp.unpatch_model)
        return load, unload

    def measure(name, make_sets, repeats):
        sets = make_sets()
        cycle(sets)  # warm-up
        loads, unloads = zip(*(cycle(sets) for _ in range(repeats)))
        out = {"patch_s": median(loads), "unpatch_s": median(unloads), "total_s": median([a + b for a, b in zip(loads, unloads)])}
        out["patch_runs_s"] = list(loads)
        ctx.log(f"  {name}: patch {out['patch_s'] * 1e3:.1f} ms, unpatch {out['unpatch_s'] * 1e3:.1f} ms")
        del sets
        return out

    noop = _noop_patch_class()
    repeats = ctx.repeats
    for where, dev in (("host", None), ("device", device)):
        if where == "device" and device.type == "cpu":
            break
        ctx.log(f"patching with adapter tensors in {where} memory")
        cases = {"empty": measure("empty", lambda: [], repeats)}
        cases["noop"] = measure("noop", lambda: [{targets[n]: noop() for n in shapes}], repeats)
        for k in KS:
            cases[f"qrlora_{k}"] = measure(f"qrlora k={k}", lambda k=k: [qr_patches(weight_adapter, targets, merged[k], dev)], repeats)
        if where == "host" and device.type == "cuda":  # what page-locked adapter tensors would save on the copies
            pinned = lambda: [{w: weight_adapter.QRLoRAPatch(p.weights[0].pin_memory(), p.weights[1].pin_memory(), p.scale)
                               for w, p in qr_patches(weight_adapter, targets, merged[1]).items()}]
            cases["qrlora_1_pinned"] = measure("qrlora k=1, pinned host tensors", pinned, repeats)
        for k in KS:
            cases[f"lora_{k}"] = measure(
                f"lora k={k}", lambda k=k: [comfy.lora.load_lora({n: _on(t, dev) for n, t in sd.items()}, key_map, log_missing=False) for sd in lora_sds[:k]], repeats
            )
        res[where] = cases
        free_cache(device)

    res["check"] = _check(ctx, base, targets, weight_adapter, merged, lora_sds, key_map, comfy)
    res["floor"] = _floor(ctx, shapes)
    res["direct_addmm"] = _direct(ctx, model, targets, merged[max(KS)], comfy)
    return res


def _check(ctx, base, targets, weight_adapter, merged, lora_sds, key_map, comfy) -> dict:
    """Patched weights against a float64 reference, QR-LoRA mix vs the chained LoRAs; unpatch restores bit for bit."""
    device, k = ctx.device, 4 if len(lora_sds) >= 4 else len(lora_sds)
    names = [n for n in targets if n.endswith(("blocks.0.attn.to_k", "blocks.0.ff.net.2"))][:3]

    def weights_of(mp):
        out = {}
        for n in names:
            key, offset = (targets[n], None) if isinstance(targets[n], str) else targets[n]
            w = comfy.utils.get_attr(mp.model, key)
            out[n] = (w.narrow(*offset) if offset else w).detach().to(torch.float64).cpu().clone()
        return out

    original = weights_of(base)
    results = {}
    for label, sets in (
        ("qrlora", [qr_patches(weight_adapter, targets, merged[k])]),
        ("lora", [comfy.lora.load_lora(sd, key_map, log_missing=False) for sd in lora_sds[:k]]),
    ):
        mp = base.clone()
        for patches in sets:
            mp.add_patches(patches, 1.0)
        mp.patch_model(device_to=device)
        results[label] = weights_of(mp)
        mp.unpatch_model()
    restored = weights_of(base)
    out = {"k": k, "restored_bit_for_bit": all(torch.equal(original[n], restored[n]) for n in names)}
    for n in names:
        t = merged[k].targets[n]
        reference = original[n] + merged[k].scale * t.q.double() @ t.delta_r.double()
        delta = (reference - original[n]).norm()
        out[n] = {label: float((w[n] - reference).norm() / delta) for label, w in results.items()}
        out[n]["qrlora_vs_lora"] = float((results["qrlora"][n] - results["lora"][n]).norm() / delta)
    ctx.log(f"  check (error relative to the delta; bf16 weights): {out}")
    return out


def _floor(ctx, shapes: dict) -> dict:
    device = ctx.device
    elements = sum(m * n for m, n in shapes.values())
    nbytes = 2 * 2 * elements  # bf16, each target read once and written once
    bandwidth = copy_bandwidth(device, 4 * 1024**3 if device.type == "cuda" else 64 * 1024**2)
    out = {"target_elements": elements, "bytes": nbytes, "copy_bandwidth_Bps": bandwidth, "seconds": nbytes / bandwidth}
    ctx.log(f"  floor: {nbytes / 1e9:.1f} GB at {bandwidth / 1e12:.2f} TB/s = {out['seconds'] * 1e3:.2f} ms")
    return out


def _direct(ctx, model, targets, adapter, comfy) -> dict:
    """weight += s·Q·ΔR as one bf16 addmm per target (the merged mix), outside ComfyUI's float32 round trip."""
    device = ctx.device
    work = []
    for n, t in adapter.targets.items():
        key, offset = (targets[n], None) if isinstance(targets[n], str) else targets[n]
        w = comfy.utils.get_attr(model, key).data
        view = w.narrow(*offset) if offset else w
        work.append((view.view(view.shape[0], -1), t.q.to(device, torch.bfloat16), t.delta_r.to(device, torch.bfloat16)))
    def run(alpha):
        with torch.no_grad():
            for view, q, d in work:
                view.addmm_(q, d, alpha=alpha)

    sign = [1.0]

    def apply():
        run(sign[0] * adapter.scale)
        sign[0] = -sign[0]  # alternate, so the model ends where it started (up to rounding)

    times = event_times(device, apply, repeats=ctx.repeats * 2 - 1, warmup=1)
    out = {"seconds": median(times), "runs_s": times}
    ctx.log(f"  direct bf16 addmm: {out['seconds'] * 1e3:.2f} ms")
    if device.type == "cuda":  # the same launches replayed from a CUDA graph: no Python or launch gaps
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                run(adapter.scale)
                run(-adapter.scale)
            torch.cuda.current_stream().wait_stream(side)
            graphs = []
            for alpha in (adapter.scale, -adapter.scale):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    run(alpha)
                graphs.append(graph)
            turn = [0]

            def replay():
                graphs[turn[0]].replay()
                turn[0] ^= 1

            times = event_times(device, replay, repeats=9, warmup=1)
            out["graph_seconds"], out["graph_runs_s"] = median(times), times
            ctx.log(f"  direct bf16 addmm, CUDA graph: {out['graph_seconds'] * 1e3:.2f} ms")
            del graphs
        except Exception as e:
            out["graph_error"] = repr(e)
    del work
    return out
