"""Data efficiency: test accuracy of a CNN and of a ViT against the number of training images.

The claim (Cordonnier et al. 2020; Dosovitskiy et al. 2021, ViT; Ramachandran et al. 2019): convolution's
locality is a prior that pays when data is scarce, so a CNN wins on small training sets, while
self-attention, with weaker priors, catches up (and may overtake) as the data grows.

`run` trains a small CNN (`cnn_digits` at width 16) and a ViT (`vit_shapes`: patch 4, dim 64, depth 4)
on the generated `shapes`, at training-set sizes over two orders of magnitude (32 to 3,200 images in the
study): generated data has no size limit, so the largest set is as new as the smallest. Every seed
generates its own training and test images (`data_seed`) and initialises and orders the run; the test
split is the 500 test images of that seed, the same for every size. The spread over seeds therefore
includes the luck of the draw of the data.

Budget rule: every run trains to convergence, or the table says it did not. A run on n images takes
``max(epochs, ceil(min_steps / (n // B)))`` epochs of batch B: at least `min_steps` optimisation steps
(a small set is seen many times, until it is fitted) and at least `epochs` passes over a large one.
Each point reports the final training accuracy in eval mode beside the test accuracy: a point below
`FITTED` did not fit its training set, and the paragraph names it, so a curve limited by optimisation
is never read as one limited by data. Both models share one recipe (AdamW, the warm-up + cosine
schedule, no augmentation: a random crop would multiply the data whose effect is measured); each
model's learning rate is chosen among the recipe's on a validation split held out at the middle size
(the search never sees the test split). `crossing` finds where the ViT's curve meets the CNN's,
interpolating in log(n).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convattn.data import load
from convattn.study.contest import FITTED, Contender, Recipe, search_rates, seed_summary, slowest_first
from convattn.study.runs import run_training, run_trainings
from convattn.study.section import Context, Description, Section, register_section
from convattn.train import TrainConfig
from convattn.utils.records import read_csv, write_csv

__all__ = [
    "EVALUATIONS",
    "MODELS",
    "SECTION",
    "chosen_rates",
    "crossing",
    "describe",
    "epochs_for",
    "plot",
    "point_configs",
    "run",
]

EVALUATIONS = 4  # test-split evaluations of a run of the curve
_Curve = tuple[list[float], list[int], list[float]]  # fractions, training images, mean test accuracy
MODELS = (
    Contender("CNN (3 conv layers)", "cnn_digits", {"width": 16}, cnn=True),
    Contender("ViT, patch 4", "vit_shapes"),
)


def epochs_for(n_train: int, epochs: int, min_steps: int, batch_size: int = 64) -> int:
    """Epochs of a run on `n_train` images: at least `epochs`, and at least `min_steps` steps.

    Args:
        n_train: images of this run; at least one batch.
        epochs: the fewest passes over the data.
        min_steps: the fewest optimisation steps; an epoch takes n // batch_size whole batches.
        batch_size: images per step.

    Returns:
        ``max(epochs, ceil(min_steps / (n_train // batch_size)))``.
    """
    for name, value in (
        ("n_train", n_train),
        ("epochs", epochs),
        ("min_steps", min_steps),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    if n_train < batch_size:
        raise ValueError(f"need n_train >= batch_size, got {n_train=}, {batch_size=}")
    return max(epochs, math.ceil(min_steps / (n_train // batch_size)))


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    """The fractions as floats; ValueError unless they increase strictly within (0, 1]."""
    bad = any(isinstance(x, bool) or not isinstance(x, int | float) or not 0 < x <= 1 for x in fractions)
    if bad or any(a >= b for a, b in itertools.pairwise(fractions)):
        raise ValueError(f"fractions must increase strictly within (0, 1], got {fractions=}")
    return [float(x) for x in fractions]


def crossing(fractions: Sequence[float], cnn_acc: Sequence[float], att_acc: Sequence[float]) -> float | None:
    """The smallest training fraction at which the attention model's accuracy reaches the CNN's.

    The difference d = att_acc - cnn_acc is interpolated linearly in log(fraction) between measured
    points (the sizes of a learning curve are spaced on a log scale); the answer is the first place
    where d reaches 0 (a measured fraction when d is exactly 0 there).

    Args:
        fractions: measured training fractions (n / n_max), strictly increasing, in (0, 1].
        cnn_acc: the CNN's accuracy at each fraction.
        att_acc: the attention model's accuracy at each fraction.

    Returns:
        The crossing fraction; ``fractions[0]`` when attention is level or ahead already at the smallest
        fraction (the curves meet there or below, unmeasured); None when attention stays behind
        everywhere. If attention falls behind again later, the first crossing is returned.
    """
    if not (len(fractions) == len(cnn_acc) == len(att_acc) >= 1):
        raise ValueError(
            f"need one accuracy per fraction, got {len(fractions)} fractions, {len(cnn_acc)} CNN and "
            f"{len(att_acc)} attention accuracies"
        )
    f = _check_fractions(fractions)
    d = [float(a) - float(c) for a, c in zip(att_acc, cnn_acc, strict=True)]
    if not all(math.isfinite(x) for x in d):
        raise ValueError(f"accuracies must be finite, got {cnn_acc=}, {att_acc=}")
    if d[0] >= 0:
        return f[0]
    for i in range(1, len(f)):
        if d[i] >= 0:  # d[i - 1] < 0 <= d[i]: the zero lies in (f[i - 1], f[i]]
            t = -d[i - 1] / (d[i] - d[i - 1])
            return math.exp(math.log(f[i - 1]) + t * (math.log(f[i]) - math.log(f[i - 1])))
    return None


def _check_run_args(recipe: Recipe, sizes: tuple[int, ...], min_steps: int, seeds: tuple[int, ...]) -> None:
    """TypeError/ValueError naming the first bad argument of `run`."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    if not isinstance(sizes, tuple | list) or not sizes:
        raise ValueError(f"sizes must be a non-empty tuple of training-set sizes, got {sizes=}")
    if any(isinstance(n, bool) or not isinstance(n, int) for n in sizes) or any(
        a >= b for a, b in itertools.pairwise(sizes)
    ):
        raise ValueError(f"sizes must be ints that increase strictly, got {sizes=}")
    if len(recipe.lrs) > 1 and recipe.holdout < 1:
        raise ValueError(f"searching {len(recipe.lrs)} rates needs a holdout, got holdout={recipe.holdout}")
    if sizes[0] < recipe.batch_size:
        raise ValueError(f"every size needs one batch of {recipe.batch_size} images, got {sizes=}")
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
        raise ValueError(f"min_steps must be a positive int, got {min_steps=}")
    if (
        not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        or len(set(seeds)) < len(seeds)
    ):
        raise ValueError(f"seeds must be distinct ints, at least one, got {seeds=}")


def _search_recipe(recipe: Recipe, sizes: tuple[int, ...], min_steps: int) -> Recipe:
    """The rate search: at the middle size, half its run's epochs, `recipe.holdout` images held out."""
    mid = sizes[len(sizes) // 2]
    epochs = epochs_for(mid, recipe.epochs, min_steps, recipe.batch_size)
    return replace(recipe, n_train=mid, epochs=epochs, search_epochs=max(1, epochs // 2))


def chosen_rates(
    folder: Path, recipe: Recipe, sizes: tuple[int, ...], min_steps: int, seed: int
) -> tuple[Recipe, list[dict[str, Any]], dict[str, float]]:
    """The rate search of the curve (at the middle size, on validation data): (its recipe, its table, the
    rate chosen per model label). Inside `runs.shared_runs` another section asking for it reuses its runs.
    """
    searched = _search_recipe(recipe, sizes, min_steps)
    search, chosen = search_rates(folder, MODELS, searched, seed)
    return searched, search, chosen


def point_configs(
    folder: Path, c: Contender, n: int, recipe: Recipe, min_steps: int, seeds: tuple[int, ...], lr: float
) -> list[TrainConfig]:
    """The runs of one point of a curve, one per seed (one thread each: they train side by side).

    Every run is tested about EVALUATIONS times, evenly spaced, and after its last epoch (only the
    final score enters the curve), so that a small set's many short epochs do not spend their time on
    the test split.
    """
    n_epochs = epochs_for(n, recipe.epochs, min_steps, recipe.batch_size)
    every = max(1, n_epochs // EVALUATIONS)
    sized = replace(recipe, epochs=n_epochs, n_train=n)
    return [
        replace(
            sized.config(c, folder / "runs" / f"{c.model}-n{n}-lr{lr:g}-s{s}", lr=lr, seed=s, search=False),
            data_seed=s,  # every seed generates its own images
            eval_every=every,
        )
        for s in seeds
    ]


def _point(c: Contender, cfgs: list[TrainConfig], n_max: int) -> dict[str, Any]:
    """One point of a curve: model `c`, its runs on one size (one per seed)."""
    last = [run_training(cfg)[-1] for cfg in cfgs]  # trained already by `run`: reused here
    n = cfgs[0].n_train
    s = seed_summary(last)
    return {
        "model": c.label,
        "kind": "CNN" if c.cnn else "attention",
        "fraction": round(n / n_max, 6),
        "n_train": n,
        "seeds": len(cfgs),
        "lr": cfgs[0].lr,
        "test_acc_mean": s["test_acc_mean"],
        "test_acc_std": s["test_acc_std"],
        "epochs": cfgs[0].epochs,
        "steps": last[0]["step"],
        "train_acc_mean": s["train_acc_mean"],
        "train_acc_min": s["train_acc_min"],
        "fitted": int(s["train_acc_min"] >= FITTED),
    }  # fmt: skip


def run(
    folder: Path,
    *,
    recipe: Recipe,
    sizes: tuple[int, ...],
    min_steps: int,
    seeds: tuple[int, ...],
    quick: bool,
) -> dict[str, Any]:
    """Train both models at every size; write curve.csv and data_efficiency.png.

    Args:
        folder: where curve.csv, the figure and the run folders (runs/<model>-n<N>-s<seed>) go; finished
            runs are reused and interrupted ones resumed.
        recipe: the data (a generated set), the fewest epochs, the learning rates searched (each
            model's is chosen on `recipe.holdout` validation images at the middle size, seed
            `seeds[0]`), batch, optimiser and augmentation, shared by both models.
        sizes: training images per run, strictly increasing, each at least one batch.
        min_steps: the fewest optimisation steps of a run (module docstring).
        seeds: one run per seed, model and size; a seed draws the data, the initialisation and the order.
        quick: a smoke-test budget (recorded, and said in `describe`'s paragraph).

    Returns:
        JSON-serialisable metrics: the rows of curve.csv, the budget rule, the crossing point.
    """
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got quick={quick!r}")
    _check_run_args(recipe, sizes, min_steps, seeds)
    folder = Path(folder)
    n_test = len(load(recipe.data, "test", seed=seeds[0], n_train=sizes[0]))
    searched, search, chosen = chosen_rates(folder, recipe, sizes, min_steps, seeds[0])
    plan = [
        (c, point_configs(folder, c, n, recipe, min_steps, seeds, chosen[c.label]))
        for c in MODELS
        for n in sizes
    ]
    first = slowest_first(MODELS, search)
    order = sorted(plan, key=lambda p: first.index(p[0]))  # side by side, one thread each, slowest first
    run_trainings([cfg for _, cfgs in order for cfg in cfgs])
    rows = [_point(c, cfgs, max(sizes)) for c, cfgs in plan]
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "curve.csv", rows)
    if search:
        write_csv(folder / "search.csv", search)
    plot(folder)
    fractions = [n / max(sizes) for n in sizes]
    cnn = [r["test_acc_mean"] for r in rows if r["kind"] == "CNN"]
    att = [r["test_acc_mean"] for r in rows if r["kind"] == "attention"]
    cross = crossing(fractions, cnn, att)
    return {
        "data": recipe.data,
        "n_test": n_test,
        "n_train": list(sizes),
        "epochs": recipe.epochs,
        "min_steps": min_steps,
        "lrs": list(recipe.lrs),
        "chosen_lr": chosen,
        "search": search,
        "search_n_train": searched.n_train,
        "search_epochs": searched.search_epochs,
        "holdout": recipe.holdout if search else 0,
        "seeds": list(seeds),
        "quick": quick,
        "batch_size": recipe.batch_size,
        "crop_pad": recipe.crop_pad,
        "fitted_threshold": FITTED,
        "budget_rule": (
            f"a run on n images trains max({recipe.epochs}, ceil({min_steps} / (n // {recipe.batch_size}))) "
            f"epochs of batch {recipe.batch_size}: at least {min_steps} steps and {recipe.epochs} passes"
        ),
        "rows": rows,
        "cnn": MODELS[0].label,
        "attention": MODELS[1].label,
        "crossing_fraction": None if cross is None else round(cross, 4),
        "crossing_n_train": None if cross is None else round(cross * max(sizes)),
        "threads": torch.get_num_threads(),
    }


def plot(folder: Path) -> None:
    """Draw folder/data_efficiency.png from folder/curve.csv alone (the same CSV gives the same bytes).

    Test accuracy against training images on a log axis, one line per model with a mean ± std band over
    seeds, and the crossing point (`crossing`) marked when the attention net reaches the CNN.
    """
    from convattn.utils.plotting import plt, save_figure

    folder = Path(folder)
    rows = read_csv(folder / "curve.csv")
    if not rows:
        raise ValueError(f"{folder / 'curve.csv'} holds no rows")
    models = list(dict.fromkeys(r["model"] for r in rows))  # in the order of the file
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    curves: dict[str, _Curve] = {}  # the first model of each kind
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        n = [int(r["n_train"]) for r in mine]
        mean = [float(r["test_acc_mean"]) for r in mine]
        std = [float(r["test_acc_std"]) for r in mine]
        colour = f"C{i}"
        ax.plot(n, mean, "o-", color=colour, ms=4, label=model)
        low, high = (
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
        )
        ax.fill_between(n, low, high, color=colour, alpha=0.2, lw=0)
        curves.setdefault(mine[0]["kind"], ([float(r["fraction"]) for r in mine], n, mean))
    if "CNN" in curves and "attention" in curves:
        _mark_crossing(ax, curves["CNN"], curves["attention"])
    ticks = sorted({int(r["n_train"]) for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy (whole test split)")
    ax.set_title("Data efficiency: every run to its fit, or marked", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, folder / "data_efficiency.png")


def _mark_crossing(ax: Any, cnn: _Curve, att: _Curve) -> None:
    """A dashed line and a star where the attention net's curve reaches the CNN's, if it does."""
    (fractions, n, cnn_acc), (att_fractions, _, att_acc) = cnn, att
    if fractions != att_fractions:  # not measured at the same fractions: nothing to compare
        return
    cross = crossing(fractions, cnn_acc, att_acc)
    if cross is None:
        return
    images = cross * n[-1] / fractions[-1]  # the images are proportional to the fraction
    acc = float(np.interp(math.log(cross), np.log(fractions), cnn_acc))
    ax.axvline(images, color="0.3", ls="--", lw=1)
    ax.plot([images], [acc], "k*", ms=10, label=f"attention reaches the CNN: ~{images:.0f} images")


def _lead(gap: float) -> str:
    """'the CNN leads by x points' / 'the ViT leads by x points' / 'they are level'."""
    if abs(gap) < 0.005:
        return "they are level (within half a point)"
    who = "the CNN" if gap > 0 else "the ViT"
    return f"{who} leads by {100 * abs(gap):.1f} points"


def _verdict(m: dict[str, Any], cnn: list[dict[str, Any]], att: list[dict[str, Any]]) -> str:
    """Whether and where the ViT reaches the CNN, or how the gap moves."""
    first, last = (cnn[i]["test_acc_mean"] - att[i]["test_acc_mean"] for i in (0, -1))
    if m["crossing_fraction"] is None:
        # A change of the gap within the spread over seeds of its four ends is no trend.
        noise = max(0.005, math.hypot(*(r["test_acc_std"] for r in (cnn[0], cnn[-1], att[0], att[-1]))))
        trend = (
            "narrows, as the claim predicts,"
            if last < first - noise
            else "widens, against the claim,"
            if last > first + noise
            else "stays within the spread over seeds,"
        )
        grows = cnn[-1]["n_train"] // cnn[0]["n_train"]
        return (
            f"The ViT does not reach the CNN at this scale: the gap {trend} from "
            f"{100 * first:.1f} to {100 * last:.1f} points as the data grows {grows}-fold."
        )
    if first <= 0:
        return "The ViT is level or ahead already on the smallest set: no CNN advantage here."
    return (
        f"The ViT reaches the CNN at about {m['crossing_n_train']:,} training images (interpolated in "
        "log n), as the claim predicts."
    )


def _augment_words(crop_pad: int) -> str:
    """'no augmentation' or the random crop, as the recipe has it."""
    if crop_pad == 0:
        return "no augmentation"
    return "the data set's random crop" if crop_pad < 0 else f"random crops of padding {crop_pad}"


def _rate_sentence(m: dict[str, Any]) -> str:
    """How each model's learning rate was chosen (searched on validation data, or the one given)."""
    rates = ", ".join(f"{label} {lr:g}" for label, lr in m["chosen_lr"].items())
    if not m["search"]:
        return f"Learning rate: {rates}."
    tried = ", ".join(f"{lr:g}" for lr in m["lrs"])
    return (
        f"Each model's learning rate was chosen among {tried} by accuracy on {m['holdout']} held-out "
        f"validation images after {m['search_epochs']} epochs on {m['search_n_train']:,} (half that "
        f"size's run; the test split unseen): {rates}."
    )


def _fit_sentence(m: dict[str, Any]) -> str:
    """Which points did not fit their training set (computed from the final training accuracies)."""
    short = [r for r in m["rows"] if not r["fitted"]]
    threshold = m["fitted_threshold"]
    if not short:
        return (
            f" Every point fitted its training set (final training accuracy ≥ {threshold:.0%} on every "
            "seed), so the curves measure data, not optimisation."
        )
    named = "; ".join(
        f"{r['model']} at {r['n_train']:,} images ({r['train_acc_min']:.1%} on its worst seed)" for r in short
    )
    return (
        f" Not fitted (final training accuracy below {threshold:.0%} on some seed): {named}. There the "
        "budget, not the data, may limit the curve."
    )


def describe(m: dict[str, Any]) -> Description:
    """The claim, the paragraph written from the numbers of `run`, its figure and table."""
    claim = (
        "Cordonnier et al. 2020, Dosovitskiy et al. 2021 (ViT) and Ramachandran et al. 2019: convolution's "
        "locality is a prior that pays when data is scarce, so a CNN wins on small training sets, while "
        "self-attention, with weaker priors, catches up as the training set grows."
    )
    cnn = [r for r in m["rows"] if r["kind"] == "CNN"]
    att = [r for r in m["rows"] if r["kind"] == "attention"]
    ends = []
    for i, where in ((0, "smallest"), (-1, "largest")):
        c, a = cnn[i], att[i]
        ends.append(
            f"On the {where} set ({c['n_train']:,} images) the CNN reaches {c['test_acc_mean']:.1%} ± "
            f"{c['test_acc_std']:.1%} and the ViT {a['test_acc_mean']:.1%} ± {a['test_acc_std']:.1%}: "
            f"{_lead(c['test_acc_mean'] - a['test_acc_mean'])}."
        )
    n = len(m["seeds"])
    sizes = ", ".join(f"{s:,}" for s in m["n_train"])
    text = (
        f"{m['cnn']} and {m['attention']} trained on {m['data']} at {sizes} generated training images, "
        f"{n} seed{'s' if n > 1 else ''} each (a seed generates its own images), with one recipe: AdamW, "
        f"batch {m['batch_size']}, warm-up + cosine, {_augment_words(m['crop_pad'])}, and "
        f"{m['budget_rule']}. {_rate_sentence(m)} "
        f"Test accuracy is on the {m['n_test']} test images of each seed "
        f"({m['threads']} thread{'s' if m['threads'] > 1 else ''}). "
        + " ".join(ends)
        + " "
        + _verdict(m, cnn, att)
        + _fit_sentence(m)
    )
    if m["quick"]:
        text += " Quick mode: a smoke test of the pipeline, too small a budget to judge the claim."
    figures = [
        (
            "data_efficiency.png",
            "Test accuracy against training images (log scale), mean ± std over seeds; a star marks where "
            "the ViT reaches the CNN, if it does.",
        )
    ]
    tables = [
        (
            "curve.csv",
            "The learning curves: test and final training accuracy per model and size, epochs and steps.",
        )
    ]
    if m["search"]:
        tables.append(("search.csv", "The learning-rate search: validation accuracy of every try."))
    return Description(claim, text, figures, tables)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    b = ctx.budget
    seeds = tuple(ctx.seed + i for i in range(b.seeds))
    return run(folder, recipe=b.data_efficiency, sizes=b.sizes, min_steps=b.min_steps, seeds=seeds,
               quick=b.quick)  # fmt: skip


SECTION = register_section(
    Section("data_efficiency", "Data efficiency: accuracy vs training-set size", _run, plot, describe)
)
