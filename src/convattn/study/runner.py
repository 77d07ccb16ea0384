"""`convattn study`: run every demo and experiment of the project into one run folder, resumably.

A run folder `runs/study-<timestamp>/` holds `study.json` (the settings), `environment.json`, one
sub-folder per part with its figures (PNG), tables (CSV and Markdown) and `part.json` (its numbers, its
claim and the paragraph written from them), `metrics.json`, `summary.md` and `report.html`.

Resumable: a part's `part.json` is written last and atomically, so it marks a finished part. Running
the same command again continues the newest unfinished run folder with the same settings: finished
parts are kept, a half-written part is redone. `fresh=True` starts a new folder. A folder the user names
is continued only when it holds a study with the same settings, and is otherwise never written into.

Parts so far:
    conversion: Conv2d layers turned into exactly equivalent attention (Theorem 1) and back.
    attention_pooling: Nadaraya–Watson regression, non-parametric and parametric.
    seq2seq: a Transformer trained to reverse token strings; exact match, BLEU, attention maps.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from convattn.data import load
from convattn.study.report import write_report
from convattn.study.runs import (
    DIGITS_CONTENDERS,
    LOCALITY_CONTENDERS,
    QUICK_CONTENDERS,
    compare_models,
    operators,
    plot_compare,
    plot_operators,
    progress_to,
    shared_runs,
)
from convattn.study.sections import conversion, data_efficiency, learns_conv, paper, seq2seq
from convattn.study.sections import pooling as attention_pooling
from convattn.utils.environment import environment
from convattn.utils.records import atomic_write_bytes

__all__ = ["PLOTS", "Part", "StudyConfig", "find_run_dir", "new_run_dir", "redraw", "run_study"]


class StudyInterrupted(Exception):
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
    """

    out: Path | None = None
    quick: bool = False
    seed: int = 0
    fresh: bool = False
    data: str | None = None
    epochs: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class Part:
    """One section of the study: it runs into its folder and returns its metrics.

    `run(folder)` writes the part's tables and plot data as CSV and draws its figures; `describe(metrics)`
    returns (claim, paragraph, figures, tables): the claim from the literature, a paragraph written from
    this run's numbers, [(png, caption)] and [(csv, caption)] in the folder. The figures are drawn by
    `PLOTS[key](folder)` from the folder's CSV files alone, so `convattn report` can draw them again.
    """

    key: str
    title: str
    run: Callable[[Path], dict[str, Any]]
    describe: Callable[[dict[str, Any]], tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]]


def _plot_locality(folder: Path) -> None:
    for data in ("shapes", "long_range"):
        plot_compare(folder / data)


# Parts whose training runs span every process under torchrun.
DISTRIBUTED = frozenset({"paper"})

# Every part's figures, drawn from the CSV files in its folder (and nothing else).
PLOTS: dict[str, Callable[[Path], None]] = {
    "conversion": conversion.plot,
    "learns_conv": learns_conv.plot,
    "data_efficiency": data_efficiency.plot,
    "paper": paper.plot,
    "attention_pooling": attention_pooling.plot,
    "cnn_vs_attention": plot_compare,
    "locality": _plot_locality,
    "operators": plot_operators,
    "seq2seq": seq2seq.plot,
}


def new_run_dir(out: Path | None, prefix: str = "study") -> Path:
    """Create and return a fresh run folder; refuse to reuse a non-empty folder the caller names."""
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists and is not an empty folder; choose another --out")
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


COMPARE_EPOCHS = 6  # the digits comparison: epochs and seeds of every model
COMPARE_SEEDS = 3
LOCALITY_EPOCHS = 3
LOCALITY_IMAGES = 1200  # training images of the generated sets (quick: 512)
LOCALITY_QUICK_IMAGES = 512


def _parts(cfg: StudyConfig) -> list[Part]:
    conversion_part = Part("conversion", "Attention can express convolution (Theorem 1)",
                           lambda d: conversion.run(d, seed=cfg.seed), _describe_conversion)  # fmt: skip
    if cfg.data is not None:
        data = cfg.data
        return [
            conversion_part,
            Part("paper", "CIFAR-10 at paper scale: ResNet-18 vs the attention-only networks",
                 lambda d: paper.run(d, data=data, epochs=cfg.epochs, device=cfg.device, seed=cfg.seed),
                 paper.describe),
        ]  # fmt: skip
    q = cfg.quick
    pooling = attention_pooling.PoolingDemoConfig(seed=cfg.seed)
    s2s = seq2seq.Seq2SeqDemoConfig(seed=cfg.seed)
    if q:
        s2s = seq2seq.Seq2SeqDemoConfig(seed=cfg.seed, steps=150, train_size=1000, test_size=100)
    # One budget for the comparison, the learned-convolution nets and the data-efficiency curve, so
    # that their common runs (the attention nets; the whole-data points) train once, shared.
    seeds = tuple(cfg.seed + i for i in range(1 if q else COMPARE_SEEDS))
    epochs = cfg.epochs or (1 if q else COMPARE_EPOCHS)
    contenders = QUICK_CONTENDERS if q else DIGITS_CONTENDERS
    de = data_efficiency
    fractions = de.FRACTIONS_QUICK if q else de.FRACTIONS_FULL
    return [
        conversion_part,
        Part("learns_conv", "Does attention learn convolution?",
             lambda d: learns_conv.run(d, epochs=epochs, seed=cfg.seed, quick=q), learns_conv.describe),
        Part("cnn_vs_attention", "CNN vs self-attention on the digits",
             lambda d: compare_models(d, contenders, epochs=epochs, seeds=seeds, device=cfg.device),
             _describe_compare),
        Part("data_efficiency", "Data efficiency: accuracy vs training-set size",
             lambda d: de.run(d, fractions=fractions, epochs=epochs, seeds=seeds, quick=q),
             de.describe),
        Part("locality", "Locality vs long range",
             lambda d: _locality(d, 1 if q else LOCALITY_EPOCHS, cfg.seed, q, cfg.device),
             _describe_locality),
        Part("operators", "Operators: properties and speed",
             lambda d: operators(d, quick=q), _describe_operators),
        Part("attention_pooling", "Attention basics: Nadaraya–Watson attention pooling",
             lambda d: attention_pooling.run(d, pooling), _describe_pooling),
        Part("seq2seq", "Attention basics: a Transformer reverses strings",
             lambda d: seq2seq.run(d, s2s), _describe_seq2seq),
    ]  # fmt: skip


def _locality(folder: Path, epochs: int, seed: int, quick: bool, device: str) -> dict[str, Any]:
    """The same models on a task where locality matters and on one where it does not (quick: CNN, ViT)."""
    models = (LOCALITY_CONTENDERS[0], LOCALITY_CONTENDERS[-1]) if quick else LOCALITY_CONTENDERS
    n_train = LOCALITY_QUICK_IMAGES if quick else LOCALITY_IMAGES
    return {
        data: compare_models(folder / data, models, data=data, epochs=epochs, seeds=(seed,), device=device,
                             n_train=n_train)
        for data in ("shapes", "long_range")
    }  # fmt: skip


def _describe_locality(m: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]:
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
    epochs = m["shapes"]["epochs"]
    text = (
        f"{epochs} epoch{'s' * (epochs != 1)} on {f'{n:,}' if (n := m['shapes']['n_train']) else 'all'} "
        "generated training images "
        "per task, one seed, the same budget for all. "
        + " ".join(sentences)
        + verdict
        + f" Speeds in the tables: {m['shapes']['timing']}"
    )
    figures = [(f"{d}/compare_accuracy.png", f"Test accuracy on {d}.") for d in ("shapes", "long_range")]
    tables = [
        (f"{d}/compare.csv", f"Models on {d}: accuracy, size, cost and speed.")
        for d in ("shapes", "long_range")
    ]
    return claim, text, figures, tables


def _describe_operators(m: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]:
    claim = (
        "Han et al. 2022 (DWNet): local attention is a channel-wise, sparsely connected aggregation like a "
        "depth-wise conv; they differ in weight sharing (across a head's channels vs across positions) and "
        "in dynamic weights."
    )
    rows = {r["mixer"]: r for r in m["properties"]}
    dw, sasa = rows["dwconv"], rows["sasa"]
    holds = (
        not dw["channel_mixing"] and not sasa["channel_mixing"] and dw["support"].startswith("local")
        and sasa["support"].startswith("local") and dw["shared_across_positions"]
        and sasa["shared_across_channels"] and sasa["dynamic"] and not dw["dynamic"]
    )  # fmt: skip
    text = (
        f"{'Supported' if holds else 'Not supported'} by the measured table: depth-wise conv is "
        f"{dw['support']}, without channel mixing, shared across positions, static; SASA is "
        f"{sasa['support']}, without channel mixing, shared across a head's channels, dynamic. "
        f"Speed ({m['size']}×{m['size']}, batch {m['batch']}, medians of {m['repeats']}, "
        f"{m['threads']} threads), "
        "forward+backward relative to a 7×7 depth-wise conv: neighbourhood attention k = 7 "
        f"{m['na2d_k7_fwdbwd_ratio']:.1f}×, window attention {m['window_w7_fwdbwd_ratio']:.1f}×, the unfold "
        f"implementation of common ports {m['unfold_fwdbwd_ratio']:.0f}×."
    )
    figures = [
        ("bench_ratios.png", "Forward+backward time of every operator relative to a 7×7 depth-wise conv.")
    ]
    tables = [
        ("properties.csv", "The DWNet property table, measured with autograd on each operator."),
        ("bench.csv", "Operator benchmark: medians, ratios to the depth-wise conv, peak memory, MACs."),
    ]
    return claim, text, figures, tables


def _describe_compare(m: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]:
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
    return claim, text, figures, [("compare.csv", "CNN vs self-attention: accuracy, size, cost and speed.")]


def _describe_conversion(m: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]:
    claim = (
        "Cordonnier et al. (2020, Theorem 1): a multi-head self-attention layer with K² heads and a "
        "relative positional encoding can express any K×K convolution exactly."
    )
    exact = m["worst_float64"] < 1e-10
    text = (
        f"This run supports the claim{'' if exact else ' only approximately'}: each of {len(m['rows'])} "
        "Conv2d layers (strides, dilations, even and non-square kernels, the four padding modes, groups, "
        "no bias) became attention with one quadratic head per kernel tap. The largest error against the "
        f"conv is {m['worst_float32']:.1e} in float32 and {m['worst_float64']:.1e} in float64. Converting "
        "back gave "
        + ("identical convolutions every time." if m["all_round_trips_identical"] else "a different conv.")
    )
    figures = [
        ("conv_heads.png", "A 3×3 conv as attention: the attention of the centre query, one head per tap."),
        ("conv_centres.png", "The same layer's head centres Δ with their 1-σ ellipses."),
    ]
    return claim, text, figures, [("conversion.csv", "Conversion error per Conv2d configuration.")]


def _describe_pooling(m: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]:
    claim = (
        "Dive into Deep Learning (§11.2): attention pooling is Nadaraya–Watson regression, and a learned "
        "kernel width sharpens the attention and fits the data better than a fixed one."
    )
    better = m["test_mse_parametric"] < m["test_mse_nonparametric"]
    text = (
        f"{'Supported' if better else 'Not supported'} here: the learned width w = {m['learned_width']:.2f} "
        f"gives test MSE {m['test_mse_parametric']:.3f} against the true curve, versus "
        f"{m['test_mse_nonparametric']:.3f} for the fixed Gaussian kernel (w = 1)."
    )
    figures = [
        ("nadaraya_watson.png", "Truth, the fixed-width and the learned-width estimators."),
        ("nadaraya_watson_weights.png", "Attention weights of each test input over the training inputs."),
    ]
    return claim, text, figures, []


def _describe_seq2seq(m: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]:
    claim = "Dive into Deep Learning (§11.7): an encoder–decoder Transformer learns sequence transduction."
    text = (
        f"Trained {m['config']['steps']} steps in {m['train_seconds']:.1f} s ({m['threads']} CPU "
        f"thread{'s' * (m['threads'] != 1)}); loss {m['first_loss']:.3f} -> "
        f"{m['final_loss']:.3f}. On {m['config']['test_size']} held-out strings, greedy decoding reaches "
        f"exact match {m['test_exact_match']:.1%} and BLEU-2 {m['test_bleu']:.3f}."
    )
    figures = [
        ("transformer_attention.png", "Encoder–decoder attention of a held-out string: the anti-diagonal."),
        ("transformer_loss.png", "Training loss."),
    ]
    return claim, text, figures, []


def _run_part(part: Part, run_dir: Path, log: TextIO, share: bool) -> dict[str, Any]:
    """The finished part's record (part.json), running the part first if it is not finished."""
    folder = run_dir / part.key
    done = folder / "part.json"
    if done.exists():
        print(f"      kept from the earlier run ({part.key}/part.json)", file=log, flush=True)
        return dict(json.loads(done.read_text()))
    if folder.exists():  # half-written by an interrupted run: redo it, keeping its training runs
        for item in folder.iterdir():  # (finished ones are reused, interrupted ones resume)
            if item.name != "runs":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Parts share training runs through run_dir/runs (a run two parts ask for trains once).
    store = shared_runs(run_dir / "runs") if share else nullcontext()
    with progress_to(lambda line: print(f"      {line}", file=log, flush=True)), store:
        metrics = part.run(folder)
    metrics["seconds"] = time.perf_counter() - start
    claim, text, figures, tables = part.describe(metrics)
    record = {
        "key": part.key,
        "title": part.title,
        "claim": claim,
        "text": text,
        "figures": [{"file": f, "caption": c} for f, c in figures],
        "tables": [{"file": f, "caption": c} for f, c in tables],
        "metrics": metrics,
    }
    atomic_write_bytes(done, json.dumps(record, indent=2).encode())  # written last: marks the part finished
    print(f"      done in {metrics['seconds']:.1f} s", file=log, flush=True)
    return record


def _follow(cfg: StudyConfig, run_dir: Path, wait_s: float = 600.0) -> Path:
    """A torchrun process other than the first: train with it, write nothing of the study's own.

    It waits for the first process to set the folder up, then runs the distributed parts (their
    training runs need every process); the first process writes every file.
    """
    deadline = time.monotonic() + wait_s
    while not (run_dir / "study.json").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the first process did not set up {run_dir} within {wait_s:.0f} s")
        time.sleep(0.5)
    for part in _parts(cfg):
        if part.key in DISTRIBUTED and not (run_dir / part.key / "part.json").exists():
            part.run(run_dir / part.key)
    return run_dir


def run_study(cfg: StudyConfig | None = None, *, log: TextIO | None = None) -> Path:
    """Run (or continue) every part, then write metrics.json, summary.md and report.html."""
    cfg = cfg or StudyConfig()
    log = sys.stderr if log is None else log
    if cfg.data is not None:
        load(cfg.data, "test")  # a wrong path or a damaged batch is refused before any folder is made
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if cfg.data is None:
            raise ValueError(
                "the study on embedded data runs in one process; torchrun is for --data cifar10:PATH"
            )
        if cfg.out is None:
            raise ValueError(
                "under torchrun, name the run folder with --out: every process must use the same one"
            )
        if rank != 0:
            return _follow(cfg, Path(cfg.out))
    run_dir, continued = find_run_dir(cfg)
    if continued:
        print(f"continuing {run_dir}", file=log, flush=True)
    else:
        atomic_write_bytes(
            run_dir / "study.json", json.dumps({"settings": cfg.settings()}, indent=2).encode()
        )
    env = environment()
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2))
    parts = _parts(cfg)
    records = {}
    for i, part in enumerate(parts, 1):
        print(f"[{i}/{len(parts)}] {part.title} ...", file=log, flush=True)
        records[part.key] = _run_part(part, run_dir, log, share=cfg.data is None)
    metrics = {key: rec["metrics"] for key, rec in records.items()}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(run_dir)
    print(f"wrote {run_dir / 'report.html'}", file=log, flush=True)
    return run_dir


def redraw(run_dir: Path) -> Path:
    """Draw every figure of a finished study again from its CSV files, then write its report again."""
    run_dir = Path(run_dir)
    try:
        order = list(json.loads((run_dir / "metrics.json").read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{run_dir} holds no finished study (metrics.json: {err})") from err
    for key in order:
        if key not in PLOTS:
            raise ValueError(f"{run_dir} has a part {key!r} this version of convattn cannot draw")
        PLOTS[key](run_dir / key)
    return write_report(run_dir)
