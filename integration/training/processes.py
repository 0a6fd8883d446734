"""The processes of a data parallel run (torchrun): which one this is, its device, stopping together.

torchrun starts one process per GPU and tells each its RANK, LOCAL_RANK
and WORLD_SIZE. Each process trains on GPU LOCAL_RANK (NCCL between
them) or on the CPU (gloo), with its own copy of the frozen base; what
they share per step is qrlora_core/training/distributed.py's. A signal
(SIGINT, SIGTERM) to any process only raises a flag; after every
optimizer step the processes agree (one all-reduce of the flags) and all
stop at that same step, so process 0 keeps a checkpoint of a state every
process had, and none is left waiting in a collective.
"""

import os
import signal
import time

import torch
import torch.distributed as dist

from ...qrlora_core.training.distributed import StepShare


class Launch:
    """This process's place in the run, from torchrun's environment (one process without it)."""

    def __init__(self, cpu: bool):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.cpu = cpu or not torch.cuda.is_available()
        self.distributed = self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def pick_device(self) -> None:
        """Make GPU LOCAL_RANK the current one, before ComfyUI's model_management asks which GPU to use."""
        if not self.cpu:
            if self.local_rank >= torch.cuda.device_count():
                raise SystemExit(f"process {self.rank} would use GPU {self.local_rank}, but only {torch.cuda.device_count()} are visible: "
                                 "start no more processes per node than there are GPUs (torchrun --nproc_per_node).")
            torch.cuda.set_device(self.local_rank)

    def start(self) -> None:
        if self.distributed and not dist.is_initialized():
            backend = "gloo" if self.cpu else "nccl"
            kwargs = {} if self.cpu else {"device_id": torch.device("cuda", self.local_rank)}
            dist.init_process_group(backend, **kwargs)

    def parallel(self, batch_size: int, grad_accumulation: int) -> StepShare | None:
        return StepShare(batch_size, grad_accumulation) if self.distributed else None

    def broadcast(self, value):
        """Process 0's `value` on every process (a picklable object; tensors travel inside it)."""
        if not self.distributed:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0, device=None if self.cpu else torch.device("cuda", self.local_rank))
        return box[0]

    def finish(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class StopFlag:
    """SIGINT / SIGTERM raise a flag; training stops at the end of the step.

    A second signal more than REPEAT_S later stops at once. Sooner ones
    are the same request arriving twice: Ctrl-C under torchrun reaches each
    process from the terminal and again from torchrun, which forwards it.
    """

    REPEAT_S = 2.0

    def __init__(self, say=print):
        self.requested = False
        self.say = say
        self._previous = {}
        self._first = None

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _raise(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested:
            if now - self._first > self.REPEAT_S:
                raise KeyboardInterrupt
            return
        self.requested, self._first = True, now
        self.say(f"{signal.Signals(signum).name}: stopping after this step (a checkpoint is kept); send it again to stop at once.")

    def agreed(self, parallel: StepShare | None, device) -> bool:
        """Whether to stop now: this process's flag, or any process's in a parallel run."""
        return self.requested if parallel is None else parallel.any(self.requested, device)
