"""Locality vs long range: the data-efficiency pair on a task where nearby pixels decide and one where far
ones do.

`shapes` (which of 4 shapes is drawn) is local; in `long_range` two markers near opposite corners decide
the label (same colour or not), and each marker alone says nothing (`convattn.data.generated`). Small
kernels suit the first; global self-attention, which relates any two patches in one layer, should win the
second (Dosovitskiy et al. 2021; Cordonnier et al. 2020 on what attention can do that a conv cannot).

The models and the recipe are those of the data-efficiency curve at its largest size (the CNN and the
ViT, each with the learning rate its search chose on shapes validation data, trained until they fit), so
the shapes runs are the curve's own runs, reused, and only long_range trains here. Beside them, on the
same splits: the linear and MLP floors on raw pixels (the MLP, too, sees every pixel at once).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from convattn.analysis.floors import pixel_floors
from convattn.data import load
from convattn.study.contest import FITTED, Contender, Recipe, seed_summary, slowest_first
from convattn.study.runs import run_trainings
from convattn.study.section import Context, Description, Section, register_section
from convattn.study.sections.data_efficiency import MODELS, chosen_rates, point_configs
from convattn.utils.records import read_csv, write_csv

__all__ = ["CHANCE_MARGIN", "SECTION", "TASKS", "describe", "plot", "run"]

TASKS = ("shapes", "long_range")
CHANCE_MARGIN = 0.05  # a test accuracy within this of chance (1 / classes) counts as chance


def _row(
    task: str, c: Contender, histories: list[list[dict[str, Any]]], n: int, lr: float, chance: float
) -> dict[str, Any]:
    last = [h[-1] for h in histories]
    accs = [h["test_acc"] for h in last]
    return {
        "task": task,
        "model": c.label,
        "kind": "CNN" if c.cnn else "attention",
        "n_train": n,
        "seeds": len(last),
        "lr": lr,
        "epochs": len(histories[0]),
        "steps": last[0]["step"],
        **seed_summary(last),
        "test_acc_min": round(min(accs), 4),
        "test_acc_max": round(max(accs), 4),
        "seeds_above_chance": sum(a >= chance + CHANCE_MARGIN for a in accs),
    }


def _floors(n: int, seed: int) -> list[dict[str, Any]]:
    """The linear and MLP floors on the raw pixels of each task (n training images, seed `seed`)."""
    rows = []
    for task in TASKS:
        train, test = (load(task, split, seed=seed, n_train=n) for split in ("train", "test"))
        f = pixel_floors(train, test, seed=seed)
        rows += [{"task": task, "floor": "linear", "test_acc": round(f.linear, 4)},
                 {"task": task, "floor": "mlp", "test_acc": round(f.mlp, 4)}]  # fmt: skip
    return rows


def run(
    folder: Path,
    *,
    recipe: Recipe,
    sizes: tuple[int, ...],
    min_steps: int,
    seeds: dict[str, tuple[int, ...]],
    quick: bool,
) -> dict[str, Any]:
    """Train the data-efficiency pair on every task at the curve's largest size; write locality.csv,
    floors.csv and locality_accuracy.png.

    Args:
        folder: the section folder (its run folders live in the study's shared runs).
        recipe, sizes, min_steps: the data-efficiency curve's (`data_efficiency.run`); its rate search
            (on shapes) chooses each model's rate, and the runs take the largest size's epochs.
        seeds: the seeds of each task of TASKS (a seed draws the data, the initialisation and the order).
        quick: a smoke-test budget (said in the paragraph).
    """
    if set(seeds) != set(TASKS) or not all(seeds[t] for t in TASKS):
        raise ValueError(f"seeds must give at least one seed for each of {TASKS}, got {seeds=}")
    folder = Path(folder)
    n = max(sizes)
    first = seeds[TASKS[0]][0]
    _, search, chosen = chosen_rates(folder / "search", recipe, sizes, min_steps, first)
    plan = [
        (task, c, point_configs(folder / task, c, n, replace(recipe, data=task), min_steps, seeds[task],
                                chosen[c.label]))
        for task in TASKS
        for c in MODELS
    ]  # fmt: skip
    start = slowest_first(MODELS, search)
    # The floors fit in this process while the workers train (a daemon thread: Ctrl-C does not wait).
    floors: list[dict[str, Any]] = []
    fitter = threading.Thread(target=lambda: floors.extend(_floors(n, first)), daemon=True)
    fitter.start()
    ordered = sorted(plan, key=lambda p: start.index(p[1]))  # the slower model's runs first
    got = iter(run_trainings([cfg for *_, cfgs in ordered for cfg in cfgs]))
    histories = {(task, c.label): [next(got) for _ in cfgs] for task, c, cfgs in ordered}
    chance = {task: 1.0 / load(task, "test", seed=first, n_train=n).num_classes for task in TASKS}
    rows = [_row(task, c, histories[task, c.label], n, chosen[c.label], chance[task]) for task, c, _ in plan]
    fitter.join()
    if len(floors) != 2 * len(TASKS):
        raise RuntimeError("the pixel floors failed; see the traceback above")
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "locality.csv", rows)
    write_csv(folder / "floors.csv", floors)
    plot(folder)
    return {
        "rows": rows,
        "floors": floors,
        "chance": chance,
        "n_train": n,
        "seeds": {task: list(s) for task, s in seeds.items()},
        "chosen_lr": chosen,
        "batch_size": recipe.batch_size,
        "fitted_threshold": FITTED,
        "quick": quick,
        "threads": torch.get_num_threads(),
    }


def plot(folder: Path) -> None:
    """locality_accuracy.png from locality.csv and floors.csv: test accuracy per task and model (mean ±
    std over seeds), the linear (dashed) and MLP (dotted) floors on pixels as red ticks per task."""
    from convattn.utils.plotting import plt, save_figure

    folder = Path(folder)
    rows, floors = read_csv(folder / "locality.csv"), read_csv(folder / "floors.csv")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    width = 0.8 / len(models)
    for m, model in enumerate(models):
        mine = [next(r for r in rows if r["task"] == t and r["model"] == model) for t in tasks]
        xs = [t + (m - (len(models) - 1) / 2) * width for t in range(len(tasks))]
        ax.bar(xs, [float(r["test_acc_mean"]) for r in mine], width * 0.9, label=model, color=f"C{m}",
               yerr=[float(r["test_acc_std"]) for r in mine], capsize=3)  # fmt: skip
    for t, task in enumerate(tasks):
        for f, style in (("linear", "--"), ("mlp", ":")):
            value = next(float(r["test_acc"]) for r in floors if r["task"] == task and r["floor"] == f)
            ax.plot([t - 0.45, t + 0.45], [value, value], color="#d62728", ls=style, lw=1,
                    label=f"{f} on pixels" if t == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(f"test accuracy ({rows[0]['n_train']} training images)")
    ax.set_title("Locality vs long range", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, folder / "locality_accuracy.png")


def _at_chance(r: dict[str, Any], chance: float) -> bool:
    return r["test_acc_mean"] < chance + CHANCE_MARGIN


def _pair(m: dict[str, Any], task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CNN's and the ViT's rows on `task`."""

    def row(kind: str) -> dict[str, Any]:
        return next(r for r in m["rows"] if r["task"] == task and r["kind"] == kind)

    return row("CNN"), row("attention")


def _gap(m: dict[str, Any], task: str) -> tuple[float, float]:
    """(the ViT's lead over the CNN on `task`, the smallest lead that counts: 1 point or twice the spread)."""
    cnn, att = _pair(m, task)
    noise = max(0.01, 2 * (cnn["test_acc_std"] ** 2 + att["test_acc_std"] ** 2) ** 0.5)
    return att["test_acc_mean"] - cnn["test_acc_mean"], noise


def _learned_where_the_cnn_did_not(cnn: dict[str, Any], att: dict[str, Any]) -> bool:
    """Whether some of the ViT's seeds left chance and none of the CNN's did."""
    return att.get("seeds_above_chance", 0) > 0 and cnn.get("seeds_above_chance", 0) == 0


def _task_sentence(m: dict[str, Any], task: str) -> str:
    """Both models' accuracy on `task`, the lead, the floors, and who is at chance or did not fit."""
    chance = m["chance"][task]
    cnn, att = _pair(m, task)
    gap, noise = _gap(m, task)
    lead = (
        f"the ViT leads by {100 * gap:.1f} points"
        if gap > noise
        else f"the CNN leads by {100 * -gap:.1f} points"
        if -gap > noise
        else "they are level within the spread"
    )
    f = {r["floor"]: r["test_acc"] for r in m["floors"] if r["task"] == task}

    def acc(r: dict[str, Any]) -> str:
        spread = f" ± {r['test_acc_std']:.1%}" if r["seeds"] > 1 else ""
        return f"{r['model']} {r['test_acc_mean']:.1%}{spread} ({r['seeds']} seed{'s' * (r['seeds'] > 1)})"

    text = (
        f"On {task} (chance {chance:.0%}) {lead}: {acc(cnn)} against {acc(att)}; on raw pixels a linear "
        f"classifier reaches {f['linear']:.1%} and an MLP {f['mlp']:.1%}."
    )
    for r in (cnn, att):
        fitted = r["train_acc_min"] >= m["fitted_threshold"]
        if _at_chance(r, chance) and r["train_acc_mean"] < chance + CHANCE_MARGIN:
            text += (
                f" {r['model']} is at chance on its training images too ({r['train_acc_mean']:.1%}): it "
                "learned nothing of the task at this budget."
            )
        elif _at_chance(r, chance):
            how = (
                "fits its training images"
                if fitted
                else f"reaches {r['train_acc_mean']:.1%} on its training images"
            )
            text += (
                f" {r['model']} {how} but tests at chance: it memorises them instead of learning the rule."
            )
        elif not fitted:
            text += (
                f" {r['model']} did not fit its training images ({r['train_acc_min']:.1%} on its worst seed, "
                f"under {m['fitted_threshold']:.0%}): the budget may limit it."
            )
        above = r.get("seeds_above_chance")
        if above is not None and 0 < above < r["seeds"]:
            text += (
                f" {r['model']} left chance on {above} of its {r['seeds']} seeds (test "
                f"{r['test_acc_min']:.1%} to {r['test_acc_max']:.1%}): at this budget its result depends on "
                "the seed."
            )
    return text


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Local operators (small kernels) suit tasks where nearby pixels decide the label; global "
        "self-attention should win when the label depends on pixels far apart."
    )

    (local, local_noise), (far, far_noise) = _gap(m, "shapes"), _gap(m, "long_range")
    far_rows = _pair(m, "long_range")
    if all(_at_chance(r, m["chance"]["long_range"]) for r in far_rows):
        verdict = (
            "Both models test at chance on long_range, so neither lead there measures anything: the run "
            "cannot judge the claim at this budget."
        )
    elif far > far_noise and local <= local_noise:
        verdict = (
            "The run supports the claim: global attention wins where the label depends on far-apart "
            "pixels, and not where nearby pixels decide."
        )
    elif far > far_noise:
        verdict = (
            "Global attention leads on both tasks: the run shows its reach, but no advantage of locality."
        )
    elif far > 0 and _learned_where_the_cnn_did_not(*far_rows):
        cnn, att = far_rows
        verdict = (
            f"On long_range the ViT left chance on {att['seeds_above_chance']} of its {att['seeds']} seeds "
            f"and the CNN on none of its {cnn['seeds']}, but the ViT's mean lead ({100 * far:.1f} points) is "
            f"within the spread over seeds ({100 * far_noise:.1f}): the run leans toward the claim without "
            "settling it at this budget."
        )
    else:
        verdict = (
            "Global attention does not lead on long_range: the run does not support the claim at this budget."
        )
    rates = ", ".join(f"{label} {lr:g}" for label, lr in m["chosen_lr"].items())
    text = (
        f"The data-efficiency pair trained on {m['n_train']:,} generated images of each task with that "
        f"curve's recipe (batch {m['batch_size']}, AdamW, warm-up + cosine, no augmentation, the largest "
        f"size's epochs) and the rates its search chose on shapes validation data ({rates}); the shapes "
        f"runs are the curve's own. " + " ".join(_task_sentence(m, t) for t in TASKS) + " " + verdict
        + f" ({m['threads']} thread{'s' * (m['threads'] > 1)} in this process; the runs one each.)"
    )  # fmt: skip
    if m["quick"]:
        text += " Quick mode: a smoke test of the pipeline, too small a budget to judge the claim."
    figures = [("locality_accuracy.png", "Test accuracy per task, mean ± std over seeds; red: pixel floors.")]
    tables = [
        ("locality.csv", "Each model on each task: test and final training accuracy, seeds, steps, rate."),
        ("floors.csv", "The linear and MLP floors on raw pixels, per task."),
    ]
    return Description(claim, text, figures, tables)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    b = ctx.budget
    seeds = {
        "shapes": tuple(ctx.seed + i for i in range(b.seeds)),  # the curve's own runs: no extra cost
        "long_range": tuple(ctx.seed + i for i in range(b.locality_seeds)),
    }
    return run(folder, recipe=b.data_efficiency, sizes=b.sizes, min_steps=b.min_steps, seeds=seeds,
               quick=b.quick)  # fmt: skip


SECTION = register_section(Section("locality", "Locality vs long range", _run, plot, describe))
