"""Scaled dot-product, additive and multi-head attention against independent references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_gradients
from convattn.attention import (
    AdditiveAttention,
    DotProductAttention,
    MultiHeadAttention,
    SelfAttention,
    additive_attention,
    dot_product_attention,
    merge_heads,
    multi_head_attention,
    split_heads,
)
from convattn.layers import reference as ref

f64 = torch.float64


def _qkv(B=2, Q=4, K=5, d=6, dv=3, dtype=torch.float32, lead=()):
    q = torch.randn(B, *lead, Q, d, dtype=dtype)
    k = torch.randn(B, *lead, K, d, dtype=dtype)
    v = torch.randn(B, *lead, K, dv, dtype=dtype)
    return q, k, v


def _length_mask(lens, Q, K):
    """Bool keep-mask (B, 1, K) or (B, Q, K) from valid lengths, built independently."""
    if lens.dim() == 1:
        return torch.stack([torch.arange(K) < n for n in lens])[:, None, :]
    return torch.stack([torch.stack([torch.arange(K) < n for n in row]) for row in lens])


# --- scaled dot-product attention ------------------------------------------------------------


@pytest.mark.parametrize("lead", [(), (3,)])
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "lens1d", "lens2d"])
def test_dot_product_matches_torch_sdpa(kind, lead):
    q, k, v = _qkv(lead=lead, K=4 if kind == "causal" else 5, Q=4)
    Q, K = q.shape[-2], k.shape[-2]
    kwargs, torch_kwargs, lens = {}, {}, None
    if kind == "bool":
        mask = torch.rand(2, *lead, Q, K) > 0.3
        mask[..., 0] = True  # every query keeps a key (torch gives NaN otherwise)
        kwargs = torch_kwargs = {"attn_mask": mask}
    elif kind == "float":
        bias = torch.randn(Q, K)
        kwargs = torch_kwargs = {"attn_mask": bias}
    elif kind == "causal":
        kwargs = torch_kwargs = {"is_causal": True}
    elif kind.startswith("lens"):
        lens = torch.tensor([2, 5]) if kind == "lens1d" else torch.tensor([[1, 2, 5, 3], [5, 4, 1, 2]])
        m = _length_mask(lens, Q, K)
        torch_kwargs = {"attn_mask": m.reshape(2, *(1,) * len(lead), *m.shape[1:])}
        if lead:
            return  # valid_lens address (B,) / (B, Q): covered without the extra axis
    out, _ = dot_product_attention(q, k, v, lens, **kwargs)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, **torch_kwargs), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("kind", ["lens2d", "float_neg_inf", "causal"])
def test_dot_product_matches_loop_reference_forward_and_backward(kind):
    q, k, v = (t.requires_grad_() for t in _qkv(dtype=f64, Q=5, K=5))
    lens, mask, causal = None, None, False
    if kind == "lens2d":
        lens = torch.tensor([[1, 2, 5, 3, 0], [5, 4, 1, 2, 3]])
    elif kind == "float_neg_inf":
        mask = torch.randn(2, 5, 5, dtype=f64)
        mask[0, 1] = float("-inf")  # a fully blocked query: zero output, not NaN
        mask[1, :, 3] = float("-inf")
    else:
        causal = True
    out, w = dot_product_attention(q, k, v, lens, attn_mask=mask, is_causal=causal)
    eo, ew = ref.dot_product_attention(q, k, v, lens, mask, causal)
    torch.testing.assert_close(out, eo, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, ew, atol=1e-12, rtol=0)
    assert_same_gradients(out, eo, (q, k, v), atol=1e-12)


def test_dot_product_gradcheck():
    q, k, v = (t.requires_grad_() for t in _qkv(B=1, Q=3, K=4, d=2, dv=2, dtype=f64))
    lens = torch.tensor([[1, 3, 4]])
    assert torch.autograd.gradcheck(lambda *a: dot_product_attention(*a, lens)[0], (q, k, v))


def test_dropout_drops_weights_not_scores():
    q, k, v = _qkv(B=4, Q=16, K=16)
    torch.manual_seed(7)
    out, w = dot_product_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(7)
    torch.testing.assert_close(out, F.dropout(w, 0.5) @ v)
    module = DotProductAttention(dropout=0.5)
    module.eval()  # no dropout in eval mode: deterministic and equal to the plain function
    torch.testing.assert_close(module(q, k, v), dot_product_attention(q, k, v)[0])
    torch.testing.assert_close(module.attention_weights, w)


def test_bfloat16_attention_is_finite():
    q, k, v = (t * 100 for t in _qkv(dtype=torch.bfloat16))
    out, _ = dot_product_attention(q, k, v, torch.tensor([0, 3]))
    assert torch.isfinite(out).all() and out[0].abs().sum() == 0


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        (
            (torch.randn(2, 3, 4), torch.randn(2, 5, 3), torch.randn(2, 5, 2)),
            ValueError,
            "same width",
        ),
        (
            (torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 4, 2)),
            ValueError,
            "keys and values",
        ),
        (
            (torch.randn(2, 3, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 2)),
            ValueError,
            "batch dims",
        ),
        (
            (torch.randn(3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2)),
            ValueError,
            "same number of dims",
        ),
        ((torch.randn(4), torch.randn(4), torch.randn(4)), ValueError, "queries.shape=\\(4,\\)"),
        (
            ("q", torch.randn(2, 5, 4), torch.randn(2, 5, 2)),
            TypeError,
            "queries must be a torch.Tensor",
        ),
    ],
)
def test_dot_product_bad_shapes_are_named(args, error, words):
    with pytest.raises(error, match=words):
        dot_product_attention(*args)


def test_dot_product_bad_mask_and_dropout():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="does not broadcast"):
        dot_product_attention(q, k, v, attn_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask\.dtype=torch\.int64"):
        dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"dropout_p=1\.5"):
        dot_product_attention(q, k, v, dropout_p=1.5)


# --- additive attention ----------------------------------------------------------------------


def test_additive_matches_reference_and_gradcheck():
    q = torch.randn(2, 3, 4, dtype=f64, requires_grad=True)
    k = torch.randn(2, 5, 6, dtype=f64, requires_grad=True)
    v = torch.randn(2, 5, 2, dtype=f64, requires_grad=True)
    w_q = torch.randn(7, 4, dtype=f64, requires_grad=True)
    w_k = torch.randn(7, 6, dtype=f64, requires_grad=True)
    w_v = torch.randn(1, 7, dtype=f64, requires_grad=True)
    lens = torch.tensor([2, 5])
    out, w = additive_attention(q, k, v, w_q, w_k, w_v, lens)
    eo, ew = ref.additive_attention(q, k, v, w_q, w_k, w_v, lens)
    torch.testing.assert_close(out, eo, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, ew, atol=1e-12, rtol=0)
    inputs = (q, k, v, w_q, w_k, w_v)
    assert torch.autograd.gradcheck(lambda *a: additive_attention(*a, lens)[0], inputs)


def test_additive_module_uses_its_weights():
    layer = AdditiveAttention(key_size=6, query_size=4, num_hiddens=8).eval()
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 6), torch.randn(2, 5, 2)
    out = layer(q, k, v, torch.tensor([1, 5]))
    expected, _ = ref.additive_attention(
        q, k, v, layer.W_q.weight, layer.W_k.weight, layer.w_v.weight, torch.tensor([1, 5])
    )
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert layer.attention_weights.shape == (2, 3, 5)
    assert layer.attention_weights[0, :, 1:].abs().max() == 0


def test_additive_bad_weights_are_named():
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 6), torch.randn(2, 5, 2)
    with pytest.raises(ValueError, match=r"w_k must be \(h, 6\)"):
        additive_attention(q, k, v, torch.randn(7, 4), torch.randn(7, 5), torch.randn(1, 7))
    with pytest.raises(ValueError, match="disagree on h"):
        additive_attention(q, k, v, torch.randn(7, 4), torch.randn(7, 6), torch.randn(1, 8))


# --- multi-head attention ---------------------------------------------------------------------


def test_split_and_merge_heads_are_inverse_and_group_channels():
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 3)  # (6, 5, 4)
    assert heads.shape == (6, 5, 4)
    torch.testing.assert_close(heads[1 * 3 + 2], x[1, :, 8:12])  # batch 1, head 2 = channels 8..11
    torch.testing.assert_close(merge_heads(heads, 3), x)


@pytest.mark.parametrize("same_dims", [True, False])
@pytest.mark.parametrize("masking", ["none", "padding", "causal"])
def test_multi_head_matches_torch_multihead_attention(same_dims, masking):
    E, h = 16, 4
    kdim, vdim = (E, E) if same_dims else (5, 7)
    torch_mha = nn.MultiheadAttention(E, h, batch_first=True, kdim=kdim, vdim=vdim).eval()
    with torch.no_grad():  # non-zero biases, so a mix-up of bias slots cannot pass
        torch_mha.in_proj_bias.normal_()
        torch_mha.out_proj.bias.normal_()
    ours = MultiHeadAttention.from_torch(torch_mha).eval()
    Q = K = 6
    q, k, v = torch.randn(3, Q, E), torch.randn(3, K, kdim), torch.randn(3, K, vdim)
    lens, kwargs, torch_kwargs = None, {}, {}
    if masking == "padding":
        lens = torch.tensor([6, 2, 4])
        torch_kwargs = {"key_padding_mask": torch.arange(K)[None] >= lens[:, None]}  # True = ignore
    elif masking == "causal":
        kwargs = {"is_causal": True}
        torch_kwargs = {
            "attn_mask": nn.Transformer.generate_square_subsequent_mask(Q),
            "is_causal": True,
        }
    expected, expected_w = torch_mha(q, k, v, need_weights=True, average_attn_weights=False, **torch_kwargs)
    got = ours(q, k, v, lens, **kwargs)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.attention_weights, expected_w, atol=1e-6, rtol=0)


def test_multi_head_matches_per_head_loop_and_gradcheck():
    q, k, v = (torch.randn(2, 4, 6, dtype=f64, requires_grad=True) for _ in range(3))
    w = [torch.randn(6, 6, dtype=f64, requires_grad=True) for _ in range(4)]
    b = [torch.randn(6, dtype=f64, requires_grad=True) for _ in range(4)]
    lens = torch.tensor([[1, 2, 3, 4], [4, 4, 0, 2]])

    def ours(*t):
        return multi_head_attention(
            t[0],
            t[1],
            t[2],
            3,
            w_q=t[3],
            w_k=t[4],
            w_v=t[5],
            w_o=t[6],
            b_q=t[7],
            b_k=t[8],
            b_v=t[9],
            b_o=t[10],
            valid_lens=lens,
        )[0]

    inputs = (q, k, v, *w, *b)
    expected = ref.multi_head_attention(q, k, v, 3, *w, biases=tuple(b), valid_lens=lens)
    torch.testing.assert_close(ours(*inputs), expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(ours, inputs)


def test_per_head_masks_broadcast_over_heads():
    layer = MultiHeadAttention(8, 2).double()
    x = torch.randn(2, 5, 8, dtype=f64)
    mask = torch.rand(2, 2, 5, 5) > 0.5
    mask[..., 0] = True
    layer(x, x, x, attn_mask=mask)
    w = layer.attention_weights
    assert w.shape == (2, 2, 5, 5) and w[~mask].abs().max() == 0


def test_self_attention_is_permutation_equivariant():
    layer = SelfAttention(12, 3, bias=True).double()
    x = torch.randn(2, 7, 12, dtype=f64)
    perm = torch.randperm(7)
    torch.testing.assert_close(layer(x)[:, perm], layer(x[:, perm]), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"num_hiddens": 10, "num_heads": 3}, "dim=10, num_heads=3"),
        ({"num_hiddens": 8, "num_heads": 0}, "num_heads=0"),
        ({"num_hiddens": 8, "num_heads": 2, "dropout": -0.1}, "dropout=-0.1"),
        ({"num_hiddens": 8, "num_heads": 2, "key_dim": 0}, "key_dim=0"),
    ],
)
def test_multi_head_bad_config_is_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MultiHeadAttention(**kwargs)


def test_multi_head_bad_inputs_are_named():
    layer = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(B, T, d\)"):
        layer(torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8))
    with pytest.raises(
        ValueError, match=r"keys must end in width 8 for this layer, got keys.shape=\(2, 5, 6\)"
    ):
        layer(torch.randn(2, 3, 8), torch.randn(2, 5, 6), torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"valid_lens must lie in \[0, 5\]"):
        layer(torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.tensor([6, 1]))
    with pytest.raises(TypeError, match=r"nn\.MultiheadAttention"):
        MultiHeadAttention.from_torch(nn.Linear(3, 3))  # type: ignore[arg-type]
