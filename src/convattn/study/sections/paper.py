"""The paper-scale section of the study: Cordonnier et al. 2020, Table 1, re-run with their recipe.

Cordonnier, Loukas and Jaggi (ICLR 2020, §4, Table 1) train ResNet-18 and their attention-only network
(quadratic, learned relative and learned relative + content encodings) on CIFAR-10 and report test
accuracy, parameters and FLOPs. `run` trains the same four models with their recipe (`RECIPE`) and writes
the published numbers beside the measured ones: accuracy, exact parameters, multiply-adds per image with
the attention products counted (their FLOPs counter left those out), and training and inference
images per second on this machine.

Recipe gaps (what `TrainConfig` cannot express): their ResNet-18 baseline used step decay (÷10 at epochs
80/150/250) instead of warm-up + cosine, so here it gets the attention networks' schedule. Weight decay
here also skips norms and biases (the trainer's rule), not only the attention centres and spreads.

Under torchrun every process calls `run`: all of them train (the trainer splits each batch of 100 over
the processes, so their number must divide 100), only rank 0 measures and writes table.csv,
learning_curve.csv and the figures, and the others wait at a barrier until it has, then every process
returns the same metrics, read back from table.csv. One process group serves every run: it is made here
and the trainer joins it (a group re-created for each run could read the previous one's rendezvous
keys and hang).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from convattn.analysis.bench import INFERENCE_REPEATS, inference_rate
from convattn.analysis.flops import count_macs
from convattn.analysis.summary import count_parameters
from convattn.data import load
from convattn.models.registry import create_model, model_info
from convattn.study.runs import run_training
from convattn.study.section import Context, Description, Section, register_section
from convattn.train import TrainConfig, read_history
from convattn.utils import dist, records
from convattn.utils.plotting import save_figure
from convattn.utils.records import write_csv

__all__ = ["PAPER_EPOCHS", "PUBLISHED", "RECIPE", "SECTION", "PublishedRow", "describe", "plot", "run"]

PAPER_EPOCHS = 300


@dataclass(frozen=True)
class PublishedRow:
    """One row of Cordonnier et al.'s Table 1.

    Attributes:
        label: the model as the paper names it.
        model: the registry name of our implementation.
        accuracy: published CIFAR-10 test accuracy.
        params_m: published parameters, in millions.
        flops_b: their FLOPs column, in billions (their counter ignored the attention products).
        code_params: the exact parameter count of the model their published code builds.
    """

    label: str
    model: str
    accuracy: float
    params_m: float
    flops_b: float
    code_params: int


PUBLISHED = (
    PublishedRow("ResNet-18", "resnet18_cifar", 0.938, 11.2, 0.56, 11_173_962),
    PublishedRow("SA quadratic emb.", "attention_net_quadratic", 0.938, 12.1, 6.2, 12_086_844),
    PublishedRow("SA learned emb.", "attention_net_relative", 0.918, 12.3, 6.2, 12_278_682),
    # The paper prints 29.5M; their code builds 29,601,882 parameters.
    PublishedRow(
        "SA learned emb. + content", "attention_net_relative_content", 0.871, 29.5, 15.0, 29_601_882
    ),
)

# Their recipe (§4 and their code) as TrainConfig fields; the module docstring lists what differs.
RECIPE: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "warmup": 0.05,  # linear warm-up over the first 5% of the steps, then cosine decay to 0
    "batch_size": 100,
    "crop_pad": 4,
    "flip": True,
    "label_smoothing": 0.0,
    "clip_grad": 0.0,
    "epochs": PAPER_EPOCHS,
}

TABLE = "table.csv"
CURVES = "learning_curve.csv"


def _check(data: str, epochs: int | None, device: str, models: tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate the arguments of `run`; return the registry names to train, one per published row."""
    name, _, path = data.partition(":") if isinstance(data, str) else ("", "", "")
    if name != "cifar10" or not path:
        raise ValueError(
            f"the paper's Table 1 is on CIFAR-10: data must be 'cifar10:PATH', got data={data!r} "
            "(the published numbers would not apply to another data set)"
        )
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0):
        raise ValueError(f"epochs must be a positive int or None (the paper's {PAPER_EPOCHS}), got {epochs=}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device=}")
    names = tuple(models) if models is not None else tuple(r.model for r in PUBLISHED)
    if len(names) != len(PUBLISHED):
        raise ValueError(f"models needs one name per published row ({len(PUBLISHED)}), got {len(names)}")
    for n in names:
        model_info(n)  # an unknown name is a ValueError with suggestions
    return names


@torch.no_grad()
def _measure(
    row: PublishedRow, name: str, history: list[dict[str, Any]], images: torch.Tensor, device: str
) -> dict[str, Any]:
    """The table row of one trained model: published and measured numbers side by side."""
    model = create_model(name, num_classes=10, in_chans=3, image_size=32)
    macs = count_macs(model.eval(), images[:1])  # one image, on the CPU (model not moved yet)
    return {
        "model": row.label,
        "registry": name,
        "published_acc": row.accuracy,
        "measured_acc": round(history[-1]["test_acc"], 4),
        "published_params_m": row.params_m,
        "measured_params": count_parameters(model),
        "published_flops_b": row.flops_b,
        "measured_macs_per_image": macs,
        "epochs": len(history),
        "train_images_per_s": round(statistics.median(h["images_per_s"] for h in history)),
        "inference_images_per_s": round(inference_rate(model.to(device), images.to(device))),
    }


def _write_tables(
    folder: Path, names: tuple[str, ...], histories: list[list[dict[str, Any]]], data: str, device: str
) -> None:
    """table.csv (published beside measured, one row per model) and learning_curve.csv (per epoch)."""
    images = load(data, "test").tensors()[0][:256]  # (N, 3, 32, 32) normalised test images
    rows = [
        _measure(row, name, h, images, device)
        for row, name, h in zip(PUBLISHED, names, histories, strict=True)
    ]
    curves = [
        {"model": row.label, "epoch": h["epoch"], "train_loss": h["train_loss"], "test_acc": h["test_acc"]}
        for row, hist in zip(PUBLISHED, histories, strict=True)
        for h in hist
    ]
    write_csv(folder / TABLE, rows)
    write_csv(folder / CURVES, curves)


def run(
    folder: Path,
    *,
    data: str,
    epochs: int | None,
    device: str,
    seed: int,
    models: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Train the models of Table 1 with `RECIPE`; write table.csv, learning_curve.csv and the figures.

    Each model trains in folder/runs/<registry name>-s<seed> through `run_training`, so a finished run
    is reused and an interrupted one resumes.

    Args:
        folder: output folder of this section.
        data: "cifar10:PATH" (the published numbers are CIFAR-10 only: anything else is refused).
        epochs: epochs per model; None: the paper's 300.
        device: "cpu" or "cuda".
        seed: of every run.
        models: registry names replacing `PUBLISHED`'s models one for one, keeping the published labels
            (the tests train tiny presets); None: the paper's models.

    Returns:
        Metrics: the table rows, data, epochs, the paper's epochs, device, seed; the same on every rank.

    Raises:
        ValueError: data is not "cifar10:PATH", a bad epochs/device, or unknown or too few/many models.
    """
    names = _check(data, epochs, device, models)
    folder = Path(folder)
    budget = PAPER_EPOCHS if epochs is None else epochs
    recipe = {**RECIPE, "epochs": budget}
    backend = "nccl" if device == "cuda" else "gloo"
    # One group for every run: the trainer joins it. Long timeout: rank 0 measures and draws while the
    # others wait at the closing barrier.
    with dist.process_group(backend, timeout=timedelta(hours=2)):
        histories = []
        for name in names:  # every rank trains (DDP under torchrun)
            out = folder / "runs" / f"{name}-s{seed}"
            run_training(TrainConfig(model=name, data=data, out=str(out), device=device, seed=seed, **recipe))
            histories.append(read_history(out))  # rank 0's numbers (the others hold zeros)
        if dist.is_main():
            _write_tables(folder, names, histories, data, device)
            plot(folder)
        dist.barrier()  # the other ranks then read what rank 0 wrote
    return {
        "rows": read_csv(folder / TABLE),
        "data": data,
        "epochs": budget,
        "paper_epochs": PAPER_EPOCHS,
        "device": device,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "processes": dist.world_size(),
    }


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by `write_csv`, with numbers turned back into int or float."""
    return [{k: records.typed(v) for k, v in row.items()} for row in records.read_csv(path)]


def plot(folder: Path) -> None:
    """paper_accuracy.png and paper_curves.png from table.csv and learning_curve.csv (deterministic)."""
    folder = Path(folder)
    rows = read_csv(folder / TABLE)
    curves = read_csv(folder / CURVES)
    labels = [str(r["model"]) for r in rows]

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    pos = np.arange(len(rows))
    for offset, key, name, color in ((-0.2, "published_acc", "published", "#bbbbbb"),
                                     (0.2, "measured_acc", "measured", "#4c78a8")):  # fmt: skip
        values = [float(r[key]) for r in rows]
        bars = ax.bar(pos + offset, values, width=0.4, label=name, color=color)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7)
    ax.set_xticks(pos, labels, fontsize=8, rotation=15)
    ax.set_ylim(0.0, 1.2)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel("CIFAR-10 test accuracy")
    n = int(rows[0]["epochs"])
    ax.set_title(f"Cordonnier et al. 2020, Table 1: published vs measured ({n} epoch{'s' * (n != 1)})")
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, folder / "paper_accuracy.png")

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, r in enumerate(rows):
        mine = [c for c in curves if c["model"] == r["model"]]
        ax.plot([c["epoch"] for c in mine], [c["test_acc"] for c in mine], "o-", ms=3,
                color=f"C{i}", label=str(r["model"]))  # fmt: skip
        ax.axhline(float(r["published_acc"]), color=f"C{i}", ls="--", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (dashed: published)")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, folder / "paper_curves.png")


def _ordering(rows: list[dict[str, Any]]) -> str:
    """Whether the paper's strict orderings (published accuracies apart) hold when measured."""
    pairs = [(a, b) for a in rows for b in rows if a["published_acc"] > b["published_acc"]]
    broken = [f"{a['model']} > {b['model']}" for a, b in pairs if not a["measured_acc"] > b["measured_acc"]]
    if not broken:
        return f"The paper's ordering is reproduced (all {len(pairs)} ordered pairs)."
    return (
        f"The paper's ordering is not reproduced: {len(broken)} of {len(pairs)} ordered pairs do not hold "
        f"(a tie counts as not holding: {'; '.join(broken)})."
    )


def _tie(rows: list[dict[str, Any]]) -> str:
    """The headline claim: the quadratic network (row 1) against ResNet-18 (row 0)."""
    cnn, sa = rows[0], rows[1]
    gap = cnn["measured_acc"] - sa["measured_acc"]
    if abs(gap) <= 0.01:
        return f"{sa['model']} is within one point of {cnn['model']}, as published."
    verb = "trails" if gap > 0 else "leads"
    return f"{sa['model']} {verb} {cnn['model']} by {100 * abs(gap):.1f} points (published: a tie)."


def _sizes(rows: list[dict[str, Any]]) -> str:
    """Parameters against their code's counts, and multiply-adds against their FLOPs column."""
    code = {r.model: r.code_params for r in PUBLISHED}
    names = [str(r["registry"]) for r in rows]
    if names != [r.model for r in PUBLISHED]:
        return (
            f"Substitute models were trained ({', '.join(names)}), so parameters and multiply-adds are "
            "not the paper's."
        )
    exact = all(r["measured_params"] == code[r["registry"]] for r in rows)
    params = ", ".join(f"{r['measured_params']:,}" for r in rows)
    macs = ", ".join(
        f"{r['measured_macs_per_image'] / 1e9:.2f} G (their column {r['published_flops_b']:g} B)"
        for r in rows
    )
    return (
        f"Parameters: {params} ({'exactly' if exact else 'not'} their code's counts). Multiply-adds per "
        f"image, attention products counted (their FLOPs column left them out): {macs}."
    )


def describe(metrics: dict[str, Any]) -> Description:
    """The claim, the paragraph from the measured numbers, the figures and the table."""
    claim = (
        "Cordonnier et al. 2020 (Table 1): on CIFAR-10 their attention-only network with the quadratic "
        "encoding matches ResNet-18 (93.8% each); learned relative positions reach 91.8%, and adding "
        "content-based attention 87.1%."
    )
    rows, epochs, paper = metrics["rows"], metrics["epochs"], metrics["paper_epochs"]
    budget = (
        f"Each model trained {epochs} epoch{'s' * (epochs != 1)} with their recipe (SGD lr 0.1, batch 100, "
        "warm-up then cosine, crop + flip; ResNet-18 too, where the paper used step decay) on "
        f"{metrics['device']}"
        + (
            f", fewer than the paper's {paper}: the budget was smaller, so the comparison is indicative."
            if epochs < paper
            else ", as in the paper."
        )
    )
    measured = "; ".join(
        f"{r['model']} {r['measured_acc']:.1%} (published {r['published_acc']:.1%})" for r in rows
    )
    threads = metrics["threads"]
    timing = (
        "Training images/s: the median over a run's epochs of whole-epoch throughput; inference images/s: "
        f"the median of {INFERENCE_REPEATS} timed passes after a warm-up; on {metrics['device']}, "
        f"{threads} CPU thread{'s' * (threads != 1)}"
        + (f", {metrics['processes']} processes." if metrics.get("processes", 1) > 1 else ".")
    )
    text = " ".join([budget, f"Measured: {measured}.", _ordering(rows), _tie(rows), _sizes(rows), timing])
    figures = [
        ("paper_accuracy.png", "Published vs measured CIFAR-10 test accuracy per model of Table 1."),
        ("paper_curves.png", "Test accuracy per epoch; dashed lines: the published accuracies."),
    ]
    tables = [
        (TABLE, "Table 1 re-run: published and measured accuracy, parameters, FLOPs/MACs and speed."),
    ]
    return Description(claim, text, figures, tables)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    if ctx.data is None:
        raise ValueError("the paper-scale section needs data='cifar10:PATH'")
    return run(folder, data=ctx.data, epochs=ctx.epochs, device=ctx.device, seed=ctx.seed)


SECTION = register_section(
    Section(
        "paper", "CIFAR-10 at paper scale: ResNet-18 vs the attention-only networks", _run, plot, describe,
        distributed=True,
    )
)  # fmt: skip
