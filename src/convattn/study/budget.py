"""The study's budgets in one table: what every section runs at, in full and with --quick.

This is the one place that reads `quick`: a section is given a `Budget` and never asks which one.

One budget (epochs, seeds) serves the comparison, the learned-convolution nets and the data-efficiency
curve, so that the training runs they share (the attention nets; the whole-data points) train once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from convattn.analysis.bench import BenchConfig

__all__ = ["BUDGETS", "Budget", "budget_for"]


@dataclass(frozen=True)
class Budget:
    """Sizes of every section of the study on embedded data.

    Attributes:
        name: "full" or "quick".
        epochs: of the comparison, the learned-convolution nets and the data-efficiency curve (whose
            runs on smaller subsets get as many optimisation steps, see `sections.data_efficiency`).
        seeds: the comparison and the data-efficiency curve train one run per seed (seed, seed + 1, ...).
        compare: the comparison's models, by label; None: every model of `sections.compare`.
        fractions: of the training digits, for the data-efficiency curve.
        centre_images: test images the attention of the learned-convolution nets is averaged over.
        locality_epochs: epochs of the locality section.
        locality_images: training images per generated task in the locality section.
        locality_models: the locality section's models, by label; None: all of them.
        bench: the operator benchmark of the operators section.
        seq2seq: (steps, training strings, test strings) of the Transformer that reverses strings;
            None: the demo's defaults.
    """

    name: str
    epochs: int
    seeds: int
    compare: tuple[str, ...] | None
    fractions: tuple[float, ...]
    centre_images: int
    locality_epochs: int
    locality_images: int
    locality_models: tuple[str, ...] | None
    bench: BenchConfig
    seq2seq: tuple[int, int, int] | None

    @property
    def quick(self) -> bool:
        """A smoke-test budget, too small to judge the claims (the report says so)."""
        return self.name == "quick"


# The quick comparison: one model of each family, and the three attention nets the study draws.
_QUICK_COMPARE = (
    "CNN (3 conv layers)",
    "ResNet, 3×3 conv",
    "ResNet, SASA 7×7 attention",
    "Attention net, quadratic",
    "Attention net, learned relative",
    "Attention net, learned relative + content",
    "ViT, patch 2",
)

BUDGETS = {
    "full": Budget(
        name="full",
        epochs=6,
        seeds=3,
        compare=None,
        fractions=(0.1, 0.3, 1.0),  # 144, 431 and 1,438 images: about evenly spaced on a log axis
        centre_images=256,
        locality_epochs=3,
        locality_images=1200,
        locality_models=None,
        bench=BenchConfig(sizes=(32,), repeats=7, warmup=2),
        seq2seq=None,
    ),
    "quick": Budget(
        name="quick",
        epochs=1,
        seeds=1,
        compare=_QUICK_COMPARE,
        fractions=(0.1, 1.0),
        centre_images=32,
        locality_epochs=1,
        locality_images=512,
        locality_models=("CNN (3×3 convs)", "ViT, patch 2 (global attention)"),
        bench=BenchConfig.quick(),
        seq2seq=(150, 1000, 100),
    ),
}


def budget_for(quick: bool, epochs: int | None = None) -> Budget:
    """The full or quick budget, with the user's --epochs (if any) replacing its epochs."""
    budget = BUDGETS["quick" if quick else "full"]
    return budget if epochs is None else replace(budget, epochs=epochs)
