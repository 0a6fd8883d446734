"""Train QR-LoRA: MODEL + latents + caption -> a trained QR_LORA, checkpoints in `loras`.

The node gathers its inputs, checks where the files will go, runs a
`TrainingSession` (nodes/train_session.py: setup, steps, release) and
words what went wrong. The base model is never written to; the MODEL
output is the base with the trained adapter applied as ordinary patches,
exactly what Load QR-LoRA + Apply to Model give.
"""

import errno
import logging
import os
from dataclasses import dataclass, fields

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw, ImageFont

import comfy.model_management

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import save_native
from ..qrlora_core.training import TrainConfig
from ..qrlora_core.training import config as settings
from ..qrlora_core.training.session import NonFiniteLoss
from . import files, train_fit
from .adapter_socket import TRAINING_CATEGORY, QRLoRAType, describe
from .apply import patches_for, resolve_targets
from .routes import running_server
from .train_samples import SamplePreviews, SampleSettingsType
from .train_session import TrainingSession

LIVE_LOSS_EVENT = "qrlora.train.loss"  # web/train.js draws these while the run goes on
LossMap = io.Custom("LOSS_MAP")  # ComfyUI's loss history type: {"loss": [float, ...]}


def setting_inputs() -> list:
    """One widget per TrainConfig field: its type, default, limits and tooltip from the field itself."""
    inputs = []
    for f in fields(TrainConfig):
        meta = f.metadata
        common = {"default": f.default, "tooltip": meta["help"], "optional": meta["optional"], **meta["widget"]}
        limits = settings.limits(f.name)
        if "options" in limits:
            inputs.append(io.Combo.Input(f.name, options=list(limits["options"]), **common))
        elif f.type in (bool, "bool"):
            inputs.append(io.Boolean.Input(f.name, **common))
        elif f.type in (int, "int"):
            inputs.append(io.Int.Input(f.name, **limits, **common))
        elif f.type in (float, "float"):
            inputs.append(io.Float.Input(f.name, **limits, **common))
        else:
            inputs.append(io.String.Input(f.name, **common))
    return inputs


# ------------------------------------------------------------ checkpoints


class Checkpoints:
    """<prefix>_<run>_step<steps>.safetensors in the loras folder, written atomically.

    Made before any work: it picks the run number and checks that the
    folder can be made and the longest name of the run can be written there,
    so a bad prefix is reported before step 1, not after the last.
    """

    def __init__(self, prefix: str, last_step: int):
        prefix = prefix.strip() or settings.default("filename_prefix")
        self.run = files.first_free(prefix, self._run_exists, "training runs")
        self._check_writable(prefix, f"{self.run}_step{last_step:06}.safetensors")
        self.targets, self.metadata, self.training_state = None, {}, None  # training_state(steps) -> TrainingState
        self.saved_step, self.saved_name = None, None

    @staticmethod
    def _run_exists(run: str) -> bool:
        """Whether any file of run `run` (a checkpoint or a sample image) is in its folder."""
        folder, stem = os.path.split(files.output_path(run + "_step"))
        stem = stem[: -len(files.EXTENSION)]
        return os.path.isdir(folder) and any(f.startswith(stem) for f in os.listdir(folder))

    @staticmethod
    def _check_writable(prefix: str, name: str) -> None:
        path = files.output_path(name)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            os.unlink(path)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                longest = max(len(part.encode()) for part in name.split("/"))
                raise AdapterError(
                    f"The filename prefix '{prefix}' makes names too long for the file system ({longest} bytes in one name, "
                    f"such as {os.path.basename(name)}; most allow 255): shorten the prefix."
                ) from None
            raise AdapterError(f"Checkpoints cannot be written for the filename prefix '{prefix}' ({e.strerror or e}): check that the loras folder is writable, or choose another prefix.") from None

    def save(self, steps: int, loss: float | None) -> str:
        name = f"{self.run}_step{steps:06}.safetensors"
        meta = {**self.metadata, "steps": steps}
        if loss is not None:
            meta["loss"] = loss
        state = self.training_state(steps).pack() if self.training_state else None
        save_native(self.targets.to_adapter(meta, source=name), files.output_path(name), extra=state)
        self.saved_step, self.saved_name = steps, name
        logging.info(f"[QR-LoRA] saved checkpoint {name}")
        return name

    def keep(self, steps: int, losses: list) -> str | None:
        """Save what was trained so far, unless nothing new was or it is not finite."""
        if not losses or self.saved_step == steps or self.targets is None or not self.targets.all_finite():
            return self.saved_name
        return self.save(steps, losses[-1])


def loss_curve(losses: list[float], first_step: int = 1, width: int = 512, height: int = 288) -> torch.Tensor:
    """The loss per step as an IMAGE tensor (1, H, W, 3), axes labelled with steps and loss range."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, width - 12, 12, height - 28
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    if losses:
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0
        n = len(losses)
        points = [
            (left + (right - left) * (i / max(n - 1, 1)), bottom - (bottom - top) * ((v - lo) / span))
            for i, v in enumerate(losses)
        ]
        if n == 1:
            points = points * 2
        draw.line(points, fill=(30, 90, 200), width=2)
        draw.text((4, top), f"{hi:.4g}", fill="black", font=font)
        draw.text((4, bottom - 10), f"{lo:.4g}", fill="black", font=font)
        draw.text((left, bottom + 8), f"step {first_step}", fill="black", font=font)
        draw.text((right - 70, bottom + 8), f"step {first_step + n - 1}", fill="black", font=font)
    draw.text((width // 2 - 12, bottom + 8), "loss", fill="black", font=font)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


class QRLoRATrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRATrain",
            display_name="Train QR-LoRA",
            category=TRAINING_CATEGORY,
            description=(
                "Trains a QR-LoRA as the paper does: per layer the base weight's top-r SVD and QR give a frozen basis Q, "
                "and only ΔR (zero at the start) is learned, with the reference scripts' objective and defaults."
            ),
            is_input_list=True,
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # it writes checkpoints and shows the loss curve
            inputs=[
                io.Model.Input("model", tooltip="The base model to train on (any model the stock loaders load)."),
                io.Latent.Input("latents", tooltip="Training images encoded with VAE Encode: one batch, or a list of images of different sizes."),
                io.Conditioning.Input("positive", tooltip="The caption with its trigger word: one for all images, or one per image."),
                *setting_inputs(),
                QRLoRAType.Input("qr_lora", optional=True, tooltip="An adapter to continue training (its own Q, ΔR, rank and layers)."),
                SampleSettingsType.Input("samples", optional=True, tooltip="Sample images every N steps (QR-LoRA Sample Settings)."),
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
    def execute(cls, model, latents, positive, qr_lora=None, samples=None, **widgets) -> io.NodeOutput:
        config = TrainConfig(**{k: v[0] for k, v in widgets.items()})
        model, existing, samples = model[0], (qr_lora[0] if qr_lora else None), (samples[0] if samples else None)
        with torch.inference_mode(False):
            return cls._train(model, latents, positive, config, existing, samples)

    @classmethod
    def _train(cls, model, latents, positive, config: TrainConfig, existing, samples=None) -> io.NodeOutput:
        node_id, server = (cls.hidden.unique_id if cls.hidden else None), running_server()

        def live_loss(step: int, loss: float) -> None:
            if server is not None:
                server.send_sync(LIVE_LOSS_EVENT, {"node": node_id, "step": step, "loss": loss})

        run = train_to_files(model, latents, positive, config, existing, on_step=live_loss, samples=samples)
        losses, total, name, targets = run.losses, run.total, run.name, run.session.targets
        adapter = targets.to_adapter({**run.metadata, "steps": total, "loss": losses[-1]}, source=name)
        patched = model.clone()
        patched.add_patches(patches_for(adapter, resolve_targets(patched, adapter)[0]), 1.0)

        curve = loss_curve(losses, first_step=run.steps_before + 1)
        text = "\n".join([
            f"Trained {len(targets.layers)} layers ({targets.trainable_count():,} ΔR values) for {config.steps} steps: "
            f"loss {losses[0]:.4g} -> {losses[-1]:.4g}. Saved {name}.",
            *run.session.notes,
            describe(adapter),
        ])
        preview = ui.PreviewImage(curve, cls=cls).as_dict()
        summary = {"file": name, "steps": total, "losses": losses, "layers": len(targets.layers), "trained_values": targets.trainable_count()}
        output = {**preview, "text": [text], "qrlora": [summary], "loss": losses}
        if run.previews is not None:  # the loss curve, then every sample image
            output["images"] = preview["images"] + run.previews.shown
            output["qrlora_samples"] = run.previews.files
        return io.NodeOutput(adapter, patched, {"loss": losses}, curve, total, ui=output)


# ------------------------------------------------------------ the run behind the node and the headless trainer


@dataclass
class TrainedRun:
    session: TrainingSession
    metadata: dict  # what every file of the run records (settings, trigger words), without steps and loss
    losses: list
    steps_before: int
    total: int  # steps trained in all, earlier runs of a continued adapter included
    name: str | None  # the last file written (None on processes other than 0 of a parallel run)
    previews: SamplePreviews | None = None  # the sample images made while training (process 0)


def train_to_files(model, latents, positive, config: TrainConfig, existing=None, on_step=lambda step, loss: None, parallel=None,
                   samples=None) -> TrainedRun:
    """Train and write the checkpoints and the final adapter into `loras`: what the node and train.py both run.

    Interrupted: keeps what was trained (a checkpoint), then re-raises.
    Diverged: keeps the last good state and says so. `parallel`: a
    DataParallel run, in which only process 0 writes files (and makes the
    sample images, when `samples` (SampleSettings) asks for them).
    """
    writes = parallel is None or parallel.main
    steps_before = int(existing.metadata.get("steps", 0) or 0) if existing is not None else 0
    total = steps_before + config.steps
    checkpoints = Checkpoints(config.filename_prefix, total) if writes else None  # before any work: a bad prefix fails now
    try:
        session = TrainingSession(model, config, latents, positive, existing, parallel=parallel)  # a run that cannot fit fails now
    except train_fit.OUT_OF_MEMORY as e:
        raise train_fit.out_of_memory(None, 0, e) from None
    metadata = {
        "trigger_words": config.trigger_words,
        "training": {
            **config.recorded(), "images": len(session.latents), "triangular": session.triangular,
            "targets": config.target_pattern if config.target_preset == "custom pattern" else config.target_preset,
        },
    }
    if checkpoints is not None:
        checkpoints.targets, checkpoints.metadata, checkpoints.training_state = session.targets, metadata, session.training_state
    previews = SamplePreviews(samples, checkpoints.run, config.steps) if samples is not None and checkpoints is not None else None
    losses: list[float] = []

    def after_step(step: int, loss: float) -> None:
        losses.append(loss)
        on_step(step, loss)
        if checkpoints is not None and config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            checkpoints.save(steps_before + step, loss)
        if previews is not None and previews.settings.due(steps_before + step):
            previews(session, step, steps_before + step)

    try:
        with session:
            session.run(config.steps, after_step)
    except comfy.model_management.InterruptProcessingException:
        if checkpoints is not None:
            checkpoints.keep(steps_before + len(losses), losses)
        raise
    except train_fit.OUT_OF_MEMORY as e:  # the estimate was wrong: keep what was trained, say what to change
        if checkpoints is not None:
            checkpoints.keep(steps_before + len(losses), losses)
        raise train_fit.out_of_memory(session.plan, steps_before + len(losses) + 1, e) from None
    except NonFiniteLoss as e:
        kept = checkpoints.keep(steps_before + len(losses), losses) if checkpoints is not None else None
        where_kept = f"the last good state (step {checkpoints.saved_step}) is in {kept}" if kept else "nothing was trained yet, so no file was written"
        raise AdapterError(
            f"Training stopped at step {steps_before + e.step}: the loss became {e.loss} (it diverged); {where_kept}. "
            "Lower the learning rate or train in fp32, then continue from that file."
        ) from None

    name = None
    if checkpoints is not None:
        name = checkpoints.save(total, losses[-1]) if checkpoints.saved_step != total else checkpoints.saved_name
    return TrainedRun(session, metadata, losses, steps_before, total, name, previews)
