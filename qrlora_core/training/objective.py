"""The training objectives, as small functions of tensors (no host code).

The model is seen through its denoiser D(x_t, sigma) (ComfyUI's
`calculate_denoised`), which is affine in the network's raw output:
D = a(sigma) x_t + b(sigma) out. The network's own prediction target
(velocity noise - x0 for flow models, noise for eps, v for v-prediction)
is the output that makes D exactly x0, so

    out - target = (D - x0) / b(sigma),

and the reference objective, plain MSE on the prediction, is the MSE of
D - x0 divided per sample by b(sigma)² (b = -sigma for flow and eps
models). ComfyUI's trainer instead takes the MSE of D - x0 itself, which
for a flow model is sigma² times the velocity loss.

The reference (docs/method.md, "Training objective and defaults"; diffusers' DreamBooth
scripts) draws sigma uniformly in (0, 1] for flow models, with no shift,
and integer timesteps uniformly for eps / v models; ComfyUI's trainer
draws a uniform fraction of the model's sampling schedule (for Flux
shifted towards high noise). For SD3, which the reference does not
train, we follow diffusers' SD3 DreamBooth scripts: the same uniform draw
(weighting "none") pushed through their scheduler's shift of 3.0
(TRAINING_SHIFT), sigma' = 3 sigma / (1 + 2 sigma), towards high noise;
Flux, as the reference trains it, stays unshifted.
"""

import torch

REFERENCE = "reference: prediction MSE, uniform timesteps"
COMFYUI = "ComfyUI: denoised x0 MSE, sampling schedule"
OBJECTIVES = {
    REFERENCE: "the model's own prediction (velocity / noise / v) against its target, timesteps uniform",
    COMFYUI: "the denoised estimate against x0, sigma a uniform fraction of the model's sampling schedule",
}


def prediction_mse(denoised: torch.Tensor, x0: torch.Tensor, output_scale: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the network's prediction against its target, from the denoised estimate.

    `output_scale` is b(sigma) per sample, the factor of the network's output in D.
    For a flow model this is the velocity loss |v - (noise - x0)|² averaged over elements.
    """
    scale = output_scale.to(torch.float32).reshape(-1, *([1] * (x0.dim() - 1)))
    return ((denoised.float() - x0.float()) / scale).square().mean()


def denoised_mse(denoised: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ComfyUI's TrainSampler loss: the denoised estimate against the clean latent."""
    return torch.nn.functional.mse_loss(denoised.float(), x0.float())


FLOW_TRAINING_STEPS = 1000  # the reference scheduler's training timesteps


TRAINING_SHIFT = {"sd3": 3.0}  # architecture -> diffusers' training shift (FlowMatchEulerDiscreteScheduler(shift=...)); others: 1


def flow_sigmas(uniform: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """sigma in (0, 1] from u uniform in [0, 1), as diffusers' flow-matching scripts draw it:
    one of the scheduler's 1000 training sigmas 1, 0.999, ..., 0.001 (never so close to 0
    that the prediction loss would divide rounding error by it), then shifted,
    shift·s / (1 + (shift - 1)·s); shift 1 (Flux, the reference) leaves it uniform."""
    s = 1.0 - torch.floor(uniform * FLOW_TRAINING_STEPS) / FLOW_TRAINING_STEPS
    return shift * s / (1 + (shift - 1) * s)


def discrete_timesteps(uniform: torch.Tensor, count: int) -> torch.Tensor:
    """Integer timesteps uniform in [0, count) from u uniform in [0, 1): DreamBooth's draw for eps / v models."""
    return (uniform * count).long().clamp_(max=count - 1)
