"""Sequence metrics: BLEU (Papineni et al. 2002) in the form D2L 10.7 uses, and exact match."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

__all__ = ["bleu", "exact_match"]


def bleu(prediction: Sequence[Hashable], label: Sequence[Hashable], k: int = 2) -> float:
    """BLEU = exp(min(0, 1 - len_label/len_pred)) · Π_{n=1..k} p_n^(1/2^n) (D2L eq. 10.7.1).

    p_n is the clipped n-gram precision of `prediction` against `label`. Longer n-grams weigh more
    (1/2^n), and the brevity penalty punishes predictions shorter than the label. An empty
    prediction scores 0; an n that does not fit in the prediction counts as precision 0 unless the
    label is also too short for it, in which case that order is skipped.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got k={k!r}")
    len_pred, len_label = len(prediction), len(label)
    if len_pred == 0:
        return 1.0 if len_label == 0 else 0.0
    score = math.exp(min(0.0, 1.0 - len_label / len_pred))
    for n in range(1, k + 1):
        if len_pred < n:
            if len_label >= n:
                return 0.0
            continue
        label_grams = Counter(tuple(label[i : i + n]) for i in range(len_label - n + 1))
        pred_grams = Counter(tuple(prediction[i : i + n]) for i in range(len_pred - n + 1))
        matches = sum(min(c, label_grams[g]) for g, c in pred_grams.items())
        score *= (matches / (len_pred - n + 1)) ** (0.5**n)
    return score


def exact_match(predictions: Sequence[Sequence[Hashable]], labels: Sequence[Sequence[Hashable]]) -> float:
    """Fraction of predictions equal to their label, token for token."""
    if len(predictions) != len(labels):
        raise ValueError(f"got {len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("exact_match needs at least one label")
    return sum(list(p) == list(q) for p, q in zip(predictions, labels, strict=True)) / len(labels)
