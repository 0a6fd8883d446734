"""Seeds for randomized tests: from QRLORA_TEST_SEED when set (to replay a failure), else fresh; always printed."""

import os

import torch


def fresh_seed(label: str) -> int:
    seed = int(os.environ.get("QRLORA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"{label}: QRLORA_TEST_SEED={seed}")
    return seed


def generator(label: str) -> torch.Generator:
    return torch.Generator().manual_seed(fresh_seed(label))
