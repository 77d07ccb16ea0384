"""The Transformer: blocks against torch's post-LN layers, masking, cached decoding, and learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convattn.attention import (
    MultiHeadAttention,
    Transformer,
    TransformerConfig,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)

f64 = torch.float64
D, H, FFN = 12, 3, 20


def _copy_common(ours: nn.Module, theirs: nn.Module, attn_pairs, norms) -> None:
    """Load a torch post-LN layer's weights into our block (attention, FFN, layer norms)."""
    state = {}
    for mine, torch_attn in attn_pairs:
        for k, v in MultiHeadAttention.from_torch(torch_attn).state_dict().items():
            state[f"{mine}.{k}"] = v
    for i, lin in ((1, theirs.linear1), (2, theirs.linear2)):
        state[f"ffn.dense{i}.weight"], state[f"ffn.dense{i}.bias"] = lin.weight, lin.bias
    for mine, norm in norms:
        state[f"{mine}.ln.weight"], state[f"{mine}.ln.bias"] = norm.weight, norm.bias
    ours.load_state_dict(state)  # strict: every key present, no key unused


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def test_encoder_block_equals_torch_post_ln_layer():
    theirs = nn.TransformerEncoderLayer(D, H, FFN, dropout=0.0, batch_first=True).double().eval()
    _randomise(theirs)
    ours = TransformerEncoderBlock(D, FFN, H, bias=True).double().eval()
    _copy_common(
        ours,
        theirs,
        [("attention", theirs.self_attn)],
        [("addnorm1", theirs.norm1), ("addnorm2", theirs.norm2)],
    )
    x = torch.randn(3, 7, D, dtype=f64)
    lens = torch.tensor([7, 3, 5])
    pad = torch.arange(7)[None] >= lens[:, None]
    torch.testing.assert_close(ours(x, lens), theirs(x, src_key_padding_mask=pad), atol=1e-10, rtol=0)


def test_decoder_block_equals_torch_post_ln_layer():
    theirs = nn.TransformerDecoderLayer(D, H, FFN, dropout=0.0, batch_first=True).double().eval()
    _randomise(theirs)
    ours = TransformerDecoderBlock(D, FFN, H, bias=True).double().eval()
    _copy_common(
        ours,
        theirs,
        [("attention1", theirs.self_attn), ("attention2", theirs.multihead_attn)],
        [("addnorm1", theirs.norm1), ("addnorm2", theirs.norm2), ("addnorm3", theirs.norm3)],
    )
    x, enc = torch.randn(3, 6, D, dtype=f64), torch.randn(3, 8, D, dtype=f64)
    lens = torch.tensor([8, 2, 5])
    expected = theirs(
        x,
        enc,
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(6, dtype=f64),
        tgt_is_causal=True,
        memory_key_padding_mask=torch.arange(8)[None] >= lens[:, None],
    )
    torch.testing.assert_close(ours(x, enc, lens), expected, atol=1e-10, rtol=0)


def test_blocks_gradcheck():
    enc_blk = TransformerEncoderBlock(4, 6, 2).double()
    dec_blk = TransformerDecoderBlock(4, 6, 2).double()
    x = torch.randn(2, 3, 4, dtype=f64, requires_grad=True)
    mem = torch.randn(2, 4, 4, dtype=f64, requires_grad=True)
    lens = torch.tensor([2, 4])
    assert torch.autograd.gradcheck(lambda a: enc_blk(a, lens[:2].clamp(max=3)), (x,))
    assert torch.autograd.gradcheck(lambda a, m: dec_blk(a, m, lens), (x, mem))


def _model(seed=0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        src_vocab=11, tgt_vocab=13, num_hiddens=16, ffn_num_hiddens=24, num_heads=4, **overrides
    )
    return Transformer(cfg).double().eval()


def test_decoder_is_causal_and_encoder_ignores_padding():
    model = _model()
    src = torch.randint(3, 11, (2, 6))
    lens = torch.tensor([6, 3])
    tgt = torch.randint(0, 13, (2, 5))
    logits = model(src, lens, tgt)
    changed_future = tgt.clone()
    changed_future[:, 3:] = (tgt[:, 3:] + 1) % 13
    torch.testing.assert_close(model(src, lens, changed_future)[:, :3], logits[:, :3], atol=1e-12, rtol=0)
    changed_pad = src.clone()
    changed_pad[1, 3:] = 0
    torch.testing.assert_close(model(changed_pad, lens, tgt), logits, atol=1e-12, rtol=0)


def test_cached_step_logits_equal_teacher_forced_logits():
    model = _model(seed=1)
    src, lens = torch.randint(3, 11, (3, 7)), torch.tensor([7, 2, 5])
    tgt = torch.randint(0, 13, (3, 6))
    enc_out = model.encoder(src, lens)
    caches = model.decoder.init_cache(enc_out)
    steps = torch.stack([model.decoder.step(tgt[:, t], t, caches, lens) for t in range(6)], dim=1)
    torch.testing.assert_close(steps, model(src, lens, tgt), atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_cached_greedy_decoding_gives_the_same_tokens(seed):
    model = _model(seed=seed).float()
    src, lens = torch.randint(3, 11, (16, 9)), torch.randint(1, 10, (16,))
    fast = model.greedy_decode(src, lens, bos=1, eos=2, max_len=12, use_cache=True)
    slow = model.greedy_decode(src, lens, bos=1, eos=2, max_len=12, use_cache=False)
    assert torch.equal(fast, slow)


def test_greedy_decoding_restores_training_mode_and_rows_end_in_eos():
    model = _model().train()
    out = model.greedy_decode(torch.randint(3, 11, (4, 5)), None, bos=1, eos=2, max_len=6)
    assert model.training
    for row in out.tolist():
        if 2 in row:
            assert all(t == 2 for t in row[row.index(2) :])


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"num_hiddens": 18, "num_heads": 4}, ValueError, "dim=18, num_heads=4"),
        ({"num_hiddens": 15, "num_heads": 5}, ValueError, "even"),
        ({"dropout": 1.0}, ValueError, "dropout=1.0"),
        ({"num_layers": 0}, ValueError, "num_layers=0"),
    ],
)
def test_bad_config_is_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        TransformerConfig(src_vocab=5, tgt_vocab=5, **kwargs)


def test_bad_tokens_are_named():
    model = _model()
    with pytest.raises(TypeError, match=r"torch.long"):
        model(torch.rand(2, 3), None, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 13\).*max=20"):
        model(torch.zeros(2, 3, dtype=torch.long), None, torch.full((2, 3), 20))
    with pytest.raises(ValueError, match="eos must be a target id"):
        model.greedy_decode(torch.zeros(2, 3, dtype=torch.long), None, bos=1, eos=99, max_len=3)
