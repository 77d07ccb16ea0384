"""DETR: output structure, the sine encoding against DETR's formula, presets and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from convattn.layers.pos_embed import normalized_sine_2d
from convattn.layers.transformer import DetrDecoderLayer, DetrEncoderLayer
from convattn.models.detr import DETR
from convattn.models.registry import create_model, list_models, model_info
from convattn.models.set_prediction import SetCriterion


def test_normalized_sine_matches_detr_formula():
    H, W, d, T = 3, 5, 8, 10000.0
    pe = normalized_sine_2d(H, W, d, dtype=torch.float64)
    npf = d // 2
    for i in range(H):
        for j in range(W):
            for axis, (p, n) in enumerate(((i + 1, H), (j + 1, W))):
                a = p / n * 2 * math.pi
                for c in range(npf):
                    angle = a / T ** (2 * (c // 2) / npf)
                    want = math.sin(angle) if c % 2 == 0 else math.cos(angle)
                    assert pe[axis * npf + c, i, j].item() == pytest.approx(want, abs=1e-12)


def test_forward_gives_every_layers_set_of_predictions():
    torch.manual_seed(0)
    model = DETR(num_classes=3, backbone_width=8, hidden=32, num_heads=2, enc_layers=1, dec_layers=3,
                 ffn=64, num_queries=7).eval()  # fmt: skip
    x = torch.randn(2, 3, 32, 48)
    out = model(x)
    assert out["logits"].shape == (2, 7, 4) and out["boxes"].shape == (2, 7, 4)
    assert len(out["aux"]) == 2 and all(a["boxes"].shape == (2, 7, 4) for a in out["aux"])
    assert (out["boxes"] > 0).all() and (out["boxes"] < 1).all()
    assert model.cross_attention().shape == (2, 2, 7, (32 // 8) * (48 // 8))
    torch.testing.assert_close(model.cross_attention().sum(-1), torch.ones(2, 2, 7))
    # the queries are a set: no query sees another's position, so permuting the query embeddings
    # permutes the predictions
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    with torch.no_grad():
        model.query_embed.weight.copy_(model.query_embed.weight[perm])
    again = model(x)
    torch.testing.assert_close(again["logits"], out["logits"][:, perm], atol=1e-5, rtol=1e-5)


def test_the_loss_trains_every_parameter():
    torch.manual_seed(0)
    model = create_model("detr_tiny")
    out = model(torch.randn(2, 3, 64, 64))
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])
    targets = [{"labels": torch.tensor([1, 2]), "boxes": boxes},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]  # fmt: skip
    SetCriterion(4)(out, targets)["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the first decoder layer starts from zeros, so its self-attention's values are the bias alone and
    # its value weights get no gradient, as in DETR; every other parameter learns
    assert dead == ["decoder.0.self_attention.W_v.weight"]


def test_detection_presets_are_registered_apart():
    names = list_models(task="detection")
    assert {"detr_tiny", "detr_resnet_small", "detr_resnet_small_sasa"} <= set(names)
    assert not set(names) & set(list_models(task="classification"))
    info = model_info("detr_resnet_small_sasa")
    assert info.task == "detection" and info.image_size == 64 and info.num_classes == 4
    sasa = create_model("detr_resnet_small_sasa")
    assert sasa.backbone[1][0].conv1.__class__.__name__ != "Conv2d"  # an attention mixer, not a conv


def test_layers_take_positions_on_queries_and_keys_only():
    torch.manual_seed(0)
    enc, dec = (
        DetrEncoderLayer(16, 32, 2, dropout=0.0).eval(),
        DetrDecoderLayer(16, 32, 2, dropout=0.0).eval(),
    )
    x, pos = torch.randn(2, 6, 16), torch.randn(1, 6, 16)
    assert not torch.allclose(enc(x, pos), enc(x))
    t, q = torch.randn(2, 3, 16), torch.randn(1, 3, 16)
    assert dec(t, x, pos, q).shape == (2, 3, 16)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"hidden": 30}, "multiple of 4"),
        ({"num_queries": 0}, "num_queries=0"),
        ({"mixer": "fft"}, "unknown mixer"),
    ],
)
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        DETR(**kwargs)


def test_bad_images_are_named():
    model = create_model("detr_tiny")
    with pytest.raises(ValueError, match="multiples of the backbone's stride 8, got 60x64"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="no cross-attention"):
        create_model("detr_tiny").cross_attention()


def test_the_classification_trainer_refuses_a_detection_model_by_name():
    from convattn.data import load
    from convattn.train.config import TrainConfig
    from convattn.train.loop import build_model

    with pytest.raises(ValueError, match="'detr_tiny' is a detection model"):
        build_model(TrainConfig(model="detr_tiny", data="digits"), load("digits", "train"))


def test_a_tiny_detr_over_fits_a_handful_of_images():
    """DETR's sanity check: on 4 generated images (10 objects) the matching, the losses and the
    model together reach mAP50 >= 0.9 on the very images (dropout off, 250 full-batch AdamW steps)."""
    from convattn.data.coco_map import coco_map
    from convattn.data.detection import detect_shapes
    from convattn.models.detr import postprocess, targets_to_coco

    torch.manual_seed(0)
    train, _ = detect_shapes(n_train=4, n_test=1, image_size=64)
    model = create_model("detr_tiny", dropout=0.0)
    crit = SetCriterion(4)
    x, targets = train.normalize(train.images), train.targets(range(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    before = coco_map(postprocess(model.eval()(x), 64, 64), targets_to_coco(targets, 64, 64))
    model.train()
    for _ in range(250):
        loss = crit(model(x), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    after = coco_map(postprocess(model.eval()(x), 64, 64), targets_to_coco(targets, 64, 64))
    assert before["AP50"] < 0.2  # an untrained DETR finds nothing: the test can fail
    assert after["AP50"] >= 0.9, after


def test_sine_points_are_the_pixels_encoding():
    from convattn.layers.pos_embed import sine_points

    H, W, d = 4, 6, 16
    grid = normalized_sine_2d(H, W, d, dtype=torch.float64)  # (d, H, W)
    points = torch.tensor(
        [[(c + 1) / W, (r + 1) / H] for r in range(H) for c in range(W)], dtype=torch.float64
    )
    torch.testing.assert_close(sine_points(points, d), grid.flatten(1).T)
    with pytest.raises(ValueError, match=r"points must be \(N, 2\)"):
        sine_points(torch.zeros(3, 3), 8)


def test_the_spatial_prior_keeps_the_queries_a_set_and_trains():
    torch.manual_seed(0)
    model = create_model("detr_shapes").eval()
    assert model.spatial_prior == 0.1 and not hasattr(model, "query_embed")
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4, 9, 8, 7])
    with torch.no_grad():
        model.reference.copy_(model.reference[perm])
    again = model(x)
    torch.testing.assert_close(again["boxes"], out["boxes"][:, perm], atol=1e-5, rtol=1e-5)
    # each head's prior is a Gaussian around the centre, at its own width
    bias = model._prior(torch.tensor([[[0.5, 0.25]]]), 4, 4)  # (1, heads, 1, 16)
    assert bias.shape == (1, 2, 1, 16) and bias.max() <= 0
    nearest = bias[0, 0, 0].argmax()
    assert int(nearest) in (4 * 0 + 1, 4 * 0 + 2, 4 * 1 + 1, 4 * 1 + 2)  # the cells around (x .5, y .25)
    model.train()
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}] * 2
    SetCriterion(4)(model(x), targets)["loss"].backward()
    assert model.reference.grad.abs().sum() > 0 and model.log_sigma.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="spatial_prior is a width in"):
        DETR(spatial_prior=1.5)
