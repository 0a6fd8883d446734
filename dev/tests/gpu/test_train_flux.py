"""The GPU training check (dev/tests/gpu/train_flux.py) under pytest; skipped where there is no CUDA (CI)."""

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200: python dev/tests/gpu/train_flux.py)")


def test_train_node_trains_flux_on_the_gpu_in_fresh_processes():
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_flux.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=1800)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
