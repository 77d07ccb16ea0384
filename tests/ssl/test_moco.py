"""MoCo: the momentum update, the queue's order, InfoNCE by hand, no gradient to the key encoder, the
views, split batch norm, the k-NN monitor, and bad settings named."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from convattn.data import load
from convattn.data.views import ViewAugment, augment_views, view_batches
from convattn.models.registry import create_model
from convattn.ssl import MoCo, SplitBatchNorm, info_nce, knn_accuracy


def _moco(**kw) -> MoCo:
    torch.manual_seed(0)
    return MoCo(create_model("resnet_tiny", num_classes=4), **{"dim": 8, "queue_size": 16, **kw})


def test_the_key_encoder_follows_by_momentum_exactly_and_gets_no_gradient():
    moco = _moco(momentum=0.9)
    with torch.no_grad():  # make the encoders differ
        for p in moco.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in moco.encoder_k.parameters()]
    q = [p.clone() for p in moco.encoder_q.parameters()]
    out = moco(torch.randn(8, 3, 16, 16))
    for k0, q0, k1 in zip(before_k, q, moco.encoder_k.parameters(), strict=True):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q0, rtol=0, atol=1e-6)
    F.cross_entropy(out["logits"], out["labels"]).backward()
    assert all(p.grad is None for p in moco.encoder_k.parameters())
    assert all(not p.requires_grad for p in moco.encoder_k.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in moco.encoder_q.parameters())


def test_the_queue_takes_the_newest_keys_over_the_oldest_in_order():
    moco = _moco()
    initial = moco.queue.clone()
    keys = [F.normalize(torch.randn(4, 8), dim=1) for _ in range(5)]
    for i, k in enumerate(keys):
        moco.enqueue(k)
        assert int(moco.queue_ptr) == (4 * (i + 1)) % 16
    # 5 batches of 4 in a queue of 16: batch 4 overwrote batch 0's slots, batches 1-3 are in place
    torch.testing.assert_close(moco.queue[:, 0:4], keys[4].T)
    for i in (1, 2, 3):
        torch.testing.assert_close(moco.queue[:, 4 * i : 4 * i + 4], keys[i].T)
    assert not torch.equal(initial, moco.queue)
    with pytest.raises(ValueError, match="queue_size=16 must be a multiple of the batch \\(3\\)"):
        moco.enqueue(torch.randn(3, 8))


def test_info_nce_is_the_hand_computed_loss():
    torch.manual_seed(1)
    q, k = F.normalize(torch.randn(3, 5), dim=1), F.normalize(torch.randn(3, 5), dim=1)
    queue = F.normalize(torch.randn(5, 7), dim=0)
    logits, labels = info_nce(q, k, queue, 0.2)
    loss = F.cross_entropy(logits, labels)
    by_hand = 0.0
    for i in range(3):
        pos = math.exp(float(q[i] @ k[i]) / 0.2)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / 0.2) for j in range(7))
        by_hand -= math.log(pos / (pos + neg)) / 3
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)
    assert logits.shape == (3, 8) and labels.tolist() == [0, 0, 0]


def test_the_forward_enqueues_its_keys_after_scoring_against_the_old_queue():
    moco = _moco()
    old = moco.queue.clone()
    x = torch.randn(8, 3, 16, 16)
    out = moco(x)
    q = F.normalize(moco.encoder_q(x[:4]), dim=1)
    torch.testing.assert_close(out["logits"][:, 1:], q @ old / moco.temperature, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moco.queue[:, :4], out["keys"].T)
    moco.eval()
    ptr = int(moco.queue_ptr)
    moco(x)
    assert int(moco.queue_ptr) == ptr  # evaluation neither updates nor enqueues


def test_split_batch_norm_normalises_each_group_on_its_own():
    torch.manual_seed(0)
    bn = SplitBatchNorm(3, 2)
    x = torch.randn(8, 3, 4, 4)
    x[4:] += 5.0  # the second group has another mean
    y = bn(x)
    for group in (y[:4], y[4:]):
        torch.testing.assert_close(group.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    plain = torch.nn.BatchNorm2d(3)(x)
    assert not torch.allclose(plain[:4].mean((0, 2, 3)), torch.zeros(3), atol=1e-2)
    moco = _moco(split_bn=2)
    assert any(isinstance(m, SplitBatchNorm) for m in moco.encoder_k.modules())
    assert not any(isinstance(m, SplitBatchNorm) for m in moco.encoder_q.modules())
    moco(torch.randn(8, 3, 16, 16))


def test_views_are_seeded_differ_between_the_two_and_stay_in_range():
    x = torch.rand(6, 3, 16, 16)
    a = augment_views(x, ViewAugment(), torch.Generator().manual_seed(3))
    b = augment_views(x, ViewAugment(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    none = ViewAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, jitter_p=0, gray_p=0, blur_p=0)
    torch.testing.assert_close(augment_views(x, none, torch.Generator()), x, atol=1e-5, rtol=0)
    gray = ViewAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, jitter_p=0, gray_p=1, blur_p=0)
    g = augment_views(x, gray, torch.Generator())
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    train = load("shapes", "train", n_train=16)
    first = list(view_batches(train, 4, seed=0, epoch=1))
    again = list(view_batches(train, 4, seed=0, epoch=1, start=2))
    assert len(first) == 4 and torch.equal(first[2][0], again[0][0])
    views, labels = first[0]
    assert views.shape == (8, 3, 32, 32) and labels.shape == (4,)
    assert not torch.equal(views[:4], views[4:])  # the query and key views differ
    with pytest.raises(ValueError, match="scale must be"):
        ViewAugment(scale=(0.0, 1.0))


def test_knn_accuracy_votes_by_weighted_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 1]), k=2) == 1.0
    assert knn_accuracy(bank, labels, queries, torch.tensor([1, 0]), k=2) == 0.0


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"temperature": 0.0}, "temperature τ must be > 0"),
        ({"momentum": 1.0}, r"momentum m must be in \[0, 1\)"),
        ({"momentum": -0.1}, r"momentum m must be in \[0, 1\)"),
        ({"queue_size": 10, "batch_size": 4}, "queue_size=10 must be a multiple of the batch"),
    ],
)
def test_bad_settings_are_named(kw, words):
    with pytest.raises(ValueError, match=words):
        _moco(**kw)


def test_an_encoder_without_a_feature_output_is_refused():
    with pytest.raises(ValueError, match="no final linear `head`"):
        MoCo(torch.nn.Conv2d(3, 4, 3))


def test_the_linear_probe_separates_what_is_separable_and_not_noise():
    from convattn.ssl import linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] * 3 + x[:, 1] > 0).long() + 2 * (x[:, 2] > 0).long()  # 4 classes, linear boundaries
    assert linear_probe(x[:200], y[:200], x[200:], y[200:]) >= 0.9
    noise = torch.randint(0, 4, (300,), generator=g)
    assert linear_probe(x[:200], noise[:200], x[200:], noise[200:]) < 0.45
    scaled = x * torch.tensor([1e3, 1e-3, 1.0, 1.0, 1.0, 1.0])  # standardised first: scale does not matter
    assert linear_probe(scaled[:200], y[:200], scaled[200:], y[200:]) >= 0.9


def test_in_training_the_key_encoder_normalises_with_its_batches_statistics(tmp_path):
    """The key encoder has no gradient, but its batch norms are in training mode: they update their
    running statistics (a linear probe's frozen encoder, in contrast, keeps them: test_moco_training)."""
    from convattn.train import TrainConfig, train
    from convattn.train.checkpoint import load_checkpoint

    cfg = TrainConfig(model="resnet_tiny", data="shapes", n_train=32, epochs=1, batch_size=16, threads=1,
                      out=str(tmp_path / "run"), method="moco",
                      moco_options={"queue_size": 32, "dim": 8})  # fmt: skip
    fresh = _moco(queue_size=32)
    train(cfg, log=lambda s: None)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    key = "encoder_k.stem.1.running_mean"
    assert not torch.equal(state[key], fresh.state_dict()[key])
