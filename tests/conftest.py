"""Shared test set-up: one torch thread (two busy threads on two cores thrash), fixed seeds, and one
quick study run per test session for the tests that read its run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of `convattn study --quick --threads 1`, run once per session in a subprocess."""
    out = tmp_path_factory.mktemp("quick_study") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "convattn", "study", "--quick", "--out", str(out), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"the quick study failed (exit {result.returncode}):\n{result.stderr}"
    return out


def needs_kernel(name: str = "na2d") -> pytest.MarkDecorator:
    """Skip unless the C++ kernel `name` (one of `KERNELS`) builds here (on first use)."""
    from convattn.layers.kernels import load_kernel

    return pytest.mark.skipif(load_kernel(name) is None, reason=f"the {name} C++ kernel did not build here")


def assert_same_gradients(out: torch.Tensor, expected: torch.Tensor, inputs, atol: float) -> None:
    """The gradients of `out` and `expected` with respect to `inputs`, under one random output
    gradient, agree to within `atol` (absolute)."""
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(expected, inputs, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
