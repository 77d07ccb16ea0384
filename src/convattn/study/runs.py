"""Experiments of the study built on the trainer: CNN vs self-attention under one budget.

`compare_models` trains every contender with the same data, budget, optimiser and seeds, and measures
test accuracy (mean ± std over seeds), parameters, multiply-adds with attention counted, and training and
inference images per second on this machine. Each training run lives in its own run folder, so a
finished run is never redone and an interrupted one resumes from its checkpoint.
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

from convattn.analysis.flops import count_macs
from convattn.analysis.summary import count_parameters
from convattn.data import load
from convattn.models.registry import create_model
from convattn.train import TrainConfig, read_history, train
from convattn.utils.plotting import bar_plot
from convattn.utils.records import read_csv, write_csv

__all__ = [
    "DIGITS_CONTENDERS",
    "LOCALITY_CONTENDERS",
    "Contender",
    "compare_models",
    "operators",
    "run_training",
]


@dataclass(frozen=True)
class Contender:
    """A model of the comparison: a label, a registry name, its options, and whether it is a CNN."""

    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    cnn: bool = False


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
# The quick study's comparison: one model of each family, and the two attention nets the study draws.
QUICK_CONTENDERS = tuple(
    c for c in DIGITS_CONTENDERS
    if c.label in ("CNN (3 conv layers)", "ResNet, 3×3 conv", "ResNet, SASA 7×7 attention", "ViT, patch 2")
    or c.options.get("encoding") in ("quadratic", "relative", "relative_content")
)  # fmt: skip
# For the 32×32 generated sets: small kernels and local attention against global attention.
LOCALITY_CONTENDERS = (
    Contender("CNN (3×3 convs)", "cnn_digits", cnn=True),
    Contender("ResNet, 3×3 conv", "resnet_digits", cnn=True),
    Contender(
        "ResNet, SASA 7×7 local attention", "resnet_digits", {"mixer": "sasa", "mixer_options": _HEADS4}
    ),
    Contender("ViT, patch 2 (global attention)", "vit_digits"),
)


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


INFERENCE_REPEATS = 5


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "the CPU"


@torch.no_grad()
def inference_rate(model: torch.nn.Module, images: torch.Tensor, repeats: int = INFERENCE_REPEATS) -> float:
    """Images per second of eval-mode forward passes over `images` on their device (median of `repeats`)."""
    model.eval()
    model(images)  # warm-up
    times = []
    for _ in range(repeats):
        if images.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return len(images) / statistics.median(times)


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


def compare_models(
    out_dir: Path,
    contenders: tuple[Contender, ...] = DIGITS_CONTENDERS,
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
        accs, train_accs, rates = [], [], []
        for seed in seeds:
            tag = hashlib.sha256(c.label.encode()).hexdigest()[:8]  # stable across processes
            folder = out_dir / "runs" / f"{c.model}-{tag}-s{seed}"
            cfg = TrainConfig(
                model=c.model, data=data, epochs=epochs, out=str(folder), model_options=c.options,
                batch_size=batch_size, lr=lr, seed=seed, device=device, n_train=n_train,
            )  # fmt: skip
            history = run_training(cfg)
            accs.append(history[-1]["test_acc"])
            train_accs.append(history[-1]["train_acc"])
            rates.append(statistics.median(h["images_per_s"] for h in history))
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
    best_cnn = max((r for r in rows if r["kind"] == "CNN"), key=lambda r: r["test_acc_mean"])
    best_att = max((r for r in rows if r["kind"] == "attention"), key=lambda r: r["test_acc_mean"])
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
        "timing": (
            f"Training images/s: the median over the {epochs} epochs of a run of whole-epoch throughput "
            "(data, augmentation, forward, backward, update), averaged over the seeds. Inference images/s: "
            f"the median of {INFERENCE_REPEATS} timed passes over {len(x)} test images after a warm-up. "
            f"Both on {_device_name(device)} with {torch.get_num_threads()} torch thread(s)."
        ),
    }


def plot_operators(out_dir: Path) -> None:
    """Draw bench_ratios.png from bench.csv: forward+backward time of every timed operator / dwconv."""
    timed = [r for r in read_csv(out_dir / "bench.csv") if r["fwdbwd_ratio_to_dwconv"] not in ("", "nan")]
    bar_plot(
        [r["op"] for r in timed],
        [float(r["fwdbwd_ratio_to_dwconv"]) for r in timed],
        out_dir / "bench_ratios.png",
        ylabel="forward+backward time / 7×7 depth-wise conv (channels_last), log scale",
        log=True,
    )


def operators(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """The DWNet property table, measured, and a benchmark of the operators (ratios to a 7×7 dwconv).

    Writes properties.csv, bench.csv and bench_ratios.png. The benchmark is `convattn bench` at one
    size (32×32, batch 8; quick: 16×16, batch 2), operators alternating, medians over the repeats.
    """
    from convattn.analysis.bench import BenchConfig, run_bench
    from convattn.analysis.properties import property_table

    out_dir.mkdir(parents=True, exist_ok=True)
    props = [p.row() for p in property_table()]
    write_csv(out_dir / "properties.csv", props)
    cfg = BenchConfig.quick() if quick else BenchConfig(sizes=(32,), repeats=7, warmup=2)
    rows = run_bench(cfg, log=lambda s: None)
    keep = ("op", "size", "fwd_ms", "fwdbwd_ms", "fwd_ratio_to_dwconv", "fwdbwd_ratio_to_dwconv",
            "peak_train_mib", "macs", "repeats", "threads")  # fmt: skip
    table = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keep} for r in rows
    ]
    write_csv(out_dir / "bench.csv", table)
    plot_operators(out_dir)
    ratio = {r["op"]: r["fwdbwd_ratio_to_dwconv"] for r in table}
    return {
        "properties": props,
        "bench": table,
        "size": cfg.sizes[0],
        "batch": cfg.batch,
        "repeats": cfg.repeats,
        "na2d_k7_fwdbwd_ratio": ratio.get("na2d_k7"),
        "window_w7_fwdbwd_ratio": ratio.get("window_w7"),
        "unfold_fwdbwd_ratio": ratio.get("unfold_local_k7"),
        "threads": torch.get_num_threads(),
    }
