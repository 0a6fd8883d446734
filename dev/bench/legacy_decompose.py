"""The subspace method as it stood before this bench's speed work (commit 835caf8), kept to measure against.

Same iteration counts and oversampling; every orthonormalization is a
Householder QR, the Rayleigh-Ritz step an SVD of the k x n block and the
core's QR one of the r x n factor, and a whole group of same-shaped
weights is stacked (and copied to float64) at once.
"""

import torch

OVERSAMPLE, ITERATIONS, REFINE = 64, 12, 2


def _power_steps(w, x, steps):
    wt = w.transpose(-2, -1)
    for _ in range(steps):
        y, _ = torch.linalg.qr(wt @ x)
        x, _ = torch.linalg.qr(w @ y)
    return x


def subspace_q(stack: torch.Tensor, rank: int) -> torch.Tensor:
    """Q (b, m, rank) of a stack of weights (scale 1)."""
    w32 = stack.to(torch.float32)
    m, n = stack.shape[-2:]
    width = min(rank + OVERSAMPLE, m, n)
    probe = torch.randn(*stack.shape[:-2], n, width, device=stack.device, dtype=torch.float32)
    x, _ = torch.linalg.qr(w32 @ probe)
    x = _power_steps(w32, x, ITERATIONS)
    del w32
    w64 = stack.to(torch.float64)
    x = _power_steps(w64, x.to(torch.float64), REFINE)
    uu, s, vh = torch.linalg.svd(x.transpose(-2, -1) @ w64, full_matrices=False)
    u, s, vh = (x @ uu)[..., :rank], s[..., :rank], vh[..., :rank, :]
    q_small, r = torch.linalg.qr(s.unsqueeze(-1) * vh, mode="reduced")
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    return u @ (q_small * signs.unsqueeze(-2))
