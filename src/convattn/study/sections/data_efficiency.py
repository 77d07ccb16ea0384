"""Data efficiency: test accuracy of a CNN and of a self-attention net against the number of training images.

The claim (Cordonnier et al. 2020; Dosovitskiy et al. 2021, ViT; Ramachandran et al. 2019): convolution's
locality is a prior that pays when data is scarce, so a CNN wins on small training sets, while
self-attention, with weaker priors, catches up (and may overtake) as the data grows.

`run` trains `cnn_digits` and `attention_digits` (quadratic encoding, hidden 64, 2 layers) on nested
class-stratified subsets of the 1,438 training digits (`convattn.data.load` with ``n_train``) and
measures test accuracy on all 359 test digits. The seed picks the subset as well as the initialisation
and batch order, so the spread over seeds includes the luck of the draw of the subset.

Budget rule, equal optimisation steps: every run takes the steps of ``epochs`` epochs over the largest
subset measured (the whole training split in the study), ``S = epochs * (n_max // 64)`` steps of batch 64,
so a subset of n images trains ``ceil(S / (n // 64))`` epochs. Equal epochs would give a run on 10 % of the
data a tenth of the updates, and the curve would measure optimisation, not data. The epochs are capped
at ``EPOCH_CAP * epochs``: the trainer evaluates the whole test split after every epoch, which for the
attention net costs about as much as three training steps, so a run on a subset a hundred times smaller
than the largest would mostly evaluate. The study's fractions never reach the cap; a capped run is marked
in the metrics. `crossing` finds where the attention net's curve meets the CNN's.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convattn.data import load
from convattn.study.contest import Contender
from convattn.study.runs import run_training, run_trainings
from convattn.study.section import Context, Description, Section, register_section
from convattn.train import TrainConfig
from convattn.utils.records import read_csv, write_csv

__all__ = [
    "EPOCH_CAP",
    "MODELS",
    "SECTION",
    "crossing",
    "describe",
    "epochs_for",
    "plot",
    "run",
]

DATA = "digits"
BATCH_SIZE = 64
EPOCH_CAP = 20  # at most this many times `epochs` epochs per run (see the module docstring)
UNDERFIT = 0.9  # below this training accuracy on the smallest subset, a model is short of steps, not data
_Curve = tuple[list[float], list[int], list[float]]  # fractions, training images, mean test accuracy
MODELS = (
    Contender("CNN (3 conv layers)", "cnn_digits", cnn=True),
    Contender("Attention net, quadratic", "attention_digits", {"encoding": "quadratic"}),
)


def epochs_for(n_train: int, n_max: int, epochs: int, batch_size: int = BATCH_SIZE) -> int:
    """Epochs on `n_train` images that take the optimisation steps of `epochs` epochs on `n_max` images.

    Args:
        n_train: images of this run; at least one batch.
        n_max: images of the largest subset of the curve, >= n_train.
        epochs: epochs on the largest subset.
        batch_size: images per step; an epoch takes n // batch_size whole batches.

    Returns:
        ``ceil(epochs * (n_max // batch_size) / (n_train // batch_size))``, at most ``EPOCH_CAP * epochs``.
    """
    for name, value in (
        ("n_train", n_train),
        ("n_max", n_max),
        ("epochs", epochs),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    if not batch_size <= n_train <= n_max:
        raise ValueError(f"need batch_size <= n_train <= n_max, got {batch_size=}, {n_train=}, {n_max=}")
    budget = epochs * (n_max // batch_size)
    return min(math.ceil(budget / (n_train // batch_size)), EPOCH_CAP * epochs)


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    """The fractions as floats; ValueError unless they increase strictly within (0, 1]."""
    bad = any(isinstance(x, bool) or not isinstance(x, int | float) or not 0 < x <= 1 for x in fractions)
    if bad or any(a >= b for a, b in itertools.pairwise(fractions)):
        raise ValueError(f"fractions must increase strictly within (0, 1], got {fractions=}")
    return [float(x) for x in fractions]


def crossing(fractions: Sequence[float], cnn_acc: Sequence[float], att_acc: Sequence[float]) -> float | None:
    """The smallest training fraction at which the attention net's accuracy reaches the CNN's.

    The difference d = att_acc - cnn_acc is interpolated linearly in the fraction between measured
    points; the answer is the first place where d reaches 0 (a measured fraction when d is exactly 0 there).

    Args:
        fractions: measured training fractions, strictly increasing, in (0, 1].
        cnn_acc: the CNN's accuracy at each fraction.
        att_acc: the attention net's accuracy at each fraction.

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
            return f[i - 1] + (f[i] - f[i - 1]) * -d[i - 1] / (d[i] - d[i - 1])
    return None


def _check_run_args(
    fractions: tuple[float, ...], epochs: int, seeds: tuple[int, ...], n_full: int
) -> list[int]:
    """Validate run's arguments; the training images of each fraction."""
    if not isinstance(fractions, tuple | list) or not fractions:
        raise ValueError(f"fractions must be a non-empty tuple, got {fractions=}")
    _check_fractions(fractions)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs=}")
    if (
        not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        or len(set(seeds)) < len(seeds)
    ):
        raise ValueError(f"seeds must be distinct ints, at least one, got {seeds=}")
    sizes = [round(f * n_full) for f in fractions]
    small = [(f, n) for f, n in zip(fractions, sizes, strict=True) if n < BATCH_SIZE]
    if small:
        raise ValueError(
            f"every fraction needs one batch of {BATCH_SIZE} images, got (fraction, images) {small}"
        )
    return sizes


def _config(
    folder: Path, c: Contender, n: int, n_full: int, epochs: int, eval_every: int, seed: int
) -> TrainConfig:
    """One run of the curve (one thread: runs train side by side in worker processes).

    The whole training split is asked for as n_train=0, the trainer's default. A small subset trains
    many short epochs: it is tested every `eval_every` epochs (and after the last), so that evaluation
    does not cost more than its training.
    """
    whole = n == n_full
    return TrainConfig(
        model=c.model, data=DATA, epochs=epochs, out=str(folder / "runs" / f"{c.model}-n{n}-s{seed}"),
        model_options=c.options, batch_size=BATCH_SIZE, seed=seed, data_seed=0 if whole else seed,
        n_train=0 if whole else n, eval_every=eval_every, threads=1,
    )  # fmt: skip


def _configs(
    folder: Path, c: Contender, n: int, sizes: list[int], n_full: int, epochs: int, seeds: tuple[int, ...]
) -> list[TrainConfig]:
    """The runs of one point of a curve, one per seed."""
    n_epochs = epochs_for(n, max(sizes), epochs)
    every = max(1, n_epochs // epochs)  # about as many tests as the largest subset's run has
    return [_config(folder, c, n, n_full, n_epochs, every, seed) for seed in seeds]


def _point(
    folder: Path,
    c: Contender,
    f: float,
    n: int,
    sizes: list[int],
    n_full: int,
    epochs: int,
    seeds: tuple[int, ...],
) -> dict[str, Any]:
    """One point of a curve: model `c` on `n` training images (fraction `f`), over the seeds."""
    cfgs = _configs(folder, c, n, sizes, n_full, epochs, seeds)
    last = [run_training(cfg)[-1] for cfg in cfgs]  # trained already by `run`: reused here
    acc = [h["test_acc"] for h in last]
    return {
        "model": c.label,
        "kind": "CNN" if c.cnn else "attention",
        "fraction": f,
        "n_train": n,
        "seeds": len(seeds),
        "test_acc_mean": round(statistics.fmean(acc), 4),
        "test_acc_std": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
        "epochs": cfgs[0].epochs,
        "steps": last[0]["step"],
        "train_acc_mean": round(statistics.fmean(h["train_acc"] for h in last), 4),
    }  # fmt: skip


def run(
    folder: Path, *, fractions: tuple[float, ...], epochs: int, seeds: tuple[int, ...], quick: bool
) -> dict[str, Any]:
    """Train both models on every fraction of the training digits; write curve.csv and data_efficiency.png.

    Args:
        folder: where curve.csv, the figure and the run folders (runs/<model>-n<N>-s<seed>) go; finished
            runs are reused and interrupted ones resumed.
        fractions: of the 1,438 training digits, strictly increasing in (0, 1]; each at least 64 images.
        epochs: epochs over the largest subset; every run gets the same steps (module docstring).
        seeds: one run per seed, model and fraction; a seed picks the subset, the initialisation and
            the order.
        quick: a smoke-test budget (recorded, and said in `describe`'s paragraph).

    Returns:
        JSON-serialisable metrics: the rows of curve.csv, the budget rule, the crossing point.
    """
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got quick={quick!r}")
    folder = Path(folder)
    n_full, n_test = len(load(DATA, "train")), len(load(DATA, "test"))
    sizes = _check_run_args(fractions, epochs, seeds, n_full)
    steps = epochs * (max(sizes) // BATCH_SIZE)
    run_trainings([
        cfg for c in MODELS for n in sizes for cfg in _configs(folder, c, n, sizes, n_full, epochs, seeds)
    ])  # fmt: skip
    rows = [
        _point(folder, c, f, n, sizes, n_full, epochs, seeds)
        for c in MODELS
        for f, n in zip(fractions, sizes, strict=True)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "curve.csv", rows)
    plot(folder)
    cnn = [r["test_acc_mean"] for r in rows if r["kind"] == "CNN"]
    att = [r["test_acc_mean"] for r in rows if r["kind"] == "attention"]
    cross = crossing(fractions, cnn, att)
    capped = [n for n in sizes if epochs_for(n, max(sizes), epochs) * (n // BATCH_SIZE) < steps]
    return {
        "data": DATA,
        "n_train_full": n_full,
        "n_test": n_test,
        "fractions": list(fractions),
        "n_train": sizes,
        "epochs": epochs,
        "seeds": list(seeds),
        "quick": quick,
        "batch_size": BATCH_SIZE,
        "steps_budget": steps,
        "budget_rule": (
            f"equal optimisation steps: {steps} steps of {BATCH_SIZE} images per run ({epochs} epoch(s) over "
            f"the largest subset, {max(sizes)} images); a subset of n images trains ceil({steps} / (n // "
            f"{BATCH_SIZE})) epochs, at most {EPOCH_CAP * epochs}"
        ),
        "capped_n_train": capped,
        "rows": rows,
        "cnn": MODELS[0].label,
        "attention": MODELS[1].label,
        "crossing_fraction": None if cross is None else round(cross, 4),
        "crossing_n_train": None if cross is None else round(cross * n_full),
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
    ax.set_title("Data efficiency: equal optimisation steps per run", fontsize=10)
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
    acc = float(np.interp(cross, fractions, cnn_acc))
    ax.axvline(images, color="0.3", ls="--", lw=1)
    ax.plot([images], [acc], "k*", ms=10, label=f"attention reaches the CNN: ~{images:.0f} images")


def _lead(gap: float) -> str:
    """'the CNN leads by x points' / 'the attention net leads by x points' / 'they are level'."""
    if abs(gap) < 0.005:
        return "they are level (within half a point)"
    who = "the CNN" if gap > 0 else "the attention net"
    return f"{who} leads by {100 * abs(gap):.1f} points"


def _verdict(m: dict[str, Any], cnn: list[dict[str, Any]], att: list[dict[str, Any]]) -> str:
    """Whether and where the attention net reaches the CNN, or how the gap moves."""
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
        verdict = (
            f"The attention net does not reach the CNN at this scale: the gap {trend} from "
            f"{100 * first:.1f} to {100 * last:.1f} points as the data grows."
        )
    elif first <= 0:
        verdict = "The attention net is level or ahead already on the smallest subset: no CNN advantage here."
    else:
        verdict = (
            f"The attention net reaches the CNN at about {m['crossing_n_train']:,} training images "
            f"({m['crossing_fraction']:.0%} of the set, interpolated), as the claim predicts."
        )
    return verdict


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
            f"On the {where} subset ({c['n_train']:,} images, {c['fraction']:.0%}) the CNN reaches "
            f"{c['test_acc_mean']:.1%} and the attention net {a['test_acc_mean']:.1%}: "
            f"{_lead(c['test_acc_mean'] - a['test_acc_mean'])}."
        )
    verdict = _verdict(m, cnn, att)
    if att[0]["train_acc_mean"] < UNDERFIT:
        verdict += (
            " Caveat: the attention net has not fit even the smallest subset (training accuracy over its "
            f"last epoch {att[0]['train_acc_mean']:.0%}, the CNN's {cnn[0]['train_acc_mean']:.0%}), so with "
            f"{m['steps_budget']} steps its curve is limited by optimisation, not by data; this budget "
            "cannot show it catching up."
        )
    n = len(m["seeds"])
    text = (
        f"Both models trained on nested class-stratified subsets of the {m['n_train_full']:,} training "
        f"digits with AdamW, batch {m['batch_size']} and the same schedule, {n} seed{'s' if n > 1 else ''} "
        f"each (a seed draws the subset too), and the same number of optimisation steps, "
        f"{m['steps_budget']}: smaller subsets get proportionally more epochs. Test accuracy is on all "
        f"{m['n_test']} test digits "
        f"({m['threads']} thread{'s' if m['threads'] > 1 else ''}). " + " ".join(ends) + " " + verdict
    )
    if m["quick"]:
        text += " Quick mode: a smoke test of the pipeline, too small a budget to judge the claim."
    figures = [
        (
            "data_efficiency.png",
            "Test accuracy against training images (log scale), mean ± std over seeds, equal steps per run; "
            "a star marks where the attention net reaches the CNN, if it does.",
        )
    ]
    tables = [("curve.csv", "The learning curves: accuracy per model and subset, with the epochs and steps.")]
    return Description(claim, text, figures, tables)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    b = ctx.budget
    seeds = tuple(ctx.seed + i for i in range(b.seeds))
    return run(folder, fractions=b.fractions, epochs=b.epochs, seeds=seeds, quick=b.quick)


SECTION = register_section(
    Section("data_efficiency", "Data efficiency: accuracy vs training-set size", _run, plot, describe)
)
