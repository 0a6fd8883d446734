"""One training run into files: what Train QR-LoRA and train.py both run.

A `TrainingSession` (session.py: setup, steps, release), checkpoints in
`loras` every N steps, sample images, and what went wrong worded for the
user: interrupted runs keep what was trained, diverged ones the last good
state, runs that do not fit say what would.
"""

import logging
import os
from dataclasses import dataclass

import comfy.model_management

from ...qrlora_core.errors import AdapterError
from ...qrlora_core.formats import probe_write, save_native
from ...qrlora_core.training import TrainConfig
from ...qrlora_core.training import config as settings
from ...qrlora_core.training.state import steps_trained
from ...qrlora_core.training.step_loop import NonFiniteLoss
from .. import files
from . import fit
from .names import checkpoint_name
from .samples import SamplePreviews
from .session import TrainingSession


class Stopped(comfy.model_management.InterruptProcessingException):
    """A run stopped by Cancel, with what it kept: still ComfyUI's interrupt (the executor reports it as one),
    worded for the user here once (the node sends it to the page, train.py prints it)."""

    def __init__(self, step: int, kept: str | None):
        self.step, self.kept = step, kept
        super().__init__(f"Stopped at step {step}; " + (f"kept {kept}." if kept else "nothing was trained yet, so no file was written."))


class Checkpoints:
    """<prefix>_<run>_step<steps>.safetensors in the loras folder, written atomically.

    Made before any work: it picks the run number and checks that the
    folder can be made and the longest name of the run can be written there,
    so a bad prefix is reported before step 1, not after the last.
    """

    def __init__(self, prefix: str, last_step: int):
        prefix = files.clean_prefix(prefix) or settings.default("filename_prefix")
        self.run = files.first_free(prefix, self._run_exists, "training runs")
        self._check_writable(prefix, checkpoint_name(self.run, last_step))
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
        """The run's longest name, made and removed now: files.output_path refuses names the file system cannot hold."""
        try:
            probe_write(files.output_path(name), root=files.loras_root())  # leaves no file or folder behind
        except OSError as e:
            raise AdapterError(f"Checkpoints cannot be written for the filename prefix '{prefix}' ({e.strerror or e}): check that the loras folder is writable, or choose another prefix.") from None

    def save(self, steps: int, loss: float | None) -> str:
        name = checkpoint_name(self.run, steps)
        meta = {**self.metadata, "steps": steps}
        if loss is not None:
            meta["loss"] = loss
        state = self.training_state(steps).pack() if self.training_state else None
        save_native(self.targets.to_adapter(meta, source=name), files.output_path(name), extra=state, root=files.loras_root())
        self.saved_step, self.saved_name = steps, name
        logging.info(f"[QR-LoRA] saved checkpoint {name}")
        return name

    def keep(self, steps: int, losses: list) -> str | None:
        """Save what was trained so far, unless nothing new was or it is not finite."""
        if not losses or self.saved_step == steps or self.targets is None or not self.targets.all_finite():
            return self.saved_name
        return self.save(steps, losses[-1])


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
                   samples=None, on_samples=lambda step, made: None) -> TrainedRun:
    """Train and write the checkpoints and the final adapter into `loras`: what the node and train.py both run.

    Interrupted: keeps what was trained (a checkpoint) and raises `Stopped`.
    Diverged: keeps the last good state and says so. `parallel`: a
    StepShare run, in which only process 0 writes files (and makes the
    sample images, when `samples` (SampleSettings) asks for them;
    on_samples(step, made) after each set, SamplePreviews.files' new entries).
    """
    writes = parallel is None or parallel.main
    steps_before = steps_trained(existing) if existing is not None else 0
    total = steps_before + config.steps
    checkpoints = Checkpoints(config.filename_prefix, total) if writes else None  # before any work: a bad prefix fails now
    try:
        session = TrainingSession(model, config, latents, positive, existing, parallel=parallel)  # a run that cannot fit fails now
    except fit.OUT_OF_MEMORY as e:
        raise fit.out_of_memory(None, 0, e) from None
    metadata = {
        "trigger_words": config.trigger_words,
        "training": {
            **config.recorded(), "noise_min": session.noise[0], "noise_max": session.noise[1],  # the range trained at
            "images": len(session.latents), "triangular": session.triangular, "basis_part": session.basis_part,
            "targets": config.target_pattern if config.target_preset == "custom pattern" else config.target_preset,
        },
    }
    if checkpoints is not None:
        checkpoints.targets, checkpoints.metadata, checkpoints.training_state = session.targets, metadata, session.training_state
    previews = SamplePreviews(samples, checkpoints.run, on_samples) if samples is not None and checkpoints is not None else None
    losses: list[float] = []

    def after_step(step: int, loss: float) -> None:
        losses.append(loss)
        on_step(step, loss)
        if checkpoints is not None and config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            checkpoints.save(steps_before + step, loss)
        if previews is not None and previews.settings.due(steps_before + step):
            previews(session, steps_before + step)

    try:
        with session:
            session.run(config.steps, after_step)
    except comfy.model_management.InterruptProcessingException:
        if checkpoints is None:  # a process that writes nothing: process 0 says what was kept
            raise
        step = steps_before + len(losses)
        raise Stopped(step, checkpoints.keep(step, losses)) from None
    except fit.OUT_OF_MEMORY as e:  # the estimate was wrong: keep what was trained, say what to change
        if checkpoints is not None:
            checkpoints.keep(steps_before + len(losses), losses)
        raise fit.out_of_memory(session.plan, steps_before + len(losses) + 1, e) from None
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
