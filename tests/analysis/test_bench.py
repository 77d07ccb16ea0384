import math
import random

import pytest

from convattn.analysis.bench import (
    TARGETS,
    BenchConfig,
    format_targets,
    paired_ratios,
    run_bench,
    target_rows,
    targets_path,
    training_path,
)
from convattn.analysis.step_speed import STEP_MODELS
from convattn.utils.records import read_csv


def test_paired_ratios_cancel_what_the_repeats_share():
    # a machine whose speed drifts 3x between repeats: both operators see the same drift
    random.seed(0)
    drift = [random.uniform(1.0, 3.0) for _ in range(9)]
    base = [1e-3 * f for f in drift]
    times = [2.5e-3 * f for f in drift]
    ratio, noise = paired_ratios(times, base)
    assert ratio == pytest.approx(2.5, rel=1e-12) and noise == pytest.approx(0.0, abs=1e-12)


def test_paired_ratios_report_their_spread():
    # per-repeat ratios 1, 2, 3, 4: median 2.5, quartiles 1.25 and 3.75 (exclusive method)
    ratio, noise = paired_ratios([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    assert ratio == 2.5 and noise == pytest.approx(2.5 / 2.5)


def test_paired_ratios_of_a_forward_only_operator_are_nan():
    ratio, noise = paired_ratios([math.nan, math.nan], [1.0, 2.0])
    assert math.isnan(ratio) and math.isnan(noise)


@pytest.mark.parametrize(
    ("times", "base", "match"),
    [([1.0], [1.0, 2.0], "one baseline time per time"), ([], [], "one baseline"), ([1.0], [0.0], "positive")],
)
def test_paired_ratios_refuse_bad_input(times, base, match):
    with pytest.raises(ValueError, match=match):
        paired_ratios(times, base)


_COLUMNS = {  # short name -> (ratio column, its noise column)
    "fwd": ("fwd_ratio_to_dwconv", "fwd_ratio_noise"),
    "fwdbwd": ("fwdbwd_ratio_to_dwconv", "fwdbwd_ratio_noise"),
    "module": ("fwdbwd_ratio_to_dwconv_module", "fwdbwd_module_ratio_noise"),
}


def _row(op, size=32, **ratios):
    """A bench row of `op` with (ratio, noise) for each short column name given."""
    row = {"op": op, "size": size, "threads": 1}
    for short, (ratio, noise) in ratios.items():
        column, noise_column = _COLUMNS[short]
        row[column], row[noise_column] = ratio, noise
    return row


def test_targets_say_met_missed_or_noisy():
    rows = [
        _row("na2d_k7", fwd=(2.9, 0.05), fwdbwd=(2.1, 0.1)),
        _row("sasa", module=(1.5, 0.3)),  # met by its ratio, but too noisy to decide
        _row("window", size=56, module=(1.0, 0.0)),  # another size: not the target's
    ]
    table = {(t["op"], t["ratio"]): t for t in target_rows(rows)}
    assert table[("na2d_k7", "fwd_ratio_to_dwconv")]["met"] == "yes"
    assert table[("na2d_k7", "fwdbwd_ratio_to_dwconv")]["met"] == "no"
    assert table[("sasa", "fwdbwd_ratio_to_dwconv_module")]["met"] == "noisy"
    assert len(table) == 3  # the window target was not measured at 32×32
    assert table[("na2d_k7", "fwdbwd_ratio_to_dwconv")]["measured"] == 2.1
    assert len(format_targets(list(table.values()))) == 4


def test_the_bench_writes_its_targets_beside_the_table(tmp_path):
    cfg = BenchConfig(batch=1, sizes=(32,), repeats=3, warmup=1, mixers=("dwconv", "sasa", "window"),
                      out=tmp_path / "bench.csv", step_batch=2, step_repeats=1)  # fmt: skip
    rows = run_bench(cfg, log=lambda s: None)
    by_op = {r["op"]: r for r in rows}
    assert by_op["dwconv"]["fwdbwd_ratio_to_dwconv_module"] == 1.0  # itself, repeat by repeat
    targets = read_csv(targets_path(cfg.out))
    assert [(t["op"], t["ratio"]) for t in targets] == [(t.op, t.column) for t in TARGETS]
    for t in targets:
        assert float(t["measured"]) == pytest.approx(by_op[t["op"]][t["ratio"]])
        assert t["met"] in ("yes", "no", "noisy")
    steps = read_csv(training_path(cfg.out))
    assert [r["model"] for r in steps] == [m.name for m in STEP_MODELS]
    assert all(float(r["before_images_per_s"]) > 0 and float(r["after_images_per_s"]) > 0 for r in steps)
