"""The study's budgets in one table: what every section runs at, in full and with --quick.

This is the one place that reads `quick`: a section is given a `Budget` and never asks which one.

Every comparison has a `Recipe`: the same epochs, optimiser, schedule and augmentation for all its
models, and the learning rates each model's rate is chosen from on validation data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from convattn.analysis.bench import BenchConfig
from convattn.study.contest import Recipe

__all__ = ["BUDGETS", "Budget", "DetrBudget", "MocoBudget", "budget_for"]


@dataclass(frozen=True)
class DetrBudget:
    """The DETR section's sizes (`sections.detection`).

    Attributes:
        pretrain_images, pretrain_epochs: the backbones' classification pre-training on `shapes`.
        n_train: generated detect_shapes images to train on (it tests on its 500 test images).
        epochs: DETR's epochs (batch 8).
        plain: also train DETR's own queries (no spatial prior) on the CNN backbone, the baseline.
    """

    pretrain_images: int
    pretrain_epochs: int
    n_train: int
    epochs: int
    plain: bool = True


@dataclass(frozen=True)
class MocoBudget:
    """The MoCo section's sizes (`sections.moco`).

    Attributes:
        n_train: shapes images to pre-train, probe and train with labels on (0: the set's 2,000).
        epochs: MoCo's epochs (batch 64).
        supervised_epochs: the supervised encoders' epochs.
    """

    n_train: int
    epochs: int
    supervised_epochs: int


@dataclass(frozen=True)
class Budget:
    """Sizes of every section of the study on embedded data.

    Attributes:
        name: "full" or "quick".
        seeds: the comparisons and the data-efficiency curve train one run per seed (seed, seed + 1, ...).
        compare: the recipe of the CNN-vs-attention comparison on the digits (epochs, searched rates).
        compare_models: the comparison's models, by label; None: every model of `sections.compare`.
        data_efficiency: the recipe both models of the data-efficiency curve share (generated data,
            the fewest epochs of a run, one learning rate; see `sections.data_efficiency`).
        sizes: its training-set sizes.
        min_steps: the fewest optimisation steps of each of its runs.
        learns_conv: the recipe of the attention-only nets whose heads are measured (one rate, and
            the centres' rate scale).
        centre_images: test images the attention of those nets is averaged over.
        fit_conv_steps: gradient steps of each fit of the "learn a conv" section.
        fit_conv_seeds: how many fits (seeds) it makes.
        locality_seeds: seeds of the locality section's long_range runs (its shapes runs are the
            data-efficiency curve's largest point, with all of `seeds`).
        bench: the operator benchmark of the operators section.
        seq2seq: (steps, training strings, test strings) of the Transformer that reverses strings;
            None: the demo's defaults.
        detr: the DETR section's sizes.
        moco: the MoCo section's sizes.
    """

    name: str
    seeds: int
    compare: Recipe
    compare_models: tuple[str, ...] | None
    data_efficiency: Recipe
    sizes: tuple[int, ...]
    min_steps: int
    learns_conv: Recipe
    centre_images: int
    fit_conv_steps: int
    fit_conv_seeds: int
    locality_seeds: int
    bench: BenchConfig
    seq2seq: tuple[int, int, int] | None
    detr: DetrBudget = DetrBudget(2000, 2, 2000, 3)
    moco: MocoBudget = MocoBudget(n_train=0, epochs=6, supervised_epochs=3)

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

# 16×16 token maps; the centres' rate at 10× lets them travel ~10 map steps over 30 epochs (660 steps).
# One run alone: it takes both cores (threads=2; the run is bit-reproducible at that count).
_LEARNS_CONV = Recipe(data="digits32", epochs=30, lrs=(3e-3,), holdout=0, position_lr_scale=10.0, threads=2)

# Generated shapes without augmentation (it would multiply the data), batch 32; 16 epochs of 3,200
# images are 1,600 steps (at 8 epochs the ViT reached only 94-96% of its 3,200 training images).
_DATA_EFFICIENCY = Recipe(
    data="shapes", epochs=16, lrs=(1e-3, 2e-3, 4e-3), holdout=500, batch_size=32, crop_pad=0
)

BUDGETS = {
    "full": Budget(
        name="full",
        seeds=3,
        compare=Recipe(epochs=30, lrs=(1e-3, 3e-3, 1e-2), holdout=288, search_epochs=10),
        compare_models=None,
        data_efficiency=_DATA_EFFICIENCY,
        sizes=(32, 320, 3200),  # two orders of magnitude; 600 steps fit the ViT to 320 images
        min_steps=600,
        learns_conv=_LEARNS_CONV,
        centre_images=256,
        fit_conv_steps=2000,
        fit_conv_seeds=5,
        # The ViT learns long_range after a plateau whose length depends on the seed (at chance for 4-12
        # epochs, then 65-100% at 16): one seed judged the seed, not the model.
        locality_seeds=3,
        bench=BenchConfig(sizes=(32,), repeats=7, warmup=2),
        seq2seq=None,
    ),
    "quick": Budget(
        name="quick",
        seeds=1,
        compare=Recipe(epochs=1, lrs=(1e-3, 1e-2), holdout=288),
        compare_models=_QUICK_COMPARE,
        data_efficiency=replace(_DATA_EFFICIENCY, epochs=1, lrs=(1e-3, 4e-3), holdout=64),
        sizes=(32, 128),
        min_steps=4,
        learns_conv=replace(_LEARNS_CONV, epochs=1),
        centre_images=32,
        fit_conv_steps=100,
        fit_conv_seeds=1,
        locality_seeds=1,
        bench=BenchConfig.quick(),
        seq2seq=(150, 1000, 100),
        detr=DetrBudget(pretrain_images=256, pretrain_epochs=1, n_train=64, epochs=1),
        moco=MocoBudget(n_train=128, epochs=1, supervised_epochs=1),
    ),
}


def budget_for(quick: bool, epochs: int | None = None) -> Budget:
    """The full or quick budget, with the user's --epochs (if any) replacing the comparison's epochs."""
    budget = BUDGETS["quick" if quick else "full"]
    return budget if epochs is None else replace(budget, compare=replace(budget.compare, epochs=epochs))
