"""Shared fixtures. Unit tests import qrlora_core directly; integration tests
drive the real ComfyUI server (see tests/support/server.py)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the wall clock; the seed is printed for replay."""
    seed = int(os.environ.get("QRLORA_TEST_SEED", torch.seed() % 2**31))
    print(f"{request.node.name}: QRLORA_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)
