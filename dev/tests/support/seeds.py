"""One seed per test session, every random draw derived from it, so a failure can be replayed.

The session seed is QRLORA_TEST_SEED when set, else fresh from os.urandom.
Each test (or fixture) draws from `seed_for(its label)`, a hash of the
session seed and the label, so a test re-run alone with the session seed
repeats its draws whatever else runs before it. conftest.py prints the seed
in the session header and under every failure, with the command to replay it.
"""

import hashlib
import os

import torch

ENV = "QRLORA_TEST_SEED"
SESSION = int(os.environ[ENV]) if os.environ.get(ENV) else int.from_bytes(os.urandom(4), "little")


def seed_for(label: str) -> int:
    """The seed of one test's (or fixture's) draws: the same for the same session seed and label."""
    return int.from_bytes(hashlib.sha256(f"{SESSION}:{label}".encode()).digest()[:4], "little")


def generator(label: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(label))


def replay(nodeid: str | None = None) -> str:
    """The command that repeats this session's draws (for one test when given)."""
    return f"{ENV}={SESSION} make test PYTEST_ARGS='{nodeid}'" if nodeid else f"{ENV}={SESSION}"
