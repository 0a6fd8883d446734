"""The layer math of training: W' = W + s · Q · (M ⊙ ΔR) (qrlora_core/patch.py), only ΔR learned.

Training needs neither the residual W_res nor R: W_res + s·Q·(R + ΔR)
equals W + s·Q·ΔR (docs/method.md, "The patch"), so the frozen extra per target is
Q alone (m x r, a buffer, never a parameter) and the trained part is ΔR
(r x n, zero at the start, so the first forward is the base model's).
The triangular variant masks ΔR with M = triu(ones(r, n)) on every
forward; `torch.triu(ΔR)` is that product without storing M. An adapter
that trains part of the basis (TrainConfig.basis_part) also zeroes the rows
of ΔR outside its part, so it adds only along its own directions of Q.

`QRWeightWrapper` is what ComfyUI calls on a weight before using it (a
ModelPatcher weight wrapper): one per weight key, holding one `QRDelta`
per target. A fused matrix (Flux/SD3 qkv, Flux single blocks' linear1)
holds several targets, each adding only to its own rows.
"""

import math

import torch

from ..adapter import QRShape
from ..patch import add_delta, add_delta_, add_delta_stacked


def adapter_bytes(out_features: int, in_features: int, rank: int) -> int:
    """What one trained m x n layer holds for the whole run, beyond the model: 4·r·(m + 4n) bytes.

    All float32: Q (r·m), ΔR, its gradient and AdamW's two moments (4·r·n);
    no residual W_res and no R, since W_res + s·Q·(R + ΔR) = W + s·Q·ΔR.
    (dev/bench/train_memory.md measures it.)
    """
    return 4 * rank * (out_features + 4 * in_features)


class QRDelta(QRShape, torch.nn.Module):
    """One target: frozen Q (m x r), trainable ΔR (r x n), scale s = alpha / rank.

    `trained_rows` (start, stop): only these rows of ΔR are trained, the rest stay 0 (None: all)."""

    def __init__(self, q: torch.Tensor, delta_r: torch.Tensor, scale: float = 1.0, triangular: bool = True,
                 trained_rows: tuple[int, int] | None = None):
        super().__init__()
        q = q.detach()  # float32 from the basis store; float64 in the tests' references
        if delta_r.dim() != 2 or delta_r.shape[0] != q.shape[1]:
            raise ValueError(f"ΔR of shape {tuple(delta_r.shape)} does not fit Q of shape {tuple(q.shape)}")
        self.register_buffer("q", q.contiguous())
        self.delta_r = torch.nn.Parameter(delta_r.detach().to(device=q.device, dtype=q.dtype).clone())
        self.scale = float(scale)
        self.triangular = triangular
        self.trained_rows = trained_rows
        if trained_rows is not None:
            keep = torch.zeros(q.shape[1], 1, device=q.device, dtype=q.dtype)
            keep[trained_rows[0]:trained_rows[1]] = 1
            self.register_buffer("row_mask", keep, persistent=False)

    @classmethod
    def zeros(cls, q: torch.Tensor, in_features: int, scale: float = 1.0, triangular: bool = True,
              trained_rows: tuple[int, int] | None = None) -> "QRDelta":
        """A fresh target: ΔR = 0, so W' = W until the first optimizer step."""
        return cls(q, torch.zeros(q.shape[1], in_features, device=q.device, dtype=q.dtype), scale, triangular, trained_rows)

    def mask(self, delta_r: torch.Tensor) -> torch.Tensor:
        """M ⊙ ΔR for this target's ΔR or a stack of ΔRs like it: the triangular mask, then the trained rows only."""
        if self.triangular:
            delta_r = torch.triu(delta_r)
        return delta_r if self.trained_rows is None else delta_r * self.row_mask

    def masked_delta_r(self) -> torch.Tensor:
        return self.mask(self.delta_r)

    def add_to(self, matrix: torch.Tensor) -> torch.Tensor:
        """matrix + s · Q · (M ⊙ ΔR), out of place, in the matrix's dtype (one fused addmm)."""
        return add_delta(matrix, self.q, self.masked_delta_r(), self.scale)

    def add_to_(self, matrix: torch.Tensor) -> torch.Tensor:
        """The same, in place (on a tensor this module's caller owns)."""
        return add_delta_(matrix, self.q, self.masked_delta_r(), self.scale)


class LoRADelta(QRDelta):
    """A plain LoRA in a QRDelta's place, for comparisons (the bench's lora arms): both factors learned.

    up (m x r) starts at zero and down (r x n) Kaiming-uniform, as LoRA and
    PEFT initialise them, so the first forward is the base model's; the
    delta is s · up · down with s = alpha / rank. `q` holds up and `delta_r`
    holds down, so everything that adds or stores a QRDelta works unchanged;
    up is not orthonormal, so the adapter has no shared basis (a merge sums
    its delta with the others').
    """

    def __init__(self, up: torch.Tensor, down: torch.Tensor, scale: float = 1.0):
        torch.nn.Module.__init__(self)
        if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"LoRA factors of shapes {tuple(up.shape)} and {tuple(down.shape)} do not fit together")
        self.q = torch.nn.Parameter(up.detach().clone())
        self.delta_r = torch.nn.Parameter(down.detach().to(up).clone())
        self.scale = float(scale)
        self.triangular = False
        self.trained_rows = None

    @classmethod
    def fresh(cls, out_features: int, in_features: int, rank: int, scale: float, generator: torch.Generator, device=None) -> "LoRADelta":
        """up = 0, down ~ U(-1/sqrt(n), 1/sqrt(n)): torch's kaiming_uniform_(a=sqrt(5)), LoRA's initialisation of down."""
        bound = 1.0 / math.sqrt(in_features)
        down = (torch.rand(rank, in_features, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        return cls(torch.zeros(out_features, rank, device=device), down.to(device), scale)


class QRWeightWrapper(torch.nn.Module):
    """W -> W' for one weight key: each target adds s·Q·ΔR to its rows (all rows when unsliced).

    `rows` holds (start, length) per target, or None for a target that is
    the whole weight. Linear weights (m, n) and 1x1 convolutions (m, n, 1, 1).
    """

    def __init__(self, targets: list[QRDelta], rows: list[tuple[int, int] | None]):
        super().__init__()
        if len(targets) != len(rows) or not targets:
            raise ValueError("one row range (or None) per target, at least one target")
        if None in rows and len(rows) > 1:
            raise ValueError("a target covering the whole weight cannot share it with other targets")
        self.targets = torch.nn.ModuleList(targets)
        self.rows = list(rows)
        same = {(t.scale, t.triangular, t.trained_rows, t.q.dtype) for t in targets}
        learned_q = any(isinstance(t.q, torch.nn.Parameter) for t in targets)  # a stacked copy of a learned factor would go stale
        self.span = None if None in rows or len(same) > 1 or learned_q else _back_to_back(self.rows)
        if self.span is not None:  # the batched path's Qs, stacked once (a copy of the fused slices' Q only)
            self.register_buffer("q_stack", torch.stack([t.q for t in targets]), persistent=False)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return self.forward(weight)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.reshape(weight.shape[0], -1)
        if self.rows[0] is None:
            return self.targets[0].add_to(matrix).reshape(weight.shape)
        if self.span is not None:
            return self._forward_batched(matrix).reshape(weight.shape)
        out = matrix.clone()  # never write into the caller's tensor
        for target, (start, length) in zip(self.targets, self.rows):
            target.add_to_(out.narrow(0, start, length))
        return out.reshape(weight.shape)

    def _forward_batched(self, matrix: torch.Tensor) -> torch.Tensor:
        """All slices in one batched multiply-add: W read once, the result written once, few kernel launches.

        A training step runs this for every fused weight in the forward, the
        checkpointed recompute and the backward, so launches count as much as bytes.
        """
        start, end = self.span
        first = self.targets[0]
        span = matrix[start:end].reshape(len(self.targets), -1, matrix.shape[1])
        delta_r = first.mask(torch.stack([t.delta_r for t in self.targets]))
        patched = add_delta_stacked(span, self.q_stack, delta_r, first.scale).reshape(end - start, matrix.shape[1])
        pieces = [p for p in (matrix[:start], patched, matrix[end:]) if p.shape[0]]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def passive_memory_usage(self) -> int:
        """Bytes held by the wrapper itself (ComfyUI counts this when loading the model)."""
        return sum(t.numel() * t.element_size() for t in [*self.parameters(), *self.buffers()])

    def move_to(self, device) -> int:
        self.to(device=device)
        return self.passive_memory_usage()


def _back_to_back(rows: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(start, end) when the slices are equal-height, back to back and in order (q, k, v)."""
    heights = {length for _, length in rows}
    if len(heights) != 1:
        return None
    height, first = heights.pop(), rows[0][0]
    if [start for start, _ in rows] != [first + i * height for i in range(len(rows))]:
        return None
    return first, first + height * len(rows)
