"""Data parallel training over torch.distributed: one step, the same as one process takes.

Every process holds its own copy of the frozen base and the same ΔR, and
draws every micro-batch of a step from the same seeded generator (the
draws are cheap: image indices, timestep fractions, noise). The step's
sample slots (grad_accumulation x batch_size of them, in order) are split
into one contiguous run per process; each process computes the loss of the
samples in its run only, weighted as in the one-process loss (1 / the
micro-batch's size), so the sum of the processes' gradients IS the
one-process gradient. `reduce` all-reduces (sums) those gradients and the
loss once per optimizer step, after the last backward; clipping and the
optimizer then see the same numbers on every process, so ΔR stays
identical everywhere without ever being sent. The global batch and the
learning rate are the settings' own, whatever the number of processes.

Why an explicit all-reduce rather than DistributedDataParallel: DDP's
gain is overlapping its bucketed all-reduce with the backward of every
forward it wraps. Here the gradients are accumulated locally over the
step's micro-batches and sent once per optimizer step (ΔR of FLUX.1-dev
at rank 64 is 0.35 GB in float32: milliseconds over NVLink against a step
of seconds), processes may run different numbers of forwards in a step
(a step of 3 samples on 2 processes), and the trained "module" is a set
of weight wrappers ComfyUI calls from inside its own model, not a module
whose forward DDP could wrap. The same bucketed NCCL/gloo all-reduce DDP
uses, done once at the point DDP's no_sync accumulation would do it.

The basis is decomposed once, by process 0 (through its BasisStore, so
it lands in qrlora_bases/ as in a one-process run), and broadcast, so every
process trains against the same Q bit for bit.
"""

import torch
import torch.distributed as dist

BUCKET_BYTES = 64 * 2**20  # gradients sent per all-reduce call


class StepShare:
    """The hooks a training session and its StepLoop take to train on `world` processes at once."""

    def __init__(self, batch_size: int, grad_accumulation: int, group=None, rank: int | None = None, world: int | None = None):
        self.group = group
        self.rank = dist.get_rank(group) if rank is None else rank
        self.world = dist.get_world_size(group) if world is None else world
        self.batch_size, self.grad_accumulation = batch_size, grad_accumulation
        self._micro = 0  # micro-batches drawn so far (all processes draw every one)

    @property
    def main(self) -> bool:
        """Process 0 writes the files and speaks."""
        return self.rank == 0

    def idle(self) -> int:
        """How many processes have no sample in a step (batch_size x grad_accumulation < processes)."""
        return max(0, self.world - self.batch_size * self.grad_accumulation)

    # -------------------------------------------------------- sharding

    def mine(self, size: int) -> list[int]:
        """The positions (0 ≤ j < size) of the next micro-batch this process computes.

        Slot (m, j) of micro-batch m is number m · batch_size + j of the step;
        process k takes slots [k·S/N, (k+1)·S/N) of S = grad_accumulation ·
        batch_size. A micro-batch drawn smaller than batch_size (a small
        bucket) leaves its last slots empty.
        """
        m = self._micro % self.grad_accumulation
        self._micro += 1
        slots = self.batch_size * self.grad_accumulation
        first, end = self.rank * slots // self.world, (self.rank + 1) * slots // self.world
        return [j for j in range(size) if first <= m * self.batch_size + j < end]

    # -------------------------------------------------------- the step's sums

    def reduce(self, total: torch.Tensor | None, parameters: list) -> torch.Tensor:
        """Sum the gradients (missing ones count as 0) and the loss total over all processes."""
        device = parameters[0].device
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in parameters] + [torch.zeros((), device=device) if total is None else total.detach().to(device, torch.float32)]
        bucket, size = [], 0
        for g in grads:
            bucket.append(g)
            size += g.numel() * g.element_size()
            if size >= BUCKET_BYTES:
                self._all_reduce(bucket)
                bucket, size = [], 0
        if bucket:
            self._all_reduce(bucket)
        return grads[-1]

    def _all_reduce(self, tensors: list) -> None:
        by_dtype: dict = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, group=self.group)
            offset = 0
            for t in group:
                t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()

    def any(self, flag: bool, device) -> bool:
        """True on every process when `flag` is true on any (to stop together, at one step)."""
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    # -------------------------------------------------------- one basis for all

    def basis_store(self, store) -> "SharedBasis":
        return SharedBasis(store, self)


class SharedBasis:
    """A BasisStore whose get_or_build runs on process 0 only; the others receive its Qs."""

    def __init__(self, store, parallel: StepShare):
        self.store, self.parallel = store, parallel

    def get_or_build(self, weights: dict, rank: int, method: str = "auto", progress=None, device=None, memory_budget=None) -> tuple[str, dict, dict]:
        parallel, names = self.parallel, list(weights)
        if parallel.main:
            header = list(self.store.get_or_build(weights, rank, method=method, progress=progress, device=device, memory_budget=memory_budget))
        else:
            header = [None, None, None]
        # The id and sketches are small: one object broadcast. The Qs go as tensors, on the weights' device.
        small = [header[0], header[2]] if parallel.main else [None, None]
        dist.broadcast_object_list(small, src=0, group=parallel.group, device=_object_device(weights))
        basis_id, sketches = small
        qs = {}
        for name in names:
            w = weights[name]
            q = header[1][name].to(w.device, torch.float32).contiguous() if parallel.main else torch.empty(w.shape[0], rank, device=w.device, dtype=torch.float32)
            dist.broadcast(q, src=0, group=parallel.group)
            qs[name] = q
        if progress is not None and not parallel.main:
            progress(len(names))
        return basis_id, qs, sketches


def _object_device(weights: dict):
    """broadcast_object_list needs the device NCCL runs on (the current GPU), gloo the CPU."""
    first = next(iter(weights.values()), None)
    return first.device if first is not None and first.device.type == "cuda" else None
