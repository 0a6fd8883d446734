"""Fitting a training run into GPU memory: how much of the model stays on the GPU, and whether the run fits at all.

Offloading is ComfyUI's own partial loading (ModelPatcher lowvram mode):
the layers left in host memory are copied to the GPU each time they run
(comfy.ops.cast_bias_weight), and our weight wrappers run on those copies
exactly as on resident weights, so training needs no block swap of its
own, only the choice of how much to keep. With gradient checkpointing a
step copies an offloaded block in twice (forward and recompute) and holds
one block's copies until that block's backward is done.

ComfyUI 0.3.75 copies offloaded weights on side streams, a scheme made for
inference: a copy that autograd keeps for the backward pass is freed on
the compute stream and its memory can be refilled by the next side-stream
copy before the backward kernel has read it. While an offloaded run
trains, copies therefore go on the compute stream (NUM_STREAMS = 0).

The plan is made before any work, from sizes alone: the model's bytes,
what the adapter holds (qrlora_core/training/layer.adapter_bytes), one top-level block's weights in the training dtype
(the copies and patched weights W' a checkpointed block holds), and
activations scaled from ComfyUI's own inference estimate for the latent
size (BaseModel.memory_required). The estimate errs high; what it leaves
is the GPU memory the basis decomposition may use.
"""

import gc
from dataclasses import dataclass

import torch

import comfy.model_management as mm
import comfy.model_patcher
from comfy_extras.nodes_train import find_all_highest_child_module_with_forward

from ...qrlora_core.decompose import working_bytes
from ...qrlora_core.errors import AdapterError
from ...qrlora_core.training.layer import adapter_bytes

GiB = 1024**3
ACTIVATION_FACTOR = 3  # x ComfyUI's one-forward estimate: a checkpointed block's recompute + backward, plus the saved block inputs
CUSHION = GiB // 2  # allocator fragmentation, library workspaces
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def device_free(device: torch.device) -> int:
    """Bytes this process can still take on `device`: ComfyUI's view (free + torch's cache,
    less --reserve-vram), within the process's cap (torch.cuda.set_per_process_memory_fraction)."""
    free = mm.get_free_memory(device) - mm.extra_reserved_memory()
    if device.type == "cuda" and hasattr(torch.cuda, "get_per_process_memory_fraction"):
        index = device.index if device.index is not None else torch.cuda.current_device()
        fraction = torch.cuda.get_per_process_memory_fraction(index)
        if fraction < 1:
            cap = fraction * torch.cuda.get_device_properties(index).total_memory
            free = min(free, cap - torch.cuda.memory_allocated(index))
    return max(0, int(free))


def held_by_models(device: torch.device) -> int:
    """Bytes of weights ComfyUI holds on `device` for loaded models (freed when training loads its model)."""
    return sum(m.model.loaded_size() for m in mm.current_loaded_models if m.device == device and m.model is not None)


@dataclass
class MemoryPlan:
    """How a run uses the GPU: bytes of model weights kept there, and the estimate behind it."""

    device: torch.device
    weights: int  # the whole model
    keep: int  # of it, on the GPU
    adapter: int
    block: int
    activations: int
    available: int  # free now + what other models hold there

    @property
    def working(self) -> int:
        return self.adapter + self.block + self.activations + CUSHION

    @property
    def offloaded(self) -> bool:
        return self.keep < self.weights

    @property
    def peak(self) -> int:
        return self.keep + self.working

    def basis_room(self) -> int:
        """GPU bytes the basis decomposition may use: what the model and the adapter leave, and what is free now."""
        return max(0, min(device_free(self.device), self.available - self.keep - self.adapter - CUSHION))

    def note(self) -> str | None:
        if not self.offloaded:
            return None
        return (f"{gib(self.keep)} of the model's {gib(self.weights)} stayed on the GPU and the rest was copied in block by block "
                f"each step (less GPU memory, slower); raise model_on_gpu_gb if the GPU has room.")


def _latent_area(latents: list, batch: int) -> tuple:
    largest = max(latents, key=lambda x: x[0, 0].numel())
    return (batch,) + tuple(largest.shape[1:])


def _blocks(diffusion_model) -> list:
    return find_all_highest_child_module_with_forward(diffusion_model)


def estimate(mp, shapes: list, rank: int, latents: list, batch: int, checkpointing: bool, dtype: torch.dtype, fused_rows: int = 0) -> dict:
    """Bytes: adapter, one block's (or, without checkpointing, every block's) weight copies, activations."""
    adapter = sum(adapter_bytes(m, n, rank) for m, n in shapes) + 4 * rank * fused_rows  # + the fused weights' stacked Qs
    itemsize = torch.empty((), dtype=dtype).element_size()
    blocks = _blocks(mp.model.diffusion_model)
    numels = [sum(p.numel() for p in b.parameters()) for b in blocks] or [sum(p.numel() for p in mp.model.diffusion_model.parameters())]
    one_forward = int(mp.model.memory_required(input_shape=_latent_area(latents, batch)))
    if checkpointing:
        return {"adapter": adapter, "block": itemsize * max(numels), "activations": ACTIVATION_FACTOR * one_forward}
    return {"adapter": adapter, "block": itemsize * sum(numels), "activations": ACTIVATION_FACTOR * one_forward * max(1, len(numels) // 2)}


def _what_would_fit(mp, shapes, config, latents, dtype, fused_rows, room: int) -> str:
    """The first change of settings whose estimate fits in `room`, as an instruction."""
    trials = []
    if not config.gradient_checkpointing:
        trials.append(("turn on gradient_checkpointing", dict(checkpointing=True, batch=config.batch_size, rank=config.rank)))
    if config.batch_size > 1:
        trials.append(("set batch_size to 1", dict(checkpointing=True, batch=1, rank=config.rank)))
    if config.rank > 16:
        trials.append((f"lower the rank to {config.rank // 2}", dict(checkpointing=True, batch=1, rank=config.rank // 2)))
    for words, t in trials:
        e = estimate(mp, shapes, t["rank"], latents, t["batch"], t["checkpointing"], dtype, fused_rows)
        if sum(e.values()) + CUSHION <= room:
            return words
    return "train on smaller images, or close other programs that use the GPU"


def plan(mp, shapes: list, config, latents: list, fused_rows: int = 0) -> MemoryPlan:
    """The memory plan of a run, or one sentence saying why it cannot fit and what would make it fit."""
    device = mp.load_device
    dtype = config.torch_dtype
    weights = mp.model_size()
    e = estimate(mp, shapes, config.rank, latents, config.batch_size, config.gradient_checkpointing, dtype, fused_rows)
    if device.type == "cpu":  # host memory: nothing to plan; the setting still offloads, for testing the path
        keep = weights if config.model_on_gpu_gb <= 0 else min(weights, int(config.model_on_gpu_gb * GiB))
        return MemoryPlan(device, weights, keep, available=weights + sum(e.values()) + CUSHION, **e)
    available = device_free(device) + held_by_models(device)
    p = MemoryPlan(device, weights, weights, available=available, **e)
    if config.model_on_gpu_gb > 0:
        p.keep = min(weights, int(config.model_on_gpu_gb * GiB))
        if p.peak > available:
            most = available - p.working
            fix = (f"set model_on_gpu_gb to {most / GiB:.1f} or less (or 0, automatic)" if most > 0
                   else _what_would_fit(mp, shapes, config, latents, dtype, fused_rows, available))
            raise AdapterError(
                f"Keeping {gib(p.keep)} of the model on the GPU leaves too little for training: the run needs about {gib(p.peak)} "
                f"and {gib(available)} is free: {fix}.")
        return p
    if p.peak > available:
        p.keep = available - p.working
        if p.keep <= 0:
            raise AdapterError(
                f"This training run does not fit in the GPU's {gib(available)} of free memory even with the whole model "
                f"({gib(weights)}) in host memory: it needs about {gib(p.working)} beside the weights (adapter {gib(p.adapter)}, "
                f"one block's weights {gib(p.block)}, activations {gib(p.activations)}); "
                f"{_what_would_fit(mp, shapes, config, latents, dtype, fused_rows, available)}.")
    return p


class Loaded:
    """The model loaded as planned; release() puts back what loading changed in ComfyUI's state."""

    def __init__(self, mp, plan: MemoryPlan):
        self.streams = None
        if not plan.offloaded:
            mm.load_models_gpu([mp], memory_required=1e20, force_full_load=True)  # 1e20: unload every other model first
            return
        # ComfyUI's partial load with our budget: what load_models_gpu does once it has picked a budget itself
        # (it picks from free memory alone, and never partially on the CPU, where the tests exercise this path).
        mm.free_memory(1e30, plan.device)  # training takes the device, as a full load would
        for m in mp.model.modules():
            # A full load with a compute dtype (an earlier run) leaves `prev_comfy_cast_weights` behind in 0.3.75, and
            # ModelPatcher.load skips such layers as "already lowvram" without attaching our weight wrappers to them.
            if hasattr(m, "prev_comfy_cast_weights"):
                comfy.model_patcher.wipe_lowvram_weight(m)
        loaded = mm.LoadedModel(mp)
        loaded.model_load(max(1, plan.keep))  # layers beyond `keep` stay in host memory, cast per use (lowvram)
        mm.current_loaded_models.insert(0, loaded)
        self.streams, mm.NUM_STREAMS = mm.NUM_STREAMS, 0

    def release(self) -> None:
        if self.streams is not None:
            mm.NUM_STREAMS, self.streams = self.streams, None


def out_of_memory(plan: MemoryPlan | None, step: int, error: Exception) -> AdapterError:
    """The sentence for a run that ran out of GPU memory after all."""
    gc.collect()
    mm.soft_empty_cache()
    when = f"at step {step}" if step else "before the first step"
    if plan is None or plan.device.type == "cpu":
        return AdapterError(f"Training ran out of memory {when} ({str(error).splitlines()[0][:120]}): lower the batch size or the rank, or train on smaller images.")
    lower = max(0.0, (plan.keep - 2 * GiB) / GiB)
    return AdapterError(
        f"The GPU ran out of memory {when}: the run was estimated at {gib(plan.peak)} with {gib(plan.keep)} of the model on the GPU; "
        f"set model_on_gpu_gb to {lower:.1f} so more of the model stays in host memory, or lower the batch size.")
