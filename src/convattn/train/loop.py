"""The training loop: resumable bit for bit, atomic checkpoints, and DistributedDataParallel under torchrun.

Determinism: the model is initialised from the seed; the shuffle order of epoch e is drawn from
(seed, e) and the augmentation of batch b from (seed, e, b), so batches never depend on the past;
dropout draws from torch's global generator, whose state is saved in every checkpoint. A run killed
at any moment and resumed therefore ends with the same weights, to the bit, as an uninterrupted run
(at the same thread count: CPU reductions are deterministic for a fixed number of threads).

Run folder: config.json, checkpoint.pt (after every epoch, and on SIGINT/SIGTERM mid-epoch),
metrics.jsonl and metrics.csv (one row per epoch), and at the end model.safetensors.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.data import Augment, ImageSet, batches, default_augment, load
from convattn.models.registry import create_model
from convattn.train.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from convattn.train.config import TrainConfig
from convattn.utils.records import atomic_write_bytes, write_csv

__all__ = [
    "Interrupted",
    "RunResult",
    "build_model",
    "evaluate",
    "evaluate_weights",
    "load_weights",
    "lr_at",
    "read_history",
    "train",
]

NO_DECAY = ("centres", "spreads")  # attention centres and spreads of the quadratic encoding


class Interrupted(Exception):  # noqa: N818 (a requested stop, not an error)
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; `--resume` continues it."""


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports: its folder, final test accuracy and loss, and every epoch's metrics."""

    out: Path
    test_acc: float
    test_loss: float
    history: list[dict[str, Any]]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over cfg.warmup of the steps, then cosine decay to zero."""
    warm = int(cfg.warmup * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: never on norms, biases, or attention centres and spreads."""
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (rest if p.ndim <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run made the process group, and destroys it at the end

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(cfg: TrainConfig) -> _Dist:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    owns = not dist.is_initialized()  # a caller that trains several runs keeps one group up for all
    if owns:
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    d = _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)
    if cfg.batch_size % d.world:
        raise ValueError(f"batch_size={cfg.batch_size} must divide evenly over {d.world} processes")
    return d


def _prepare_folder(cfg: TrainConfig, resume: bool, main: bool) -> Path:
    """Create the run folder, or check that it holds this very run when resuming; never overwrite."""
    out = Path(cfg.out)
    saved = out / "config.json"
    if resume:
        if not saved.exists():
            raise FileNotFoundError(f"nothing to resume in {out}: no config.json")
        diff = TrainConfig.load(saved).differences(cfg)
        if diff:
            raise ValueError(
                f"{out} holds a different run; --resume needs the same settings: {'; '.join(diff)}"
            )
        return out
    if not main:  # the main process checks and creates the folder; the others wait at a barrier
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} already holds files; resume it with --resume or choose another --out (nothing changed)"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(saved, cfg.to_json().encode())
    return out


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next batch boundary and stops."""

    def __init__(self) -> None:
        self.raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _agree(flag: bool, dist_: _Dist) -> bool:
    """True on every process if any process was asked to stop."""
    if dist_.world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)])
    dist.all_reduce(t)
    return bool(t.item() > 0)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ImageSet, batch_size: int = 256, device: str = "cpu"
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on `data`, in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in batches(data, batch_size, seed=0, epoch=0, shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return correct / max(n, 1), loss / max(n, 1)


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in history)
    atomic_write_bytes(out / "metrics.jsonl", lines.encode())
    if history:
        write_csv(out / "metrics.csv", history)


def _augment(cfg: TrainConfig, data: ImageSet) -> Augment:
    """The config's crop padding and flip; crop_pad=-1 takes the data set's default padding."""
    pad = cfg.crop_pad if cfg.crop_pad >= 0 else default_augment(data).crop_pad
    return Augment(crop_pad=pad, flip=cfg.flip)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)


def build_model(cfg: TrainConfig, train_set: ImageSet) -> nn.Module:
    """The model a run of `cfg` starts from: seeded with cfg.seed, shaped by its training set."""
    torch.manual_seed(cfg.seed)
    C, H = train_set.images.shape[1:3]
    return create_model(
        cfg.model, num_classes=train_set.num_classes, in_chans=C, image_size=H, **cfg.model_options
    )


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics a run folder holds (metrics.jsonl)."""
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def train(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> RunResult:
    """Train `cfg.model` on `cfg.data`; see the module docstring for the run folder and resumption.

    Raises:
        Interrupted: on SIGINT/SIGTERM, after saving a checkpoint.
        FileExistsError: `cfg.out` already holds files and resume is False.
        ValueError: resuming a folder that holds a different run, or a bad checkpoint.
    """
    dist_ = _init_distributed(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device if cfg.device == "cpu" else f"cuda:{dist_.local_rank}")
    # n_train goes to both loads: it never changes the test images, but a generated set normalises its
    # test split with the statistics of the training images actually generated.
    n_train = cfg.n_train or None
    train_set = load(cfg.data, "train", seed=cfg.data_seed, n_train=n_train)
    test_set = load(cfg.data, "test", seed=cfg.data_seed, n_train=n_train)
    model = build_model(cfg, train_set).to(device)
    optimizer = _optimizer(model, cfg)
    # Only now that the model and data are known good: a mistyped name leaves no folder behind.
    out = _prepare_folder(cfg, resume, dist_.main)
    if dist_.world > 1:
        import torch.distributed as dist

        dist.barrier()
    per_rank = cfg.batch_size // dist_.world
    steps_per_epoch = len(train_set) // cfg.batch_size  # whole global batches: every rank steps alike
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(train_set)} training images")
    total = steps_per_epoch * cfg.epochs
    epoch, start_batch, step, history = 0, 0, 0, []
    partial = {"seen": 0, "loss_sum": 0.0, "correct": 0}  # running sums of an interrupted epoch
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, start_batch, step, history = (
            state["epoch"],
            state["batch"],
            state["step"],
            list(state["history"]),
        )
        partial = dict(state["partial"])
        set_rng_state(state["rng"])
        if dist_.main:
            _write_metrics(out, history)  # the files may be ahead of the checkpoint after a kill
            log(f"resuming {out} at epoch {epoch + 1}, batch {start_batch}")
    net: nn.Module = model
    if dist_.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_.local_rank] if cfg.device == "cuda" else None
        )
    augment = _augment(cfg, train_set)

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        if dist_.main:
            save_checkpoint(
                ckpt,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": next_epoch,
                    "batch": next_batch,
                    "step": step,
                    "history": history,
                    "partial": {"seen": seen, "loss_sum": loss_sum, "correct": correct} if next_batch else {},
                    "rng": rng_state(),
                },
            )

    with _StopFlag() as stop:
        while epoch < cfg.epochs:
            net.train()
            t0 = time.perf_counter()
            seen, correct = int(partial.get("seen", 0)), int(partial.get("correct", 0))
            loss_sum = float(partial.get("loss_sum", 0.0))
            partial = {}
            # Batches depend only on (seed, epoch, index): a resumed epoch starts at its next batch.
            stream: Iterator[tuple[Tensor, Tensor]] = batches(
                train_set, per_rank, seed=cfg.seed, epoch=epoch, shuffle=True, augment=augment,
                rank=dist_.rank, world_size=dist_.world, drop_last=True, start=start_batch,
            )  # fmt: skip
            bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", dist_.main)
            bar.update(start_batch)
            for b, (x, y) in enumerate(stream, start=start_batch):
                x, y = x.to(device), y.to(device)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, cfg)
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                step += 1
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                bar.update(1)
                if _agree(stop.raised, dist_):
                    checkpoint(epoch, b + 1)
                    bar.close()
                    raise Interrupted(
                        f"stopped at epoch {epoch + 1}, batch {b + 1}; checkpoint saved in {ckpt}"
                    )
            bar.close()
            start_batch = 0
            seconds = time.perf_counter() - t0
            # The test split every eval_every epochs and after the last; None in between.
            due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            test_acc, test_loss = (None, None) if not due else (
                evaluate(model, test_set, device=cfg.device) if dist_.main else (0.0, 0.0)
            )  # fmt: skip
            history.append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "lr": lr_at(max(step - 1, 0), total, cfg),
                    "train_loss": loss_sum / max(seen, 1),
                    "train_acc": correct / max(seen, 1),
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                    "seconds": seconds,
                    "images_per_s": seen * dist_.world / max(seconds, 1e-9),
                }
            )
            epoch += 1
            checkpoint(epoch, 0)
            if dist_.main:
                _write_metrics(out, history)
                row = history[-1]
                tested = "" if test_acc is None else f"  test loss {test_loss:.4f} acc {test_acc:.3f}"
                log(
                    f"epoch {epoch}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                    f"acc {row['train_acc']:.3f}{tested}  ({seconds:.1f} s)"
                )
    if dist_.main:
        _export(out, model, cfg, train_set)
    if dist_.world > 1:  # leave together: a process that exits while gloo still talks aborts
        import torch.distributed as dist

        dist.barrier()
        if dist_.owns_group:
            dist.destroy_process_group()
    final = history[-1] if history else {"test_acc": float("nan"), "test_loss": float("nan")}
    return RunResult(out, final["test_acc"], final["test_loss"], history)


def _export(out: Path, model: nn.Module, cfg: TrainConfig, data: ImageSet) -> None:
    """model.safetensors and model.json (what `convattn eval` needs to rebuild the model)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / "model.safetensors", save(tensors))
    meta = {
        "model": cfg.model,
        "model_options": cfg.model_options,
        "num_classes": data.num_classes,
        "in_chans": int(data.images.shape[1]),
        "image_size": int(data.images.shape[-1]),
        "data": cfg.data,
        "data_seed": cfg.data_seed,
        "n_train": cfg.n_train,
    }
    atomic_write_bytes(out / "model.json", json.dumps(meta, indent=2, sort_keys=True).encode())


def load_weights(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model exported in `folder` (model.safetensors + model.json); strict key/shape check."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / "model.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{folder} holds no exported model ({err.filename} is missing)") from err
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise ValueError(f"{folder} holds a corrupt export: {err}") from err
    model = create_model(
        meta["model"],
        num_classes=meta["num_classes"],
        in_chans=meta["in_chans"],
        image_size=meta["image_size"],
        **meta.get("model_options", {}),
    )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit {meta['model']!r} (missing {missing}, unexpected {unexpected})"
        )
    return model, meta


def evaluate_weights(folder: Path, data: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Test accuracy and loss of the model exported in `folder`, on its own data set or on `data`."""
    model, meta = load_weights(folder)
    n_train = None if data else meta.get("n_train") or None  # the normalisation the model trained with
    test = load(data or meta["data"], "test", seed=meta.get("data_seed", 0), n_train=n_train)
    acc, loss = evaluate(model.to(device), test, device=device)
    return {
        "weights": str(folder),
        "data": data or meta["data"],
        "test_acc": acc,
        "test_loss": loss,
        "n": len(test),
    }
