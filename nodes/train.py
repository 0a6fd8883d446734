"""Train QR-LoRA: MODEL + latents + caption -> a trained QR_LORA, checkpoints in `loras`.

The base model is never written to: training runs on a clone whose chosen
weights pass through a `QRWeightWrapper` (ModelPatcher weight wrappers,
as ComfyUI's own LoRA trainer does), and the wrappers are removed again
afterwards. The MODEL output is the base with the trained adapter applied
as ordinary patches, exactly what Load QR-LoRA + Apply to Model give.

Memory beyond the model (measured: bench/train_memory.py, bench/train_memory.md).
Per target of m x n weights at rank r, for the whole run: Q (4·r·m bytes)
and ΔR, its gradient and AdamW's two moments (4·4·r·n), so 4·r·(m + 4n);
no residual and no R. Per step: each trained weight key hands its layer a
patched W' = W + s·Q·ΔR (m x n in the training dtype) that autograd keeps
until that layer's backward; with gradient checkpointing (the default)
only one block's W' live at a time, without it all of them at once (about
one more copy of the trained weights).
"""

import logging
import os

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.utils
import comfy_extras.nodes_custom_sampler
from comfy_extras.nodes_train import find_all_highest_child_module_with_forward, unpatch

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import save_native
from ..qrlora_core.training import TrainConfig, TrainTargets, select
from ..qrlora_core.training import config as settings
from . import files, keymap
from .apply import patches_for, resolve_targets
from .routes import running_server
from .train_loop import NonFiniteLoss, QRTrainSampler, checkpoint, loss_curve, make_optimizer
from .types import QRLoRAType, describe

CATEGORY = "QR-LoRA/training"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LIVE_LOSS_EVENT = "qrlora.train.loss"  # web/train.js draws these while the run goes on
LossMap = io.Custom("LOSS_MAP")  # ComfyUI's loss history type: {"loss": [float, ...]}


def _int(name, **extra):
    return io.Int.Input(name, default=settings.default(name), tooltip=settings.help_text(name), **settings.limits(name), **extra)


def _float(name, **extra):
    return io.Float.Input(name, default=settings.default(name), tooltip=settings.help_text(name), **settings.limits(name), **extra)


def _combo(name):
    return io.Combo.Input(name, options=list(settings.limits(name)["options"]), default=settings.default(name), tooltip=settings.help_text(name))


def _bool(name):
    return io.Boolean.Input(name, default=settings.default(name), tooltip=settings.help_text(name))


def _string(name, **extra):
    return io.String.Input(name, default=settings.default(name), tooltip=settings.help_text(name), **extra)


# ------------------------------------------------------------ inputs


def _latents(latents: list, dtype) -> tuple[torch.Tensor, list | None]:
    """(one batch tensor, None) when all images have one size, else (a dummy batch, list of single images)."""
    singles = [s[None] for latent in latents for s in latent["samples"]]
    if not singles:
        raise AdapterError("The latents are empty: encode at least one training image with VAE Encode.")
    singles = [s.to(dtype, copy=True) for s in singles]  # ordinary tensors, not inference-mode ones
    if len({tuple(s.shape) for s in singles}) == 1:
        return torch.cat(singles), None
    return singles[0].repeat(len(singles), *([1] * (singles[0].dim() - 1))), singles


def _conditioning(positive: list, images: int) -> list:
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
    out = {}
    for name, value in keymap.named_targets(model).items():
        if isinstance(value, tuple) and len(value) > 2 and value[2] is not None:
            continue  # stored in another layout than the adapter's (e.g. swapped scale/shift halves)
        out[name] = keymap.split_target(value)
    return out


def _choose(model, config: TrainConfig, existing) -> tuple[dict, list[str]]:
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
    names = select(candidates, config.target_regex())
    if not names:
        example = next(iter(candidates), "(none)")
        raise AdapterError(
            f"The targets '{config.target_preset}' match none of this model's {len(candidates)} trainable layers "
            f"(they are named like '{example}'): pick another preset or write a pattern that matches those names."
        )
    return {n: candidates[n] for n in names}, notes


def _base_weights(model, where: dict, device) -> dict:
    """name -> the base weight (or its row slice) as a 2-D tensor on `device`, each fused key read once."""
    full, out = {}, {}
    for name, (key, offset) in where.items():
        if key not in full:
            full[key] = keymap.base_weight(model, key)
        out[name] = keymap.rows_of(full[key], offset).to(device)
    return out


def _usable_for_autograd(module) -> None:
    """Weights loaded inside ComfyUI's inference mode cannot be saved for backward: give them equal ordinary storage.

    Same values, new tensor objects (an inference tensor stays one even
    with its .data replaced), one layer at a time, so the model is never
    held twice. (ComfyUI's LoRA trainer avoids this by wrapping every
    weight, which copies the whole model on every forward.)
    """
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None and p.is_inference():
                m._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
        for name, b in m._buffers.items():
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()


# ------------------------------------------------------------ checkpoints


class Checkpoints:
    """<prefix>_<run>_step<steps>.safetensors in the loras folder, written atomically."""

    def __init__(self, prefix: str, targets: TrainTargets, metadata: dict):
        prefix = prefix.strip() or settings.default("filename_prefix")
        self.targets, self.metadata = targets, metadata
        for run in range(1, 100_000):
            self.run = f"{prefix}_{run:05}"
            folder, stem = os.path.split(files.output_path(self.run + "_step"))
            stem = stem[: -len(".safetensors")]
            if not os.path.isdir(folder) or not any(f.startswith(stem) for f in os.listdir(folder)):
                break
        else:
            raise AdapterError(f"There are already 99,999 training runs named {prefix}_*: choose another filename prefix.")
        self.saved_step, self.saved_name = None, None

    def save(self, steps: int, loss: float | None) -> str:
        name = f"{self.run}_step{steps:06}.safetensors"
        meta = {**self.metadata, "steps": steps}
        if loss is not None:
            meta["loss"] = loss
        save_native(self.targets.to_adapter(meta, source=name), files.output_path(name))
        self.saved_step, self.saved_name = steps, name
        logging.info(f"[QR-LoRA] saved checkpoint {name}")
        return name


# ------------------------------------------------------------ model wiring


def _release(mp, wrappers: dict) -> None:
    """Take the training wrappers off the layers of the model all clones share.

    ComfyUI only rebuilds a layer's weight functions when it loads another
    patcher, so without this a later forward of the still-loaded base model
    could run through the trained ΔR. The model itself stays loaded (the
    trained MODEL output, a clone, reuses it).
    """
    ours = list(wrappers.values())
    for module in mp.model.modules():
        functions = getattr(module, "weight_function", None)
        if functions and any(f is w for f in functions for w in ours):
            module.weight_function = [f for f in functions if not any(f is w for w in ours)]
    mp.weight_wrapper_patches = {}


class QRLoRATrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRATrain",
            display_name="Train QR-LoRA",
            category=CATEGORY,
            description=(
                "Trains a QR-LoRA as the paper does: per layer the base weight's top-r SVD and QR give a frozen basis Q, "
                "and only ΔR (zero at the start) is learned. Uses the model's own noise schedule and prediction type."
            ),
            is_input_list=True,
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # it writes checkpoints and shows the loss curve
            inputs=[
                io.Model.Input("model", tooltip="The base model to train on (any model the stock loaders load)."),
                io.Latent.Input("latents", tooltip="Training images encoded with VAE Encode: one batch, or a list of images of different sizes."),
                io.Conditioning.Input("positive", tooltip="The caption with its trigger word: one for all images, or one per image."),
                _int("rank"),
                _float("alpha", step=0.5),
                _int("steps"),
                _float("learning_rate", step=1e-6),
                _int("batch_size"),
                _int("grad_accumulation"),
                _int("seed", control_after_generate=False),
                _combo("optimizer"),
                _combo("training_dtype"),
                _bool("gradient_checkpointing"),
                _combo("target_preset"),
                _string("target_pattern"),
                _bool("triangular"),
                _int("checkpoint_every"),
                _string("filename_prefix"),
                _string("trigger_words"),
                QRLoRAType.Input("qr_lora", optional=True, tooltip="An adapter to continue training (its own Q, ΔR, rank and layers)."),
            ],
            outputs=[
                QRLoRAType.Output(display_name="qr_lora", tooltip="The trained adapter (also saved in the loras folder)."),
                io.Model.Output(display_name="model", tooltip="The base model with the trained adapter applied."),
                LossMap.Output(display_name="loss_map", tooltip="Loss per step (for the stock loss graph nodes)."),
                io.Image.Output(display_name="loss_curve", tooltip="The loss per step as an image."),
                io.Int.Output(display_name="steps", tooltip="Steps the adapter has been trained for in total."),
            ],
        )

    @classmethod
    def execute(cls, model, latents, positive, qr_lora=None, **widgets) -> io.NodeOutput:
        config = TrainConfig(**{k: v[0] for k, v in widgets.items()})
        model, existing = model[0], (qr_lora[0] if qr_lora else None)
        with torch.inference_mode(False):
            return cls._train(model, latents, positive, config, existing)

    @classmethod
    def _train(cls, model, latents, positive, config: TrainConfig, existing) -> io.NodeOutput:
        dtype = DTYPES[config.training_dtype]
        latent, singles = _latents(latents, dtype)
        conds = _conditioning(positive, latent.shape[0])
        where, notes = _choose(model, config, existing)

        weights = _base_weights(model, where, model.load_device)
        triangular = config.triangular
        if existing is not None:
            if triangular and any(torch.tril(existing.targets[n].delta_r, -1).any() for n in where):
                triangular = False
                notes.append("The adapter's ΔR is not triangular, so it is trained without the triangular mask.")
            targets = TrainTargets.resume(existing, weights, triangular)
            steps_before = int(existing.metadata.get("steps", 0) or 0)
        else:
            decomposed = comfy.utils.ProgressBar(len(weights))
            targets = TrainTargets.new(weights, config.rank, config.scale_alpha, triangular, files.basis_store(), progress=decomposed.update)
            steps_before = 0
        del weights

        metadata = {
            "trigger_words": config.trigger_words,
            "training": {
                "images": latent.shape[0], "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                "grad_accumulation": config.grad_accumulation, "optimizer": config.optimizer, "seed": config.seed,
                "training_dtype": config.training_dtype, "triangular": triangular,
                "targets": config.target_pattern if config.target_preset == "custom pattern" else config.target_preset,
            },
        }
        checkpoints = Checkpoints(config.filename_prefix, targets, metadata)
        losses: list[float] = []
        progress = comfy.utils.ProgressBar(config.steps)

        node_id, server = (cls.hidden.unique_id if cls.hidden else None), running_server()

        def on_step(step: int, loss: float) -> None:
            losses.append(loss)
            if server is not None:
                server.send_sync(LIVE_LOSS_EVENT, {"node": node_id, "step": step, "loss": loss})
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                checkpoints.save(steps_before + step, loss)
            progress.update_absolute(step)  # the server's progress hook also raises on interrupt
            comfy.model_management.throw_exception_if_processing_interrupted()

        mp = model.clone()
        mp.set_model_compute_dtype(dtype)
        wrappers = targets.wrappers(where)
        for key, wrapper in wrappers.items():
            mp.add_weight_wrapper(key, wrapper)
        optimizer = make_optimizer(config.optimizer, targets.parameters(), config.learning_rate)
        sampler = QRTrainSampler(
            torch.nn.MSELoss(), optimizer, steps=config.steps, batch_size=config.batch_size, grad_acc=config.grad_accumulation,
            seed=config.seed, training_dtype=dtype, real_dataset=singles, on_step=on_step,
        )
        checkpointed = find_all_highest_child_module_with_forward(mp.model.diffusion_model) if config.gradient_checkpointing else []
        try:
            for m in checkpointed:
                checkpoint(m)
            mp.model.requires_grad_(False)
            comfy.model_management.load_models_gpu([mp], memory_required=1e20, force_full_load=True)
            _usable_for_autograd(mp.model)
            guider = comfy_extras.nodes_custom_sampler.Guider_Basic(mp)
            guider.set_conds(conds)
            with torch.random.fork_rng(devices=[]):  # ComfyUI's noise helper reseeds the global RNG
                guider.sample(torch.zeros_like(latent), latent, sampler, torch.arange(latent.shape[0]), seed=config.seed)
        except comfy.model_management.InterruptProcessingException:
            cls._keep(checkpoints, steps_before + len(losses), losses)
            raise
        except NonFiniteLoss as e:
            kept = cls._keep(checkpoints, steps_before + len(losses), losses)
            where_kept = f"the last good state (step {checkpoints.saved_step}) is in {kept}" if kept else "nothing was trained yet, so no file was written"
            raise AdapterError(
                f"Training stopped at step {steps_before + e.step}: the loss became {e.loss} (it diverged); {where_kept}. "
                "Lower the learning rate or train in fp32, then continue from that file."
            ) from None
        finally:
            for m in checkpointed:
                unpatch(m)
            _release(mp, wrappers)
            for p in targets.parameters():
                p.requires_grad_(False)

        total = steps_before + config.steps
        name = checkpoints.save(total, losses[-1]) if checkpoints.saved_step != total else checkpoints.saved_name
        adapter = targets.to_adapter({**metadata, "steps": total, "loss": losses[-1]}, source=name)
        patched = model.clone()
        patched.add_patches(patches_for(adapter, resolve_targets(patched, adapter)[0]), 1.0)

        curve = loss_curve(losses, first_step=steps_before + 1)
        text = "\n".join([
            f"Trained {len(targets.layers)} layers ({targets.trainable_count():,} ΔR values) for {config.steps} steps: "
            f"loss {losses[0]:.4g} -> {losses[-1]:.4g}. Saved {name}.",
            *notes,
            describe(adapter),
        ])
        preview = ui.PreviewImage(curve, cls=cls).as_dict()
        summary = {"file": name, "steps": total, "losses": losses, "layers": len(targets.layers), "trained_values": targets.trainable_count()}
        return io.NodeOutput(adapter, patched, {"loss": losses}, curve, total, ui={**preview, "text": [text], "qrlora": [summary], "loss": losses})

    @staticmethod
    def _keep(checkpoints: Checkpoints, steps: int, losses: list) -> str | None:
        """Save what was trained so far, unless nothing new was or it is not finite."""
        if not losses or checkpoints.saved_step == steps or not checkpoints.targets.all_finite():
            return checkpoints.saved_name
        return checkpoints.save(steps, losses[-1])
