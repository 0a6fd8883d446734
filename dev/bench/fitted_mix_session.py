"""Fitting two adapters' mix (ZipLoRA, fitted_mix.py) on a ComfyUI MODEL: the bench's zip route (import it after the
host: toy_world.pipeline.import_host).

A TrainingSession whose trained values are the mergers of a ZipTargets and
whose loss is ZipLoRA's: on each adapter's own images and captions, the
mix's prediction against that adapter alone (a teacher forward without
gradients, the same noise and sigma), plus λ · the mergers' overlap.
Everything else (wrappers on a clone of the model, the reference's sigma
draws, the step loop, clipping, the NaN stop, progress, Cancel, release)
is the training session's own.
"""

import torch

from comfyui_qrlora.integration.training.session import Batch, TrainingSession, captions_per_image, choose_targets, training_latents
from comfyui_qrlora.qrlora_core.errors import AdapterError
from comfyui_qrlora.qrlora_core.merge import merge
from comfyui_qrlora.qrlora_core.training import TrainConfig

from bench.fitted_mix import ZipTargets

STEPS, LEARNING_RATE, OVERLAP_WEIGHT = 100, 1e-2, 0.01  # ZipLoRA's: 100 steps, mergers at lr 0.01, λ = 0.01


class ZipSession(TrainingSession):
    """Fit the mergers of `adapters` (content, style) on `data` = [(latents, positive)] per adapter, in that order."""

    def __init__(self, model, config: TrainConfig, adapters: list, data: list, overlap_weight: float = OVERLAP_WEIGHT):
        if len(adapters) != 2 or len(data) != 2:
            raise AdapterError("Fitting a mix takes two adapters and each one's training images and captions.")
        latents, captions, self.owner = [], [], []
        for i, (images, positive) in enumerate(data):
            singles = training_latents(images)
            latents += singles
            captions += captions_per_image(positive, len(singles))
            self.owner += [i] * len(singles)
        self.overlap_weight = overlap_weight
        union, _ = merge(adapters, [1.0, 1.0])  # the layers either changes, checked against the model as Apply checks them
        where, _ = choose_targets(model, config, union)
        zipped = ZipTargets(adapters, names=list(where), device=model.load_device)
        super().__init__(model, config, [{"samples": x} for x in latents], [[c] for c in captions], existing=union, trainable=zipped)
        self.notes = [n for n in self.notes if not n.startswith("Continuing")]

    def _continue(self, adapter) -> None:
        """Nothing to restore: the mergers start at 1 (the plain sum)."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """ZipLoRA's distillation: the mix's output against each sample's own adapter alone, in the objective's units."""
        x_t = self.sampling.noise_scaling(batch.sigma, batch.noise, batch.x0, False)
        owners = torch.tensor([self.owner[i] for i in batch.images], device=self.device)
        with torch.no_grad():
            teachers = {}
            for i in sorted(set(owners.tolist())):
                with self.targets.teacher(i):
                    teachers[i] = self.denoise(x_t, batch.sigma, batch.conds).float()
        pick = owners.reshape(-1, *([1] * (batch.x0.dim() - 1)))
        target = next(iter(teachers.values())) if len(teachers) == 1 else torch.where(pick == 0, teachers[0], teachers[1])
        return self.objective(self.denoise(x_t, batch.sigma, batch.conds), target, batch.sigma)

    def micro_loss(self, draws) -> torch.Tensor | None:
        loss = super().micro_loss(draws)
        return loss + self.overlap_weight * self.targets.overlap().to(loss.device)


def fit_mix(model, adapters: list, data: list, steps: int = STEPS, learning_rate: float = LEARNING_RATE,
            overlap_weight: float = OVERLAP_WEIGHT, seed: int = 0, batch_size: int = 8, training_dtype: str = "fp32") -> tuple[list, list, list]:
    """(the adapters fitted to each other, the losses, notes): ZipLoRA's mergers fitted for `steps` on `data`."""
    config = TrainConfig(steps=steps, learning_rate=learning_rate, batch_size=batch_size, grad_accumulation=1, seed=seed,
                         training_dtype=training_dtype, gradient_checkpointing=False, weight_decay=0.0)
    with torch.inference_mode(False), ZipSession(model, config, adapters, data, overlap_weight) as session:
        losses = session.run(steps)
        meta = {"fitted_mix": {"steps": steps, "learning_rate": learning_rate, "overlap_weight": overlap_weight, "seed": seed,
                               "loss_first": losses[0], "loss_last": losses[-1]}}
        fitted = session.targets.fitted(meta)
        notes = list(session.notes)
    return fitted, losses, notes
