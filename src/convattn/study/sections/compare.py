"""CNN vs self-attention on the digits: every model under one recipe, its learning rate chosen on
validation data (`convattn.study.contest`).

The models: a small CNN; the digits ResNet (conv stem) with a 3×3 conv, a 7×7 depth-wise conv, a dynamic
depth-wise conv, SASA local attention and window attention as its spatial mixer; Cordonnier et al.'s
attention-only network with the quadratic encoding; a ViT with 2×2 patches. Measured: test accuracy
(mean ± std over seeds), final training accuracy, exact parameters, multiply-adds with the attention
products counted, training and inference images per second, and the linear and MLP floors.

Fewer models than every encoding of the attention net: the budget goes to training each model to a
fair recipe, not to models that would not learn in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convattn.study.contest import Contender, contest, fit_sentence, plot_contest, recipe_sentence
from convattn.study.section import Context, Description, Section, register_section

__all__ = ["DIGITS_CONTENDERS", "SECTION", "contenders", "describe"]

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
    Contender("Attention net, quadratic", "attention_digits", {"encoding": "quadratic"}),
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
    return contest(folder, contenders(b.compare_models), b.compare, seeds=seeds, device=ctx.device)


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Cordonnier et al. 2020 and Ramachandran et al. 2019: self-attention can match convolution; "
        "with little data the CNN's built-in locality should help. DWNet (Han et al. 2022): local "
        "attention and (dynamic) depth-wise convolution perform alike."
    )
    gap = m["best_cnn_acc"] - m["best_attention_acc"]
    spread = max(r["test_acc_std"] for r in m["rows"])
    if abs(gap) <= max(0.01, spread):
        verdict = (
            f"the best CNN and the best attention model are within {max(1.0, 100 * spread):.1f} points "
            "(the larger of one point and the largest std over seeds): a tie at this scale"
        )
    elif gap > 0:
        verdict = f"the best CNN leads the best attention model by {100 * gap:.1f} points"
    else:
        verdict = f"the best attention model leads the best CNN by {-100 * gap:.1f} points"
    text = (
        recipe_sentence(m)
        + f" Here {verdict}: {m['best_cnn']} reaches {m['best_cnn_acc']:.1%} and {m['best_attention']} "
        f"{m['best_attention_acc']:.1%} test accuracy."
        + fit_sentence(m)
        + " Parameters, multiply-adds (attention products included) and images per second are in the "
        f"table. {m['timing']}"
    )
    figures = [("compare_accuracy.png", "Test accuracy per model (mean ± std over seeds) and the floors.")]
    tables = [("compare.csv", "CNN vs self-attention: accuracy, final training accuracy, size, cost, speed.")]
    if m["search"]:
        tables.append(("search.csv", "The learning-rate search: validation accuracy of every try."))
    return Description(claim, text, figures, tables)


SECTION = register_section(
    Section("cnn_vs_attention", "CNN vs self-attention on the digits", _run, plot_contest, describe)
)
