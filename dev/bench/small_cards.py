"""Section 5 (memory): training full FLUX.1-dev depth on 24, 16 and 12 GiB cards, bf16 and fp8 bases.

Everything runs through the node's own code path, `TrainingSession`
(integration/training/session.py): the memory plan and its automatic choice of how
much of the model stays on the GPU (model_on_gpu_gb = 0), the basis
decomposition in the memory the plan leaves, ComfyUI's partial loading
for what does not fit, gradient checkpointing, the reference objective.
Only what a user does differs per row: the card, simulated by capping this
process at 24, 16 or 12 GiB with torch.cuda.set_per_process_memory_fraction,
and the base, bf16 or fp8_e4m3fn as UNETLoader's weight_dtype loads it
(stored float8, cast to bf16 per use).

The model is ComfyUI's Flux with random weights whose trained layers get
decaying spectra, as a checkpoint's have (flux.give_decaying_spectra), so
its basis builds on the same path and at about the same speed as a real
model's. It starts in host memory, as ComfyUI keeps a model it is not
running (offload device: the CPU; ComfyUI's default pinning of offloaded
weights on). 512 px (a 64x64 latent, 1024 image tokens) with 512 T5
tokens, rank 64, batch 1, one forward per step (grad_accumulation 1, so a
step is one forward + backward + AdamW), the published 342 targets.

Per row: peak GPU memory (max_memory_reserved: what the cap limits; and
max_memory_allocated), the plan (weights kept on the GPU, its estimate),
the median step time after the first step relative to the uncapped bf16
row measured in the same run, and the first step's loss: every row of one
base starts from the same seed and draws, so an offloaded row must match
the resident row's loss (it computes the same thing from the same weights).
"""

import gc
import json
import os
import shutil
import time

import psutil
import torch

from .common import gib

CARDS = (None, 24, 16, 12)  # GiB; None: the whole GPU (the anchor)
BASES = {"bf16": (torch.bfloat16, None), "fp8": (torch.float8_e4m3fn, torch.bfloat16)}


def _cap(device, card):
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0 if card is None else card * 1024**3 / total, index)


def _clear(device):
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _inputs(ctx):
    g = torch.Generator().manual_seed(5)
    side = ctx.train_px // 8
    latents = [{"samples": torch.randn(1, 16, side, side, generator=g)}]
    positive = [[[torch.randn(1, ctx.train_tokens, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]]
    return latents, positive


def _row(ctx, device, patcher, base, card, steps, smoke_keep=None):
    from comfyui_qrlora.integration.training.session import TrainingSession
    from comfyui_qrlora.qrlora_core.errors import AdapterError
    from comfyui_qrlora.qrlora_core.training import TrainConfig

    _clear(device)
    _cap(device, card)
    config = TrainConfig(rank=ctx.rank, steps=steps, grad_accumulation=1, batch_size=1, learning_rate=1e-4, seed=0,
                         gradient_checkpointing=True, training_dtype="bf16", model_on_gpu_gb=smoke_keep or 0.0)
    latents, positive = _inputs(ctx)
    row = {"base": base, "card_gib": card}
    marks = []
    start = time.perf_counter()
    try:
        session = TrainingSession(patcher, config, latents, positive)
        row["setup_s"] = time.perf_counter() - start
        if device.type == "cuda":  # the plan and the basis (built or read from disk) apart from the steps
            row["setup_peak_allocated"] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        plan = session.plan
        row["plan"] = {"weights": plan.weights, "keep": plan.keep, "estimated_peak": plan.peak, "available": plan.available,
                       "adapter": plan.adapter, "block": plan.block, "activations": plan.activations}
        with session:
            row["loaded_bytes"] = session.patcher.loaded_size()
            marks.append(time.perf_counter())
            losses = session.run(steps, lambda step, loss: marks.append(time.perf_counter()))
        row["losses"] = losses
        row["step_s"] = [b - a for a, b in zip(marks, marks[1:])]
        row["notes"] = session.notes
        row["offloaded"] = plan.offloaded
    except AdapterError as e:
        row["refused"] = str(e)
    except torch.OutOfMemoryError as e:
        row["out_of_memory"] = str(e).splitlines()[0][:200]
    if device.type == "cuda":
        row["peak_reserved"] = torch.cuda.max_memory_reserved(device)
        row["peak_allocated"] = torch.cuda.max_memory_allocated(device)
    label = "whole GPU" if card is None else f"{card} GiB"
    summary = {k: row[k] for k in ("refused", "out_of_memory") if k in row} or {
        "step": f"{sorted(row['step_s'][1:] or row['step_s'])[len(row['step_s'][1:] or row['step_s']) // 2]:.3f} s",
        "keep": f"{gib(row['plan']['keep']):.1f}/{gib(row['plan']['weights']):.1f} GiB", "loss1": f"{row['losses'][0]:.5f}"}
    ctx.log(f"  {base} on {label}: {summary}, peak reserved {gib(row.get('peak_reserved', 0)):.2f} GiB")
    _cap(device, None)
    return row


def run(ctx) -> dict:
    import comfy.model_management as mm
    import comfy.model_patcher
    import folder_paths

    from .flux import build_model, give_decaying_spectra

    device = ctx.device if ctx.device.type != "cuda" or ctx.device.index is not None else torch.device("cuda", torch.cuda.current_device())
    folder = os.path.join(ctx.scratch, "qrlora_bases_bench")
    shutil.rmtree(folder, ignore_errors=True)  # the first row of each base builds its basis
    os.makedirs(folder)
    folder_paths.folder_names_and_paths["qrlora_bases"] = ([folder], {".safetensors"})
    steps = 4 if ctx.full else 2
    out = {"px": ctx.train_px, "rank": ctx.rank, "text_tokens": ctx.train_tokens, "steps_per_row": steps, "rows": []}
    patchers = {}
    for base, (dtype, compute) in BASES.items():
        ctx.log(f"memory: building Flux ({ctx.size}) with {base} weights")
        model = build_model(ctx.size, device, dtype=dtype, compute_dtype=compute)
        give_decaying_spectra(model, ctx.size, ctx.pack[1])  # the same target weights for both bases; fp8 rounds them
        model.to("cpu")  # the model waits in host memory, as ComfyUI keeps one it is not running
        _clear(device)
        patchers[base] = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
        out.setdefault("weight_bytes", {})[base] = patchers[base].model_size()
    if device.type == "cuda":  # ComfyUI's default on Linux (the bench's import turns it off), read once the models are in
        mm.MAX_PINNED_MEMORY = out["pinned_limit"] = psutil.virtual_memory().total * 0.95  # host memory (some VMs grow MemTotal as it is used)
        ctx.log(f"memory: pinned memory limit {gib(mm.MAX_PINNED_MEMORY):.0f} GiB")
    if ctx.full:  # bases built on the whole GPU first, so the capped rows measure training; then one basis built under 12 GiB
        order = [("bf16", None), ("fp8", None), ("fp8", 24), ("fp8", 16), ("bf16", 16), ("fp8", 12), ("bf16", 12), ("bf16", 24),
                 ("fp8", "12, basis not on disk")]
    else:
        order = [("bf16", None), ("bf16", "smoke"), ("fp8", "smoke"), ("fp8", None)]
    for base, card in order:
        if isinstance(card, str) and card.startswith("12,"):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            row = _row(ctx, device, patchers[base], base, 12, steps)
            row["card_gib"] = card
        elif card == "smoke":  # on the CPU: no cap; keep a third of the model "on the GPU" to run the offload path
            row = _row(ctx, device, patchers[base], base, None, steps, smoke_keep=patchers[base].model_size() / 3 / 1024**3)
            row["card_gib"] = "smoke-offload"
        else:
            row = _row(ctx, device, patchers[base], base, card, steps)
        out["rows"].append(row)
        ctx.log("  row " + json.dumps(row, default=str))  # the raw row in the log too, should a later row not finish
    _clear(device)
    return out


def _median_step(row):
    steps = row["step_s"][1:] or row["step_s"]
    return sorted(steps)[len(steps) // 2]


def table_rows(m: dict) -> list[list[str]]:
    """what, measured, ratio, goal, status for the memory section."""
    rows = []
    anchor = next((r for r in m["rows"] if r["base"] == "bf16" and r["card_gib"] is None and "step_s" in r), None)
    if anchor is None:
        return [["memory: no uncapped bf16 row to compare against", "-", "-", "-", "NOT met"]]
    t0, whole = _median_step(anchor), {}
    for r in m["rows"]:
        if r["card_gib"] is None and "losses" in r:
            whole[r["base"]] = r["losses"]
    rows.append([f"training step, full FLUX.1-dev depth, {m['px']} px, r={m['rank']}, whole GPU (bf16 anchor)",
                 f"{t0:.3f} s, peak {gib(anchor.get('peak_reserved', 0)):.1f} GiB", "1.00", "-", "n/a"])
    for r in m["rows"]:
        if r is anchor:
            continue
        card = r["card_gib"]
        label = f"  {r['base']} base on a {card} GiB card" if isinstance(card, int) else f"  {r['base']} base, {card or 'whole GPU'}"
        if r.get("setup_peak_allocated"):
            label += f" (setup peak {gib(r['setup_peak_allocated']):.1f} GiB)"
        goal, ok = "-", None
        if card == 24 and r["base"] == "fp8":
            goal = "fits, no offloading"
        elif card == 16:
            goal = "fits, <= 2x step"
        elif card in (12, "12, basis not on disk"):
            goal = "runs"
        if "step_s" not in r:
            why = r.get("refused") or r.get("out_of_memory") or "failed"
            rows.append([label, f"did not run: {why[:150]}", "-", goal, "NOT met" if goal != "-" else "n/a"])
            continue
        ratio = _median_step(r) / t0
        kept = f"{gib(r['plan']['keep']):.1f} of {gib(r['plan']['weights']):.1f} GiB of weights on the GPU"
        same = whole.get(r["base"], r["losses"])  # same seed and draws: an offloaded run must train the same ΔR
        drift = abs(r["losses"][-1] - same[-1]) / abs(same[-1])
        loss = f"; loss after {len(r['losses'])} steps {drift:.1e} from the whole-GPU run's"
        cap = 12 if card == "12, basis not on disk" else card
        within = isinstance(cap, int) and max(r.get("peak_reserved", 0), r.get("setup_peak_allocated", 0)) <= cap * 1024**3
        if goal == "fits, no offloading":
            ok = within and not r["offloaded"]
        elif goal == "fits, <= 2x step":
            ok = within and ratio <= 2.0
        elif goal == "runs":
            ok = within
        status = "n/a" if ok is None else ("met" if ok else "NOT met")
        if drift > 1e-2:  # bf16 run-to-run noise is ~1e-4
            status = "NOT met: trains differently from the whole-GPU run"
        rows.append([label, f"{_median_step(r):.3f} s, peak {gib(r.get('peak_reserved', 0)):.1f} GiB "
                     f"(estimated {gib(r['plan']['estimated_peak']):.1f}), {kept}{loss}", f"{ratio:.2f}", goal, status])
    return rows
