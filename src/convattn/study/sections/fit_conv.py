"""Learning a convolution: does gradient descent find Theorem 1's construction from a random start?

`conversion` shows that a 9-head quadratic attention layer can equal a 3×3 conv when it is built to.
Here one such layer starts from its random initialisation and is fitted by gradient descent to a fixed
random conv (`convattn.analysis.fit_conv`), once per seed: the function error on held-out inputs and
how many heads end on distinct 3×3 offsets say whether the construction is learned, against the same
numbers at the random start.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from convattn.analysis.fit_conv import (
    TARGET_DISTINCT,
    TARGET_ERROR,
    FitConvRecipe,
    fit_conv,
    fit_conv_rows,
    fit_conv_summary,
    plot_fit_conv,
)
from convattn.study.section import Context, Description, Section, register_section
from convattn.utils.records import read_csv, write_csv

__all__ = ["SECTION", "describe", "plot", "run"]


def run(folder: Path, *, seeds: tuple[int, ...], steps: int) -> dict[str, Any]:
    """Fit once per seed; write fit_conv.csv (a row per seed), the first seed's learning curve and
    heads (fit_conv_curve.csv, fit_conv_heads.csv) and fit_conv.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recipe = replace(FitConvRecipe(), steps=steps)
    results = [fit_conv(seed=s, recipe=recipe) for s in seeds]
    rows = [fit_conv_summary(r) for r in results]
    curve, heads = fit_conv_rows(results[0])
    write_csv(folder / "fit_conv.csv", rows)
    write_csv(folder / "fit_conv_curve.csv", curve)
    write_csv(folder / "fit_conv_heads.csv", heads)
    plot(folder)
    return {
        "rows": rows,
        "seeds": list(seeds),
        "steps": steps,
        "recipe": {k: v for k, v in recipe.__dict__.items()},
        "successes": sum(r["success"] for r in rows),
        "target_error": TARGET_ERROR,
        "target_distinct": TARGET_DISTINCT,
    }


def plot(folder: Path) -> None:
    """fit_conv.png from the first seed's CSV files alone."""
    plot_fit_conv(read_csv(folder / "fit_conv_curve.csv"), read_csv(folder / "fit_conv_heads.csv"),
                  folder / "fit_conv.png")  # fmt: skip


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Cordonnier et al. (2020, Theorem 1): 9 quadratic heads can express any 3×3 convolution. Asked "
        "here: is that layer also what gradient descent finds when it fits a conv from a random start?"
    )
    rows, n = m["rows"], len(m["rows"])
    first = rows[0]
    per_seed = "; ".join(
        f"seed {r['seed']}: error {r['test_error']:.1e}, {r['distinct_offsets']}/9 distinct offsets, "
        f"{r['mean_distance']:.2f} px from the grid ({r['attempts']} start{'s' * (r['attempts'] != 1)})"
        for r in rows
    )
    verdict = (
        "supports the claim: the construction is learned"
        if m["successes"] == n
        else "supports it in part"
        if m["successes"]
        else "does not support it"
    )
    text = (
        f"A 9-head quadratic attention layer was fitted {n} time{'s' * (n != 1)} ({m['steps']} AdamW "
        "steps each, from its random initialisation; a start whose error stays above the target is "
        "replaced by a new random start, counted below) to a random 3×3 conv. Success means relative "
        f"error ≤ {m['target_error']:g} on held-out inputs and ≥ {m['target_distinct']} heads on "
        f"distinct 3×3 offsets: {m['successes']} of {n} fits succeed, so this run {verdict}. "
        f"At the random start: error {first['init_test_error']:.2f}, {first['init_distinct_offsets']}/9 "
        f"distinct offsets, {first['init_mean_distance']:.2f} px from the grid. {per_seed}."
    )
    figures = [
        ("fit_conv.png", "Learning a 3×3 conv: the training error and the head centres, start and end.")
    ]
    return Description(claim, text, figures, [("fit_conv.csv", "Every fit: errors and head measures.")])


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    b = ctx.budget
    seeds = tuple(ctx.seed + i for i in range(b.fit_conv_seeds))
    return run(folder, seeds=seeds, steps=b.fit_conv_steps)


SECTION = register_section(
    Section("fit_conv", "Does gradient descent learn the convolution?", _run, plot, describe)
)
