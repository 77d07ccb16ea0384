"""The learn-a-conv section as the quick study ran it: its rows, its paragraph and its figure."""

from __future__ import annotations

import json

from convattn.study.sections import fit_conv


def test_the_section_reports_every_fit_and_its_random_start(quick_study):
    part = json.loads((quick_study / "fit_conv" / "part.json").read_text())
    m = part["metrics"]
    assert len(m["rows"]) == len(m["seeds"]) >= 1
    assert m["successes"] == sum(r["success"] for r in m["rows"])
    for r in m["rows"]:
        assert r["success"] == int(r["test_error"] <= m["target_error"] and r["distinct_offsets"] >= 8)
        assert 1 <= r["distinct_offsets"] <= 9 and 1 <= r["init_distinct_offsets"] <= 9
    assert part["text"] == fit_conv.describe(m).text
    assert f"{m['successes']} of {len(m['rows'])} fits succeed" in part["text"]


def test_the_figure_is_drawn_again_from_the_csv_alone(quick_study, tmp_path):
    import shutil

    folder = tmp_path / "fit_conv"
    shutil.copytree(quick_study / "fit_conv", folder)
    before = (folder / "fit_conv.png").read_bytes()
    (folder / "fit_conv.png").unlink()
    fit_conv.plot(folder)
    assert (folder / "fit_conv.png").read_bytes() == before
