"""What a section of the study is, and the registry of sections (registered like models).

A section runs into its own folder and returns its metrics (JSON-serialisable). It writes the data behind
every figure as CSV and draws its figures from those CSV files alone (`plot`), so `convattn report` can
draw them again. `describe(metrics)` turns the numbers into a `Description`: the claim from the
literature, one paragraph written from this run's numbers, and the figures and tables with captions.

Each file in `convattn.study.sections` defines one section and registers it with `register_section`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convattn.study.budget import Budget

__all__ = ["Context", "Description", "Section", "get_section", "register_section", "section_keys"]


@dataclass(frozen=True)
class Context:
    """What every section is given besides its folder.

    Args:
        seed: seed of every random draw.
        budget: the sizes to run at (`convattn.study.budget`).
        device: "cpu" or "cuda" for the training runs.
        data: the paper-scale data ("cifar10:PATH"), or None for the embedded study.
        epochs: epochs the user asked for with --epochs (None: the budget's; for `paper`, the paper's).
    """

    seed: int
    budget: Budget
    device: str = "cpu"
    data: str | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class Description:
    """A section's text for the report.

    Attributes:
        claim: the claim from the literature the section tests.
        text: one paragraph written from this run's numbers: whether the run supports the claim.
        figures: (PNG file in the section folder, caption) pairs.
        tables: (CSV file in the section folder, caption) pairs.
    """

    claim: str
    text: str
    figures: list[tuple[str, str]] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Section:
    """One section of the study.

    Attributes:
        key: folder name and key in metrics.json.
        title: the heading in the report.
        run: (folder, context) -> metrics; writes CSV files and draws the figures.
        plot: folder -> None; draws every figure from the folder's CSV files alone.
        describe: metrics -> Description.
        distributed: its training runs span every process under torchrun (the other sections run in
            the first process alone).
    """

    key: str
    title: str
    run: Callable[[Path, Context], dict[str, Any]]
    plot: Callable[[Path], None]
    describe: Callable[[dict[str, Any]], Description]
    distributed: bool = False


_SECTIONS: dict[str, Section] = {}
_MODULES = (
    "conversion",
    "fit_conv",
    "learns_conv",
    "compare",
    "data_efficiency",
    "locality",
    "operators",
    "pooling",
    "seq2seq",
    "detection",
    "moco",
    "paper",
)


def register_section(section: Section) -> Section:
    """Add `section` to the registry (a key is registered once); return it."""
    if section.key in _SECTIONS and _SECTIONS[section.key] is not section:
        raise ValueError(f"a section {section.key!r} is registered already")
    _SECTIONS[section.key] = section
    return section


def _load_all() -> None:
    for name in _MODULES:
        importlib.import_module(f"convattn.study.sections.{name}")


def get_section(key: str) -> Section:
    """The registered section `key`.

    Raises:
        ValueError: no such section (naming the known ones).
    """
    _load_all()
    if key not in _SECTIONS:
        raise ValueError(f"no study section {key!r}; the sections are {sorted(_SECTIONS)}")
    return _SECTIONS[key]


def section_keys() -> list[str]:
    """Every registered section's key."""
    _load_all()
    return list(_SECTIONS)
