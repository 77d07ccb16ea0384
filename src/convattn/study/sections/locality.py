"""Locality vs long range: the same models on a task where nearby pixels decide and on one where far ones do.

`shapes` (which of 4 shapes is drawn) is local; in `long_range` two markers near opposite corners decide
the label (same colour or not), and each marker alone says nothing (`convattn.data.generated`). Small
kernels and local attention should suit the first; global attention (the ViT) should win the second.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from convattn.study.contest import Contender, contest, fit_sentence, plot_contest, recipe_sentence
from convattn.study.section import Context, Description, Section, register_section

__all__ = ["LOCALITY_CONTENDERS", "SECTION", "TASKS", "describe", "plot"]

TASKS = ("shapes", "long_range")
# For the 32×32 generated sets: small kernels and local attention against global attention.
LOCALITY_CONTENDERS = (
    Contender("CNN (3×3 convs)", "cnn_digits", cnn=True),
    Contender("ResNet, 3×3 conv", "resnet_digits", cnn=True),
    Contender(
        "ResNet, SASA 7×7 local attention",
        "resnet_digits",
        {"mixer": "sasa", "mixer_options": {"kernel_size": 7, "num_heads": 4}},
    ),
    Contender("ViT, patch 4 (global attention)", "vit_shapes"),
)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    b = ctx.budget
    labels = b.locality_models
    models = (
        LOCALITY_CONTENDERS if labels is None else tuple(c for c in LOCALITY_CONTENDERS if c.label in labels)
    )
    return {
        data: contest(
            folder / data, models, replace(b.locality, data=data), seeds=(ctx.seed,), device=ctx.device
        )
        for data in TASKS
    }


def plot(folder: Path) -> None:
    """Each task's accuracy figure, from its compare.csv."""
    for data in TASKS:
        plot_contest(folder / data)


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Local operators (small kernels, local attention) suit tasks where nearby pixels decide the label; "
        "global self-attention should win when the label depends on pixels far apart."
    )

    def best(data: str, global_: bool) -> tuple[str, float]:
        rows = [r for r in m[data]["rows"] if ("global" in r["model"]) == global_]
        top = max(rows, key=lambda r: r["test_acc_mean"])
        return top["model"], top["test_acc_mean"]

    sentences = []
    for data, label in (("shapes", "On shapes (local)"), ("long_range", "On long_range (far apart)")):
        (lname, lacc), (gname, gacc) = best(data, False), best(data, True)
        lead = (
            "the local models lead"
            if lacc > gacc + 0.01
            else "global attention leads"
            if gacc > lacc + 0.01
            else "it is a tie"
        )
        sentences.append(f"{label}, {lead}: {lname} {lacc:.1%} vs {gname} {gacc:.1%}.")
    chance = max(r["test_acc_mean"] for r in m["long_range"]["rows"]) < 0.6
    verdict = (
        " No model beats chance (50%) clearly on long_range within this budget, so the run neither "
        "supports nor refutes the claim at this scale."
        if chance
        else ""
    )
    text = (
        recipe_sentence(m["shapes"]).replace("of shapes", "of each task")
        + " "
        + " ".join(sentences)
        + verdict
        + "".join(f" {d}:{fit_sentence(m[d])}" for d in TASKS)
        + f" {m['shapes']['timing']}"
    )
    figures = [(f"{d}/compare_accuracy.png", f"Test accuracy on {d}.") for d in ("shapes", "long_range")]
    tables = [
        (f"{d}/compare.csv", f"Models on {d}: accuracy, size, cost and speed.")
        for d in ("shapes", "long_range")
    ]
    return Description(claim, text, figures, tables)


SECTION = register_section(Section("locality", "Locality vs long range", _run, plot, describe))
