"""Self-supervised pre-training: MoCo v2 for a CNN encoder and an attention encoder, without labels.

MoCo (He et al. 2020; v2: Chen et al. 2020) learns features by instance discrimination: a query
encoder matches each image's key (another augmented view, from a momentum encoder) against a queue
of keys from earlier batches (`convattn.ssl`). The section pre-trains two encoders of the same
ResNet on the generated `shapes` without their labels — the 3×3 conv ResNet, and the same ResNet with
SASA 3×3 local attention for every 3×3 conv — and measures what they learned with the labels: a
k-NN monitor (cosine, temperature-weighted votes of the training images' features) during training,
and a linear probe at the end: the frozen encoder's features of the training images, standardised,
fitted by multinomial logistic regression to convergence (`convattn.ssl.linear_probe`), so that the
number measures the features and not a probe's training budget (`convattn train --train-only head`
trains such a probe through the trainer instead).
Beside them, the same two numbers for the same architecture randomly initialised (the floor: what
the architecture gives without learning) and trained with labels (the supervised ceiling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from convattn.analysis.summary import count_parameters
from convattn.study.budget import MocoBudget
from convattn.study.runs import run_folder, run_trainings
from convattn.study.section import Context, Description, Section, register_section
from convattn.train import TrainConfig
from convattn.utils.records import read_csv, write_csv

__all__ = ["ENCODERS", "MARGIN", "SECTION", "describe", "plot", "run"]

# (label, kind, model options of resnet_tiny): the encoders, in the table's order
ENCODERS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ResNet, 3×3 conv", "CNN", {}),
    ("ResNet, SASA 3×3", "attention", {"mixer": "sasa", "mixer_options": {"kernel_size": 3, "num_heads": 2}}),
)
INITS = ("random", "moco", "supervised")
MARGIN = 0.10  # pre-training "beats the floor" when its probe is this far above the random encoder's
DATA = "shapes"


def _moco_config(options: dict[str, Any], b: MocoBudget, seed: int) -> TrainConfig:
    """MoCo v2 on shapes without labels: AdamW 2e-3, batch 64, queue 1,024, m 0.99, τ 0.2, the key
    encoder's batch norms over 4 sub-batches of shuffled keys (one process), the k-NN monitor every
    epoch."""
    return TrainConfig(
        model="resnet_tiny", data=DATA, n_train=b.n_train, epochs=b.epochs, batch_size=64, lr=2e-3,
        threads=1, seed=seed, data_seed=seed, method="moco", model_options=options,
        moco_options={"queue_size": 1024, "split_bn": 4},
    )  # fmt: skip


def _supervised_config(options: dict[str, Any], b: MocoBudget, seed: int) -> TrainConfig:
    """The same encoder trained with the labels: the ceiling."""
    return TrainConfig(
        model="resnet_tiny", data=DATA, n_train=b.n_train, epochs=b.supervised_epochs, batch_size=64, lr=2e-3,
        crop_pad=0, threads=1, seed=seed, data_seed=seed, model_options=options,
        eval_every=b.supervised_epochs,
    )  # fmt: skip


@torch.no_grad()
def _scores(cfg: TrainConfig, init_from: Path | None) -> tuple[float, float]:
    """(linear-probe accuracy, k-NN accuracy) of an encoder: `cfg`'s model seeded as a run would start,
    with `init_from`'s weights when given, frozen in eval mode; both read its features of the
    training and test images (no augmentation)."""
    from convattn.data import load
    from convattn.ssl import encoder_features, knn_accuracy, linear_probe
    from convattn.train import build_model
    from convattn.train.export import init_from_export

    splits = [load(DATA, s, seed=cfg.data_seed, n_train=cfg.n_train or None) for s in ("train", "test")]
    model = build_model(cfg, splits[0])
    if init_from is not None:
        init_from_export(model, init_from)
    model.eval()
    (f_train, y_train), (f_test, y_test) = (
        (encoder_features(model, s.tensors()[0]), s.labels) for s in splits
    )
    probe = linear_probe(f_train, y_train, f_test, y_test)
    return probe, knn_accuracy(f_train, y_train, f_test, y_test, k=min(200, len(splits[0])))


def run(folder: Path, *, budget: MocoBudget, seed: int, quick: bool) -> dict[str, Any]:
    """Pre-train, train with labels, probe; write moco.csv, knn_curve.csv and moco_knn.png."""
    folder = Path(folder)
    moco = [_moco_config(o, budget, seed) for _, _, o in ENCODERS]
    supervised = [_supervised_config(o, budget, seed) for _, _, o in ENCODERS]
    histories = run_trainings([*moco, *supervised])  # the two MoCo runs (the longest) start first
    rows = []
    for (label, kind, options), m_cfg, s_cfg, m_hist, s_hist in zip(
        ENCODERS, moco, supervised, histories[:2], histories[2:], strict=True
    ):
        for init, source, hist in (
            ("random", None, None),
            ("moco", m_cfg, m_hist),
            ("supervised", s_cfg, s_hist),
        ):
            probe, knn = _scores(s_cfg, None if source is None else run_folder(source))
            rows.append({
                "encoder": label, "kind": kind, "init": init, "probe_acc": round(probe, 4),
                "knn_acc": round(knn, 4), "params": count_parameters(_encoder(options)),
                "train_images_per_s": _mean_speed(hist), "epochs": len(hist) if hist else 0,
            })  # fmt: skip
    curve = [
        {"encoder": label, "epoch": h["epoch"], "knn_acc": round(h["test_knn_acc"], 4)}
        for (label, _, _), hist in zip(ENCODERS, histories[:2], strict=True)
        for h in hist
        if h["test_knn_acc"] is not None
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "moco.csv", rows)
    write_csv(folder / "knn_curve.csv", curve)
    plot(folder)
    from convattn.data import load

    return {
        "rows": rows,
        "data": DATA,
        "n_train": len(load(DATA, "train", seed=seed, n_train=budget.n_train or None)),
        "n_test": len(load(DATA, "test", seed=seed)),
        "chance": 1 / 4,
        "epochs": budget.epochs,
        "supervised_epochs": budget.supervised_epochs,
        "margin": MARGIN,
        "seed": seed,
        "quick": quick,
        "threads": torch.get_num_threads(),
    }


def _mean_speed(history: list[dict[str, Any]] | None) -> float | None:
    """A run's training images/s over its epochs (None for the random encoder, which is not trained)."""
    return round(sum(h["images_per_s"] for h in history) / len(history), 1) if history else None


def _encoder(options: dict[str, Any]) -> torch.nn.Module:
    from convattn.models.registry import create_model

    return create_model("resnet_tiny", num_classes=4, **options)


def plot(folder: Path) -> None:
    """moco_knn.png from knn_curve.csv and moco.csv: each encoder's k-NN accuracy over MoCo's epochs,
    with its random (dotted) and supervised (dashed) encoders' k-NN accuracy."""
    from convattn.utils.plotting import plt, save_figure

    folder = Path(folder)
    curve, rows = read_csv(folder / "knn_curve.csv"), read_csv(folder / "moco.csv")
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, encoder in enumerate(dict.fromkeys(r["encoder"] for r in curve)):
        mine = [r for r in curve if r["encoder"] == encoder]
        ax.plot([int(r["epoch"]) for r in mine], [float(r["knn_acc"]) for r in mine], "o-", color=f"C{i}",
                label=f"{encoder}, MoCo")  # fmt: skip
        for init, style in (("random", ":"), ("supervised", "--")):
            value = next(float(r["knn_acc"]) for r in rows if r["encoder"] == encoder and r["init"] == init)
            ax.axhline(value, color=f"C{i}", ls=style, lw=1, label=f"{encoder}, {init}")
    ax.set_xlabel("MoCo epoch")
    ax.set_ylabel("k-NN test accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("k-NN monitor during self-supervised pre-training", fontsize=10)
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, folder / "moco_knn.png")


def _get(m: dict[str, Any], kind: str, init: str) -> dict[str, Any]:
    return next(r for r in m["rows"] if r["kind"] == kind and r["init"] == init)


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' * (n != 1)}"


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Contrastive pre-training without labels (MoCo) learns features a linear classifier can use, far "
        "above what a random encoder of the same architecture gives; which encoder, convolutional or "
        "attention, learns more this way is this project's question."
    )
    parts = [
        f"Both encoders were pre-trained {_epochs(m['epochs'])} on {m['n_train']:,} {m['data']} images "
        "without their labels, then probed (frozen: logistic regression on their standardised features, "
        f"fitted to convergence) on the same images with labels and tested on {m['n_test']} (chance "
        f"{m['chance']:.0%})."
    ]
    gains = {}
    for kind in ("CNN", "attention"):
        rand, moco, sup = (_get(m, kind, i) for i in INITS)
        gain = moco["probe_acc"] - rand["probe_acc"]
        gains[kind] = gain
        verdict = (
            f"beats the random-encoder floor by {100 * gain:.1f} points"
            if gain >= m["margin"]
            else f"is {100 * gain:+.1f} points from the random-encoder floor, less than the "
            f"{100 * m['margin']:.0f} that would count as learning"
        )
        parts.append(
            f"{moco['encoder']} ({moco['params']:,} parameters, {moco['train_images_per_s']:.0f} MoCo "
            "images/s): "
            f"linear probe {moco['probe_acc']:.1%} after MoCo, {rand['probe_acc']:.1%} random, "
            f"{sup['probe_acc']:.1%} supervised ({_epochs(m['supervised_epochs'])} with labels); k-NN "
            f"{moco['knn_acc']:.1%}, {rand['knn_acc']:.1%} and {sup['knn_acc']:.1%}. The pre-training "
            f"{verdict}."
        )  # fmt: skip
    lead = gains["CNN"] - gains["attention"]
    parts.append(
        (f"The CNN encoder learned more without labels: {100 * lead:.1f} points more above its floor"
         if lead > 0.02 else
         f"The attention encoder learned more without labels: {100 * -lead:.1f} points more above its floor"
         if lead < -0.02 else "Both encoders gained alike (within 2 points) above their floors")
        + " (one seed; the supervised encoders show how far the features could go)."
    )  # fmt: skip
    text = (
        " ".join(parts)
        + f" ({m['threads']} thread{'s' * (m['threads'] > 1)} in this process; the runs one each.)"
    )
    if m["quick"]:
        text += " Quick mode: a smoke test of the pipeline, too small a budget to judge the claim."
    figures = [
        ("moco_knn.png", "k-NN test accuracy over MoCo's epochs, beside the random and supervised encoders.")
    ]
    tables = [
        ("moco.csv", "Each encoder, random, MoCo-pre-trained and supervised: linear-probe and k-NN accuracy.")
    ]
    return Description(claim, text, figures, tables)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    return run(folder, budget=ctx.budget.moco, seed=ctx.seed, quick=ctx.budget.quick)


SECTION = register_section(Section("moco", "Self-supervised pre-training: MoCo", _run, plot, describe))
