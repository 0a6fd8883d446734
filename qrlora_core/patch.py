"""The patch itself, W' = W + s · Q · ΔR (docs/method.md, "The patch"), in the forms its users need.

This is the one place the formula is computed: inference adds it in place
where ComfyUI loads a weight (integration/weight_adapter.py), training adds it
out of place on every forward (training/layer.py), a stored target gives
its delta (adapter.py); a grid of mixes, different per sample, adds
s·Q·(Σ c_i ΔR_i)·x in the forward (grid.py, mix_output). `scale` is
s = alpha / rank, already multiplied by any strength. Q and ΔR are cast to the weight's device and dtype, so the
sum is one fused multiply-add and never holds an m x n temporary.
"""

import torch


def _like(tensor: torch.Tensor, q: torch.Tensor, delta_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return q.to(device=tensor.device, dtype=tensor.dtype), delta_r.to(device=tensor.device, dtype=tensor.dtype)


def delta(q: torch.Tensor, delta_r: torch.Tensor, scale: float, dtype=torch.float32) -> torch.Tensor:
    """s · Q · ΔR as an m x n matrix in `dtype` (where a layout function or a comparison needs the delta itself)."""
    return torch.mm(q.to(dtype), delta_r.to(dtype)).mul_(scale)


def lora_pair(q: torch.Tensor, delta_r: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same delta as an ordinary LoRA's (up, down) = (s · Q, ΔR)."""
    return q * scale, delta_r


def add_delta(matrix: torch.Tensor, q: torch.Tensor, delta_r: torch.Tensor, scale: float) -> torch.Tensor:
    """matrix + s · Q · ΔR, out of place (autograd may hold `matrix`), in the matrix's dtype."""
    q, delta_r = _like(matrix, q, delta_r)
    return torch.addmm(matrix, q, delta_r, alpha=scale)


def add_delta_(weight: torch.Tensor, q: torch.Tensor, delta_r: torch.Tensor, scale: float) -> torch.Tensor:
    """In place: weight += s · Q · ΔR (weight may be a 1x1 conv or a row slice)."""
    q, delta_r = _like(weight, q, delta_r)
    weight.view(weight.shape[0], -1).addmm_(q, delta_r, alpha=scale)
    return weight


def add_delta_stacked(matrices: torch.Tensor, q: torch.Tensor, delta_r: torch.Tensor, scale: float) -> torch.Tensor:
    """matrices[i] + s · Q[i] · ΔR[i] for a stack (b, m, n) of equal slices, out of place, in one batched call."""
    q, delta_r = _like(matrices, q, delta_r)
    return torch.baddbmm(matrices, q, delta_r, alpha=scale)


def delta_output(x: torch.Tensor, q: torch.Tensor, delta_r: torch.Tensor, scale: float) -> torch.Tensor:
    """What the patch adds to a linear layer's output for input x, s · x ΔRᵀ Qᵀ, without forming the m x n delta."""
    q, delta_r = _like(x, q, delta_r)
    return (x @ delta_r.T @ q.T) * scale
