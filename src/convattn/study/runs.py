"""The study's training runs: shared between sections, reused when finished, resumed when interrupted.

`run_training(cfg)` is how every section trains: inside `shared_runs(root)` a run lives in
root/<model>-<hash of its config>, so two sections that ask for the same run share one; `progress_to`
sends a line per run to the study's log. `compare_models` trains a list of `Contender`s under one
budget and tabulates test accuracy (mean ± std over seeds), parameters, multiply-adds with attention
counted, and training and inference images per second (the comparison and the locality sections).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from convattn.analysis.bench import INFERENCE_REPEATS, device_name, inference_rate
from convattn.analysis.flops import count_macs
from convattn.analysis.summary import count_parameters
from convattn.data import load
from convattn.models.registry import create_model
from convattn.train import TrainConfig, read_history, train
from convattn.utils.plotting import bar_plot
from convattn.utils.records import read_csv, write_csv

__all__ = [
    "Contender",
    "compare_models",
    "plot_compare",
    "progress_to",
    "run_folder",
    "run_training",
    "shared_runs",
]


@dataclass(frozen=True)
class Contender:
    """A model of the comparison: a label, a registry name, its options, and whether it is a CNN."""

    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    cnn: bool = False


_PROGRESS: ContextVar[Callable[[str], None] | None] = ContextVar("progress", default=None)


@contextmanager
def progress_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Within the block, every training run of `run_training` reports a line to `sink` when it ends
    (and, for long runs, an epoch line at most every 30 seconds)."""
    token = _PROGRESS.set(sink)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _run_name(cfg: TrainConfig) -> str:
    options = ", ".join(f"{k}={v}" for k, v in cfg.model_options.items() if not isinstance(v, dict))
    subset = f", {cfg.n_train} images" if cfg.n_train else ""
    return f"{cfg.model}{f' ({options})' if options else ''} on {cfg.data}{subset}, seed {cfg.seed}"


_STORE: ContextVar[Path | None] = ContextVar("store", default=None)


@contextmanager
def shared_runs(root: Path) -> Iterator[None]:
    """Within the block, `run_training` keeps every run in root/<model>-<hash of its config> instead of
    the config's `out`: parts of a study that ask for the same training run share one."""
    token = _STORE.set(Path(root))
    try:
        yield
    finally:
        _STORE.reset(token)


def run_folder(cfg: TrainConfig) -> Path:
    """Where `run_training(cfg)` keeps the run: cfg.out, or the shared folder inside `shared_runs`."""
    root = _STORE.get()
    if root is None:
        return Path(cfg.out)
    fields = {k: v for k, v in asdict(cfg).items() if k != "out"}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"{cfg.model}-{digest}"


def run_training(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The epochs' metrics of the run `cfg`: reused when its folder (`run_folder`) holds a finished run,
    resumed when it holds an interrupted one, trained otherwise (reporting to `progress_to`'s sink).

    Raises:
        ValueError: the folder holds a run of another configuration (it is never reused).
    """
    out = run_folder(cfg)
    cfg = replace(cfg, out=str(out))
    sink = _PROGRESS.get()
    name = _run_name(cfg)
    saved = out / "config.json"
    if saved.exists() and (diff := TrainConfig.load(saved).differences(cfg)):
        raise ValueError(f"{out} holds a different run ({'; '.join(diff)}); use another folder")
    if (out / "model.safetensors").exists():
        history = read_history(out)
        if sink:
            sink(f"kept {name}: test accuracy {history[-1]['test_acc']:.1%}")
        return history
    resume = saved.exists()
    start = last = time.perf_counter()

    def epoch_line(line: str) -> None:
        nonlocal last
        if sink and time.perf_counter() - last >= 30.0:
            sink(f"{name}: {line}")
            last = time.perf_counter()

    history = train(cfg, resume=resume, log=epoch_line).history
    if sink:
        took, verb = time.perf_counter() - start, "resumed" if resume else "trained"
        sink(f"{verb} {name}: test accuracy {history[-1]['test_acc']:.1%} ({took:.1f} s)")
    return history


def plot_compare(out_dir: Path) -> None:
    """Draw compare_accuracy.png from compare.csv: test accuracy per model, mean ± std over seeds."""
    rows = read_csv(out_dir / "compare.csv")
    r0 = rows[0]
    bar_plot(
        [r["model"] for r in rows],
        [float(r["test_acc_mean"]) for r in rows],
        out_dir / "compare_accuracy.png",
        errors=[float(r["test_acc_std"]) for r in rows],
        ylabel=f"test accuracy ({r0['data']}, {r0['epochs']} epochs, {r0['seeds']} seed(s))",
        ylim=(0.0, 1.0),
    )


def _train_contender(
    out_dir: Path, c: Contender, seeds: tuple[int, ...], **options: Any
) -> tuple[list[float], list[float], list[float]]:
    """(test accuracies, running training accuracies, median training images/s), one per seed."""
    accs, train_accs, rates = [], [], []
    for seed in seeds:
        tag = hashlib.sha256(c.label.encode()).hexdigest()[:8]  # stable across processes
        folder = out_dir / "runs" / f"{c.model}-{tag}-s{seed}"
        cfg = TrainConfig(model=c.model, out=str(folder), model_options=c.options, seed=seed, **options)
        history = run_training(cfg)
        accs.append(history[-1]["test_acc"])
        train_accs.append(history[-1]["train_acc"])
        rates.append(statistics.median(h["images_per_s"] for h in history))
    return accs, train_accs, rates


def _best(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return max((r for r in rows if r["kind"] == kind), key=lambda r: r["test_acc_mean"])


def compare_models(
    out_dir: Path,
    contenders: tuple[Contender, ...],
    *,
    data: str = "digits",
    epochs: int = 15,
    seeds: tuple[int, ...] = (0, 1),
    batch_size: int = 64,
    lr: float = 2e-3,
    device: str = "cpu",
    n_train: int = 0,
) -> dict[str, Any]:
    """Train every contender under one budget; write compare.csv and compare_accuracy.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    test = load(data, "test")
    x = test.tensors()[0][:256]  # (N, C, H, W) normalised test images for the speed and MAC probes
    rows: list[dict[str, Any]] = []
    for c in contenders:
        accs, train_accs, rates = _train_contender(
            out_dir, c, seeds, data=data, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
            n_train=n_train,
        )  # fmt: skip
        model = create_model(
            c.model, num_classes=test.num_classes, in_chans=x.shape[1], image_size=x.shape[-1], **c.options
        )
        rows.append(
            {
                "model": c.label,
                "kind": "CNN" if c.cnn else "attention",
                "data": data,
                "epochs": epochs,
                "test_acc_mean": round(statistics.fmean(accs), 4),
                "test_acc_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                "train_acc_mean": round(statistics.fmean(train_accs), 4),
                "seeds": len(accs),
                "params": count_parameters(model),
                "macs_per_image": count_macs(model.eval(), x[:1]),
                "train_images_per_s": round(statistics.fmean(rates)),
                "inference_images_per_s": round(inference_rate(model.to(device), x.to(device))),
            }
        )
    write_csv(out_dir / "compare.csv", rows)
    plot_compare(out_dir)
    best_cnn, best_att = _best(rows, "CNN"), _best(rows, "attention")
    return {
        "rows": rows,
        "data": data,
        "epochs": epochs,
        "n_train": n_train,
        "seeds": list(seeds),
        "best_cnn": best_cnn["model"],
        "best_cnn_acc": best_cnn["test_acc_mean"],
        "best_attention": best_att["model"],
        "best_attention_acc": best_att["test_acc_mean"],
        "threads": torch.get_num_threads(),
        "timing": _timing(epochs, len(x), device),
    }


def _timing(epochs: int, images: int, device: str) -> str:
    """How the table's speeds were measured, for the report."""
    return (
        f"Training images/s: the median over the {epochs} epochs of a run of whole-epoch throughput "
        "(data, augmentation, forward, backward, update), averaged over the seeds. Inference images/s: "
        f"the median of {INFERENCE_REPEATS} timed passes over {images} test images after a warm-up. "
        f"Both on {device_name(device)} with {torch.get_num_threads()} torch thread(s)."
    )
