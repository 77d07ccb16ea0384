"""Shared test set-up: one torch thread (two busy threads on two cores thrash) and fixed seeds."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
