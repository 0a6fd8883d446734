"""Timing, memory and bandwidth helpers shared by the bench sections."""

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds of a region, with the device synchronized at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self):
        sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self.start
        return False


def timed(device: torch.device, fn, *args, **kwargs):
    """(result, seconds) of one call."""
    with Timer(device) as t:
        out = fn(*args, **kwargs)
    return out, t.seconds


def median(values) -> float:
    return float(statistics.median(values))


def event_times(device: torch.device, fn, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call, timed with CUDA events on a GPU (host clock on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            with Timer(device) as t:
                fn()
            times.append(t.seconds)
    return times


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    src = torch.randn(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = event_times(device, lambda: dst.copy_(src), repeats, warmup=3)
    del src, dst
    return 2 * nbytes / median(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def allocated_bytes(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def free_cache(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gib(nbytes: float) -> float:
    return nbytes / 1024**3
