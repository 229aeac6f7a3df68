"""Fixtures of the kernel tests (helpers they share live in kernel_checks.py)."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A generator with a fresh seed on every run (printed, so a failure can be replayed)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)
