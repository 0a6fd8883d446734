"""One training run on a ComfyUI MODEL: set up, run the steps, release.

The node (through run.py), the tests and the bench all train through
`TrainingSession`; nothing of its wiring is repeated elsewhere.

Set up: choose the target layers (the model's own LoRA key map), build
their frozen bases (BasisStore: decomposed once per base and rank), wrap
each trained weight on a clone of the model (ModelPatcher weight wrappers,
as ComfyUI's LoRA trainer does), make the residual updates of the model's
blocks autograd-safe (training/out_of_place.py), checkpoint each top-level
block when asked (nodes_train.patch), load the model (model_management)
and encode the captions through the model's own `extra_conds`
(samplers.process_conds; Flux's guidance input set to the configured
value first). Each micro-batch evaluates the model through
`samplers.calc_cond_batch`, the call ComfyUI's samplers make, under the
training dtype's autocast, and scores it with the configured objective
(qrlora_core/training/objective.py). The step loop, accumulation,
clipping and the NaN stop are qrlora_core's `StepLoop`; progress and the
interrupt button are ComfyUI's. Release takes every wrapper and rewrite
off the shared model, whatever happened.

A data parallel run (processes.py) passes `parallel`
(qrlora_core/training/distributed.py): the basis comes from process 0, each
micro-batch's loss covers this process's share of the samples, and the
step loop sums gradients over the processes; nothing else changes.

Memory beyond the model (measured: bench/train_memory.py, bench/train_memory.md).
Per target, for the whole run: qrlora_core/training/layer.adapter_bytes. Per step: each trained weight key hands its layer a
patched W' = W + s·Q·ΔR (m x n in the training dtype) that autograd keeps
until that layer's backward; with gradient checkpointing only one block's
W' live at a time, without it all of them at once.
"""

import contextlib
import logging
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.sampler_helpers
import comfy.samplers
import comfy.supported_models
import comfy.utils
from comfy_extras.nodes_train import find_all_highest_child_module_with_forward, patch, unpatch

from ...qrlora_core.decompose import GPU_CHUNK_BUDGET, max_rank, rank_fits, working_bytes
from ...qrlora_core.errors import AdapterError, clipped
from ...qrlora_core.formats import load_adapter
from ...qrlora_core.training import TrainConfig, TrainTargets, roles, select
from ...qrlora_core.training.buckets import describe_buckets, group_by_size
from ...qrlora_core.training.objective import COMFYUI, TRAINING_SHIFT, denoised_mse, discrete_timesteps, flow_sigmas, prediction_mse
from ...qrlora_core.training.out_of_place import OutOfPlaceForwards
from ...qrlora_core.training.step_loop import StepLoop
from ...qrlora_core.training.state import TrainingState, read_training_state, steps_trained
from .. import files, keymap
from ..targets import resolve_targets
from . import fit

# ------------------------------------------------------------ inputs


def training_latents(latents: list) -> list[torch.Tensor]:
    """One (1, C, H, W) tensor per training image, from one or more LATENT inputs."""
    singles = [s[None].to(torch.float32, copy=True) for latent in latents for s in latent["samples"]]  # ordinary tensors, not inference-mode ones
    if not singles:
        raise AdapterError("The latents are empty: encode at least one training image with VAE Encode.")
    return singles


def _check_latent_channels(model, latents: list) -> None:
    """Latents of another model's VAE (SD1.5's 4 channels into SD3's 16) fail inside the first forward as a conv error."""
    want = getattr(getattr(model.model, "latent_format", None), "latent_channels", None)
    got = sorted({x.shape[1] for x in latents})
    if want is not None and got != [want]:
        raise AdapterError(f"The latents have {' and '.join(map(str, got))} channels where this model takes {want}: encode the training "
                           "images with this model's own VAE.")


def captions_per_image(positive: list, images: int) -> list:
    """One [embedding, options] entry per image from the CONDITIONING input(s)."""
    flat = [c for cond in positive for c in cond]
    if len(flat) == 1:
        return flat * images
    if len(flat) != images:
        raise AdapterError(
            f"There are {len(flat)} captions (conditionings) for {images} training images: give one caption for all images, or one per image."
        )
    return flat


def trainable_targets(model) -> dict:
    """name -> (weight key, row slice or None) for every layer a QR-LoRA can train."""
    return {name: keymap.split_target(value) for name, value in keymap.named_targets(model).items()}  # layout-converted ones are left out there


ARCHITECTURES = {  # the role table's names (qrlora_core/training/roles.py) -> ComfyUI's model configs (their subclasses too)
    "sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL,
    "sd3": comfy.supported_models.SD3, "flux": comfy.supported_models.Flux,
}


def architecture(model) -> str | None:
    """'sd15', 'sdxl', 'sd3' or 'flux' for a model of that family (as ComfyUI's loader detected it), else None."""
    config = getattr(model.model, "model_config", None)
    return next((name for name, kind in ARCHITECTURES.items() if isinstance(config, kind)), None)


def choose_targets(model, config: TrainConfig, existing=None) -> tuple[dict, list[str]]:
    """(name -> (key, row slice)) of the layers to train, and notes for the node."""
    candidates = trainable_targets(model)
    notes = []
    if existing is not None:
        resolve_targets(model, existing)  # refuses adapters of another base model, in the words Apply uses
        names = [n for n in existing.targets if n in candidates]
        if not names:
            raise AdapterError(f"{existing.source} has no layer this model can train; continue from an adapter made for this model.")
        if len(names) < len(existing.targets):
            notes.append(f"{len(existing.targets) - len(names)} of the adapter's layers are not in this model and stay as they are.")
        notes.append(f"Continuing {existing.source or 'the adapter'}: its layers, rank {existing.rank} and alpha {existing.alpha:g} are used; the target and rank inputs are ignored.")
        return {n: candidates[n] for n in names}, notes
    names = select(candidates, config.target_matcher())
    if not names:
        example = next(iter(candidates), "(none)")
        raise AdapterError(
            f"The targets '{config.target_preset}' match none of this model's {len(candidates)} trainable layers "
            f"(they are named like '{example}'): pick another preset or write a pattern that matches those names."
        )
    if config.role_picks_blocks:
        arch = architecture(model)
        recipe = roles.recipe(arch, config.role)
        names = roles.role_layers(names, recipe.blocks)
        if not names:
            raise AdapterError(f"The {config.role} role's blocks ({recipe.blocks}) hold none of the layers '{config.target_preset}' picks "
                               "in this model: choose another preset, or the role 'all'.")
        notes.append(f"Role {config.role} on {roles.ARCHITECTURES[arch]}: {len(names)} layers in blocks {recipe.blocks} "
                     f"({recipe.source}; {recipe.evidence}).")
    return {n: candidates[n] for n in names}, notes


def base_weights(model, where: dict, device=None) -> dict:
    """name -> the base weight (or its row slice) as a 2-D tensor, as the model holds it (fp8 included;
    scaled fp8 dequantized), on `device` or where it lies; each fused key read once."""
    full, out = {}, {}
    for name, (key, offset) in where.items():
        if key not in full:
            full[key] = keymap.patched_weight(model, key)
        out[name] = keymap.rows_of(full[key].data, offset)  # .data: no autograd graph, and a view even of a weight without versions
        if device is not None:
            out[name] = out[name].to(device)
    return out


def target_shapes(model, where: dict) -> list[tuple[int, int]]:
    """(out, in) of each target, from the weights' shapes (nothing is read)."""
    return [keymap.target_shape(model, (key, offset) if offset is not None else key) for key, offset in where.values()]


def weight_scales(model, wrappers: dict) -> dict:
    """weight key -> the scale of a scaled-fp8 weight (ComfyUI's scaled_fp8 ops).

    Those layers run their weight functions on the stored, unscaled weight
    and multiply by `scale_weight` afterwards, so a delta added there must be
    divided by it to land as s·Q·ΔR on the real weight.
    """
    out = {}
    for key in wrappers:
        module = comfy.utils.get_attr(model.model, key.rsplit(".", 1)[0])
        scale = getattr(module, "scale_weight", None)
        if isinstance(scale, torch.Tensor) and scale.numel() == 1 and key.endswith(".weight"):
            out[key] = float(scale)
    return out


def layers_that_fit(weights: dict, rank: int) -> tuple[dict, str | None]:
    """The weights a rank-`rank` basis fits, and a note on those left out (refused only if none fits)."""
    small = {n: tuple(w.shape) for n, w in weights.items() if not rank_fits(w.shape, rank)}
    if not small:
        return weights, None
    name, shape = min(small.items(), key=lambda item: max_rank(item[1]))
    if len(small) == len(weights):
        raise AdapterError(
            f"Rank {rank} is larger than every chosen layer allows (e.g. {name}, {shape}, at most rank {max_rank(shape)}): "
            f"lower the rank to {max(max_rank(s) for s in small.values())} or less."
        )
    note = (f"{len(small)} of {len(weights)} layers are smaller than rank {rank} and are not trained "
            f"(e.g. {name}, {shape}, at most rank {max_rank(shape)}); lower the rank to train them too.")
    return {n: w for n, w in weights.items() if n not in small}, note


def _outside(delta_r: torch.Tensor, rows: tuple[int, int]) -> torch.Tensor:
    """The rows of ΔR outside (start, stop): what a resumed run that trains only those rows would silently drop."""
    return torch.cat([delta_r[:rows[0]], delta_r[rows[1]:]])


def _tracks_versions(t) -> bool:
    """False for an inference tensor, for one made in inference mode whose .data was replaced outside it, and for
    an ordinary Parameter whose .data was replaced by an inference tensor.

    The second kind is what a first load to the GPU outside inference mode
    leaves (Module.to swaps .data): it says is_inference() False, yet it
    has no version counter, so autograd and even a view of it fail. The
    third is what ComfyUI's unpatching of an earlier patcher leaves (its
    backups were made while a prompt ran in inference mode): it has a
    version counter, yet says is_inference() True, and a backward cannot
    keep it.
    """
    try:
        t._version
    except RuntimeError:
        return False
    return not t.is_inference()


def _usable_for_autograd(module) -> None:
    """Weights made inside ComfyUI's inference mode cannot be saved for backward: give them equal ordinary storage.

    Same values, new tensor objects (an inference tensor stays one even
    with its .data replaced), one layer at a time, so the model is never
    held twice. (ComfyUI's LoRA trainer avoids this by wrapping every
    weight, which copies the whole model on every forward.)
    """
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None and not _tracks_versions(p) and not p.is_pinned():  # pinned: offloaded, always copied to the GPU before use
                m._parameters[name] = torch.nn.Parameter(p.data.clone(), requires_grad=False)
        for name, b in m._buffers.items():
            if b is not None and not _tracks_versions(b):
                m._buffers[name] = b.data.clone()


def _release_wrappers(mp, wrappers: dict) -> None:
    """Take the training wrappers off the layers of the model all clones share.

    ComfyUI only rebuilds a layer's weight functions when it loads another
    patcher, so without this a later forward of the still-loaded base model
    could run through the trained ΔR.
    """
    ours = list(wrappers.values())
    for module in mp.model.modules():
        functions = getattr(module, "weight_function", None)
        if functions and any(f is w for f in functions for w in ours):
            module.weight_function = [f for f in functions if not any(f is w for w in ours)]
    mp.weight_wrapper_patches = {}


def saved_training_state(adapter, steps: int) -> tuple[TrainingState | None, str]:
    """The training state kept in the file the adapter was loaded from, or None and why there is none."""
    try:
        path = files.adapter_path(adapter.source)
    except AdapterError:
        return None, "it does not come straight from a file in the loras folder"
    state = read_training_state(path, adapter.source)
    if state is None:
        return None, "its file is a plain adapter without training state"
    if state.step != steps or not set(adapter.targets) <= set(state.layers):
        return None, "its file's training state does not belong to this adapter"
    saved = load_adapter(path, basis_loader=files.basis_store().load, source=adapter.source)
    if saved.targets.keys() != adapter.targets.keys() or any(not torch.equal(saved.targets[n].delta_r, t.delta_r) for n, t in adapter.targets.items()):
        return None, "its file has changed since it was loaded"
    return state, ""


# ------------------------------------------------------------ the session


@dataclass
class Batch:
    """One micro-batch: which images, their clean latents, the noise and the sigmas."""

    images: list[int]
    x0: torch.Tensor
    noise: torch.Tensor
    sigma: torch.Tensor
    conds: list = field(repr=False, default_factory=list)


def _only(batches: list, positions: list[int]) -> list:
    """The batches cut down to the samples at `positions` (counted across the batches, in order)."""
    keep, out, offset = set(positions), [], 0
    for b in batches:
        rows = [j for j in range(len(b.images)) if offset + j in keep]
        offset += len(b.images)
        if rows:
            index = torch.tensor(rows, device=b.x0.device)
            out.append(Batch([b.images[j] for j in rows], b.x0[index], b.noise[index], b.sigma[index], b.conds))
    return out


# What calc_cond_batch reads from a processed conditioning besides its model_conds: caption groups share a forward
# only where each of these is the same object in all of them (or absent from all).
_SHARED_COND_KEYS = ("area", "strength", "mask", "mask_strength", "timestep_start", "timestep_end", "control", "gligen", "hooks")


def _one_forward(batches: list) -> list:
    """The caption groups of a micro-batch as one Batch, each sample keeping its own caption; `batches` unchanged where
    they cannot share a forward exactly.

    `draw` groups samples by caption because calc_cond_batch applies one
    conditioning to its whole batch; captioned one per image (as the stock
    dataset nodes caption), that made a step of batch 8 eight forwards of
    batch 1, each rebuilding every W'. Joined per sample with ComfyUI's own
    cond concat, the loss is the same mean over the same samples (only
    float rounding differs) and the draws are untouched. Text of other
    lengths is left apart: ComfyUI pads it by repetition, which leaves plain
    cross-attention as it was but not the joint attention of Flux and SD3."""
    if len(batches) < 2 or any(len(b.conds) != 1 for b in batches) or len({tuple(b.x0.shape[1:]) for b in batches}) != 1:
        return batches
    conds = [b.conds[0] for b in batches]
    first = conds[0]
    if any(c.get(k) is not first.get(k) for c in conds for k in _SHARED_COND_KEYS):
        return batches
    if any(c["model_conds"].keys() != first["model_conds"].keys() for c in conds):
        return batches
    merged = {}
    for key in first["model_conds"]:
        parts = [c["model_conds"][key].process_cond(batch_size=1, area=None) for c, b in zip(conds, batches) for _ in b.images]
        same_shape = [not isinstance(p.cond, torch.Tensor) or p.cond.shape == parts[0].cond.shape for p in parts]
        if not all(same_shape) or not all(type(p) is type(parts[0]) and parts[0].can_concat(p) for p in parts[1:]):
            return batches
        merged[key] = parts[0]._copy_with(parts[0].concat(parts[1:]))
    return [Batch([i for b in batches for i in b.images], torch.cat([b.x0 for b in batches]), torch.cat([b.noise for b in batches]),
                  torch.cat([b.sigma for b in batches]), [{**first, "model_conds": merged}])]


class TrainingSession:
    """A training run of `model` on `latents` + `positive` with `config`.

    `existing`: a QR_LORA to continue. `trainable`: anything with
    `wrappers(where) -> {weight key: module}` and `parameters()` to train
    instead of fresh QR-LoRA targets (the bench's stock LoRA), on the layers
    `choose_targets` picks. Use as a context manager: setup on entry,
    release on exit. `parallel`: a StepShare to train on several
    processes at once (None: this process alone).
    """

    def __init__(self, model, config: TrainConfig, latents: list, positive: list, existing=None, trainable=None, parallel=None):
        self.model, self.config, self.existing, self.parallel = model, config, existing, parallel
        self.dtype = config.torch_dtype
        self.latents = training_latents(latents)
        _check_latent_channels(model, self.latents)
        self.captions = captions_per_image(positive, len(self.latents))
        self.buckets = group_by_size([x.shape for x in self.latents])  # a batch is drawn within one
        self.where, self.notes = choose_targets(model, config, existing)
        self.noise = (config.noise_min, config.noise_max)
        if len(self.buckets) > 1:
            self.notes.append(describe_buckets(self.buckets, [x.shape for x in self.latents]) + "; each batch comes from one bucket.")
            logging.info(f"[QR-LoRA] training on {self.notes[-1]}")
        self.triangular = config.triangular
        self.basis_part = config.basis_part
        fused_rows = sum(m for (m, _), (_, offset) in zip(target_shapes(model, self.where), self.where.values()) if offset is not None)
        self.plan = fit.plan(model, target_shapes(model, self.where), config, self.latents, fused_rows)  # before any work
        self.targets = trainable if trainable is not None else self._targets()
        if self.plan.note():
            self.notes.append(self.plan.note())
        self.patcher = None
        self.loaded = None
        self._active = False

    def _targets(self) -> TrainTargets:
        device = self.model.load_device
        weights = base_weights(self.model, self.where)
        if self.existing is not None:
            if self.triangular and any(torch.tril(self.existing.targets[n].delta_r, -1).any() for n in self.where):
                self.triangular = False
                self.notes.append("The adapter's ΔR is not triangular, so it is trained without the triangular mask.")
            rows = self.config.trained_rows(self.existing.rank)
            if rows is not None and any(_outside(self.existing.targets[n].delta_r, rows).any() for n in self.where):
                rows, self.basis_part = None, "all"
                self.notes.append(f"The adapter's ΔR has values outside the {self.config.basis_part} of its basis, so it trains all of it.")
            return TrainTargets.resume(self.existing, weights, self.triangular, device=device, trained_rows=rows)
        weights, note = layers_that_fit(weights, self.config.rank)
        if note:
            self.notes.append(note)
            self.where = {n: self.where[n] for n in weights}
        if self.config.plain_lora:
            if self.basis_part != "all":
                self.notes.append(f"A plain LoRA has no basis to train the {self.basis_part} of, so it trains its whole rank.")
            self.triangular, self.basis_part = False, "all"
            return TrainTargets.plain_lora(weights, self.config.rank, self.config.scale_alpha, self.config.seed, device=device)
        decomposed = comfy.utils.ProgressBar(len(weights))
        basis_device, budget = self.basis_memory(weights)
        store = files.basis_store() if self.parallel is None else self.parallel.basis_store(files.basis_store())
        return TrainTargets.new(weights, self.config.rank, self.config.scale_alpha, self.triangular, store,
                                progress=decomposed.update, device=device, basis_device=basis_device, basis_budget=budget,
                                trained_rows=self.config.trained_rows(self.config.rank))

    def basis_memory(self, weights: dict) -> tuple:
        """(device, chunk budget) of the basis decomposition: the GPU memory the plan leaves beside
        the model and the adapter, or the CPU when that is less than the largest weight needs."""
        device = self.model.load_device
        if device.type == "cpu":
            return device, None
        room = self.plan.basis_room()
        largest = max(working_bytes(tuple(w.shape), w.dtype, self.config.rank) for w in weights.values())
        if room < largest:
            self.notes.append(f"The basis was decomposed on the CPU: the GPU had {fit.gib(room)} to spare beside the model, "
                              f"less than one layer needs ({fit.gib(largest)}).")
            return torch.device("cpu"), None
        return device, min(room, GPU_CHUNK_BUDGET)

    # -------------------------------------------------------- setup and release

    def __enter__(self) -> "TrainingSession":
        try:
            self.setup()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def setup(self) -> None:
        config, model = self.config, self.model
        self._active = True
        self.patcher = mp = model.clone()
        mp.set_model_compute_dtype(self.dtype)
        self.wrappers = self.targets.wrappers(self.where)
        self._scaled = {}
        for key, scale in weight_scales(model, self.wrappers).items():
            for layer in getattr(self.wrappers[key], "targets", []):
                self._scaled[layer] = layer.scale
                layer.scale = layer.scale / scale
        for key, wrapper in self.wrappers.items():
            mp.add_weight_wrapper(key, wrapper)
        diffusion_model = mp.model.diffusion_model
        self.rewrites = OutOfPlaceForwards(diffusion_model)  # before checkpointing wraps the forwards
        self.checkpointed = find_all_highest_child_module_with_forward(diffusion_model) if config.gradient_checkpointing else []
        self._own_forward = {id(m) for m in self.checkpointed if "forward" in vars(m)}  # the rewritten ones
        for m in self.checkpointed:
            patch(m)
        mp.model.requires_grad_(False)
        for p in self.targets.parameters():
            p.requires_grad_(True)
        self._load()
        # the patcher's wrappers, callbacks and hooks into the options the model runs with, as ComfyUI's guider does
        self.model_options = comfy.model_patcher.create_model_options_clone(mp.model_options)
        captions = {"positive": comfy.sampler_helpers.convert_cond(list({id(c): c for c in self.captions}.values()))}
        comfy.sampler_helpers.prepare_model_patcher(mp, captions, self.model_options)
        mp.pre_run()
        self.device = mp.load_device
        self.sampling = mp.model.model_sampling
        self.x0 = [mp.model.process_latent_in(x.to(self.device)) for x in self.latents]
        self._conds = {}
        self.loop = StepLoop(
            self.targets.parameters(), optimizer=config.optimizer, learning_rate=config.learning_rate,
            weight_decay=config.weight_decay, grad_accumulation=config.grad_accumulation,
            max_grad_norm=config.max_grad_norm, seed=config.seed,
            reduce=None if self.parallel is None else self.parallel.reduce,
        )
        self.optimizer = self.loop.optimizer  # kept after release: the last checkpoint is written then
        if self.existing is not None:
            self._continue(self.existing)
        self._draws_after_step = self.loop.draws.generator.get_state()

    def _load(self) -> None:
        """Load the model for training as planned (fit.py: whole, or partly offloaded), with weights autograd can use."""
        if self.loaded is not None:
            self.loaded.release()
        self.loaded = fit.Loaded(self.patcher, self.plan)
        _usable_for_autograd(self.patcher.model)

    def between_steps(self, work):
        """`work(patcher)` between two steps, without gradients (sample images: ComfyUI's sampling loads
        the patcher its own way and releases it), then the model loaded for training again."""
        with torch.no_grad():
            result = work(self.patcher)
        self._load()
        self.patcher.pre_run()
        return result

    def release(self) -> None:
        if not self._active:
            return
        self._active = False
        mp = self.patcher
        for m in getattr(self, "checkpointed", []):
            unpatch(m)
            if id(m) not in self._own_forward:
                vars(m).pop("forward", None)  # nodes_train.unpatch leaves the class's forward bound on the instance
        if getattr(self, "rewrites", None) is not None:
            self.rewrites.restore()
        _release_wrappers(mp, getattr(self, "wrappers", {}))
        for layer, scale in getattr(self, "_scaled", {}).items():
            layer.scale = scale
        if self.loaded is not None:
            self.loaded.release()
        mp.cleanup()
        mp.restore_hook_patches()
        for p in self.targets.parameters():
            p.requires_grad_(False)
        self.loop = None

    # -------------------------------------------------------- resume

    def resume_settings(self) -> dict:
        """The settings an exact continuation must share with the run it continues (the seed is not one: the draws go on)."""
        c = self.config
        return {"images": len(self.latents), "learning_rate": c.learning_rate, "batch_size": c.batch_size,
                "grad_accumulation": c.grad_accumulation, "optimizer": c.optimizer, "training_dtype": c.training_dtype,
                "objective": c.objective, "guidance": c.guidance, "weight_decay": c.weight_decay, "max_grad_norm": c.max_grad_norm,
                "noise_min": self.noise[0], "noise_max": self.noise[1]}

    def training_state(self, total_steps: int) -> TrainingState:
        """What a checkpoint after `total_steps` keeps to continue exactly: optimizer state, random draws, settings."""
        return TrainingState.capture(total_steps, self.config.optimizer, self.optimizer, list(self.targets.layers),
                                     {"draws": self._draws_after_step}, self.resume_settings())

    def _continue(self, adapter) -> None:
        """Restore the optimizer and the draws from the adapter's checkpoint file, or say why training restarts them."""
        state, why = saved_training_state(adapter, steps_trained(adapter))
        if state is not None and state.optimizer != self.config.optimizer:
            state, why = None, f"it was trained with {state.optimizer}, not {self.config.optimizer}"
        if state is None:
            self.notes.append(f"{adapter.source or 'The adapter'} continues from its ΔR with a fresh optimizer: {why}, "
                              "so the optimizer state restarts and the draws start from the seed.")
            return
        state.restore(self.loop.optimizer, list(self.targets.layers), {"draws": self.loop.draws.generator}, adapter.source)
        changed = state.differences(self.resume_settings())
        self.notes.append(f"Resumed exactly from step {state.step} of {adapter.source}: optimizer state and random draws restored"
                          + (f"; changed since: {', '.join(changed)}, so it is not the run an uninterrupted one would have been." if changed
                             else " (the seed input is not used)."))

    # -------------------------------------------------------- one micro-batch

    def conds_for(self, image: int) -> list:
        """The caption of one image as the model's processed conditioning (cached per caption and latent shape)."""
        caption = self.captions[image]
        key = (id(caption), tuple(self.x0[image].shape))
        if key not in self._conds:
            embedding, options = caption
            options = dict(options)
            if self.config.guidance > 0:
                options["guidance"] = self.config.guidance
            conds = comfy.sampler_helpers.convert_cond([[embedding, options]])
            x0 = self.x0[image]
            try:
                processed = comfy.samplers.process_conds(self.patcher.model, x0, {"positive": conds}, self.device, x0, None, self.config.seed)
            except KeyError as e:  # the model reads an entry another model's text encoder does not make (SD1.5's CLIP into Flux or SD3)
                raise AdapterError(f"The captions were not encoded for this model (it needs {clipped(str(e))}, which they lack): encode them "
                                   "with this model's own text encoder (its CLIP in CLIP Text Encode, or the Training Data node).") from None
            self._conds[key] = processed["positive"]
        return self._conds[key]

    def sigmas(self, uniform: torch.Tensor) -> torch.Tensor:
        """sigma per sample from uniform draws in [0, 1), as the objective prescribes, within the configured noise range."""
        s = self.sampling
        low, high = self.noise
        falling = (1 - high) + (high - low) * uniform  # draws for schedules that start at the most noise (u = 0: pure noise)
        rising = low + (high - low) * uniform  # draws for timestep tables that start clean
        if self.config.objective == COMFYUI:
            values = torch.tensor([float(s.percent_to_sigma(float(u))) for u in falling])
        elif isinstance(s, comfy.model_sampling.CONST):
            values = flow_sigmas(falling, TRAINING_SHIFT.get(architecture(self.model), 1.0))
        elif hasattr(s, "sigmas"):
            values = s.sigmas.detach().cpu().double()[discrete_timesteps(rising, len(s.sigmas))]
        else:
            values = torch.tensor([float(s.percent_to_sigma(float(u))) for u in falling])
        return values.to(self.device, torch.float32)

    def draw(self, draws) -> list[Batch]:
        """The next micro-batch from the run's seeded draws: images of one size (bucket), grouped by caption."""
        images = draws.images(self.buckets, self.config.batch_size)
        groups: dict = {}
        for i in images:
            groups.setdefault(id(self.captions[i]), []).append(i)
        batches = []
        for members in groups.values():
            x0 = torch.cat([self.x0[i] for i in members])
            sigma = self.sigmas(draws.uniform(len(members)))
            batches.append(Batch(members, x0, draws.noise(x0), sigma, self.conds_for(members[0])))
        return batches

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, conds: list) -> torch.Tensor:
        """The model's denoised estimate, through ComfyUI's own conditioning and model wrappers."""
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else contextlib.nullcontext()
        with autocast:
            return comfy.samplers.calc_cond_batch(self.patcher.model, [conds], x_t, sigma, self.model_options)[0]

    def loss(self, batch: Batch) -> torch.Tensor:
        """The configured objective on one batch (the loss the run reports and trains on)."""
        x_t = self.sampling.noise_scaling(batch.sigma, batch.noise, batch.x0, False)
        return self.objective(self.denoise(x_t, batch.sigma, batch.conds), batch.x0, batch.sigma)

    def objective(self, denoised: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The configured objective of a denoised estimate against what it should be (the clean latent, when training)."""
        if self.config.objective == COMFYUI:
            return denoised_mse(denoised, target)
        ones = torch.ones((len(sigma),) + (1,) * (target.dim() - 1), device=self.device)
        output_scale = self.sampling.calculate_denoised(sigma, ones, torch.zeros_like(ones)).flatten()  # b(sigma): D = a x + b out
        return prediction_mse(denoised, target, output_scale)

    def micro_loss(self, draws) -> torch.Tensor | None:
        """The mean loss of the next micro-batch; in a parallel run, this process's share of it (None: no share)."""
        batches = self.draw(draws)
        count = sum(len(b.images) for b in batches)
        if self.parallel is not None:
            batches = _only(batches, self.parallel.mine(count))
            if not batches:
                return None
        batches = _one_forward(batches)  # one forward for every caption group (same loss, fewer and larger matrix products)
        total = sum(self.loss(b) * len(b.images) for b in batches)
        return total / count

    # -------------------------------------------------------- the run

    def run(self, steps: int, after_step=lambda step, loss: None) -> list[float]:
        """Train `steps` optimizer steps; after_step(step, loss) runs after each (before progress and the interrupt check)."""
        progress = comfy.utils.ProgressBar(steps)

        def finished(step: int, loss: float) -> None:
            self._draws_after_step = self.loop.draws.generator.get_state()  # what a checkpoint of this step keeps
            if self.config.ema_decay > 0:
                self.targets.update_average(self.config.ema_decay)
            after_step(step, loss)
            progress.update_absolute(step)  # the server's progress hook also raises on interrupt
            comfy.model_management.throw_exception_if_processing_interrupted()

        return self.loop.run(steps, self.micro_loss, comfy.model_management.throw_exception_if_processing_interrupted, finished)
