"""masked_softmax against the row-by-row reference, its edge cases, half precision and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from convattn.attention import masked_softmax
from convattn.layers import reference as ref

f64 = torch.float64


@pytest.mark.parametrize(
    ("shape", "lens"),
    [
        ((2, 3, 5), [2, 5]),  # 1-D: one length per sequence
        ((2, 3, 5), [[0, 1, 5], [3, 3, 2]]),  # 2-D: one length per query, zeros included
        ((2, 4, 3, 5), [1, 4]),  # extra head axis between batch and queries
        ((1, 1, 1), [1]),
    ],
)
def test_matches_reference_forward_and_backward(shape, lens):
    scores = torch.randn(*shape, dtype=f64, requires_grad=True)
    valid = torch.tensor(lens)
    out = masked_softmax(scores, valid)
    expected = ref.masked_softmax(scores, valid)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, scores, g)
    (want,) = torch.autograd.grad(expected, scores, g)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_boolean_mask_combines_with_lengths():
    scores = torch.randn(2, 3, 4, dtype=f64)
    mask = torch.rand(2, 3, 4) > 0.4
    valid = torch.tensor([[4, 2, 1], [3, 0, 4]])
    torch.testing.assert_close(
        masked_softmax(scores, valid, mask=mask),
        ref.masked_softmax(scores, valid, mask),
        rtol=0,
        atol=1e-12,
    )


def test_no_valid_key_gives_zero_row_and_finite_gradient():
    scores = torch.randn(3, 2, 4, requires_grad=True)
    out = masked_softmax(scores, torch.tensor([0, 4, 2]))
    assert torch.equal(out[0], torch.zeros(2, 4))
    torch.testing.assert_close(out[1].sum(-1), torch.ones(2))
    assert out[2, :, 2:].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_full_lengths_equal_plain_softmax():
    scores = torch.randn(2, 3, 6, dtype=f64)
    torch.testing.assert_close(masked_softmax(scores, torch.tensor([6, 6])), F.softmax(scores, -1))
    torch.testing.assert_close(masked_softmax(scores), F.softmax(scores, -1))


@pytest.mark.parametrize(("dtype", "big"), [(torch.float16, 6.0e4), (torch.bfloat16, 3.0e38)])
def test_half_precision_does_not_overflow(dtype, big):
    scores = torch.tensor([[[big, -big, 0.0, big / 2], [-big, -big, -big, -big]]], dtype=dtype)
    out = masked_softmax(scores, torch.tensor([[3, 0]]))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert out[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]  # winner kept, masked 4th key ignored
    assert out[0, 1].abs().sum() == 0  # nothing valid: zeros, not NaN
    mild = torch.randn(2, 3, 5) * 4
    lens = torch.tensor([2, 5])
    torch.testing.assert_close(
        masked_softmax(mild.to(dtype), lens).float(),
        masked_softmax(mild.to(dtype).float(), lens),
        atol=1e-2,
        rtol=0,
    )


def test_gradcheck():
    scores = torch.randn(2, 3, 4, dtype=f64, requires_grad=True)
    valid = torch.tensor([[1, 4, 0], [2, 3, 4]])
    assert torch.autograd.gradcheck(lambda s: masked_softmax(s, valid), (scores,))


@pytest.mark.parametrize(
    ("lens", "error", "words"),
    [
        (torch.tensor([1.0, 2.0]), TypeError, "valid_lens.dtype=torch.float32"),
        (torch.tensor([1, 9]), ValueError, "max=9"),
        (torch.tensor([-1, 2]), ValueError, "min=-1"),
        (torch.tensor([1, 2, 3]), ValueError, "valid_lens.shape=(3,)"),
        (torch.tensor([[1, 2]]), ValueError, "valid_lens.shape=(1, 2)"),
        ([1, 2], TypeError, "list"),
    ],
)
def test_bad_valid_lens_are_named(lens, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        masked_softmax(torch.randn(2, 3, 5), lens)


def test_bad_scores_are_named():
    with pytest.raises(TypeError, match="floating-point"):
        masked_softmax(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, \.\.\., Q, K\)"):
        masked_softmax(torch.randn(3, 4), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="boolean"):
        masked_softmax(torch.randn(3, 4), mask=torch.ones(3, 4))


@st.composite
def _scores_and_lens(draw):
    B, Q, K = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    per_query = draw(st.booleans())
    shape = (B, Q) if per_query else (B,)
    lens = draw(
        st.lists(st.integers(0, K), min_size=B * Q if per_query else B, max_size=B * Q if per_query else B)
    )
    seed = draw(st.integers(0, 2**16))
    scores = torch.randn(B, Q, K, dtype=f64, generator=torch.Generator().manual_seed(seed)) * 10
    return scores, torch.tensor(lens).reshape(shape)


@settings(max_examples=60, deadline=None)
@given(_scores_and_lens())
def test_any_shape_and_lengths_match_reference(case):
    scores, lens = case
    out = masked_softmax(scores, lens)
    torch.testing.assert_close(out, ref.masked_softmax(scores, lens), rtol=0, atol=1e-12)
    rows = out.sum(-1)  # 1 where a key is kept, 0 where none is
    assert torch.all(((rows - 1).abs() < 1e-12) | (rows == 0))
