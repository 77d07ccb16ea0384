"""The trainer with a detector: DETR on detect_shapes, batches, mAP rows, resume, export, init_from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convattn.data import detection_batches, load_detection
from convattn.train import Interrupted, TrainConfig, evaluate_weights, train
from convattn.train.checkpoint import load_checkpoint
from convattn.train.export import init_from_export

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model="detr_tiny", data="detect_shapes", n_train=24, epochs=2, batch_size=8, out=str(out),
                threads=1, flip=True, lr=1e-3, clip_grad=1.0)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_detection_batches_are_seeded_and_flip_the_boxes_with_the_pixels():
    train_set, _ = load_detection("detect_shapes", n_train=12, n_test=2)
    plain = list(detection_batches(train_set, 4, seed=3, epoch=1, flip=False))
    flipped = list(detection_batches(train_set, 4, seed=3, epoch=1, flip=True))
    again = list(detection_batches(train_set, 4, seed=3, epoch=1, flip=True, start=1))
    assert len(plain) == 3 and len(again) == 2
    mirrored = 0
    for (x, t), (xf, tf) in zip(plain, flipped, strict=True):  # the same images in the same order
        for i in range(len(t)):
            same = torch.equal(xf[i], x[i])
            if not same:
                mirrored += 1
                assert torch.equal(xf[i], x[i].flip(-1))
                torch.testing.assert_close(tf[i]["boxes"][:, 0], 1 - t[i]["boxes"][:, 0])
                torch.testing.assert_close(tf[i]["boxes"][:, 1:], t[i]["boxes"][:, 1:])
            else:
                assert torch.equal(tf[i]["boxes"], t[i]["boxes"])
            assert torch.equal(tf[i]["labels"], t[i]["labels"])
    assert 0 < mirrored < 12
    for (x, t), (xa, ta) in zip(flipped[1:], again, strict=True):  # a resumed epoch: the same batches
        assert torch.equal(x, xa) and all(
            torch.equal(a["boxes"], b["boxes"]) for a, b in zip(t, ta, strict=True)
        )
    # two ranks' batches interleave into the single process's batch of twice the size
    one = next(iter(detection_batches(train_set, 4, seed=3, epoch=0, flip=True)))
    r0, r1 = (next(iter(detection_batches(train_set, 2, seed=3, epoch=0, flip=True, rank=r, world_size=2)))
              for r in (0, 1))  # fmt: skip
    assert torch.equal(one[0][0::2], r0[0]) and torch.equal(one[0][1::2], r1[0])
    assert torch.equal(one[1][1]["boxes"], r1[1][0]["boxes"])
    with pytest.raises(ValueError, match="rank must be an int >= 0 below world_size"):
        detection_batches(train_set, 2, seed=0, epoch=0, rank=2, world_size=2)


def test_a_detector_trains_reports_map_and_its_export_scores_the_same(tmp_path, monkeypatch):
    import convattn.train.loop as loop

    monkeypatch.setattr(loop, "TRAIN_EVAL_SCENES", 10)  # of 24 training scenes
    scored: list[tuple[str, int]] = []
    evaluate = loop._evaluate
    monkeypatch.setattr(
        loop, "_evaluate", lambda run, data: scored.append((data.split, len(data))) or evaluate(run, data)
    )
    result = train(_cfg(tmp_path / "run", eval_every=2), log=lambda s: None)
    assert scored == [("test", 500), ("train", 10)]  # the final check: the first 10 training scenes
    last = result.history[-1]
    assert "train_acc" not in last and "test_acc" not in last
    assert {"test_loss", "test_AP", "test_AP50", "test_AP75", "test_recall", "train_eval_AP50"} <= set(last)
    assert result.history[0]["test_AP50"] is None  # eval_every 2: the first epoch is not scored
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.scores["test_AP50"] == last["test_AP50"]
    scores = evaluate_weights(tmp_path / "run")
    assert scores["n"] == 500
    for k in ("AP", "AP50", "AP75", "recall", "loss"):
        assert scores[f"test_{k}"] == pytest.approx(last[f"test_{k}"], abs=1e-6)


def test_sigterm_mid_epoch_then_resume_is_bit_identical_for_a_detector(tmp_path):
    train(_cfg(tmp_path / "full", epochs=3), log=lambda s: None)
    cfg = _cfg(tmp_path / "cut", epochs=3)
    calls = {"n": 0}

    def log(line: str) -> None:  # after the first epoch, ask the process to stop
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="epoch 2, batch 1"):
        train(cfg, log=log)
    assert (load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["batch"]) == 1
    train(cfg, resume=True, log=lambda s: None)
    _same_weights(tmp_path / "full", tmp_path / "cut")


def test_a_detector_trains_under_torchrun(tmp_path):
    args = ["train", "--model", "detr_tiny", "--data", "detect_shapes", "--n-train", "16", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--out", str(tmp_path / "two")]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run([*torchrun, "-m", "convattn", *args], env=ENV, capture_output=True, timeout=300)
    assert two.returncode == 0, two.stderr.decode()[-8000:]  # every rank's error, not only the agent's
    assert "test AP" in two.stdout.decode() and (tmp_path / "two" / "model.safetensors").exists()


def test_init_from_gives_a_detector_the_classifiers_backbone(tmp_path):
    pre = train(TrainConfig(model="resnet_tiny", data="shapes", n_train=64, epochs=1, batch_size=32,
                            out=str(tmp_path / "pre"), threads=1), log=lambda s: None)  # fmt: skip
    lines: list[str] = []
    train(_cfg(tmp_path / "det", epochs=1, lr=1e-9, init_from=str(pre.out)), log=lines.append)
    assert any(line.startswith("initialised ") for line in lines)
    classifier, detector = (
        load_file(str(pre.out / "model.safetensors")),
        load_file(str(tmp_path / "det" / "model.safetensors")),
    )
    # lr 1e-9: the first-stage conv is the classifier's up to the one tiny step
    torch.testing.assert_close(
        detector["backbone.stem.0.weight"], classifier["stem.0.weight"], atol=1e-6, rtol=0
    )
    from convattn.models.registry import create_model

    model = create_model("detr_tiny")
    copied, skipped = init_from_export(model, pre.out)
    assert all(name.startswith("backbone.") for name in copied) and not skipped
    assert len(copied) == sum(1 for k in classifier if not k.startswith("head."))
    with pytest.raises(FileNotFoundError, match="holds no exported model"):
        init_from_export(model, tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"no tensor of .* fits this model"):
        init_from_export(create_model("cnn_tiny"), pre.out)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"data": "digits"}, ValueError, "'detr_tiny' is a detection model: it trains on detection data"),
        ({"model": "cnn_tiny"}, ValueError, "is a classification model: it trains on an image set"),
        ({"crop_pad": 2}, ValueError, "crop_pad=2: random crops would cut objects out of their boxes"),
        ({"holdout": 8}, ValueError, "holdout=8: a validation split of detection data is not supported"),
        ({"model_options": {"num_queries": 2}}, ValueError, "has 2 queries, but an image of 'detect_shapes' "
                                                             "holds 4 objects"),
        ({"data": "coco:/nonexistent", "n_train": 0}, FileNotFoundError, "nonexistent"),
        ({"init_from": "/nonexistent"}, FileNotFoundError, "holds no exported model"),
    ],
)  # fmt: skip
def test_bad_detection_runs_are_named_and_leave_no_folder(tmp_path, kwargs, error, words):
    with pytest.raises(error, match=words):
        train(_cfg(tmp_path / "run", **kwargs), log=lambda s: None)
    assert not (tmp_path / "run").exists()
