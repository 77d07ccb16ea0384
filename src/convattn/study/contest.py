"""A fair comparison of models: one recipe for all, the learning rate of each chosen on validation data.

`contest` runs in two rounds, each spread over the worker processes of `runs.parallel`:

1. **Search.** Every contender trains once per learning rate of `Recipe.lrs`, on the training split
   minus `Recipe.holdout` class-stratified images, and is scored on those held-out images. Its learning
   rate is the one with the best validation accuracy (ties: the smaller rate). The test split is not
   read in this round.
2. **Final.** Every contender trains on the whole training split with its rate, once per seed, and is
   tested.

Beside them, in the same run and on the same splits: a linear classifier and an MLP on the raw pixels
(`analysis.floors`). Every network gets the same budget, `Recipe.epochs` epochs of the same batch size,
optimiser, schedule and augmentation. A network that ends below the linear floor is undertrained at
this budget, and the paragraph that reports it says so.

Speeds are measured apart from training, in the calling process alone: a training step (AdamW) and an
eval-mode forward over 256 test images, medians of 5 after a warm-up, with the caller's threads.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from convattn.analysis.bench import INFERENCE_REPEATS, device_name, inference_rate, training_rate
from convattn.analysis.floors import pixel_floors
from convattn.analysis.flops import count_macs
from convattn.analysis.summary import count_parameters
from convattn.data import load
from convattn.models.registry import create_model
from convattn.study.runs import run_trainings
from convattn.train import TrainConfig
from convattn.utils.plotting import bar_plot
from convattn.utils.records import read_csv, write_csv

__all__ = [
    "FITTED",
    "Contender",
    "Recipe",
    "contest",
    "fit_sentence",
    "plot_contest",
    "recipe_sentence",
    "search_rates",
    "seed_summary",
    "slowest_first",
]

FITTED = 0.99  # final training accuracy from which a model counts as having fit its training data


@dataclass(frozen=True)
class Contender:
    """A model of a comparison: a label, a registry name, its options, and whether it is a CNN."""

    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    cnn: bool = False


@dataclass(frozen=True)
class Recipe:
    """What every contender of a comparison trains with; only the learning rate is searched.

    Attributes:
        data: the data set (`convattn.data.load`).
        epochs: epochs of every final run (the budget unit).
        lrs: the learning rates searched on validation; one rate means no search.
        search_epochs: epochs of every search run (0: `epochs`). A shorter search ranks the rates by
            how fast they learn; the final runs all get the whole budget.
        holdout: training images held out as the validation split of the search.
        n_train: training images (0: the whole training split).
        batch_size, optimizer, weight_decay, warmup, crop_pad, position_lr_scale, threads: as in
            `TrainConfig` (threads 1: runs train side by side, one per worker process);
            crop_pad 0 turns the random crop off (the digits' 1-pixel crop moves the content of every
            2×2 patch).
    """

    data: str = "digits"
    epochs: int = 30
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    holdout: int = 288
    n_train: int = 0
    batch_size: int = 64
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    warmup: float = 0.05
    crop_pad: int = 0
    position_lr_scale: float = 1.0
    search_epochs: int = 0
    threads: int = 1

    def config(self, c: Contender, out: Path, *, lr: float, seed: int, search: bool) -> TrainConfig:
        """The run of contender `c`: a search run (validation split held out) or a final one."""
        epochs = (self.search_epochs or self.epochs) if search else self.epochs
        return TrainConfig(
            model=c.model, data=self.data, epochs=epochs, out=str(out), model_options=c.options,
            batch_size=self.batch_size, lr=lr, seed=seed, optimizer=self.optimizer,
            weight_decay=self.weight_decay, warmup=self.warmup, crop_pad=self.crop_pad,
            position_lr_scale=self.position_lr_scale, n_train=self.n_train,
            holdout=self.holdout if search else 0, eval_every=epochs, threads=self.threads,
        )  # fmt: skip


def _folder(out_dir: Path, c: Contender, tag: str) -> Path:
    label = hashlib.sha256(c.label.encode()).hexdigest()[:8]  # stable across processes
    return out_dir / "runs" / f"{c.model}-{label}-{tag}"


def search_rates(
    out_dir: Path, contenders: tuple[Contender, ...], recipe: Recipe, seed: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Train every contender at every rate of `recipe.lrs` with the validation split held out.

    Returns:
        (search table rows: model, lr, val_acc, train_acc, seconds (of training), chosen; the chosen
        rate per label, the best validation accuracy, the smaller rate on a tie). One rate: no runs, no
        rows, that rate.
    """
    if len(recipe.lrs) == 1:
        return [], {c.label: recipe.lrs[0] for c in contenders}
    plan = [(c, lr) for c in contenders for lr in recipe.lrs]
    cfgs = [
        recipe.config(c, _folder(out_dir, c, f"lr{lr:g}-val-s{seed}"), lr=lr, seed=seed, search=True)
        for c, lr in plan
    ]
    rows = [
        {"model": c.label, "lr": lr, "val_acc": round(h[-1]["val_acc"], 4),
         "train_acc": round(h[-1].get("train_eval_acc", h[-1]["train_acc"]), 4),
         "seconds": round(sum(row["seconds"] for row in h), 1)}
        for (c, lr), h in zip(plan, run_trainings(cfgs), strict=True)
    ]  # fmt: skip
    chosen = {}
    for c in contenders:
        mine = [r for r in rows if r["model"] == c.label]
        chosen[c.label] = max(mine, key=lambda r: (r["val_acc"], -r["lr"]))["lr"]
    for r in rows:
        r["chosen"] = r["lr"] == chosen[r["model"]]
    return rows, chosen


def slowest_first(contenders: tuple[Contender, ...], search: list[dict[str, Any]]) -> list[Contender]:
    """The contenders in the order their runs should start: the slowest search runs first (measured),
    so that no long run starts last and trains alone while the other workers idle."""
    took = {
        c.label: max((r["seconds"] for r in search if r["model"] == c.label), default=0.0) for c in contenders
    }
    return sorted(contenders, key=lambda c: -took[c.label])


def seed_summary(last: list[dict[str, Any]]) -> dict[str, float]:
    """The final epoch rows of one model's runs (one per seed) in four numbers: the mean and std of
    test accuracy, the mean and worst final training accuracy (eval mode where recorded)."""
    acc = [h["test_acc"] for h in last]
    fit = [h.get("train_eval_acc", h["train_acc"]) for h in last]
    return {
        "test_acc_mean": round(statistics.fmean(acc), 4),
        "test_acc_std": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
        "train_acc_mean": round(statistics.fmean(fit), 4),
        "train_acc_min": round(min(fit), 4),
    }


def _row(
    c: Contender, histories: list[list[dict[str, Any]]], lr: float, recipe: Recipe, device: str
) -> dict[str, Any]:
    """The comparison table's row of one contender: accuracy over seeds, size, cost and speed."""
    test = load(recipe.data, "test")
    x, y = test.tensors()
    x, y = x[:256], y[:256]  # (N, C, H, W), (N,): the images of the speed and MAC probes
    summary = seed_summary([h[-1] for h in histories])

    def build() -> torch.nn.Module:
        return create_model(
            c.model, num_classes=test.num_classes, in_chans=x.shape[1], image_size=x.shape[-1], **c.options
        ).to(device)

    model = build()
    return {
        "model": c.label,
        "kind": "CNN" if c.cnn else "attention",
        "data": recipe.data,
        "epochs": recipe.epochs,
        "lr": lr,
        "test_acc_mean": summary["test_acc_mean"],
        "test_acc_std": summary["test_acc_std"],
        "train_acc_mean": summary["train_acc_mean"],
        "seeds": len(histories),
        "params": count_parameters(model),
        "macs_per_image": count_macs(model.eval(), x[:1].to(device)),
        "train_images_per_s": round(training_rate(build(), x[:64].to(device), y[:64].to(device))),
        "inference_images_per_s": round(inference_rate(model, x.to(device))),
    }


def contest(
    out_dir: Path,
    contenders: tuple[Contender, ...],
    recipe: Recipe,
    *,
    seeds: tuple[int, ...],
    device: str = "cpu",
) -> dict[str, Any]:
    """Search, train and test every contender; write search.csv (if searched), compare.csv, floors.csv
    and compare_accuracy.png; return the metrics (rows, search, floors, the models below the linear
    floor, and those of them that did not fit their training data: undertrained)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    search, chosen = search_rates(out_dir, contenders, recipe, seeds[0])
    plan = [(c, s) for c in slowest_first(contenders, search) for s in seeds]
    cfgs = [recipe.config(c, _folder(out_dir, c, f"s{s}"), lr=chosen[c.label], seed=s, search=False)
            for c, s in plan]  # fmt: skip
    histories = run_trainings(cfgs)
    rows = [
        _row(c, [h for (cc, _), h in zip(plan, histories, strict=True) if cc is c], chosen[c.label],
             recipe, device)
        for c in contenders
    ]  # fmt: skip
    floors = pixel_floors(
        load(recipe.data, "train", n_train=recipe.n_train or None), load(recipe.data, "test"), seed=seeds[0]
    )
    if search:
        write_csv(out_dir / "search.csv", search)
    write_csv(out_dir / "compare.csv", rows)
    write_csv(out_dir / "floors.csv", [{"floor": k, "test_acc": round(v, 4)} for k, v in
                                       (("linear", floors.linear), ("mlp", floors.mlp))])  # fmt: skip
    plot_contest(out_dir)
    return _metrics(rows, search, floors.__dict__, recipe, seeds, device)


def _metrics(
    rows: list[dict[str, Any]], search: list[dict[str, Any]], floors: dict[str, Any], recipe: Recipe,
    seeds: tuple[int, ...], device: str,
) -> dict[str, Any]:  # fmt: skip
    def best(kind: str) -> dict[str, Any]:
        return max((r for r in rows if r["kind"] == kind), key=lambda r: r["test_acc_mean"])

    b_cnn, b_att = best("CNN"), best("attention")
    return {
        "rows": rows,
        "search": search,
        "recipe": asdict(recipe),
        "floors": floors,
        "below_floor": [r["model"] for r in rows if r["test_acc_mean"] < floors["linear"]],
        "undertrained": [
            r["model"] for r in rows if r["test_acc_mean"] < floors["linear"] and r["train_acc_mean"] < FITTED
        ],
        "data": recipe.data,
        "epochs": recipe.epochs,
        "n_train": recipe.n_train,
        "seeds": list(seeds),
        "best_cnn": b_cnn["model"],
        "best_cnn_acc": b_cnn["test_acc_mean"],
        "best_attention": b_att["model"],
        "best_attention_acc": b_att["test_acc_mean"],
        "threads": torch.get_num_threads(),
        "timing": _timing(device),
    }


def _timing(device: str) -> str:
    """How the table's speeds were measured, for the report."""
    return (
        "Speeds are measured apart from training, in one process alone: training images/s is the median "
        f"of {INFERENCE_REPEATS} AdamW steps on a batch of 64 after a warm-up step, inference images/s "
        f"the median of {INFERENCE_REPEATS} eval-mode passes over 256 test images after a warm-up, on "
        f"{device_name(device)} with {torch.get_num_threads()} torch thread(s). The training runs "
        "themselves use one thread each, several runs at a time."
    )


def plot_contest(out_dir: Path) -> None:
    """Draw compare_accuracy.png from compare.csv and floors.csv: test accuracy per model, mean ± std over
    seeds, with the linear and MLP floors as lines."""
    rows = read_csv(out_dir / "compare.csv")
    floors = {r["floor"]: float(r["test_acc"]) for r in read_csv(out_dir / "floors.csv")}
    r0 = rows[0]
    bar_plot(
        [r["model"] for r in rows],
        [float(r["test_acc_mean"]) for r in rows],
        out_dir / "compare_accuracy.png",
        errors=[float(r["test_acc_std"]) for r in rows],
        ylabel=f"test accuracy ({r0['data']}, {r0['epochs']} epochs, {r0['seeds']} seed(s))",
        ylim=(0.0, 1.0),
        hlines={f"{k} on pixels": v for k, v in floors.items()},
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def recipe_sentence(m: dict[str, Any]) -> str:
    """What every model trained with, and how its learning rate was chosen, from `contest`'s metrics."""
    r, n = m["recipe"], len(m["seeds"])
    crop = "no random crop" if r["crop_pad"] == 0 else f"random crops padded by {r['crop_pad']}"
    images = f"{r['n_train']:,}" if r["n_train"] else "all the"
    text = (
        f"Every model trained {_plural(r['epochs'], 'epoch')} (the budget unit) on {images} training images "
        f"of {r['data']} with {r['optimizer']}, batch {r['batch_size']}, weight decay {r['weight_decay']}, "
        f"a {r['warmup']:.0%} warm-up then cosine decay and {crop}, {_plural(n, 'seed')} each."
    )
    if m["search"]:
        rates = ", ".join(f"{lr:g}" for lr in r["lrs"])
        short = r.get("search_epochs", 0)
        during = f" after {_plural(short, 'epoch')}" if short and short != r["epochs"] else ""
        text += (
            f" Each model's learning rate was chosen from {rates} by its accuracy on {r['holdout']} "
            f"training images held out as a validation split{during} (the test split was not used); the "
            "search table lists every try."
        )
    else:
        text += f" All used the same learning rate, {r['lrs'][0]:g} (no search)."
    return text


def fit_sentence(m: dict[str, Any]) -> str:
    """The floors, the models below the linear floor, and how well the models fit their training data."""
    f, rows = m["floors"], m["rows"]
    fit = [r["train_acc_mean"] for r in rows]
    text = (
        f" On the same splits, a linear classifier on the raw pixels reaches {f['linear']:.1%} and an MLP "
        f"{f['mlp']:.1%} test accuracy. Final training accuracy of the networks (eval mode, no "
        f"augmentation): {min(fit):.0%}–{max(fit):.0%}."
    )
    low, below = m["undertrained"], [name for name in m["below_floor"] if name not in m["undertrained"]]
    if low:
        text += (
            f" Below the linear floor without fitting their training data (final training accuracy under "
            f"{FITTED:.0%}), and so undertrained at this budget rather than evidence about their "
            f"architecture: {', '.join(low)}."
        )
    if below:
        text += (
            f" Below the linear floor although they fit their training data (≥ {FITTED:.0%}), so they "
            f"generalise worse than a linear model on these pixels: {', '.join(below)}."
        )
    if not low and not below:
        text += " Every network ends above the linear floor."
    return text
