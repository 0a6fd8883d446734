"""Adapter files for tests, written with plain safetensors (not our writer),
so that reading them tests our reader against the published layout."""

import safetensors.torch
import torch


def random_delta_r(rank, n, generator, triangular=False):
    d = torch.randn(rank, n, generator=generator) * 0.05
    return torch.triu(d) if triangular else d


def published_tensors(bases: dict, generator, triangular=True) -> dict:
    """The reference implementation's checkpoint layout from {name: Basis}."""
    out = {}
    for name, b in bases.items():
        out[f"{name}.lora.q.weight"] = b.q.contiguous()
        out[f"{name}.lora.base_r.weight"] = b.r.contiguous()
        out[f"{name}.lora.delta_r.weight"] = random_delta_r(b.rank, b.r.shape[1], generator, triangular)
    return out


def write_published(path: str, bases: dict, generator, triangular=True) -> dict:
    tensors = published_tensors(bases, generator, triangular)
    safetensors.torch.save_file(tensors, path)
    return tensors
