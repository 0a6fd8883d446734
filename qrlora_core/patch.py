"""The patch itself: W <- W + strength · s · Q · ΔR, as one fused multiply-add."""

import torch


def add_delta_(weight: torch.Tensor, q: torch.Tensor, delta_r: torch.Tensor, factor: float) -> torch.Tensor:
    """In place: weight += factor · q @ delta_r (weight may be a 1x1 conv or a row slice)."""
    matrix = weight.view(weight.shape[0], -1)
    q = q.to(device=weight.device, dtype=weight.dtype)
    delta_r = delta_r.to(device=weight.device, dtype=weight.dtype)
    matrix.addmm_(q, delta_r, alpha=factor)
    return weight
