"""The study's budgets in one table: what every section runs at, in full and with --quick.

This is the one place that reads `quick`: a section is given a `Budget` and never asks which one.

Every comparison has a `Recipe`: the same epochs, optimiser, schedule and augmentation for all its
models, and the learning rates each model's rate is chosen from on validation data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from convattn.analysis.bench import BenchConfig
from convattn.study.contest import Recipe

__all__ = ["BUDGETS", "Budget", "budget_for"]


@dataclass(frozen=True)
class Budget:
    """Sizes of every section of the study on embedded data.

    Attributes:
        name: "full" or "quick".
        seeds: the comparisons and the data-efficiency curve train one run per seed (seed, seed + 1, ...).
        compare: the recipe of the CNN-vs-attention comparison on the digits (epochs, searched rates).
        compare_models: the comparison's models, by label; None: every model of `sections.compare`.
        epochs: of the data-efficiency runs on the digits (their steps, see `sections.data_efficiency`)
            and of the learned-convolution nets.
        fractions: of the training digits, for the data-efficiency curve.
        centre_images: test images the attention of the learned-convolution nets is averaged over.
        fit_conv_steps: gradient steps of each fit of the "learn a conv" section.
        fit_conv_seeds: how many fits (seeds) it makes.
        locality: the recipe of the locality section (one rate: it asks which models beat chance).
        locality_models: the locality section's models, by label; None: all of them.
        bench: the operator benchmark of the operators section.
        seq2seq: (steps, training strings, test strings) of the Transformer that reverses strings;
            None: the demo's defaults.
    """

    name: str
    seeds: int
    compare: Recipe
    compare_models: tuple[str, ...] | None
    epochs: int
    fractions: tuple[float, ...]
    centre_images: int
    fit_conv_steps: int
    fit_conv_seeds: int
    locality: Recipe
    locality_models: tuple[str, ...] | None
    bench: BenchConfig
    seq2seq: tuple[int, int, int] | None

    @property
    def quick(self) -> bool:
        """A smoke-test budget, too small to judge the claims (the report says so)."""
        return self.name == "quick"


# The quick comparison: one model of each family.
_QUICK_COMPARE = (
    "CNN (3 conv layers)",
    "ResNet, SASA 7×7 attention",
    "Attention net, quadratic",
    "ViT, patch 2",
)

BUDGETS = {
    "full": Budget(
        name="full",
        seeds=3,
        compare=Recipe(epochs=30, lrs=(1e-3, 3e-3, 1e-2), holdout=288),
        compare_models=None,
        epochs=6,
        fractions=(0.1, 0.3, 1.0),  # 144, 431 and 1,438 images: about evenly spaced on a log axis
        centre_images=256,
        fit_conv_steps=2000,
        fit_conv_seeds=5,
        locality=Recipe(data="shapes", epochs=3, lrs=(3e-3,), holdout=0, n_train=1200),
        locality_models=None,
        bench=BenchConfig(sizes=(32,), repeats=7, warmup=2),
        seq2seq=None,
    ),
    "quick": Budget(
        name="quick",
        seeds=1,
        compare=Recipe(epochs=1, lrs=(1e-3, 1e-2), holdout=288),
        compare_models=_QUICK_COMPARE,
        epochs=1,
        fractions=(0.1, 1.0),
        centre_images=32,
        fit_conv_steps=100,
        fit_conv_seeds=1,
        locality=Recipe(data="shapes", epochs=1, lrs=(3e-3,), holdout=0, n_train=512),
        locality_models=("CNN (3×3 convs)", "ViT, patch 2 (global attention)"),
        bench=BenchConfig.quick(),
        seq2seq=(150, 1000, 100),
    ),
}


def budget_for(quick: bool, epochs: int | None = None) -> Budget:
    """The full or quick budget, with the user's --epochs (if any) replacing the comparison's epochs."""
    budget = BUDGETS["quick" if quick else "full"]
    return budget if epochs is None else replace(budget, compare=replace(budget.compare, epochs=epochs))
