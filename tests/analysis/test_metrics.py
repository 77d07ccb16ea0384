"""BLEU and exact match on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from convattn.analysis.metrics import bleu, exact_match


def test_bleu_hand_computed():
    assert bleu("a b c d".split(), "a b c d".split(), k=4) == 1.0
    # 3 of 3 unigrams and 2 of 2 bigrams match; brevity penalty exp(1 - 4/3).
    assert bleu("a b c".split(), "a b c d".split(), k=2) == pytest.approx(math.exp(1 - 4 / 3))
    # unigrams 2/3, bigrams 1/2 ("a b"), no penalty (prediction as long as the label).
    assert bleu("a b d".split(), "a b c".split(), k=2) == pytest.approx((2 / 3) ** 0.5 * (1 / 2) ** 0.25)
    # clipping: "a a a" against "a b c" matches one "a" only.
    assert bleu(["a", "a", "a"], ["a", "b", "c"], k=1) == pytest.approx((1 / 3) ** 0.5)
    assert bleu(["x"], ["y"], k=1) == 0.0


def test_bleu_short_and_empty_sequences():
    assert bleu([], ["a"]) == 0.0
    assert bleu([], []) == 1.0
    assert bleu(["a"], ["a"], k=4) == 1.0  # orders longer than both sequences are skipped
    assert bleu(["a"], ["a", "b"], k=2) == 0.0  # the label has a bigram the prediction cannot match
    with pytest.raises(ValueError, match="k=0"):
        bleu(["a"], ["a"], k=0)


def test_exact_match():
    assert exact_match([[1, 2], [3]], [[1, 2], [4]]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        exact_match([[1], [2]], [[1]])
