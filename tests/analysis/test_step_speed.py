"""The training-step before/after benchmark: both arms compute the same network, and the table is sane."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convattn.analysis.step_speed import STEP_MODELS, StepModel, _make, step_speedups
from convattn.layers.dropout import Dropout
from convattn.layers.kernels import load_kernel
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d
from convattn.models.attention_net import AttentionLayer


@pytest.mark.parametrize("spec", STEP_MODELS, ids=lambda s: s.name)
def test_before_and_after_are_the_same_network_on_different_paths(spec):
    (before, opt_b), (after, opt_a) = (_make(spec, fast=f, seed=3) for f in (False, True))
    for a, b in zip(before.parameters(), after.parameters(), strict=True):
        assert torch.equal(a, b)
    side = spec.size // after.downsample  # the attention layers' map
    layers = [m for m in after.modules() if isinstance(m, MultiHeadSelfAttention2d)]
    kernel = load_kernel("posmix") is not None
    mixings = {m.kronecker_pays(side, side, kernel=kernel) for m in layers}
    assert mixings == {
        kernel or spec.target is not None
    }  # without the kernel only the digits net projects first
    assert not opt_b.defaults["fused"] and opt_a.defaults["fused"]
    drops = [
        (a.drop, b.drop)
        for a, b in zip(after.modules(), before.modules(), strict=True)
        if isinstance(a, AttentionLayer)
    ]
    assert drops and all(isinstance(a, Dropout) and type(b) is nn.Dropout and a.p == b.p for a, b in drops)
    x = torch.randn(4, spec.channels, spec.size, spec.size)
    before.eval(), after.eval()
    with torch.no_grad():
        torch.testing.assert_close(after(x), before(x), atol=1e-5, rtol=1e-5)


def test_the_table_reports_rates_speedups_and_a_verdict():
    logged = []
    rows = step_speedups(batch=2, repeats=3, warmup=0, models=(StepModel("attention_digits", 1, 8, 1.5),),
                         log=logged.append)  # fmt: skip
    (r,) = rows
    assert r["before_images_per_s"] > 0 and r["after_images_per_s"] > 0 and r["speedup"] > 0
    assert r["speedup_noise"] >= 0 and r["met"] in ("yes", "no", "noisy") and r["threads"] >= 1
    assert len(logged) == 1 and "attention_digits" in logged[0]


BAD = [({"batch": 0}, "batch=0"), ({"repeats": 1.5}, "repeats=1.5"), ({"warmup": -1}, "warmup=-1")]


@pytest.mark.parametrize(("kwargs", "words"), [*BAD, ({"batch": True}, "batch=True")])
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        step_speedups(**kwargs)
