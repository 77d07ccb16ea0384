"""CNN vs self-attention on the digits: every model under one budget (epochs, optimiser, seeds).

The models: a small CNN; the digits ResNet with a 3×3 conv, a 7×7 depth-wise conv, a dynamic depth-wise
conv, SASA local attention and window attention as its spatial mixer; Cordonnier et al.'s attention-only
network with each of its seven positional encodings; a ViT with 2×2 patches. Measured: test accuracy
(mean ± std over seeds), running training accuracy, exact parameters, multiply-adds with the attention
products counted, and training and inference images per second (`convattn.study.runs.compare_models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convattn.study.runs import Contender, compare_models, plot_compare
from convattn.study.section import Context, Description, Section, register_section

__all__ = ["DIGITS_CONTENDERS", "ENCODING_LABELS", "SECTION", "contenders", "describe"]

# The attention-only network with every positional encoding of `convattn.layers.mhsa2d.ENCODINGS`.
ENCODING_LABELS = (
    ("quadratic", "quadratic"),
    ("quadratic_generalized", "quadratic, full covariance"),
    ("relative", "learned relative"),
    ("relative_content", "learned relative + content"),
    ("absolute", "learned absolute + content"),
    ("absolute_sinusoidal", "sinusoidal absolute + content"),
    ("none", "content only"),
)
_DW = {"kernel_size": 7}
_HEADS4 = {"kernel_size": 7, "num_heads": 4}
DIGITS_CONTENDERS = (
    Contender("CNN (3 conv layers)", "cnn_digits", cnn=True),
    Contender("ResNet, 3×3 conv", "resnet_digits", cnn=True),
    Contender(
        "ResNet, 7×7 depth-wise conv", "resnet_digits", {"mixer": "dwconv", "mixer_options": _DW}, cnn=True
    ),
    Contender(
        "ResNet, dynamic depth-wise conv",
        "resnet_digits",
        {"mixer": "dynamic_dwconv", "mixer_options": _DW},
        cnn=True,
    ),
    Contender("ResNet, SASA 7×7 attention", "resnet_digits", {"mixer": "sasa", "mixer_options": _HEADS4}),
    Contender(
        "ResNet, window attention 4×4",
        "resnet_digits",
        {"mixer": "window", "mixer_options": {"window": 4, "num_heads": 4}},
    ),
    *(
        Contender(f"Attention net, {label}", "attention_digits", {"encoding": enc})
        for enc, label in ENCODING_LABELS
    ),
    Contender("ViT, patch 2", "vit_digits"),
)


def contenders(labels: tuple[str, ...] | None) -> tuple[Contender, ...]:
    """The contenders named by `labels` in the table's order (None: all of them)."""
    if labels is None:
        return DIGITS_CONTENDERS
    unknown = set(labels) - {c.label for c in DIGITS_CONTENDERS}
    if unknown:
        raise ValueError(f"no contenders {sorted(unknown)} in the comparison")
    return tuple(c for c in DIGITS_CONTENDERS if c.label in labels)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    b = ctx.budget
    seeds = tuple(ctx.seed + i for i in range(b.seeds))
    return compare_models(folder, contenders(b.compare), epochs=b.epochs, seeds=seeds, device=ctx.device)


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Cordonnier et al. 2020 and Ramachandran et al. 2019: self-attention can match convolution, but "
        "with little data and a small budget the CNN's built-in locality wins; DWNet (Han et al. 2022): "
        "local attention and (dynamic) depth-wise convolution perform alike."
    )
    gap = m["best_cnn_acc"] - m["best_attention_acc"]
    if abs(gap) < 0.01:
        verdict = "the best CNN and the best attention model are within one point of each other"
    elif gap > 0:
        verdict = f"the best CNN leads the best attention model by {100 * gap:.1f} points"
    else:
        verdict = f"the best attention model leads the best CNN by {-100 * gap:.1f} points"
    n = len(m["seeds"])
    rows = m["rows"]
    fit = {k: [r["train_acc_mean"] for r in rows if r["kind"] == k] for k in ("CNN", "attention")}
    if min(fit["attention"]) < 0.9 <= min(fit["CNN"]):
        fitting = (
            " The attention models underfit at this budget: their running training accuracy in the last "
            f"epoch is {min(fit['attention']):.0%}–{max(fit['attention']):.0%}, against "
            f"{min(fit['CNN']):.0%}–{max(fit['CNN']):.0%} for the CNNs, so the gap measures how fast they "
            "learn as much as what they can learn."
        )
    else:
        fitting = (
            f" Running training accuracy in the last epoch: CNNs {min(fit['CNN']):.0%}–{max(fit['CNN']):.0%},"
            f" attention models {min(fit['attention']):.0%}–{max(fit['attention']):.0%}."
        )
    text = (
        f"Every model trained {m['epochs']} epoch{'s' if m['epochs'] != 1 else ''} on the 1,438 training "
        f"digits with AdamW, the same schedule and batch, {n} seed{'s' if n > 1 else ''} each "
        f"({m['threads']} thread{'s' if m['threads'] != 1 else ''}). Here {verdict}: "
        f"{m['best_cnn']} reaches {m['best_cnn_acc']:.1%} and {m['best_attention']} "
        f"{m['best_attention_acc']:.1%} test accuracy. Parameters, multiply-adds (attention products "
        f"included) and images per second on this machine are in the table.{fitting} {m['timing']}"
    )
    figures = [("compare_accuracy.png", "Test accuracy per model (mean ± std over seeds), same budget.")]
    return Description(
        claim, text, figures, [("compare.csv", "CNN vs self-attention: accuracy, size, cost and speed.")]
    )


SECTION = register_section(
    Section("cnn_vs_attention", "CNN vs self-attention on the digits", _run, plot_compare, describe)
)
