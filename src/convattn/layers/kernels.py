"""The C++ CPU kernels: how they are built, when they run, and the autograd Functions around them.

The kernels are one library of torch operators (torch.ops.convattn.*), built on the first use of any of
them, once per machine, into torch's extension cache: three translation units (na2d, window, and the
small kernel files together), compiled in parallel, each including only the ATen headers it needs
(`csrc/common.h`; torch/extension.h would double the time spent parsing headers, most of a build).
The name carries a hash of the sources, the torch and Python versions and the CPU, so a changed source
or machine rebuilds. The build runs under an OS lock that recovers torch's own lock file when a killed
build left it behind. If no compiler is available the build fails once, a warning says so, and callers
use the PyTorch path.
Set CONVATTN_NO_KERNEL=1 to skip the kernels altogether.

Every operator with a kernel takes `backend=`: 'auto', 'kernel', 'torch', and for some an accelerator
path ('flex', 'sdpa'); `choose_backend` is the one rule that turns it into the path that runs (as
NATTEN's backends/ do). The `*_kernel` functions lay the tensors out for the C++ code and pick a
training forward (probabilities saved for the hand-written backward) or an inference forward.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.layers.geometry import grid_windows, inverse_windows, window_segments

__all__ = [
    "BACKENDS",
    "KERNELS",
    "KERNEL_DTYPES",
    "build_directory",
    "choose_backend",
    "dropout_kernel",
    "image_dwconv_kernel",
    "library_name",
    "load_kernel",
    "na2d_kernel",
    "na2d_packed_kernel",
    "pixel_dwconv_kernel",
    "position_mix_kernel",
    "window_kernel",
    "window_packed_kernel",
]

BACKENDS = ("auto", "kernel", "torch")

_CSRC = Path(__file__).parent / "csrc"
# Each kernel file registers torch.ops.convattn.<kernel>_<function>; `load_kernel` hands them out by kernel.
_FUNCTIONS = {
    "na2d": ("forward", "backward", "apply_forward", "apply_backward", "vector_bytes"),
    "window": ("forward", "backward"),
    "dwconv": ("forward", "backward"),
    "posmix": ("forward", "backward"),
    "dropout": ("apply",),
}
KERNELS = tuple(_FUNCTIONS)
# The translation units: the small kernel files compile as one (small_kernels.cpp includes them).
_SOURCES = (_CSRC / "na2d.cpp", _CSRC / "window.cpp", _CSRC / "small_kernels.cpp")
_HEADERS = (
    _CSRC / "common.h",
    _CSRC / "simd.h",
    *(_CSRC / f"{name}.cpp" for name in ("dwconv", "posmix", "dropout")),
)


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
def library_name() -> str:
    """The kernels' library name: a hash of the sources, torch's and Python's versions and the CPU."""
    code = b"".join(path.read_bytes() for path in (*_SOURCES, *_HEADERS))
    facts = (torch.__version__ + sys.version + _cpu_id()).encode()
    return f"convattn_kernels_{hashlib.sha256(code + facts).hexdigest()[:12]}"


def build_directory(name: str) -> Path:
    """Where the library `name` is built: torch's extension folder (TORCH_EXTENSIONS_DIR, or its default)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold the build of `folder` for this process: an OS lock, released when the process dies.

    torch's own build lock is a file that a killed build leaves behind, after which every later build
    waits for it forever. Every convattn process builds while holding this lock, so whoever holds it
    knows that no one else is building: a torch lock file found then is stale, and is removed.
    """
    with open(folder / "convattn.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process builds (or loads) here
        try:
            (folder / "lock").unlink(missing_ok=True)  # torch's lock, left by a build that was killed
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@cache
def _build() -> bool:
    """Build (or find built) and load the one library of every kernel; False (with one warning) when it
    cannot be built."""
    if os.environ.get("CONVATTN_NO_KERNEL"):
        return False
    _ninja_on_path()
    name = library_name()
    try:
        from torch.utils.cpp_extension import load

        folder = build_directory(name)
        with _build_lock(folder):
            load(  # three translation units, compiled in parallel; registers torch.ops.convattn
                name=name,
                sources=[str(path) for path in _SOURCES],
                extra_cflags=["-O3", "-march=native", "-fopenmp", "-fopenmp-simd"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(folder),
                is_python_module=False,
                verbose=False,
            )
        return True
    except Exception as err:  # no compiler, no ninja, a sandbox without a writable cache ...
        warnings.warn(
            f"convattn: the C++ kernels could not be built ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); using the slower PyTorch path",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


@cache
def load_kernel(name: str) -> SimpleNamespace | None:
    """The functions of kernel `name` (one of `KERNELS`), as attributes, built on first use; None (after
    one warning) when the kernels cannot be built."""
    if name not in _FUNCTIONS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")
    if not _build():
        return None
    return SimpleNamespace(**{f: getattr(torch.ops.convattn, f"{name}_{f}") for f in _FUNCTIONS[name]})


def _ext(name: str) -> Any:
    ext = load_kernel(name)
    if ext is None:
        raise RuntimeError(f"the {name} C++ kernel is not available")
    return ext


KERNEL_DTYPES = (torch.float32, torch.float64)  # what the C++ kernels compute in


def choose_backend(
    backend: str, x: Tensor, kernel: str, *, fused: str | None = None, fused_auto: bool = True
) -> str:
    """The path an operator runs on input `x`: 'kernel', 'torch', or its accelerator path `fused`.

    'auto' takes `fused` ('flex', 'sdpa') on CUDA (where `fused_auto`), the C++ kernel `kernel` for a
    non-empty float32/float64 CPU tensor when the kernel builds, and PyTorch otherwise (half precision
    and empty batches included); a named backend runs as asked, except that an empty input always
    takes the PyTorch path (its result is empty whatever computes it).

    Raises:
        ValueError: for a backend the operator does not have.
        TypeError: for 'kernel' with a dtype the kernels do not compute in (KERNEL_DTYPES).
        RuntimeError: for 'kernel' on another device or where the kernel did not build.
    """
    allowed = BACKENDS if fused is None else (*BACKENDS, fused)
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got backend={backend!r}")
    device = x.device
    if backend == "auto" and fused is not None and fused_auto and device.type == "cuda":
        return fused
    if x.numel() == 0:
        return "torch" if backend in ("auto", "kernel") else backend
    usable = device.type == "cpu" and x.dtype in KERNEL_DTYPES
    if backend in ("auto", "kernel") and usable and load_kernel(kernel) is not None:
        return "kernel"
    if backend == "kernel":
        if device.type == "cpu" and x.dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"backend='kernel' computes in {', '.join(map(str, KERNEL_DTYPES))}, got {x.dtype}; "
                "use backend='auto' or 'torch'"
            )
        why = f"got a {device.type} tensor" if device.type != "cpu" else f"the {kernel} kernel did not build"
        raise RuntimeError(f"backend='kernel' needs a CPU tensor and a built C++ kernel; {why}")
    return "torch" if backend == "auto" else backend


def _tracks_grad(*tensors: Tensor | None) -> bool:
    """True when autograd records this call: the training forward, which saves the probabilities."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _contiguous_or_empty(x: Tensor | None, like: Tensor) -> Tensor:
    """The C++ code takes an empty tensor for an absent rel/bias table."""
    return like.new_empty(0) if x is None else x.contiguous()


# -- neighbourhood attention (na2d.cpp) --------------------------------------------------------------


def _na2d_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    bias: Tensor,
    geometry: tuple[tuple[int, int], tuple[int, int], str, float],
    save: bool,
) -> tuple[Tensor, Tensor]:
    """(output, probabilities); with save=False the probabilities are not written (inference)."""
    kernel_size, dilation, border, scale = geometry
    rows, cols = grid_windows(q.shape[1], q.shape[2], kernel_size, dilation, border)
    zeros, fixed = border == "zeros", border != "shift"
    out, probs = _ext("na2d").forward(
        q, k, v, rel, bias, *rows.tensors(), *cols.tensors(), scale, zeros, fixed, dilation[1], save
    )
    return out, probs


def _na2d_backward(
    ctx: Any, dout: Tensor, qkv: tuple[Tensor, Tensor, Tensor], rel: Tensor, bias: Tensor, packed: bool
) -> tuple[Tensor | None, ...]:
    """(dq, dk, dv, drel, dbias) by the kernel, rel and bias as needed; packed: q, k, v are the views
    of one qkv tensor, and dq is its gradient (dk and dv empty)."""
    q, k, v = qkv
    kernel_size, dilation, border, scale = ctx.geometry
    H, W = q.shape[1:3]
    rows, cols = grid_windows(H, W, kernel_size, dilation, border)
    want_rel = bool(rel.numel()) and ctx.needs_input_grad[-3]  # rel, bias, geometry: the last inputs
    want_bias = bool(bias.numel()) and ctx.needs_input_grad[-2]
    dq, dk, dv, drel, dbias = _ext("na2d").backward(
        dout.contiguous(),
        q,
        k,
        v,
        rel,
        bias,
        ctx.probs,
        *rows.tensors(),
        *cols.tensors(),
        inverse_windows(H, kernel_size[0], dilation[0], border),
        inverse_windows(W, kernel_size[1], dilation[1], border),
        scale,
        want_rel,
        want_bias,
        border != "shift",
        dilation[1],
        packed,
    )
    return dq, dk, dv, drel if want_rel else None, dbias if want_bias else None


class _NA2dFunction(torch.autograd.Function):
    """The C++ kernel with its hand-written backward (probabilities saved, no k² copies)."""

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, rel: Tensor, bias: Tensor, geometry: Any
    ) -> Tensor:
        out, probs = _na2d_forward(q, k, v, rel, bias, geometry, save=True)
        ctx.save_for_backward(q, k, v, rel, bias, probs)
        ctx.geometry = geometry
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, rel, bias, ctx.probs = ctx.saved_tensors
        return (*_na2d_backward(ctx, dout, (q, k, v), rel, bias, packed=False), None)


class _NA2dPackedFunction(torch.autograd.Function):
    """The kernel on the q, k, v views of one qkv tensor: read in place, the gradient written as one."""

    @staticmethod
    def forward(ctx: Any, qkv: Tensor, rel: Tensor, bias: Tensor, geometry: Any) -> Tensor:
        q, k, v = qkv.unbind(3)
        out, probs = _na2d_forward(q, k, v, rel, bias, geometry, save=True)
        ctx.save_for_backward(qkv, rel, bias, probs)
        ctx.geometry = geometry
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        qkv, rel, bias, ctx.probs = ctx.saved_tensors
        q, k, v = qkv.unbind(3)
        dqkv, _, _, drel, dbias = _na2d_backward(ctx, dout, (q, k, v), rel, bias, packed=True)
        return dqkv, drel, dbias, None


def _na2d_readable(x: Tensor) -> Tensor:
    """x (B, H, W, heads, d) as the na2d kernel reads it in place, else a contiguous copy. Read in place:
    heads and channels packed with pixels evenly apart (a contiguous tensor, or a channel slice of one
    such as a chunk of a 1×1 projection's channels-last output), or columns adjacent (the permuted view
    of an NCHW tensor, such as a 1×1 conv's output: each channel's row is one contiguous run)."""
    _, H, W, heads, d = x.shape
    s = x.stride()
    if W > 1 and d > 1 and s[2] == 1:
        return x
    if s[4] == 1 and s[3] == d and s[2] >= heads * d and s[1] == W * s[2] and s[0] == H * s[1]:
        return x
    return x.contiguous()


def _dense_qkv(qkv: Tensor) -> Tensor:
    """qkv (B, H, W, 3, heads, d) as the na2d kernel reads it and lays out its gradient: contiguous, or
    the permuted view of a contiguous (B, 3, heads, d, H, W) tensor (an NCHW 1×1 conv's output); else
    a contiguous copy."""
    if qkv.is_contiguous() or (qkv.shape[2] > 1 and qkv.permute(0, 3, 4, 5, 1, 2).is_contiguous()):
        return qkv
    return qkv.contiguous()


def na2d_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor | None,
    bias: Tensor | None,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    border: str,
    scale: float,
) -> Tensor:
    """Neighbourhood attention on checked heads-last (B, H, W, heads, d) tensors, by the C++ kernel.

    rel is a full (2k_h-1, 2k_w-1, heads, d) table or a split one, (2k_h-1 + 2k_w-1, heads, d): its
    rows then its columns, the embedding of an offset the sum of its row and its column."""
    geometry = (kernel_size, dilation, border, scale)
    args = (
        _na2d_readable(q),
        _na2d_readable(k),
        _na2d_readable(v),
        _contiguous_or_empty(rel, q),
        _contiguous_or_empty(bias, q),
    )
    if _tracks_grad(q, k, v, rel, bias):
        return cast(Tensor, _NA2dFunction.apply(*args, geometry))
    return _na2d_forward(*args, geometry, save=False)[0]  # inference: no probabilities kept


def na2d_packed_kernel(
    qkv: Tensor,
    rel: Tensor | None,
    bias: Tensor | None,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    border: str,
    scale: float,
) -> Tensor:
    """`na2d_kernel` on a checked qkv (B, H, W, 3, heads, d): q, k and v are read where they lie (a 1×1
    projection's output, channels-last or NCHW, needs no copies) and the backward writes one dqkv, laid
    out as qkv."""
    geometry = (kernel_size, dilation, border, scale)
    qkv = _dense_qkv(qkv)
    table, bias_t = _contiguous_or_empty(rel, qkv), _contiguous_or_empty(bias, qkv)
    if _tracks_grad(qkv, rel, bias):
        return cast(Tensor, _NA2dPackedFunction.apply(qkv, table, bias_t, geometry))
    q, k, v = qkv.unbind(3)
    return _na2d_forward(q, k, v, table, bias_t, geometry, save=False)[0]


# -- window attention (window.cpp) ------------------------------------------------------------------


class _WindowFunction(torch.autograd.Function):
    """The C++ kernel with its hand-written backward (probabilities saved per window)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, geometry: Any) -> Tensor:
        segs, window, scale = geometry
        out, probs = _ext("window").forward(q, k, v, bias, *segs, *window, scale, True)
        ctx.save_for_backward(q, k, v, bias, probs)
        ctx.geometry = geometry
        return cast(Tensor, out)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, bias, probs = ctx.saved_tensors
        segs, window, scale = ctx.geometry
        want_bias = bool(bias.numel()) and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _ext("window").backward(
            dout.contiguous(), q, k, v, bias, probs, *segs, *window, scale, want_bias, False
        )
        return dq, dk, dv, dbias if want_bias else None, None


class _WindowPackedFunction(torch.autograd.Function):
    """The kernel on the q, k, v views of one qkv tensor: read in place, the gradient written as one."""

    @staticmethod
    def forward(ctx: Any, qkv: Tensor, bias: Tensor, geometry: Any) -> Tensor:
        segs, window, scale = geometry
        out, probs = _ext("window").forward(*qkv.unbind(3), bias, *segs, *window, scale, True)
        ctx.save_for_backward(qkv, bias, probs)
        ctx.geometry = geometry
        return cast(Tensor, out)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        qkv, bias, probs = ctx.saved_tensors
        segs, window, scale = ctx.geometry
        want_bias = bool(bias.numel()) and ctx.needs_input_grad[1]
        dqkv, _, _, dbias = _ext("window").backward(
            dout.contiguous(), *qkv.unbind(3), bias, probs, *segs, *window, scale, want_bias, True
        )
        return dqkv, dbias if want_bias else None, None


def _segments(x: Tensor, window: tuple[int, int], shift: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The row and column segments of the windows on x's (B, H, W, ...) map."""
    H, W = x.shape[1:3]
    return window_segments(H, window[0], shift[0]), window_segments(W, window[1], shift[1])


def window_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    window: tuple[int, int],
    shift: tuple[int, int],
    scale: float,
) -> Tensor:
    """Swin window attention on checked (B, H, W, heads, d) tensors: attends within the per-axis
    segments directly, with no padding, roll or mask."""
    segs = _segments(q, window, shift)
    args = (q.contiguous(), k.contiguous(), v.contiguous(), _contiguous_or_empty(bias, q))
    if _tracks_grad(q, k, v, bias):
        return cast(Tensor, _WindowFunction.apply(*args, (segs, window, scale)))
    out, _ = _ext("window").forward(*args, *segs, *window, scale, False)  # inference: no probabilities
    return cast(Tensor, out)


def window_packed_kernel(
    qkv: Tensor, bias: Tensor | None, window: tuple[int, int], shift: tuple[int, int], scale: float
) -> Tensor:
    """`window_kernel` on a checked qkv (B, H, W, 3, heads, d): q, k and v are read where they lie (a
    1×1 projection's channels-last output needs no copies) and the backward writes one dqkv."""
    segs = _segments(qkv, window, shift)
    qkv, table = qkv.contiguous(), _contiguous_or_empty(bias, qkv)
    if _tracks_grad(qkv, bias):
        return cast(Tensor, _WindowPackedFunction.apply(qkv, table, (segs, window, scale)))
    out, _ = _ext("window").forward(*qkv.unbind(3), table, *segs, *window, scale, False)
    return cast(Tensor, out)


# -- dynamic depth-wise convolutions (dwconv.cpp; na2d.cpp's weighted window sums) -------------------


class _ImageDWConvFunction(torch.autograd.Function):
    """The C++ per-image depth-wise conv (channels-last slabs) with its hand-written backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernels: Tensor, dilation: int) -> Tensor:
        xl = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): free for a channels_last x
        ctx.save_for_backward(xl, kernels)
        ctx.dilation = dilation
        out = _ext("dwconv").forward(xl, kernels, dilation)
        return cast(Tensor, out).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        xl, kernels = ctx.saved_tensors
        dl = dout.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
        dx, dk = _ext("dwconv").backward(dl, xl, kernels, ctx.dilation)
        return dx.permute(0, 3, 1, 2), dk, None


def image_dwconv_kernel(x: Tensor, kernels: Tensor, dilation: int) -> Tensor:
    """Depth-wise conv of checked x (B, C, H, W) with kernels (B, C, k_h, k_w), 'same' zero padding."""
    return cast(Tensor, _ImageDWConvFunction.apply(x, kernels.contiguous(), dilation))


class _PixelDWConvFunction(torch.autograd.Function):
    """The na2d kernel's weighted window sums with given weights: zero-padded k×k windows."""

    @staticmethod
    def forward(ctx: Any, v: Tensor, w: Tensor, k: int, dilation: int) -> Tensor:
        rows, cols = grid_windows(v.shape[1], v.shape[2], (k, k), (dilation, dilation), "zeros")
        out = _ext("na2d").apply_forward(w, v, *rows.tensors(), *cols.tensors(), dilation)
        ctx.save_for_backward(v, w)
        ctx.geometry = (k, dilation)
        return cast(Tensor, out)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        v, w = ctx.saved_tensors
        k, dilation = ctx.geometry
        rows, cols = grid_windows(v.shape[1], v.shape[2], (k, k), (dilation, dilation), "zeros")
        inv = inverse_windows(v.shape[1], k, dilation, "zeros")
        dw, dv = _ext("na2d").apply_backward(
            dout.contiguous(), w, v, *rows.tensors(), *cols.tensors(), inv, dilation
        )
        return dv, dw, None, None


def pixel_dwconv_kernel(x: Tensor, kernels: Tensor, k: int, dilation: int) -> Tensor:
    """Lay x out heads-last (groups as heads) and the kernels like attention probabilities, then run."""
    B, C, H, W = x.shape
    G = kernels.shape[1]
    v = x.reshape(B, G, C // G, H, W).permute(0, 3, 4, 1, 2).contiguous()  # (B, H, W, G, C/G)
    pad = dilation * (k // 2)
    lanes = _ext("na2d").vector_bytes() // x.element_size()  # 64 bytes with AVX-512, else 32
    w = kernels.permute(0, 1, 3, 2, 4)  # (B, G, H, k², W)
    wq = -(-W // lanes) * lanes  # columns rounded up to whole vectors, as the kernel's rows
    w = F.pad(w, (pad, pad + wq - W)).contiguous()  # (B, G, H, k², pad + wq + pad)
    out = _PixelDWConvFunction.apply(v, w, k, dilation)  # (B, H, W, G, C/G)
    return cast(Tensor, out).permute(0, 3, 4, 1, 2).reshape(B, C, H, W)


# -- separable position-only attention with the heads summed (posmix.cpp) ----------------------------


class _PositionMixFunction(torch.autograd.Function):
    """The C++ row-times-column mix with its hand-written backward (nothing but the inputs saved)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(z, rows, cols)
        return cast(Tensor, _ext("posmix").forward(z, rows, cols))

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        z, rows, cols = ctx.saved_tensors
        dz, drows, dcols = _ext("posmix").backward(dy.contiguous(), z, rows, cols)
        return dz, drows, dcols


def position_mix_kernel(z: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """y[b,i,j] = Σ_h Σ_k Σ_l rows[h,i,k] cols[h,j,l] z[b,k,l,h] for checked z (B, H, W, heads, C),
    rows (heads, H, H) and cols (heads, W, W) of z's dtype: y (B, H, W, C)."""
    args = (z.contiguous(), rows.contiguous(), cols.contiguous())
    if _tracks_grad(*args):
        return cast(Tensor, _PositionMixFunction.apply(*args))
    return cast(Tensor, _ext("posmix").forward(*args))


# -- dropout with a counter-based mask (dropout.cpp) -------------------------------------------------


class _DropoutFunction(torch.autograd.Function):
    """The mask is a function of (seed, index): the backward applies it again to the output gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, seed: int, threshold: int, scale: float, offset: int) -> Tensor:
        ctx.mask = (seed, threshold, scale, offset)
        return cast(Tensor, _ext("dropout").apply(x, seed, threshold, scale, offset))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        return dropout_kernel(grad, *ctx.mask), None, None, None, None


def dropout_kernel(x: Tensor, seed: int, threshold: int, scale: float, offset: int = 0) -> Tensor:
    """x * (scale where draw(seed, offset + i) >= threshold, else 0) for a checked float CPU x, element i
    counted in x's row-major order (the draws of `convattn.layers.dropout`)."""
    x = x.contiguous()
    if _tracks_grad(x):
        return cast(Tensor, _DropoutFunction.apply(x, seed, threshold, scale, offset))
    return cast(Tensor, _ext("dropout").apply(x, seed, threshold, scale, offset))
