"""The paper-scale section: Table 1 of Cordonnier et al. 2020, its recipe, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convattn.analysis.summary import count_parameters
from convattn.models.registry import create_model
from convattn.study.sections import paper
from convattn.train import TrainConfig

# Tiny stand-ins for the four models of Table 1 (the two attention rows share one run).
TINY = ("resnet_tiny", "attention_net_tiny", "attention_net_tiny", "cnn_tiny")
PNGS = ("paper_accuracy.png", "paper_curves.png")


def _fake_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> str:
    """Five training batches of `per_batch` random images and a test batch, in the published layout."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    meta = {b"label_names": [f"class{j}".encode() for j in range(10)]}
    (root / "batches.meta").write_bytes(pickle.dumps(meta))
    return f"cifar10:{root}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One run of the section with tiny models on 100 fake training images (one step per epoch)."""
    base = tmp_path_factory.mktemp("paper")
    data = _fake_cifar10(base / "cifar")
    metrics = paper.run(base / "out", data=data, epochs=1, device="cpu", seed=0, models=TINY)
    return base / "out", data, metrics


def test_published_rows_are_table_1():
    got = [(r.label, r.model, r.accuracy, r.params_m, r.flops_b) for r in paper.PUBLISHED]
    assert got == [
        ("ResNet-18", "resnet18_cifar", 0.938, 11.2, 0.56),
        ("SA quadratic emb.", "attention_net_quadratic", 0.938, 12.1, 6.2),
        ("SA learned emb.", "attention_net_relative", 0.918, 12.3, 6.2),
        ("SA learned emb. + content", "attention_net_relative_content", 0.871, 29.5, 15.0),
    ]


@pytest.mark.parametrize("row", paper.PUBLISHED, ids=lambda r: r.model)
def test_published_params_are_the_registry_models(row):
    with torch.device("meta"):  # shapes only: no 30M-parameter allocation
        n = count_parameters(create_model(row.model))
    assert n == row.code_params
    assert abs(n / 1e6 - row.params_m) < 0.11  # the paper prints 29.5M for the 29,601,882 of its code


def test_recipe_is_their_training_recipe():
    cfg = TrainConfig(model="resnet18_cifar", data="cifar10:x", **paper.RECIPE)
    expected = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, warmup=0.05,
                    batch_size=100, crop_pad=4, flip=True, epochs=300)  # fmt: skip
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert paper.PAPER_EPOCHS == 300


def test_run_writes_published_beside_measured(finished):
    out, _, metrics = finished
    rows = paper.read_csv(out / "table.csv")
    assert rows == metrics["rows"]
    assert [r["model"] for r in rows] == [p.label for p in paper.PUBLISHED]
    assert [r["registry"] for r in rows] == list(TINY)
    assert [r["published_acc"] for r in rows] == [p.accuracy for p in paper.PUBLISHED]
    for r in rows:
        assert r["measured_params"] == count_parameters(
            create_model(r["registry"], in_chans=3, image_size=32)
        )
        assert 0 <= r["measured_acc"] <= 1 and r["epochs"] == 1
        assert r["measured_macs_per_image"] > 0 and r["inference_images_per_s"] > 0
    curve = paper.read_csv(out / "learning_curve.csv")
    assert [(c["model"], c["epoch"]) for c in curve] == [(p.label, 1) for p in paper.PUBLISHED]
    assert [c["test_acc"] for c in curve] == [r["measured_acc"] for r in rows]  # 20 test images: exact
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted({f"{m}-s0" for m in TINY})
    assert all((out / png).stat().st_size > 0 for png in PNGS)


def test_describe_quotes_published_and_measured_numbers(finished):
    _, _, metrics = finished
    d = paper.describe(metrics)
    claim, text, figures, tables = d.claim, d.text, d.figures, d.tables
    assert "93.8%" in claim and "91.8%" in claim and "87.1%" in claim
    for r in metrics["rows"]:
        assert f"{r['model']} {r['measured_acc']:.1%} (published {r['published_acc']:.1%})" in text
    assert "fewer than the paper's 300" in text and "Substitute models" in text
    assert "ordering" in text
    assert [f for f, _ in figures] == list(PNGS)
    assert [t for t, _ in tables] == ["table.csv"]  # the curves are the figure's data, not a table


def test_plot_recreates_identical_figures(finished):
    out, _, _ = finished
    before = {png: (out / png).read_bytes() for png in PNGS}
    for png in PNGS:
        (out / png).unlink()
    paper.plot(out)
    assert {png: (out / png).read_bytes() for png in PNGS} == before


def test_a_second_run_reuses_the_finished_runs(finished):
    out, data, metrics = finished
    stamps = {p: (p / "model.safetensors").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    again = paper.run(out, data=data, epochs=1, device="cpu", seed=0, models=TINY)
    assert [r["measured_acc"] for r in again["rows"]] == [r["measured_acc"] for r in metrics["rows"]]
    assert {p: (p / "model.safetensors").stat().st_mtime_ns for p in (out / "runs").iterdir()} == stamps


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(data="digits"), "cifar10:PATH.*'digits'"),
        (dict(data="cifar100:/nowhere"), "cifar10:PATH.*cifar100"),
        (dict(data="cifar10"), "cifar10:PATH"),
        (dict(epochs=0), "epochs"),
        (dict(device="tpu"), "device"),
        (dict(models=("cnn_tiny",)), "one name per published row"),
        (dict(models=("cnn_tiny", "cnn_tiny", "cnn_tiny", "no_such_model")), "no_such_model"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kw, match):
    args = dict(data="cifar10:/nowhere", epochs=1, device="cpu", seed=0, models=TINY, **{})
    with pytest.raises(ValueError, match=match):
        paper.run(tmp_path / "out", **{**args, **kw})
    assert not (tmp_path / "out").exists()


def test_the_study_under_torchrun_every_rank_trains_and_rank_0_writes(tmp_path):
    """`torchrun -m convattn study --data cifar10:...` end to end, with the tiny models swapped in."""
    data = _fake_cifar10(tmp_path / "cifar")
    script = (
        "import functools, sys; from pathlib import Path; from convattn import study\n"
        "from convattn.study.sections import paper\n"
        f"paper.run = functools.partial(paper.run, models={TINY!r})\n"
        f"study.run_study(study.StudyConfig(data={data!r}, epochs=1, out=Path(sys.argv[1])))\n"
    )
    (tmp_path / "go.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "go.py"), str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers: leave nothing behind
        _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    out = tmp_path / "out"
    part = json.loads((out / "paper" / "part.json").read_text())
    assert [r["registry"] for r in part["metrics"]["rows"]] == list(TINY)
    assert part["metrics"]["rows"] == paper.read_csv(out / "paper" / "table.csv")
    assert sorted(p.name for p in (out / "paper").iterdir()) == sorted(
        ["runs", "table.csv", "table.md", "learning_curve.csv", "part.json", *PNGS]
    )
    page = (out / "report.html").read_text()
    assert '<section id="paper">' in page and "0.938" in page
    # Both ranks trained every run (DDP), and a finished run holds its exported weights once.
    assert all((r / "model.safetensors").exists() for r in (out / "paper" / "runs").iterdir())
