"""The training loop: ComfyUI's TrainSampler with steps we can count, stop and save.

`TrainSampler.fwd_bwd` (comfy_extras/nodes_train.py) does the model-specific
part: noise the latents at a sigma of the model's own schedule, run the
model through its sampling wrapper (flow matching, eps or v prediction
alike) and compare the denoised prediction with the clean latent. We keep
that and replace its outer loop, which
- draws images and timesteps from a seeded generator instead of the global
  RNG (same seed, same run),
- checks the loss before each optimizer step (NaN or inf stops the run
  before it spoils ΔR),
- reports progress and honours the interrupt button once per optimizer step
  (and per accumulated micro-batch), and
- hands each finished step to a callback (loss history, checkpoints),
and runs every forward pass under OutOfPlaceUpdates (below), without which
ComfyUI's Flux blocks give autograd errors or, checkpointed, wrong gradients.
"""

import dis
import math
import sys

import numpy as np
import torch
import torch.utils.checkpoint
from PIL import Image, ImageDraw, ImageFont

import comfy.model_management
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise
from comfy_extras.nodes_train import TrainSampler, process_cond_list


class NonFiniteLoss(Exception):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss {loss} at step {step}")
        self.step, self.loss = step, loss


class QRTrainSampler(TrainSampler):
    def __init__(self, loss_fn, optimizer, *, steps, batch_size, grad_acc, seed, training_dtype, real_dataset, on_step):
        super().__init__(
            loss_fn, optimizer, batch_size=batch_size, grad_acc=grad_acc, total_steps=steps * grad_acc,
            seed=seed, training_dtype=training_dtype, real_dataset=real_dataset,
        )
        self.steps = steps
        self.on_step = on_step  # on_step(step, mean loss): after each optimizer step

    def fwd_bwd(self, *args, **kwargs):
        with OutOfPlaceUpdates():
            return super().fwd_bwd(*args, **kwargs)

    def _micro_step(self, model_wrap, i, generator, latent_image, cond, extra_args, dataset_size) -> float:
        sampling = model_wrap.inner_model.model_sampling
        noisegen = Noise_RandomNoise((self.seed + i * 1000) % 2**64)
        indices = torch.randperm(dataset_size, generator=generator)[: self.batch_size].tolist()
        percents = torch.rand(len(indices), generator=generator).tolist()
        if self.real_dataset is None:
            latent = torch.stack([latent_image[j] for j in indices])
            noise = noisegen.generate_noise({"samples": latent}).to(latent.device)
            sigmas = torch.tensor([sampling.percent_to_sigma(p) for p in percents]).to(latent.device)
            loss = self.fwd_bwd(model_wrap, sigmas, noise, latent, cond, indices, extra_args, dataset_size, bwd=True)
            return loss.item()
        total = 0
        for j, p in zip(indices, percents):  # images of different sizes: one at a time
            latent = self.real_dataset[j].to(latent_image)
            if torch.count_nonzero(latent) > 0:  # as the guider does for the batch (the stock loop forgets this here)
                latent = model_wrap.inner_model.process_latent_in(latent)
            noise = noisegen.generate_noise({"samples": latent}).to(latent.device)
            sigmas = torch.tensor([sampling.percent_to_sigma(p)]).to(latent.device)
            total = total + self.fwd_bwd(model_wrap, sigmas, noise, latent, cond, [j], extra_args, dataset_size, bwd=False)
        total = total / len(indices)
        (total / self.grad_acc).backward()
        return total.item()

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        model_wrap.conds = process_cond_list(model_wrap.conds)
        cond = model_wrap.conds["positive"]
        dataset_size = sigmas.size(0)
        generator = torch.Generator().manual_seed(self.seed)
        for step in range(1, self.steps + 1):
            losses = []
            for micro in range(self.grad_acc):
                comfy.model_management.throw_exception_if_processing_interrupted()
                i = (step - 1) * self.grad_acc + micro
                losses.append(self._micro_step(model_wrap, i, generator, latent_image, cond, extra_args, dataset_size))
            loss = sum(losses) / len(losses)
            if not math.isfinite(loss):
                self.optimizer.zero_grad()
                raise NonFiniteLoss(step, loss)
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.on_step(step, loss)
        return torch.zeros_like(latent_image)


def make_optimizer(name: str, parameters, lr: float):
    classes = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD, "RMSprop": torch.optim.RMSprop}
    return classes[name](parameters, lr=lr)


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


class OutOfPlaceUpdates(torch.overrides.TorchFunctionMode):
    """While training, `x += y` (and -=, *=, /=) on a tensor autograd tracks runs as `x = x + y`.

    Some ComfyUI model code updates its residual stream in place (Flux:
    `x += gate * out` after a LayerNorm of `x` saved it for the backward
    pass). Autograd refuses that without gradient checkpointing, and with
    (non-reentrant) checkpointing it goes unnoticed and the gradients come
    out wrong. Only augmented assignments are rewritten: Python rebinds the
    name to what they return, so the code means the same; an explicit
    `x.add_(y)` statement, whose result nobody rebinds, is left as it is.
    """

    IN_PLACE = {torch.Tensor.add_: torch.Tensor.add, torch.Tensor.sub_: torch.Tensor.sub,
                torch.Tensor.mul_: torch.Tensor.mul, torch.Tensor.div_: torch.Tensor.div}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        plain = self.IN_PLACE.get(func)
        if plain is not None and torch.is_grad_enabled() and args[0].requires_grad and _augmented_assignment(sys._getframe(1)):
            return plain(*args, **kwargs)
        return func(*args, **kwargs)


def _augmented_assignment(frame) -> bool:
    """Is `frame` executing `a += b`, `a -= b`, `a *= b` or `a /= b`?"""
    code, at = frame.f_code.co_code, frame.f_lasti
    if sys.version_info < (3, 11):
        return dis.opname[code[at * 2]] in ("INPLACE_ADD", "INPLACE_SUBTRACT", "INPLACE_MULTIPLY", "INPLACE_TRUE_DIVIDE")
    return dis.opname[code[at]] == "BINARY_OP" and code[at + 1] in _INPLACE_BINARY_OPS


_INPLACE_BINARY_OPS = {13, 23, 18, 24} if sys.version_info >= (3, 11) else set()  # NB_INPLACE_ADD, _SUBTRACT, _MULTIPLY, _TRUE_DIVIDE


def checkpoint(module) -> None:
    """ComfyUI's gradient checkpointing of a block (nodes_train.patch), with the forward and its
    recomputation both run under OutOfPlaceUpdates (recomputation may run on autograd's own thread)."""
    forward = module.forward

    def run(args, kwargs):
        with OutOfPlaceUpdates():
            return forward(*args, **kwargs)

    def checkpointed(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(run, args, kwargs, use_reentrant=False)

    module.org_forward = forward  # what nodes_train.unpatch restores
    module.forward = checkpointed
