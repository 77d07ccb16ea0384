"""The C++ CPU kernels, compiled on first use with torch's cpp_extension and cached.

The build happens once per machine (about a minute) into torch's extension cache; the name carries a
hash of the source, the torch version and the CPU, so a changed source or machine rebuilds. If no
compiler is available the build fails once, a warning says so, and callers use the PyTorch path.
Set CONVATTN_NO_KERNEL=1 to skip the kernels altogether.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["load_kernel"]

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = {"na2d": _CSRC / "na2d.cpp", "window": _CSRC / "window.cpp", "dwconv": _CSRC / "dwconv.cpp"}
_HEADERS = (_CSRC / "simd.h",)


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def _ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH: put the one installed with convattn there."""
    try:
        import ninja

        bin_dir = str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        return
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


@cache
def load_kernel(name: str) -> ModuleType | None:
    """The compiled extension `name`, or None (with one warning) when it cannot be built."""
    if os.environ.get("CONVATTN_NO_KERNEL"):
        return None
    _ninja_on_path()
    source = _SOURCES[name]
    code = source.read_bytes() + b"".join(h.read_bytes() for h in _HEADERS)
    digest = hashlib.sha256(code + torch.__version__.encode() + _cpu_id().encode()).hexdigest()
    try:
        from torch.utils.cpp_extension import load

        return load(
            name=f"convattn_{name}_{digest[:12]}",
            sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-fopenmp-simd"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as err:  # no compiler, no ninja, a sandbox without a writable cache ...
        warnings.warn(
            f"convattn: the {name} C++ kernel could not be built ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); using the slower PyTorch path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
