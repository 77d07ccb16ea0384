"""The learned-convolution section of the study: the run's own initial model, its tables, figures and text."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from convattn.study.budget import BUDGETS
from convattn.study.sections import learns_conv
from convattn.study.sections.learns_conv import describe, initial_model, plot, run
from convattn.train import TrainConfig

# -- the run's own initial model -----------------------------------------------------------------------


class _CapturedError(Exception):
    """Raised by the spy once it has the weights: stops train() before it touches any file."""


@pytest.mark.parametrize("encoding", ["quadratic", "relative"])
def test_initial_model_is_the_one_train_starts_from(tmp_path, monkeypatch, encoding):
    """Spy on the trainer's create_model: the weights it builds equal initial_model(cfg)'s."""
    import convattn.train.loop as loop

    seen: list[dict[str, torch.Tensor]] = []
    real = loop.create_model

    def spy(*args, **kwargs):
        seen.append({k: v.clone() for k, v in real(*args, **kwargs).state_dict().items()})
        raise _CapturedError

    monkeypatch.setattr(loop, "create_model", spy)
    cfg = TrainConfig(model="attention_digits", out=str(tmp_path / "run"), seed=7,
                      model_options={"encoding": encoding})  # fmt: skip
    with pytest.raises(_CapturedError):
        loop.train(cfg, log=lambda s: None)
    monkeypatch.undo()  # initial_model builds through the same function: no spy for it
    before = torch.random.get_rng_state()
    mine = initial_model(cfg).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)  # no side effect on the global generator
    assert mine.keys() == seen[0].keys()
    for k, v in mine.items():
        assert torch.equal(v, seen[0][k]), k


# -- the section end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(quick_study, tmp_path_factory) -> tuple[Path, dict]:
    """The section as the session's quick study ran it (a copy: tests redraw its figures)."""
    folder = tmp_path_factory.mktemp("learns_conv") / "learns_conv"
    shutil.copytree(quick_study / "learns_conv", folder)
    return folder, json.loads((folder / "part.json").read_text())["metrics"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_the_tables_and_json_metrics(quick_run):
    folder, metrics = quick_run
    json.dumps(metrics)  # JSON-serialisable
    centres = _rows(folder / "centres.csv")
    assert len(centres) == 1 * 2 * 2 * 9  # encodings × stages × layers × heads
    assert {"model", "encoding", "stage", "layer", "head", "centre_row", "centre_col", "width"} <= set(
        centres[0]
    )
    assert len(_rows(folder / "attention_maps.csv")) == len(centres) * 16 * 16  # 16×16 token maps
    grid = _rows(folder / "grid_likeness.csv")
    assert len(grid) == 1 * 2 * 2
    assert set(metrics["models"]) == {"quadratic"}
    for m in metrics["models"].values():
        assert 0 <= m["mean_distance_trained"] and m["verdict"] in ("grid", "closer", "farther", "unchanged")
    # The init rows are this run's own initial model: Δ of its first layer.
    cfg = learns_conv._config(folder, "quadratic", BUDGETS["quick"].learns_conv, 0)
    assert cfg.data == "digits32" and cfg.position_lr_scale > 1
    delta = initial_model(cfg).layers[0].attention.centres.detach().double()
    mine = [r for r in centres if r["encoding"] == "quadratic" and r["stage"] == "init" and r["layer"] == "0"]
    got = torch.tensor([[float(r["centre_row"]), float(r["centre_col"])] for r in mine], dtype=torch.float64)
    torch.testing.assert_close(got, delta, atol=1e-5, rtol=0)
    probs = [float(r["prob"]) for r in _rows(folder / "attention_maps.csv")[:256]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)


def test_plot_redraws_every_png_byte_identically_from_the_csvs(quick_run):
    folder, metrics = quick_run
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == sorted(metrics["figures"])
    before = {p.name: p.read_bytes() for p in pngs}
    for p in pngs:
        p.unlink()
    plot(folder)
    assert {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))} == before


def test_describe_writes_the_measured_numbers(quick_run):
    folder, metrics = quick_run
    d = describe(metrics)
    claim, text, figures, tables = d.claim, d.text, d.figures, d.tables
    assert "Cordonnier" in claim
    for m in metrics["models"].values():
        assert (
            f"{m['mean_distance_init']:.2f} from" in text
            and f"{m['mean_distance_trained']:.2f} trained" in text
        )
        assert f"per layer {', '.join(f'{v:.2f}' for v in m['centre_shift_per_layer'])}" in text
    assert f"sum to {metrics['lr_sum']:.1f}" in text and "16×16 token maps" in text
    assert f"{metrics['random_mean_distance']:.2f}" in text and "support" in text
    assert all((folder / f).exists() for f, _ in figures + tables)


def test_bad_inputs_name_the_value(tmp_path):
    recipe = BUDGETS["quick"].learns_conv
    with pytest.raises(TypeError, match="recipe must be a Recipe"):
        run(tmp_path, recipe=1, seed=0, test_images=4)
    with pytest.raises(ValueError, match="seed"):
        run(tmp_path, recipe=recipe, seed=-1, test_images=4)
    with pytest.raises(FileNotFoundError, match=r"centres\.csv"):
        plot(tmp_path)
    with pytest.raises(ValueError, match="metrics lack"):
        describe({})
