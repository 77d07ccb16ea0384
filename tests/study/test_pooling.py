"""The attention-pooling section: a learned width sharpens Nadaraya–Watson attention and fits better."""

from __future__ import annotations

import json

import matplotlib.image as mpimg

from convattn.study.sections import pooling


def test_demo_learns_a_sharper_kernel_and_writes_figures(quick_study):
    folder = quick_study / "attention_pooling"  # the quick study runs the demo at its full size
    metrics = json.loads((folder / "part.json").read_text())["metrics"]
    assert metrics["learned_width"] > 2.0
    assert metrics["train_losses"][-1] < 0.7 * metrics["train_losses"][0]
    assert metrics["test_mse_parametric"] < metrics["test_mse_nonparametric"]
    for name in metrics["figures"]:
        img = mpimg.imread(folder / name)
        assert img.shape[0] > 100 and img.shape[1] > 100


def test_the_paragraph_is_written_from_the_numbers(quick_study):
    part = json.loads((quick_study / "attention_pooling" / "part.json").read_text())
    m = part["metrics"]
    assert part["text"] == pooling.describe(m).text
    assert part["text"].startswith("Supported") and f"w = {m['learned_width']:.2f}" in part["text"]
