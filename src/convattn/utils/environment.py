"""What a measurement ran on: versions, threads and device, recorded beside every result."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

__all__ = ["environment"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions of Python, torch and numpy, torch's thread count, the machine and the device."""
    import numpy as np
    import torch

    from convattn import __version__

    return {
        "convattn": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(terse=True),
        "cpu_model": _cpu_model(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
