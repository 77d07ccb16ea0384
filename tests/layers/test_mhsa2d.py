"""MultiHeadSelfAttention2d: every encoding against the explicit reference, and its symmetries."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.func import functional_call

from conftest import assert_same_gradients, needs_kernel
from convattn.layers import reference as ref
from convattn.layers.mhsa2d import ENCODINGS, MultiHeadSelfAttention2d, position_mix

f64 = torch.float64
POSITION_MIX_BACKENDS = ["torch", pytest.param("kernel", marks=needs_kernel("posmix"))]


def _layer(encoding, *, value_proj=True, C=8, C_out=6, heads=3, max_size=(4, 5), dropout=0.0):
    layer = MultiHeadSelfAttention2d(
        C,
        C_out,
        num_heads=heads,
        encoding=encoding,
        value_proj=value_proj,
        max_size=max_size,
        attn_dropout=dropout,
    ).double()
    with torch.no_grad():  # move every parameter off its initialisation so no term is trivially zero
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("value_proj", [True, False])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (6, 4)])
def test_matches_reference_forward_and_backward(encoding, value_proj, size):
    layer = _layer(encoding, value_proj=value_proj)
    x = torch.randn(2, 8, *size, dtype=f64, requires_grad=True)
    out, expected = layer(x), ref.mhsa2d(layer, x)
    assert out.shape == (2, 6, *size)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    params = [p for p in layer.parameters()]
    got = torch.autograd.grad(out, [x, *params], g, allow_unused=True)
    want = torch.autograd.grad(expected, [x, *params], g, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        if a is None or b is None:
            assert a is None or float(a.abs().max()) == 0.0
            continue
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


@pytest.mark.parametrize("encoding", ["relative", "quadratic"])
def test_separable_and_fused_paths_agree(encoding):
    layer = _layer(encoding)
    x = torch.randn(2, 8, 5, 7, dtype=f64)
    fused = layer._attend_fused(x)  # the path training with attention dropout takes
    torch.testing.assert_close(layer._attend_separable(x), fused, atol=1e-12, rtol=0)


@pytest.mark.parametrize("encoding", ["relative", "quadratic"])
@pytest.mark.parametrize("value_proj", [True, False])
@pytest.mark.parametrize("mixing", ["rows_columns", "kronecker"])
@pytest.mark.parametrize("backend", POSITION_MIX_BACKENDS)
def test_both_position_mixings_match_the_reference_forward_and_backward(
    encoding, value_proj, mixing, backend
):
    layer = _layer(encoding, value_proj=value_proj)
    layer.position_mixing, layer.backend = mixing, backend  # the backend runs the "kronecker" mix
    x = torch.randn(2, 8, 3, 5, dtype=f64, requires_grad=True)
    out, expected = layer(x), ref.mhsa2d(layer, x)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    inputs = [x, *layer.parameters()]
    for a, b in zip(
        torch.autograd.grad(out, inputs, g), torch.autograd.grad(expected, inputs, g), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_auto_mixing_takes_the_single_product_on_small_maps_only():
    layer = MultiHeadSelfAttention2d(64, num_heads=9, encoding="quadratic", value_proj=False)
    assert layer.kronecker_pays(8, 8)  # the digits' attention net
    assert not layer.kronecker_pays(16, 16)  # Cordonnier et al.'s 16x16 maps
    narrow = MultiHeadSelfAttention2d(64, 1, num_heads=9, encoding="quadratic", value_proj=False)
    assert narrow.kronecker_pays(16, 16) and not narrow.kronecker_pays(17, 16)  # never beyond 256 pixels
    layer.position_mixing = "kronecker"
    assert layer.kronecker_pays(16, 16)


def test_with_the_kernel_auto_always_projects_first_and_a_forced_mix_stays_forced():
    layer = MultiHeadSelfAttention2d(64, num_heads=9, encoding="quadratic", value_proj=False)
    assert layer.kronecker_pays(16, 16, kernel=True) and layer.kronecker_pays(64, 64, kernel=True)
    layer.position_mixing = "rows_columns"
    assert not layer.kronecker_pays(8, 8, kernel=True)


@pytest.mark.parametrize("backend", POSITION_MIX_BACKENDS)
def test_auto_mixing_runs_the_path_its_rule_names(backend, monkeypatch):
    layer = MultiHeadSelfAttention2d(8, num_heads=3, encoding="quadratic", value_proj=False, backend=backend)
    calls = []
    monkeypatch.setattr(
        layer, "_attend_kronecker", lambda x, path: calls.append("kronecker") or torch.zeros(1, 256, 8)
    )
    monkeypatch.setattr(layer, "_attend_separable", lambda x: calls.append("rows") or torch.zeros(1, 256, 24))
    layer(torch.randn(1, 8, 16, 16))
    assert calls == (["kronecker"] if backend == "kernel" else ["rows"])  # 16×16: only the kernel pays


@pytest.mark.parametrize(
    ("encoding", "mixing"),
    [(e, "auto") for e in ENCODINGS] + [("relative", "rows_columns"), ("quadratic", "rows_columns")],
)
def test_gradcheck(encoding, mixing):
    layer = _layer(encoding, C=4, C_out=3, heads=2, max_size=(2, 2))
    layer.position_mixing = mixing  # "auto" takes the single T×T product on this 3×2 map
    assert layer.kronecker_pays(3, 2) == (mixing == "auto")
    x = torch.randn(1, 4, 3, 2, dtype=f64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def run(x, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


def test_without_encoding_the_layer_is_permutation_equivariant():
    layer = _layer("none")
    x = torch.randn(2, 8, 4, 5, dtype=f64)
    perm = torch.randperm(20)
    shuffled = x.flatten(2)[:, :, perm].reshape(2, 8, 4, 5)
    torch.testing.assert_close(
        layer(shuffled).flatten(2), layer(x).flatten(2)[:, :, perm], atol=1e-12, rtol=0
    )
    positional = _layer("quadratic")
    assert not torch.allclose(positional(shuffled).flatten(2), positional(x).flatten(2)[:, :, perm])


def _local_relative(encoding):
    """A relative layer whose position scores are 0 within one pixel and -1000 beyond: 3x3 support."""
    layer = _layer(encoding, max_size=(6, 6))
    with torch.no_grad():
        offsets = torch.arange(-5, 6).abs()
        layer.rel_row.zero_()
        layer.rel_col.zero_()
        layer.rel_row[:, 0] = torch.where(offsets <= 1, 0.0, -1000.0)
        layer.rel_col[:, 0] = torch.where(offsets <= 1, 0.0, -1000.0)
        layer.rel_row_keys.fill_(1.0)
        layer.rel_col_keys.fill_(1.0)
    return layer


@pytest.mark.parametrize("encoding", ["relative", "relative_content"])
def test_relative_encodings_are_translation_equivariant_on_the_interior(encoding):
    layer = _local_relative(encoding)
    x = torch.randn(2, 8, 10, 11, dtype=f64)
    whole = layer(x)
    shifted = layer(x[:, :, 2:, 3:])  # the same content, moved up 2 rows and left 3 columns
    # Pixels at least 2 away from every border see the same 3x3 neighbourhood in both.
    torch.testing.assert_close(shifted[:, :, 1:-1, 1:-1], whole[:, :, 3:-1, 4:-1], atol=1e-12, rtol=0)


def test_absolute_encoding_is_not_translation_equivariant():
    layer = _layer("absolute", max_size=(10, 11))
    x = torch.randn(1, 8, 10, 11, dtype=f64)
    assert not torch.allclose(layer(x[:, :, 2:, 3:])[:, :, 1:-1, 1:-1], layer(x)[:, :, 3:-1, 4:-1])


def test_quadratic_initialisation_follows_the_reference_code():
    torch.manual_seed(0)
    iso = MultiHeadSelfAttention2d(16, num_heads=400, encoding="quadratic")
    assert abs(float(iso.centres.detach().std()) - 2.0) < 0.15
    assert abs(float(iso.spreads.detach().mean()) - 1.0) < 2e-3
    assert float(iso.spreads.detach().std()) < 0.02
    gen = MultiHeadSelfAttention2d(16, num_heads=9, encoding="quadratic_generalized")
    torch.testing.assert_close(gen.spreads, torch.eye(2).expand(9, 2, 2), atol=0.06, rtol=0)
    torch.testing.assert_close(gen.inverse_covariance(), gen.spreads @ gen.spreads.transpose(1, 2))


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("quadratic", 1_440_427),  # W_out 3600->400 + bias, 9 centres (2) and 9 spreads
        ("quadratic_generalized", 1_440_454),  # 2x2 spread matrices instead
        ("relative", 1_472_400),  # + row/col tables 2·(31·400), per-head keys 2·(400·9)
        ("relative_content", 4_359_600),  # + query and key projections 400->3600 with bias
    ],
)
def test_reference_code_parameter_counts(encoding, expected):
    """One attention layer of Cordonnier et al.'s code: hidden 400, 9 heads each 400 wide, 16x16 maps."""
    layer = MultiHeadSelfAttention2d(
        400, num_heads=9, encoding=encoding, value_proj=False, head_dim=400, max_size=16
    )
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_any_map_size_works_beyond_the_embedding_tables():
    for encoding in ENCODINGS:
        layer = MultiHeadSelfAttention2d(8, num_heads=2, encoding=encoding, max_size=3).double()
        out = layer(torch.randn(1, 8, 9, 2, dtype=f64))
        assert out.shape == (1, 8, 9, 2) and torch.isfinite(out).all()


def test_attention_probs_are_the_rows_of_the_reference_matrix():
    layer = _layer("quadratic_generalized")
    x = torch.randn(1, 8, 5, 6, dtype=f64)
    probs = layer.attention_probs(x, (2, 3))
    assert probs.shape == (1, 3, 5, 6)
    torch.testing.assert_close(probs.sum((-1, -2)), torch.ones(1, 3, dtype=f64))
    # A quadratic head peaks at query + Δ when its Gaussian is sharp.
    with torch.no_grad():
        layer.spreads.copy_(torch.eye(2).expand(3, 2, 2) * 8)
        layer.centres.copy_(torch.tensor([[0.0, 0.0], [1.0, -2.0], [-2.0, 2.0]]))
    peaks = layer.attention_probs(x, (2, 3))[0].flatten(1).argmax(1)
    assert [(int(p) // 6, int(p) % 6) for p in peaks] == [(2, 3), (3, 1), (0, 5)]


_MEMORY = """
import sys, torch
torch.set_num_threads(1)
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

layer = MultiHeadSelfAttention2d(64, num_heads=9, encoding=sys.argv[1], value_proj=False).double()
layer(torch.randn(1, 64, 4, 4, dtype=torch.float64, requires_grad=True)).sum().backward()
n = int(sys.argv[2])
x = torch.randn(1, 64, n, n, dtype=torch.float64, requires_grad=True)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
before = status("VmRSS:")
layer(x).sum().backward()
print(status("VmHWM:") - before)
"""


@pytest.mark.parametrize("encoding", ["quadratic", "quadratic_generalized", "relative"])
def test_training_memory_grows_linearly_with_pixels(encoding):
    """Peak memory of forward + backward at 32x32 and 64x64 (T = 4096 pixels), in a fresh process."""

    def peak_kib(n):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY, encoding, str(n)], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    small, large = peak_kib(32), peak_kib(64)
    T = 64 * 64
    score_matrices_kib = 9 * T * T * 8 / 1024  # what 9 explicit (T, T) float64 matrices take: 1.1 GiB
    assert large < 0.25 * score_matrices_kib
    assert large < 6 * max(small, 1024)  # 4x the pixels: ~4x the memory, not 16x


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"in_channels": 8, "num_heads": 0}, ValueError, "num_heads=0"),
        ({"in_channels": 8, "num_heads": -2}, ValueError, "num_heads=-2"),
        ({"in_channels": 8, "encoding": "gaussian"}, ValueError, "unknown encoding 'gaussian'"),
        ({"in_channels": 6, "encoding": "absolute_sinusoidal"}, ValueError, "in_channels=6"),
        (
            {"in_channels": 8, "encoding": "quadratic", "relative_content": True},
            ValueError,
            "relative_content",
        ),
        ({"in_channels": 0}, ValueError, "in_channels=0"),
        ({"in_channels": 8, "max_size": (3, 4, 5)}, ValueError, "max_size"),
        ({"in_channels": 8, "position_mixing": "fft"}, ValueError, "position_mixing.*'fft'"),
    ],
)
def test_bad_configuration_is_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        MultiHeadSelfAttention2d(**kwargs)


def test_bad_input_is_named():
    layer = MultiHeadSelfAttention2d(8, num_heads=2)
    with pytest.raises(ValueError, match=r"expected \(B, 8, H, W\) input, got x.shape=\(2, 6, 4, 4\)"):
        layer(torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match="4 dims"):
        layer(torch.randn(2, 8, 16))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 8, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the 4x4 map"):
        layer.attention_probs(torch.randn(1, 8, 4, 4), (4, 0))
    with pytest.raises(ValueError, match="quadratic"):
        layer.inverse_covariance()


def test_attention_dropout_acts_in_training_only():
    layer = MultiHeadSelfAttention2d(8, num_heads=2, encoding="quadratic", attn_dropout=0.5).double()
    x = torch.randn(2, 8, 6, 6, dtype=f64, requires_grad=True)
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)  # dropout on the probabilities, through the fused path
    (a.sum() + b.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    layer.eval()
    torch.testing.assert_close(layer(x), ref.mhsa2d(layer, x), atol=1e-12, rtol=0)


def test_top_level_names():
    import convattn

    assert convattn.MultiHeadSelfAttention2d is MultiHeadSelfAttention2d
    assert callable(convattn.conv_to_attention) and callable(convattn.attention_to_conv)


@pytest.mark.parametrize("backend", POSITION_MIX_BACKENDS)
@pytest.mark.parametrize(
    "shape",
    [
        (2, 8, 8, 9, 64),
        (3, 5, 7, 4, 37),
        (1, 1, 1, 1, 1),
        (2, 3, 2, 2, 5),
        (1, 4, 9, 3, 17),
        (2, 2, 3, 1, 130),
        (2, 13, 11, 3, 24),  # register blocks of 8, 4 and 1 rows
        (1, 17, 6, 2, 70),
    ],
    ids=str,
)
def test_position_mix_matches_the_reference_forward_and_backward(backend, shape):
    B, H, W, h, C = shape
    z = torch.randn(B, H, W, h, C, dtype=f64, requires_grad=True)
    rows = torch.randn(h, H, H, dtype=f64).softmax(-1).requires_grad_()
    cols = torch.randn(h, W, W, dtype=f64).softmax(-1).requires_grad_()
    out, expected = position_mix(z, rows, cols, backend=backend), ref.position_mix(z, rows, cols)
    assert out.shape == (B, H, W, C)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert_same_gradients(out, expected, (z, rows, cols), atol=1e-11)


@needs_kernel("posmix")
def test_position_mix_kernel_is_repeatable_bit_for_bit_and_agrees_in_float32():
    z = torch.randn(6, 8, 8, 9, 20, requires_grad=True)
    rows, cols = (torch.randn(9, 8, 8).softmax(-1).requires_grad_() for _ in range(2))
    g = torch.randn(6, 8, 8, 20)
    runs = []
    for _ in range(2):
        out = position_mix(z, rows, cols, backend="kernel")
        runs.append((out, *torch.autograd.grad(out, (z, rows, cols), g)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    out = position_mix(z, rows, cols, backend="torch")
    for a, b in zip(runs[0], (out, *torch.autograd.grad(out, (z, rows, cols), g)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@needs_kernel("posmix")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_position_mix_kernel_reads_subnormal_tables_as_zero_and_restores_the_float_mode(dtype):
    tiny = torch.finfo(dtype).tiny  # the smallest normal number
    z = torch.ones(2, 3, 4, 2, 5, dtype=dtype, requires_grad=True)
    rows = torch.full((2, 3, 3), tiny / 4, dtype=dtype, requires_grad=True)  # subnormal: read as zero
    cols = torch.ones(2, 4, 4, dtype=dtype, requires_grad=True)
    out = position_mix(z, rows, cols, backend="kernel")
    # Exactly, every output is 2 heads x 3 x 4 x tiny / 4 = 6 tiny, a normal number.
    assert torch.equal(out, torch.zeros_like(out))
    dz, drows, dcols = torch.autograd.grad(out.sum(), (z, rows, cols))
    assert torch.equal(dz, torch.zeros_like(dz)) and torch.equal(dcols, torch.zeros_like(dcols))
    torch.testing.assert_close(drows, torch.full_like(drows, 2 * 4 * 4 * 5), rtol=0, atol=0)  # B W W C ones
    # The calling thread computes subnormals again afterwards.
    assert (torch.tensor(tiny, dtype=dtype) / 4).item() == tiny / 4 > 0


@pytest.mark.parametrize(
    ("rows_shape", "cols_shape", "words"),
    [((2, 3, 3), (2, 5, 5), r"rows must be \(3, 4, 4\)"), ((3, 4, 4), (3, 4, 4), r"cols.shape=\(3, 4, 4\)")],
)
def test_position_mix_names_mismatched_shapes(rows_shape, cols_shape, words):
    with pytest.raises(ValueError, match=words):
        position_mix(torch.randn(2, 4, 5, 3, 6), torch.randn(rows_shape), torch.randn(cols_shape))


def test_position_mix_names_bad_ranks_dtypes_and_backends():
    z, rows, cols = torch.randn(2, 4, 5, 3, 6), torch.randn(3, 4, 4), torch.randn(3, 5, 5)
    with pytest.raises(ValueError, match="z"):
        position_mix(z[0], rows, cols)
    with pytest.raises(TypeError, match="rows must match z's dtype"):
        position_mix(z, rows.double(), cols)
    with pytest.raises(ValueError, match="backend"):
        position_mix(z, rows, cols, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        MultiHeadSelfAttention2d(8, num_heads=2, encoding="quadratic", backend="fast")
