"""The study's frame: its sections' registry, the one budget table, and stopping it with Ctrl-C or SIGTERM."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convattn.study import budget, runner
from convattn.study.section import Description, get_section, register_section, section_keys


def test_every_section_of_both_studies_is_registered_once_in_order():
    assert set(runner.EMBEDDED) | set(runner.PAPER) == set(section_keys())
    assert runner.StudyConfig().sections() == [get_section(k) for k in runner.EMBEDDED]
    assert [s.key for s in runner.StudyConfig(data="cifar10:x").sections()] == list(runner.PAPER)
    assert [k for k in section_keys() if get_section(k).distributed] == ["paper"]


def test_a_section_key_is_registered_once_and_an_unknown_one_is_named():
    existing = get_section("conversion")
    assert register_section(existing) is existing  # the same section again is a no-op
    clone = dataclasses.replace(existing, title="another")
    with pytest.raises(ValueError, match="'conversion' is registered already"):
        register_section(clone)
    with pytest.raises(ValueError, match=r"no study section 'nope'.*conversion"):
        get_section("nope")


def test_every_section_describes_with_a_description():
    # describe's return type is what the runner writes into part.json: nothing else is accepted.
    for key in section_keys():
        section = get_section(key)
        assert section.describe.__annotations__["return"] in ("Description", Description), key


def test_the_budget_table_is_the_one_place_quick_is_read():
    full, quick = budget.budget_for(False), budget.budget_for(True)
    assert not full.quick and quick.quick
    assert (full.compare.epochs, full.seeds, quick.compare.epochs, quick.seeds) == (30, 3, 1, 1)
    assert full.learns_conv.epochs == 30 and quick.learns_conv.epochs == 1
    assert budget.budget_for(False, 9).compare.epochs == 9 and budget.budget_for(False, 9).seeds == 3
    ctx = runner.StudyConfig(quick=True, seed=4, epochs=2).context()
    assert ctx.budget.compare.epochs == 2 and ctx.budget.quick and ctx.seed == 4
    src = Path(runner.__file__).parent
    readers = sorted(
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.name != "budget.py"
        and "quick" in p.read_text()
        and ("if quick" in p.read_text() or "quick else" in p.read_text())
    )
    assert readers == [], f"quick interpreted outside budget.py: {readers}"


def test_the_quick_comparison_names_existing_models():
    from convattn.study.sections import compare

    quick = budget.BUDGETS["quick"]
    assert len(compare.contenders(quick.compare_models)) == len(quick.compare_models or ())
    with pytest.raises(ValueError, match="no contenders"):
        compare.contenders(("a model that is not there",))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_study_says_in_one_line_where_it_is_and_how_to_continue(tmp_path, sig):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "convattn", "study", "--quick", "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "learns_conv").exists() and time.monotonic() < deadline:  # well into the study
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert str(out) in last and "run the same command again to continue" in last
    assert (out / "study.json").exists() and (out / "conversion" / "part.json").exists()
