"""The step loop of a training run, independent of the host.

`StepLoop` owns the optimizer and what happens between optimizer steps:
gradient accumulation (the mean of `grad_accumulation` micro-batches),
the non-finite loss check (before the update, so a NaN never reaches ΔR),
clipping of the global gradient norm, and the optimizer step. The host
(integration/training/session.py) supplies the micro-batch loss, the interrupt
check and what to do after each step (progress, checkpoints).

The draws (images, timestep fractions, noise) come from one seeded
generator, never the global RNG: the same seed and inputs give the same run.

Data parallel runs (parallel.py) use the same loop: every process draws
every micro-batch, computes the loss of its share of the samples (or
none: `micro_loss` returns None), and `reduce` sums the gradients and the
loss over the processes before the checks and the update, so every
process takes the same optimizer step as one process would.
"""

import math
from typing import Callable

import torch

from .buckets import draw_batch

OPTIMIZERS = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD, "RMSprop": torch.optim.RMSprop}


class NonFiniteLoss(Exception):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss {loss} at step {step}")
        self.step, self.loss = step, loss


def make_optimizer(name: str, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](parameters, lr=lr, weight_decay=weight_decay)


class Draws:
    """Seeded randomness of a run: which images, which timestep fraction, which noise."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed % 2**63)

    def images(self, buckets: list[list[int]], batch: int) -> list[int]:
        """Up to `batch` image indices, all from one bucket (images of one size): buckets.draw_batch."""
        return draw_batch(buckets, batch, self.generator)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=torch.float32).to(like)


class StepLoop:
    """Optimizer steps over accumulated micro-batches.

    micro_loss(draws) -> the loss tensor of one micro-batch (graph attached),
    or None where this process computes no part of it;
    before_micro() runs before each micro-batch (interrupt checks);
    after_step(step, loss) runs after each optimizer step;
    reduce(loss total or None, parameters) -> the loss total over all
    processes, with the parameters' gradients summed over them too.
    """

    def __init__(self, parameters: list, *, optimizer: str, learning_rate: float, weight_decay: float, grad_accumulation: int,
                 max_grad_norm: float, seed: int, reduce: Callable | None = None):
        self.parameters = list(parameters)
        self.optimizer = make_optimizer(optimizer, self.parameters, learning_rate, weight_decay)
        self.grad_accumulation = grad_accumulation
        self.max_grad_norm = max_grad_norm
        self.draws = Draws(seed)
        self.reduce = reduce

    def step(self, step: int, micro_loss: Callable, before_micro: Callable = lambda: None) -> float:
        total = None
        for _ in range(self.grad_accumulation):
            before_micro()
            loss = micro_loss(self.draws)
            if loss is None:
                continue
            (loss / self.grad_accumulation).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.reduce is not None:
            total = self.reduce(total, self.parameters)
        value = float(total) / self.grad_accumulation  # the one host sync per step
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(step, value)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    def run(self, steps: int, micro_loss: Callable, before_micro: Callable = lambda: None, after_step: Callable = lambda step, loss: None) -> list[float]:
        losses = []
        for step in range(1, steps + 1):
            losses.append(self.step(step, micro_loss, before_micro))
            after_step(step, losses[-1])
        return losses
