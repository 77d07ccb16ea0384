"""The DETR section: the quick run's files and text, and a paragraph that follows the numbers."""

from __future__ import annotations

import json

from convattn.study.sections import detection


def _row(detector: str, backbone: str, prior: float, ap50: float, train_ap50: float, speed: float) -> dict:
    return {"detector": detector, "backbone": backbone, "spatial_prior": prior, "AP": ap50 / 2, "AP50": ap50,
            "AP75": ap50 / 3, "recall": ap50, "train_AP50": train_ap50, "params": 1000, "macs": 2_000_000,
            "train_images_per_s": speed, "epochs": 3, "steps": 750, "train_s": 30.0}  # fmt: skip


def _metrics(cnn: float, sasa: float, plain: float, sasa_train: float) -> dict:
    rows = [_row("DETR, CNN backbone, spatial prior", "CNN", 0.1, cnn, cnn, 200.0),
            _row("DETR, SASA 3×3 backbone, spatial prior", "attention", 0.1, sasa, sasa_train, 100.0),
            _row("DETR, CNN backbone, DETR's queries", "CNN", 0.0, plain, plain, 200.0)]  # fmt: skip
    return {"rows": rows, "pretrained": [], "n_train": 2000, "n_test": 500, "epochs": 3,
            "pretrain_images": 2000, "good_ap50": 0.5, "seed": 0, "quick": False, "threads": 1}  # fmt: skip


def test_the_paragraph_follows_the_numbers_either_way():
    text = detection.describe(_metrics(cnn=0.62, sasa=0.33, plain=0.01, sasa_train=0.32)).text
    assert "The CNN backbone leads by 0.290 AP50" in text
    assert "The attention detector has not fit its own training scenes either" in text
    assert "the spatial prior is worth +0.610 AP50" in text and "has not yet learned to detect" in text
    assert "trains 2.0× as many images per second" in text
    text = detection.describe(_metrics(cnn=0.55, sasa=0.70, plain=0.52, sasa_train=0.72)).text
    assert "The attention backbone leads by 0.150 AP50" in text and "has not fit" not in text
    assert "the spatial prior is worth +0.030 AP50 at this budget." in text
    assert "has not yet learned" not in text
    text = detection.describe(_metrics(cnn=0.60, sasa=0.61, plain=0.2, sasa_train=0.9)).text
    assert "The two backbones are level" in text and "over-fits" in text  # 0.9 on training, 0.61 test


def test_the_quick_study_section_writes_its_tables_figures_and_text(quick_study):
    folder = quick_study / "detection"
    part = json.loads((folder / "part.json").read_text())
    m = part["metrics"]
    assert m["quick"] and m["epochs"] == 1 and m["n_train"] == 64
    assert [r["detector"] for r in m["rows"]] == [d[0] for d in detection.DETECTORS]
    assert all(0 <= r["AP"] <= r["AP50"] <= 1 and r["params"] > 0 and r["macs"] > 0 for r in m["rows"])
    assert part["text"] == detection.describe(m).text and "Quick mode" in part["text"]
    for name in ("detection_boxes.png", "detection_attention.png", "detection.csv", "boxes.csv"):
        assert (folder / name).stat().st_size > 0
    assert {p["shapes_test_acc"] >= 0 for p in m["pretrained"]} == {True}
