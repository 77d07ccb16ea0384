"""`convattn study`: run every section of the study into one run folder, resumably, then write the report.

A run folder `runs/study-<timestamp>/` holds `study.json` (the settings), `environment.json`, one
sub-folder per section with its figures (PNG), tables (CSV and Markdown) and `part.json` (its numbers,
its claim and the paragraph written from them), `runs/` (the training runs the sections share),
`metrics.json`, `summary.md` and `report.html`.

The sections (`convattn.study.sections`, one file each), on embedded data: conversion (Theorem 1),
fit_conv (is it learned?), learns_conv (does attention learn convolution?), cnn_vs_attention,
data_efficiency, locality, operators, attention_pooling, seq2seq, detection (DETR), moco. With
`data="cifar10:PATH"`:
conversion and paper (Cordonnier et al.'s Table 1 at paper scale). Their sizes come from one
table, `convattn.study.budget`.

Resumable: a section's `part.json` is written last and atomically, so it marks a finished section.
Running the same command again continues the newest unfinished run folder with the same settings:
finished sections are kept, a half-written one is redone (its finished training runs are reused, an
interrupted one resumes from its checkpoint). `fresh=True` starts a new folder. A folder the user names
is continued only when it holds a study with the same settings, and is otherwise never written into.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from convattn.data import load
from convattn.study.budget import budget_for
from convattn.study.report import write_report
from convattn.study.runs import parallel, progress_to, shared_runs
from convattn.study.section import Context, Section, get_section
from convattn.train import Interrupted
from convattn.utils import dist
from convattn.utils.checks import check_device
from convattn.utils.environment import environment
from convattn.utils.folders import check_creatable
from convattn.utils.records import atomic_write_bytes

__all__ = [
    "EMBEDDED",
    "PAPER",
    "StudyConfig",
    "StudyInterrupted",
    "find_run_dir",
    "new_run_dir",
    "redraw",
    "run_study",
]

# The sections of each kind of study, in the report's order.
EMBEDDED = (
    "conversion",
    "fit_conv",
    "learns_conv",
    "cnn_vs_attention",
    "data_efficiency",
    "locality",
    "operators",
    "attention_pooling",
    "seq2seq",
    "detection",
    "moco",
)
PAPER = ("conversion", "paper")


class StudyInterrupted(Exception):  # noqa: N818 (a requested stop, not an error)
    """The study stopped on Ctrl-C or SIGTERM; its message says where it is kept and how to continue."""


@dataclass(frozen=True)
class StudyConfig:
    """What to run and where.

    Args:
        out: run folder; by default the newest unfinished `runs/study-*` with these settings, or a new
            `runs/study-<timestamp>`.
        quick: a smaller budget for every part (the tests use it).
        seed: seed of every part.
        fresh: start a new run folder even if an unfinished one exists.
        data: None for the study on embedded data; "cifar10:PATH" for the paper-scale study (Cordonnier
            et al.'s CIFAR-10 comparison with their recipe, next to their published numbers).
        epochs: epochs of the main comparison (default: the study's budget; the paper's 300 with `data`).
        device: "cpu" or "cuda" for the training runs.
        jobs: training runs at once, each in a worker process on one thread (None: one per CPU core;
            1: one after another in this process). The results do not depend on it.
    """

    out: Path | None = None
    quick: bool = False
    seed: int = 0
    fresh: bool = False
    data: str | None = None
    epochs: int | None = None
    device: str = "cpu"
    jobs: int | None = None

    def __post_init__(self) -> None:
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int)
                                      or self.jobs < 1):  # fmt: skip
            raise ValueError(f"jobs must be a positive int or None, got jobs={self.jobs!r}")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):  # fmt: skip
            raise ValueError(f"epochs must be a positive int, got epochs={self.epochs!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got device={self.device!r}")
        if self.data is not None and not self.data.startswith(("cifar10:", "cifar100:")):
            raise ValueError(
                f"--data takes cifar10:PATH (the paper-scale study), got {self.data!r}; "
                "without --data the study runs on the embedded digits and generated sets"
            )

    def settings(self) -> dict[str, Any]:
        """What must match for a run folder to be continued."""
        return {"quick": self.quick, "seed": self.seed, "data": self.data, "epochs": self.epochs,
                "device": self.device}  # fmt: skip

    def sections(self) -> list[Section]:
        """The sections this study runs, in order."""
        return [get_section(key) for key in (EMBEDDED if self.data is None else PAPER)]

    def context(self) -> Context:
        """What every section is given besides its folder."""
        budget = budget_for(self.quick, self.epochs)
        return Context(seed=self.seed, budget=budget, device=self.device, data=self.data, epochs=self.epochs)


def new_run_dir(out: Path | None, prefix: str = "study") -> Path:
    """Create and return a fresh run folder; refuse to reuse a non-empty folder the caller names."""
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists and is not an empty folder; choose another --out")
        check_creatable(out)  # a read-only place: one line naming it
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{prefix}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def _holds_study(folder: Path, settings: dict[str, Any]) -> bool:
    try:
        saved = json.loads((folder / "study.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(saved.get("settings") == settings)


def find_run_dir(cfg: StudyConfig) -> tuple[Path, bool]:
    """(folder, continued): the folder to run in, and whether it continues an earlier run."""
    if cfg.out is not None:
        out = Path(cfg.out)
        if not cfg.fresh and out.is_dir() and _holds_study(out, cfg.settings()):
            return out, True
        return new_run_dir(out), False
    if not cfg.fresh:
        earlier = sorted(Path("runs").glob("study-*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in earlier:
            if _holds_study(folder, cfg.settings()) and not (folder / "report.html").exists():
                return folder, True
    return new_run_dir(None), False


def _jobs(cfg: StudyConfig) -> int:
    """Worker processes for the training runs: one per core by default, none on CUDA or under torchrun."""
    if cfg.device == "cuda" or dist.world_size() > 1:
        return 1
    return cfg.jobs or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _run_section(section: Section, ctx: Context, run_dir: Path, log: TextIO, share: bool) -> dict[str, Any]:
    """The finished section's record (part.json), running the section first if it is not finished."""
    folder = run_dir / section.key
    done = folder / "part.json"
    if done.exists():
        print(f"      kept from the earlier run ({section.key}/part.json)", file=log, flush=True)
        return dict(json.loads(done.read_text()))
    if folder.exists():  # half-written by an interrupted run: redo it, keeping its training runs
        for item in folder.iterdir():  # (finished ones are reused, interrupted ones resume)
            if item.name != "runs":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Sections share training runs through run_dir/runs (a run two sections ask for trains once).
    store = shared_runs(run_dir / "runs") if share else nullcontext()
    with progress_to(lambda line: print(f"      {line}", file=log, flush=True)), store:
        metrics = section.run(folder, ctx)
    metrics["seconds"] = time.perf_counter() - start
    d = section.describe(metrics)
    record = {
        "key": section.key,
        "title": section.title,
        "claim": d.claim,
        "text": d.text,
        "figures": [{"file": f, "caption": c} for f, c in d.figures],
        "tables": [{"file": f, "caption": c} for f, c in d.tables],
        "metrics": metrics,
    }
    atomic_write_bytes(done, json.dumps(record, indent=2).encode())  # written last: marks it finished
    print(f"      done in {metrics['seconds']:.1f} s", file=log, flush=True)
    return record


def _follow(cfg: StudyConfig, run_dir: Path, wait_s: float = 600.0) -> Path:
    """A torchrun process other than the first: train with it, write nothing of the study's own.

    It waits for the first process to set the folder up, then runs the distributed sections (their
    training runs need every process); the first process writes every file.
    """
    deadline = time.monotonic() + wait_s
    while not (run_dir / "study.json").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the first process did not set up {run_dir} within {wait_s:.0f} s")
        time.sleep(0.5)
    ctx = cfg.context()
    for section in cfg.sections():
        if section.distributed and not (run_dir / section.key / "part.json").exists():
            section.run(run_dir / section.key, ctx)
    return run_dir


def _check(cfg: StudyConfig) -> None:
    """Refuse what cannot run before any folder is made."""
    check_device(cfg.device)  # "cuda" on a machine without one: refused here, not in the first run
    if cfg.data is not None:
        load(cfg.data, "test")  # a wrong path or a damaged batch is refused here
    if dist.world_size() > 1:
        if cfg.data is None:
            raise ValueError(
                "the study on embedded data runs in one process; torchrun is for --data cifar10:PATH"
            )
        if cfg.out is None:
            raise ValueError(
                "under torchrun, name the run folder with --out: every process must use the same one"
            )


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops the study as Ctrl-C does (the trainer saves its checkpoint)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_study(cfg: StudyConfig | None = None, *, log: TextIO | None = None) -> Path:
    """Run (or continue) every section, then write metrics.json, summary.md and report.html.

    Raises:
        StudyInterrupted: on Ctrl-C or SIGTERM, saying where the study is kept and how to continue.
    """
    cfg = cfg or StudyConfig()
    log = sys.stderr if log is None else log
    _check(cfg)
    if not dist.is_main():
        return _follow(cfg, Path(str(cfg.out)))
    run_dir, continued = find_run_dir(cfg)
    if continued:
        print(f"continuing {run_dir}", file=log, flush=True)
    else:
        atomic_write_bytes(
            run_dir / "study.json", json.dumps({"settings": cfg.settings()}, indent=2).encode()
        )
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2))
    sections, ctx = cfg.sections(), cfg.context()
    records = {}
    try:
        with _sigterm_as_interrupt(), parallel(_jobs(cfg)):
            for i, section in enumerate(sections, 1):
                print(f"[{i}/{len(sections)}] {section.title} ...", file=log, flush=True)
                records[section.key] = _run_section(section, ctx, run_dir, log, share=cfg.data is None)
    except (KeyboardInterrupt, Interrupted):
        raise StudyInterrupted(
            f"interrupted; the study so far is kept in {run_dir} (finished sections, and every training "
            "run with its checkpoint): run the same command again to continue"
        ) from None
    metrics = {key: rec["metrics"] for key, rec in records.items()}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(run_dir)
    print(f"wrote {run_dir / 'report.html'}", file=log, flush=True)
    return run_dir


def redraw(run_dir: Path) -> Path:
    """Draw every figure of a finished study again from its CSV files, then write its report again."""
    run_dir = Path(run_dir)
    if not (run_dir / "study.json").is_file():  # only a folder the study made is written into
        raise FileNotFoundError(
            f"{run_dir} is not a study's run folder (it has no study.json); nothing written"
        )
    try:
        order = list(json.loads((run_dir / "metrics.json").read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{run_dir} holds no finished study (metrics.json: {err})") from err
    for key in order:
        try:
            section = get_section(key)
        except ValueError:
            raise ValueError(f"{run_dir} has a part {key!r} this version of convattn cannot draw") from None
        section.plot(run_dir / key)
    return write_report(run_dir)
