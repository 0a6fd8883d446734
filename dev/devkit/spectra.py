"""Weights of known singular spectra, and how much of a weight's top-r energy a basis captures.

The tests (tests/unit/test_decompose.py) and the bench (bench/basis_init.py)
measure the basis on the same spectra with the same measure.
"""

import torch

# name -> the k singular values (float64, descending) of a weight with k = min(m, n)
SPECTRA = {
    "flat": lambda k: torch.ones(k, dtype=torch.float64),
    "p=0.25": lambda k: torch.arange(1, k + 1, dtype=torch.float64) ** -0.25,
    "p=0.5": lambda k: torch.arange(1, k + 1, dtype=torch.float64) ** -0.5,
    "p=1": lambda k: torch.arange(1, k + 1, dtype=torch.float64) ** -1.0,
    "noise floor": lambda k: torch.cat([torch.tensor([10.0, 8.0, 6.0, 5.0], dtype=torch.float64),
                                        torch.full((k - 4,), 0.1, dtype=torch.float64)]),
}


def captured_energy(q: torch.Tensor, w: torch.Tensor) -> float:
    """||Q^T W||² / (sum of W's top-r squared singular values), r = Q's columns, in float64.

    Q is re-orthonormalized in float64 first (a float32 Q is orthonormal only
    to ~1e-7, which would read as energy gained or lost); 1.0 is the exact
    top-r subspace, and no r-dimensional subspace captures more.
    """
    w64 = w.to(torch.float64)
    q64 = torch.linalg.qr(q.to(device=w64.device, dtype=torch.float64))[0]
    top = torch.linalg.svdvals(w64)[: q.shape[-1]].square().sum()
    return float((q64.mT @ w64).square().sum() / top)
