"""neighborhood_attention2d: every path against the loop reference, borders, and bad input."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conftest import assert_same_gradients, needs_kernel
from convattn.layers import reference as ref
from convattn.layers.geometry import axis_windows
from convattn.layers.kernels import choose_backend, load_kernel
from convattn.layers.neighborhood import neighborhood_attention2d, neighborhood_attention2d_qkv

f64 = torch.float64

CASES = [
    # (H, W), kernel, dilation
    ((1, 1), (3, 3), (1, 1)),
    ((3, 5), (3, 3), (1, 1)),
    ((5, 5), (7, 7), (1, 1)),  # window larger than the map
    ((6, 4), (3, 5), (2, 1)),  # non-square window, dilation
    ((7, 6), (3, 3), (2, 3)),
    ((2, 9), (5, 1), (1, 2)),
]


def _inputs(size, kernel, heads=2, d=3, dv=4, with_rel=True, with_bias=True, B=2):
    H, W = size
    q, k = (torch.randn(B, H, W, heads, d, dtype=f64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, H, W, heads, dv, dtype=f64, requires_grad=True)
    table = (2 * kernel[0] - 1, 2 * kernel[1] - 1)
    rel = torch.randn(*table, heads, d, dtype=f64, requires_grad=True) if with_rel else None
    bias = torch.randn(heads, *table, dtype=f64, requires_grad=True) if with_bias else None
    return q, k, v, rel, bias


BACKENDS = ["torch", pytest.param("kernel", marks=needs_kernel())]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
@pytest.mark.parametrize(("size", "kernel", "dilation"), CASES)
def test_paths_match_reference_forward_and_backward(backend, border, size, kernel, dilation):
    q, k, v, rel, bias = _inputs(size, kernel)
    out = neighborhood_attention2d(
        q, k, v, kernel, dilation=dilation, rel=rel, bias=bias, border=border, backend=backend
    )
    expected = ref.neighborhood_attention2d(q, k, v, kernel, dilation, border, None, rel, bias)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert_same_gradients(out, expected, (q, k, v, rel, bias), atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
@pytest.mark.parametrize(("size", "kernel", "dilation"), CASES)
@pytest.mark.parametrize("zero_heads", [False, True])
def test_decomposed_embeddings_are_the_table_of_their_sums(
    backend, border, size, kernel, dilation, zero_heads
):
    """rel_hw=(rel_h, rel_w) is rel[δ_r, δ_c] = rel_h[δ_r] + rel_w[δ_c]: the kernel's k_h + k_w dot
    products per query against the reference on that table, forward and backward, in float64. With
    zero_heads, rel_h is zero in head 1 and rel_w in head 0 (SASA's halves): the kernel skips those
    rows' products, but their gradients are still every query's."""
    q, k, v, _, bias = _inputs(size, kernel)
    heads, d = q.shape[3:]
    rel_h = torch.randn(2 * kernel[0] - 1, heads, d, dtype=f64)
    rel_w = torch.randn(2 * kernel[1] - 1, heads, d, dtype=f64)
    if zero_heads:
        rel_h[:, 1], rel_w[:, 0] = 0, 0
    rel_h.requires_grad_(), rel_w.requires_grad_()
    out = neighborhood_attention2d(
        q, k, v, kernel, dilation=dilation, rel_hw=(rel_h, rel_w), bias=bias, border=border, backend=backend
    )
    table = rel_h[:, None] + rel_w[None, :]
    expected = ref.neighborhood_attention2d(q, k, v, kernel, dilation, border, None, table, bias)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert_same_gradients(out, expected, (q, k, v, rel_h, rel_w, bias), atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
@pytest.mark.parametrize(("size", "kernel", "dilation"), CASES[1:4])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_packed_qkv_matches_the_reference(backend, border, size, kernel, dilation, layout):
    """qkv (B, H, W, 3, heads, d) read in place, its gradient written as one tensor: contiguous (a
    channels-last projection's output) or the permuted view of an NCHW (B, 3, heads, d, H, W) one."""
    if layout == "nchw":
        base = torch.randn(2, 3, 2, 3, *size, dtype=f64, requires_grad=True)
        qkv = base.permute(0, 4, 5, 1, 2, 3)
    else:
        base = qkv = torch.randn(2, *size, 3, 2, 3, dtype=f64, requires_grad=True)
    _, _, _, rel, bias = _inputs(size, kernel)
    out = neighborhood_attention2d_qkv(
        qkv, kernel, dilation=dilation, rel=rel, bias=bias, border=border, backend=backend
    )
    expected = ref.neighborhood_attention2d(*qkv.unbind(3), kernel, dilation, border, None, rel, bias)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert_same_gradients(out, expected, (base, rel, bias), atol=1e-11)


@needs_kernel()
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
def test_nchw_views_are_read_in_place_and_their_gradient_keeps_their_layout(border):
    """The permuted views of an NCHW tensor (columns adjacent) give the same bits as contiguous copies
    for the output and the q, k, v gradients, packed or not; the packed gradient comes back laid out as
    qkv (no copy for the 1×1 conv's backward); the rel gradient, summed in another order, agrees."""
    base = torch.randn(2, 3, 4, 16, 9, 21, requires_grad=True)  # (B, 3, heads, d, H, W)
    qkv = base.permute(0, 4, 5, 1, 2, 3)  # (B, H, W, 3, heads, d), columns adjacent
    rel_h, rel_w = (torch.randn(13, 4, 16, requires_grad=True) for _ in range(2))
    g = torch.randn(2, 9, 21, 4, 16)
    args = {"rel_hw": (rel_h, rel_w), "border": border, "backend": "kernel"}
    layouts: list[tuple[int, ...]] = []
    qkv.register_hook(lambda grad: layouts.append(grad.stride()))
    packed = neighborhood_attention2d_qkv(qkv, 7, **args)
    views = neighborhood_attention2d(*qkv.unbind(3), 7, **args)
    copies = neighborhood_attention2d(*(t.contiguous() for t in qkv.unbind(3)), 7, **args)
    assert torch.equal(packed, copies) and torch.equal(views, copies)
    grads = [torch.autograd.grad(y, [base, rel_h, rel_w], g) for y in (packed, views, copies)]
    assert layouts[0] == qkv.stride()  # the packed backward's dqkv
    for got in grads[:2]:
        assert torch.equal(got[0], grads[2][0])
        for a, b in zip(got[1:], grads[2][1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(neighborhood_attention2d_qkv(qkv, 7, **args), packed)


@needs_kernel()
@pytest.mark.parametrize("border", ["mask", "shift"])
def test_packed_and_strided_views_compute_the_same_bits_as_contiguous_inputs(border):
    """The kernel reads q, k, v where they lie (views of one qkv, or channel slices of a projection):
    the same bits as contiguous copies, forward, backward and inference."""
    qkv = torch.randn(3, 11, 37, 3, 4, 16, requires_grad=True)
    rel_h, rel_w = (torch.randn(13, 4, 16, requires_grad=True) for _ in range(2))
    g = torch.randn(3, 11, 37, 4, 16)
    args = {"rel_hw": (rel_h, rel_w), "border": border, "scale": 1.0}
    packed = neighborhood_attention2d_qkv(qkv, 7, **args)
    views = neighborhood_attention2d(*qkv.unbind(3), 7, **args)
    copies = neighborhood_attention2d(*(t.contiguous() for t in qkv.unbind(3)), 7, **args)
    assert torch.equal(packed, copies) and torch.equal(views, copies)
    grads = [torch.autograd.grad(y, [qkv, rel_h, rel_w], g) for y in (packed, views, copies)]
    for a, b, c in zip(*grads, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
    with torch.no_grad():  # inference: no probabilities kept, the same output
        assert torch.equal(neighborhood_attention2d_qkv(qkv, 7, **args), packed)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"rel": torch.zeros(5, 5, 2, 3), "rel_hw": (torch.zeros(5, 2, 3),) * 2}, ValueError, "not both"),
        ({"rel_hw": torch.zeros(5, 2, 3)}, TypeError, "rel_hw must be a pair"),
        (
            {"rel_hw": (torch.zeros(5, 2, 3), torch.zeros(3, 2, 3))},
            ValueError,
            r"rel_w must be \(5, heads, d\)",
        ),
        (
            {"rel_hw": (torch.zeros(5, 2, 3).double(), torch.zeros(5, 2, 3))},
            TypeError,
            "rel_h must have q's dtype",
        ),
    ],
)
def test_bad_decomposed_embeddings_are_named(kwargs, error, words):
    q = torch.randn(1, 4, 4, 2, 3)
    with pytest.raises(error, match=words):
        neighborhood_attention2d(q, q, q, 3, **kwargs)


def test_bad_packed_qkv_is_named():
    with pytest.raises(ValueError, match="qkv"):
        neighborhood_attention2d_qkv(torch.randn(1, 4, 4, 2, 3), 3)
    with pytest.raises(ValueError, match=r"qkv must be \(B, H, W, 3, heads, d\)"):
        neighborhood_attention2d_qkv(torch.randn(1, 4, 4, 2, 2, 3), 3)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        neighborhood_attention2d_qkv(torch.randn(1, 4, 4, 3, 2, 3), 4)


@needs_kernel()
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
def test_backward_passes_fused_per_image_and_split_in_chunks_match_torch(border, threads):
    """8 (image, head) pairs: on one thread each task holds whole images and its key pass runs right
    after its query pass; on two, rows are split into chunks and the passes run one after the other."""
    q, k, v, rel, bias = _inputs((9, 13), (5, 5), heads=2, B=4)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = neighborhood_attention2d(q, k, v, 5, rel=rel, bias=bias, border=border, backend="kernel")
        g = torch.randn_like(out)
        fast = torch.autograd.grad(out, (q, k, v, rel, bias), g)
    finally:
        torch.set_num_threads(previous)
    expected = neighborhood_attention2d(q, k, v, 5, rel=rel, bias=bias, border=border, backend="torch")
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    for a, b in zip(fast, torch.autograd.grad(expected, (q, k, v, rel, bias), g), strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_shift_windows_stay_inside_and_mask_windows_centre_on_the_query():
    w = axis_windows(7, 3, 1, "shift")
    assert w.index.tolist()[0] == [0, 1, 2] and w.index.tolist()[6] == [4, 5, 6] and w.valid.all()
    m = axis_windows(7, 3, 1, "mask")
    assert m.valid.tolist()[0] == [False, True, True] and m.index.tolist()[3] == [2, 3, 4]
    short = axis_windows(2, 5, 1, "shift")  # window longer than the axis: both pixels, rest invalid
    assert short.valid.sum(1).tolist() == [2, 2]
    dil = axis_windows(8, 3, 2, "shift")  # two interleaved sub-grids of 4 pixels
    assert dil.index.tolist()[1] == [1, 3, 5] and dil.index.tolist()[7] == [3, 5, 7]


@needs_kernel()
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
def test_kernel_matches_torch_path_in_float32_without_rel_or_bias(border):
    q, k, v = (torch.randn(3, 9, 11, 4, 16) for _ in range(3))
    a = neighborhood_attention2d(q, k, v, 7, border=border, backend="kernel")
    b = neighborhood_attention2d(q, k, v, 7, border=border, backend="torch")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_kernel()
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
def test_inference_skips_the_saved_probabilities_but_not_the_answer(border):
    q, k, v = (torch.randn(2, 7, 21, 2, 16, dtype=f64) for _ in range(3))
    rel = torch.randn(9, 9, 2, 16, dtype=f64)
    with torch.no_grad():
        fast = neighborhood_attention2d(q, k, v, 5, rel=rel, border=border)
    trained = neighborhood_attention2d(q, k, v.requires_grad_(), 5, rel=rel, border=border)
    torch.testing.assert_close(fast, trained, atol=0, rtol=0)


def test_one_by_one_window_returns_the_values():
    q, k, v, _, _ = _inputs((4, 5), (1, 1), with_rel=False, with_bias=False)
    torch.testing.assert_close(neighborhood_attention2d(q, k, v, 1), v)


def test_full_window_mask_equals_global_attention():
    """A window that covers the whole map in every position is plain multi-head attention."""
    q, k, v, _, _ = _inputs((3, 4), (7, 9), with_rel=False, with_bias=False)
    out = neighborhood_attention2d(q, k, v, (7, 9))
    B, H, W, h, _ = q.shape
    flat = lambda x: x.reshape(B, H * W, h, -1).transpose(1, 2)  # noqa: E731  (B, h, T, d)
    expected = torch.nn.functional.scaled_dot_product_attention(flat(q), flat(k), flat(v))
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(out.shape))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"kernel_size": 4}, ValueError, r"kernel_size must be odd.*\(4, 4\)"),
        ({"kernel_size": 3, "backend": "cuda"}, ValueError, "backend='cuda'"),
        ({"kernel_size": 0}, ValueError, "kernel_size=0"),
        ({"kernel_size": 3, "dilation": 0}, ValueError, "dilation=0"),
        ({"kernel_size": 3, "dilation": (1, 4)}, ValueError, r"dilation 4 does not fit a map of width 4"),
        ({"kernel_size": 3, "border": "reflect"}, ValueError, r"border='reflect'"),
        ({"kernel_size": 3, "rel": torch.zeros(3, 3, 2, 3)}, ValueError, r"rel must be \(2k_h-1"),
        ({"kernel_size": 3, "bias": torch.zeros(2, 3, 3)}, ValueError, r"bias must be \(heads"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, words):
    q = torch.randn(1, 4, 4, 2, 3)
    with pytest.raises(error, match=words):
        neighborhood_attention2d(q, q, q, **kwargs)


def test_bad_tensors_are_named():
    q = torch.randn(1, 4, 4, 2, 3)
    with pytest.raises(ValueError, match="5 dims"):
        neighborhood_attention2d(q[0], q[0], q[0], 3)
    with pytest.raises(ValueError, match=r"k\.shape"):
        neighborhood_attention2d(q, q[:, :3], q, 3)
    with pytest.raises(TypeError, match="share a dtype"):
        neighborhood_attention2d(q, q.double(), q, 3)


@pytest.mark.parametrize("border", ["mask", "shift"])
@pytest.mark.parametrize(
    ("size", "kernel", "dilation"),
    [((5, 6), (3, 3), (1, 1)), ((7, 5), (3, 5), (2, 1)), ((4, 4), (7, 7), (1, 1))],
)
def test_flex_attention_path_matches_forward(border, size, kernel, dilation):
    """The accelerator path (flex_attention with a block mask) agrees with the PyTorch path (CPU forward)."""
    q, k, v, rel, bias = (t.detach().float() for t in _inputs(size, kernel))
    args = {"dilation": dilation, "rel": rel, "bias": bias, "border": border}
    flex = neighborhood_attention2d(q, k, v, kernel, backend="flex", **args)
    torch.testing.assert_close(
        flex, neighborhood_attention2d(q, k, v, kernel, backend="torch", **args), atol=1e-5, rtol=1e-5
    )


def test_flex_attention_path_refuses_zero_padding():
    q = torch.randn(1, 4, 4, 2, 3)
    with pytest.raises(ValueError, match="zeros"):
        neighborhood_attention2d(q, q, q, 3, border="zeros", backend="flex")


_MEMORY = """
import ctypes, sys, torch
torch.set_num_threads(1)
ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # large blocks are mmapped: freed memory leaves the RSS
from convattn.analysis.bench import unfold_local_attention
from convattn.layers.neighborhood import neighborhood_attention2d, neighborhood_attention2d_qkv

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

B, S, h, d, k = 4, 32, 4, 16, 7
if sys.argv[1] == "na2d":
    q, kk, v = (torch.randn(B, S, S, h, d, requires_grad=True) for _ in range(3))
    step = lambda: neighborhood_attention2d(q, kk, v, k).sum().backward()
else:
    q, kk, v = (torch.randn(B, h, d, S, S, requires_grad=True) for _ in range(3))
    step = lambda: unfold_local_attention(q, kk, v, k).sum().backward()
step()
for t in (q, kk, v):
    t.grad = None
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
step()
print(status("VmHWM:") - before)
"""


@needs_kernel()
def test_training_memory_is_near_the_analytic_minimum_and_far_below_unfold():
    """Peak extra memory of a training step (B=4, 32x32, 4 heads x 16, k=7), in fresh processes."""
    import subprocess
    import sys

    def peak_kib(impl):
        run = subprocess.run(
            [sys.executable, "-c", _MEMORY, impl], capture_output=True, text=True, check=True
        )
        return int(run.stdout.strip().splitlines()[-1])

    pixels, channels, slots = 4 * 32 * 32, 64, 4 * 49
    # Beyond the inputs: the output, four gradients, the probabilities and their gradient (float32).
    minimum_kib = (5 * pixels * channels + 2 * pixels * slots) * 4 / 1024
    na2d, unfold = peak_kib("na2d"), peak_kib("unfold")
    assert na2d <= 3 * minimum_kib
    assert na2d < 0.25 * unfold


@needs_kernel()
@pytest.mark.parametrize(
    ("dtype", "shape", "dv"),
    [
        (torch.float32, (2, 6, 35, 2, 16), 16),  # full tiles of 16 lanes and a column remainder
        (f64, (1, 5, 19, 2, 8), 8),  # full tiles of 8 lanes
        (torch.float32, (2, 7, 21, 2, 4), 8),  # channels below a vector: partial tiles both ways
        (f64, (1, 6, 11, 3, 11), 5),  # channels past a vector with a remainder, odd heads
        (torch.float32, (1, 4, 5, 1, 20), 3),  # a map narrower than a vector
    ],
)
def test_kernel_full_tiles_and_remainders(dtype, shape, dv):
    """Every tile shape of the kernel's transposes (full, channel and column remainders) matches the
    PyTorch path forward and backward, rel table included."""
    q, k = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(2))
    v = torch.randn(*shape[:-1], dv, dtype=dtype, requires_grad=True)
    rel = torch.randn(9, 9, shape[3], shape[4], dtype=dtype, requires_grad=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    a = neighborhood_attention2d(q, k, v, 5, rel=rel, backend="kernel")
    b = neighborhood_attention2d(q, k, v, 5, rel=rel, backend="torch")
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    g = torch.randn_like(a)
    got = torch.autograd.grad(a, [q, k, v, rel], g)
    for x, y in zip(got, torch.autograd.grad(b, [q, k, v, rel], g), strict=True):
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


def test_the_kernel_builds_where_ci_runs():
    """On CI (CI=true) the kernels must build, so their tests run instead of being skipped."""
    import os

    if os.environ.get("CI", "").lower() != "true" or os.environ.get("CONVATTN_NO_KERNEL"):
        pytest.skip("only enforced on CI")
    assert all(load_kernel(name) is not None for name in ("na2d", "window", "dwconv"))


@needs_kernel("na2d")
def test_a_build_lock_left_by_a_killed_build_does_not_hang_the_next_process(tmp_path):
    """torch's lock file, left behind by a build killed half-way, is stale and removed (it used to make
    every later process wait forever); the next process loads the kernels at once."""
    import subprocess
    import sys

    from convattn.layers.kernels import build_directory, library_name

    stale = build_directory(library_name()) / "lock"
    stale.write_text("")  # what torch's FileBaton leaves when its owner is killed
    code = "from convattn.layers.kernels import load_kernel; assert load_kernel('na2d') is not None"
    done = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not stale.exists()


@needs_kernel("na2d")
def test_a_build_killed_half_way_leaves_the_next_process_a_working_kernel(tmp_path):
    """A real build, in an empty extension folder, killed with SIGKILL while it compiles: the next
    process neither hangs nor fails; it builds the kernels and runs them (bounded in time)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop("CONVATTN_NO_KERNEL", None)
    build = "from convattn.layers.kernels import load_kernel; assert load_kernel('na2d') is not None"
    first = subprocess.Popen([sys.executable, "-c", build], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(tmp_path.rglob("build.ninja")) and time.monotonic() < deadline:  # compiling now
        time.sleep(0.2)
    time.sleep(1.0)
    assert first.poll() is None, "the build ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)  # the compiler processes too
    first.wait()
    assert any(tmp_path.rglob("lock")), "torch's build lock should be left behind by the kill"
    run = (
        "import torch, convattn.functional as F; from convattn.layers.kernels import load_kernel; "
        "assert load_kernel('na2d') is not None; q = torch.randn(1, 4, 4, 1, 2); "
        "print(F.neighborhood_attention2d(q, q, q, 3).shape)"
    )
    done = subprocess.run([sys.executable, "-c", run], env=env, timeout=240, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([1, 4, 4, 1, 2])" in done.stdout


@pytest.mark.parametrize(
    ("backend", "device", "options", "path"),
    [
        ("auto", "cuda", {"fused": "flex"}, "flex"),
        ("auto", "cuda", {"fused": "flex", "fused_auto": False}, "torch"),  # border 'zeros' has no flex form
        ("auto", "cuda", {}, "torch"),
        ("auto", "meta", {"fused": "sdpa"}, "torch"),
        ("sdpa", "cpu", {"fused": "sdpa"}, "sdpa"),
        ("torch", "cpu", {"fused": "flex"}, "torch"),
    ],
)
def test_one_backend_rule_for_every_operator(backend, device, options, path):
    assert choose_backend(backend, _like(device), "na2d", **options) == path


def _like(device: str, dtype: torch.dtype = torch.float32, numel: int = 1) -> Any:
    """What `choose_backend` reads of its tensor, on any device (no CUDA here)."""
    return SimpleNamespace(device=torch.device(device), dtype=dtype, numel=lambda: numel)


@needs_kernel()
def test_half_precision_and_empty_inputs_take_the_path_that_works():
    assert choose_backend("auto", _like("cpu"), "na2d") == "kernel"
    for dtype in (torch.float16, torch.bfloat16):
        assert choose_backend("auto", _like("cpu", dtype), "na2d") == "torch"
        with pytest.raises(TypeError, match=f"computes in torch.float32, torch.float64, got {dtype}"):
            choose_backend("kernel", _like("cpu", dtype), "na2d")
    assert choose_backend("kernel", _like("cpu", numel=0), "na2d") == "torch"  # empty: nothing to compute
    assert choose_backend("auto", _like("cpu", torch.float16, numel=0), "na2d") == "torch"


def test_backend_chooser_names_what_it_cannot_do():
    with pytest.raises(ValueError, match=r"one of \('auto', 'kernel', 'torch', 'flex'\), got backend='sdpa'"):
        choose_backend("sdpa", _like("cpu"), "na2d", fused="flex")
    with pytest.raises(RuntimeError, match=r"needs a CPU tensor.*got a meta tensor"):
        choose_backend("kernel", _like("meta"), "na2d")
    q = torch.randn(1, 4, 4, 2, 3, device="meta")
    with pytest.raises(RuntimeError, match="got a meta tensor"):
        neighborhood_attention2d(q, q, q, 3, backend="kernel")
