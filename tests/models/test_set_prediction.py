"""Hungarian matching and DETR's set loss: the invariants of the reference implementation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from convattn.models.set_prediction import HungarianMatcher, SetCriterion

f64 = torch.float64
K = 3  # object classes; index 3 is "no object"


def _outputs(B, Q, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, Q, K + 1, generator=g, dtype=f64)
    boxes = torch.rand(B, Q, 4, generator=g, dtype=f64) * 0.4 + 0.2  # cx, cy, w, h in [0.2, 0.6]
    return logits, boxes


def _targets(counts, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, K, (n,), generator=g),
            "boxes": torch.rand(n, 4, generator=g, dtype=f64) * 0.4 + 0.2,
        }
        for n in counts
    ]


def test_every_target_gets_one_query_and_the_assignment_is_optimal():
    matcher = HungarianMatcher()
    logits, boxes = _outputs(1, 5)
    (target,) = _targets([3])
    ((rows, cols),) = matcher(logits, boxes, [target])
    assert sorted(cols.tolist()) == [0, 1, 2] and len(set(rows.tolist())) == 3
    cost = matcher.cost_matrix(logits[0], boxes[0], target)
    best = min(sum(cost[q, j] for j, q in enumerate(qs)) for qs in itertools.permutations(range(5), 3))
    assert float(cost[rows, cols].sum()) == pytest.approx(float(best), abs=1e-12)  # brute force over 60


def test_batched_matching_is_per_image_matching():
    matcher = HungarianMatcher()
    logits, boxes = _outputs(3, 6)
    targets = _targets([2, 0, 4])
    batched = matcher(logits, boxes, targets)
    for b in range(3):
        ((rows, cols),) = matcher(logits[b : b + 1], boxes[b : b + 1], [targets[b]])
        assert torch.equal(rows, batched[b][0]) and torch.equal(cols, batched[b][1])
    assert batched[1][0].numel() == 0 and batched[1][0].dtype == torch.int64  # an empty image


def test_permuting_the_targets_permutes_the_assignment():
    matcher = HungarianMatcher()
    logits, boxes = _outputs(1, 7, seed=4)
    (target,) = _targets([5], seed=5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = {"labels": target["labels"][perm], "boxes": target["boxes"][perm]}
    ((r1, c1),) = matcher(logits, boxes, [target])
    ((r2, c2),) = matcher(logits, boxes, [permuted])
    query_of = dict(zip(c1.tolist(), r1.tolist(), strict=True))  # target -> its query
    assert {int(perm[j]): q for j, q in zip(c2.tolist(), r2.tolist(), strict=True)} == query_of


def test_a_perfect_prediction_costs_nothing_but_its_classification():
    (target,) = _targets([2])
    Q = 4
    boxes = torch.full((1, Q, 4), 0.5, dtype=f64)
    boxes[0, [2, 0]] = target["boxes"]
    logits = torch.full((1, Q, K + 1), -20.0, dtype=f64)
    logits[0, :, K] = 20.0  # every query says "no object"...
    logits[0, 2, K], logits[0, 0, K] = -20.0, -20.0
    logits[0, 2, target["labels"][0]] = logits[0, 0, target["labels"][1]] = 20.0  # ...but these two
    crit = SetCriterion(K)
    terms = crit({"logits": logits, "boxes": boxes}, [target])
    assert terms["bbox"].item() == pytest.approx(0, abs=1e-12) and terms["giou"].item() == pytest.approx(
        0, abs=1e-12
    )
    assert terms["ce"].item() < 1e-15
    ((rows, cols),) = crit.matcher(logits, boxes, [target])
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 2, 1: 0}


def test_loss_terms_against_a_hand_computation():
    logits, boxes = _outputs(2, 4, seed=7)
    targets = _targets([2, 1], seed=8)
    crit = SetCriterion(K, eos_coef=0.1)
    terms = crit({"logits": logits, "boxes": boxes}, targets)
    match = crit.matcher(logits, boxes, targets)
    # cross-entropy, weighted mean over all queries, no-object weighted 0.1
    nll, weight = 0.0, 0.0
    for b in range(2):
        cls = {int(q): int(targets[b]["labels"][j]) for q, j in zip(*match[b], strict=True)}
        for q in range(4):
            c = cls.get(q, K)
            w = 0.1 if c == K else 1.0
            nll += -w * F.log_softmax(logits[b, q], -1)[c].item()
            weight += w
    assert terms["ce"].item() == pytest.approx(nll / weight, rel=1e-12)
    l1 = sum(
        float((boxes[b, q] - targets[b]["boxes"][j]).abs().sum())
        for b in range(2)
        for q, j in zip(*match[b], strict=True)
    )
    assert terms["bbox"].item() == pytest.approx(l1 / 3, rel=1e-12)  # normalised by the 3 boxes
    assert terms["loss"].item() == pytest.approx(
        terms["ce"].item() + 5 * terms["bbox"].item() + 2 * terms["giou"].item()
    )


def test_auxiliary_layers_add_their_own_terms():
    logits, boxes = _outputs(2, 4)
    aux_logits, aux_boxes = _outputs(2, 4, seed=9)
    targets = _targets([1, 3])
    crit = SetCriterion(K)
    main = crit({"logits": logits, "boxes": boxes}, targets)
    aux = crit({"logits": aux_logits, "boxes": aux_boxes}, targets)
    both = crit(
        {"logits": logits, "boxes": boxes, "aux": [{"logits": aux_logits, "boxes": aux_boxes}]}, targets
    )
    assert set(both) == {"ce", "bbox", "giou", "ce_0", "bbox_0", "giou_0", "loss"}
    assert both["giou_0"].item() == pytest.approx(aux["giou"].item())
    assert both["loss"].item() == pytest.approx(main["loss"].item() + aux["loss"].item())


def test_images_without_objects_learn_no_object_and_gradients_flow():
    logits, boxes = _outputs(2, 3)
    logits.requires_grad_(), boxes.requires_grad_()
    terms = SetCriterion(K)({"logits": logits, "boxes": boxes}, _targets([0, 0]))
    want = F.cross_entropy(logits.detach().reshape(-1, K + 1), torch.full((6,), K))  # all "no object"
    assert terms["ce"].item() == pytest.approx(want.item()) and terms["bbox"].item() == 0
    terms["loss"].backward()
    assert torch.isfinite(logits.grad).all() and not math.isnan(terms["loss"].item())


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (
            {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])},
            r"labels must be integers in \[0, 3\)",
        ),
        ({"labels": torch.tensor([-1]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}, r"\[-1\]"),
        ({"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.1]])}, "w > 0 and h > 0"),
        (
            {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])},
            r"got \(2,\) and \(1, 4\)",
        ),
        (
            {"labels": torch.zeros(5, dtype=torch.int64), "boxes": torch.full((5, 4), 0.3)},
            "5 objects, more than the detector's 4",
        ),
    ],
)
def test_bad_targets_are_named(target, words):
    logits, boxes = _outputs(1, 4)
    with pytest.raises(ValueError, match=words):
        SetCriterion(K)({"logits": logits, "boxes": boxes.float()}, [target])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="eos_coef"):
        SetCriterion(K, eos_coef=1.5)
    with pytest.raises(ValueError, match="cost_bbox=-1"):
        HungarianMatcher(cost_bbox=-1)
    with pytest.raises(ValueError, match="unknown loss weights"):
        SetCriterion(K, weights={"mask": 1.0})
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2"):
        SetCriterion(K)(dict(zip(("logits", "boxes"), _outputs(2, 4), strict=True)), _targets([1]))
