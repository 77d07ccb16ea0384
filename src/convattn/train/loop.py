"""The training run: set-up, resumption, checkpoints and export around `engine.train_one_epoch`.

Determinism: the model is initialised from the seed; the shuffle order of epoch e is drawn from
(seed, e) and the augmentation of batch b from (seed, e, b), so batches never depend on the past;
dropout draws from torch's global generator, whose state is saved in every checkpoint. A run killed
at any moment and resumed therefore ends with the same weights, to the bit, as an uninterrupted run
(at the same thread count: CPU reductions are deterministic for a fixed number of threads).

Run folder: config.json, checkpoint.pt (after the first and the last epoch, after any epoch that ends
at least `SAVE_RATIO` times the last save's duration after it, and on SIGINT/SIGTERM mid-epoch),
metrics.jsonl and metrics.csv (one row per epoch, written with each checkpoint, so they hold the epochs
it holds), and at the end model.safetensors and model.json. While a run trains, its main process holds
the folder's lock (`convattn.utils.folders`): a second process that would train into the same folder
is refused at once, and the temporary files a killed process left are removed when the lock is taken.
A checkpoint names its model, so one copied from a run of another model is refused by name.
Saving costs a bounded share of a run (about 1 / SAVE_RATIO) however short its epochs: a run of 600
one-step epochs no longer spends a third of its time writing checkpoints, and a kill loses at most
that much work, which the resume redoes to the same bits.

History: each row holds epoch, step, lr, train_loss and train_acc (running means over the epoch's
augmented batches, before each update), then the evaluation — test_loss and test_acc, or with
``cfg.holdout`` val_loss and val_acc on the validation split (the test split is then never loaded) —
or None when no evaluation was due, then seconds and images_per_s. The last row adds train_eval_acc:
the final model's accuracy on all its training images in eval mode, without augmentation.

Detection: a model of task "detection" (DETR) trains on detection data (``detect_shapes``,
``coco:PATH``; `convattn.data.load_detection` at the model's image size) with DETR's set loss
(`engine.detection_criterion`), flips only (the boxes flip with the images). Its rows have no accuracy:
the evaluation is test_loss, test_AP, test_AP50, test_AP75 and test_recall (COCO's, `coco_map`), and
the last row adds train_eval_AP50, on the first TRAIN_EVAL_SCENES (500) training scenes. Everything
else — resumption, checkpoints, torchrun, export — is the same.

MoCo (``method="moco"``, `convattn.ssl.MoCo`): the model becomes MoCo's query encoder (the key
encoder and the queue are part of the model, so every checkpoint holds them) and trains on two views
of every image (`convattn.data.views`) without their labels: train_loss is InfoNCE, train_acc the
share of queries that picked their own key, and the evaluation is test_knn_acc (the k-NN monitor on
the labelled splits). The export is the query encoder under the classifier's names, for
``init_from``. ``train_only`` freezes every parameter outside a prefix (``head``: a linear probe).

Under torchrun the processes join one process group (gloo on CPU, nccl on CUDA) and train with
DistributedDataParallel; only the main process writes files and logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convattn.data import (
    Augment,
    DetectionSet,
    ImageSet,
    batches,
    default_augment,
    detection_batches,
    load,
    load_detection,
)
from convattn.data.views import view_batches
from convattn.models.registry import create_model, model_info
from convattn.ssl import MoCo
from convattn.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from convattn.train.config import TrainConfig
from convattn.train.engine import (
    Diverged,
    EpochState,
    classification_criterion,
    detection_criterion,
    evaluate,
    evaluate_detection,
    evaluate_knn,
    moco_criterion,
    progress_bar,
    train_one_epoch,
)
from convattn.train.export import export_model, init_from_export
from convattn.train.schedule import lr_at
from convattn.utils import dist
from convattn.utils.checks import check_device
from convattn.utils.folders import (
    LOCK_NAME,
    check_creatable,
    folder_lock,
    holds_files,
    remove_stale_temporaries,
)
from convattn.utils.records import atomic_write_bytes, write_csv

__all__ = ["Interrupted", "RunResult", "build_model", "is_detection", "read_history", "train"]

NO_DECAY = ("centres", "spreads")  # attention centres and spreads of the quadratic encoding
TRAIN_EVAL_SCENES = 500  # a detector's final check on its training scenes: as many as a test split holds


class Interrupted(Exception):  # noqa: N818 (a requested stop, not an error)
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; `--resume` continues it."""


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports: its folder, final test accuracy and loss, and every epoch's metrics.

    With a holdout the test numbers are NaN (the test split is not touched) and val_acc and val_loss
    are the final validation numbers; without one those are NaN. A detector has no accuracy (NaN): its
    final scores (test_loss, test_AP, test_AP50, test_AP75, test_recall) are in `scores`, as every
    run's final evaluation is.
    """

    out: Path
    test_acc: float
    test_loss: float
    history: list[dict[str, Any]]
    val_acc: float = math.nan
    val_loss: float = math.nan
    scores: dict[str, float] = field(default_factory=dict)


def _param_groups(
    model: nn.Module, weight_decay: float, position_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Weight decay on weights only: never on norms, biases, or attention centres and spreads.

    The centres are a group of their own whose "lr_scale" multiplies the scheduled rate
    (`train_one_epoch` reads it); the other groups, the spreads among them, have lr_scale 1. Empty
    groups are left out.
    """
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    positions: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("centres"):
            positions.append(p)
        else:
            (rest if p.ndim <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": positions, "weight_decay": 0.0, "lr_scale": position_lr_scale},
    ]
    return [g for g in groups if g["params"]]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay, cfg.position_lr_scale)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    # The fused kernel updates every tensor in one pass (4-6x faster than the default on small nets).
    fused = all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"]
    )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), fused=fused)


def _refuse_used(out: Path) -> None:
    if holds_files(out):
        raise FileExistsError(
            f"{out} already holds files; resume it with --resume or choose another --out (nothing changed)"
        )


def _prepare_folder(cfg: TrainConfig, resume: bool, main: bool, held: contextlib.ExitStack) -> Path:
    """Create the run folder, or check that it holds this very run when resuming; never overwrite.

    The main process holds the folder's lock (`held` keeps it until the run ends): a second process
    training into the same folder is refused at once. Temporary files of a killed earlier process are
    removed once the lock is held.
    """
    out = Path(cfg.out)
    saved = out / "config.json"
    if resume:
        if not saved.is_file():
            raise FileNotFoundError(f"nothing to resume in {out}: no config.json")
        if main:
            held.enter_context(folder_lock(out))
            remove_stale_temporaries(out, locked=True)
        diff = TrainConfig.load(saved).differences(cfg)
        if diff:
            raise ValueError(
                f"{out} holds a different run; --resume needs the same settings: {'; '.join(diff)}"
            )
        return out
    if not main:  # the main process checks and creates the folder; the others wait at a barrier
        return out
    check_creatable(out)
    if (out / LOCK_NAME).exists():  # say "in use" rather than "holds files" while a run writes there
        with folder_lock(out):
            pass
    _refuse_used(out)
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(folder_lock(out))
    _refuse_used(out)  # another process may have started between the check and the lock
    atomic_write_bytes(saved, cfg.to_json().encode())
    return out


# A checkpoint is written once the time since the last one reaches SAVE_RATIO times that save's duration.
SAVE_RATIO = 10.0


class _SaveClock:
    """When to checkpoint at an epoch boundary: after the first epoch, after the last, and whenever the
    training since the last save took at least SAVE_RATIO times as long as that save did."""

    def __init__(self) -> None:
        self.cost: float | None = None  # no save measured yet: the first boundary saves
        self.done = time.perf_counter()

    def due(self, last: bool) -> bool:
        if last or self.cost is None:
            return True
        return time.perf_counter() - self.done >= SAVE_RATIO * self.cost

    def save(self, run: _Run) -> None:
        start = time.perf_counter()
        _save(run)
        self.done = time.perf_counter()
        self.cost = self.done - start


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next batch boundary and stops.

    A second signal does not wait for that boundary (which a stuck step may never reach): it restores
    the previous handlers and exits at once, KeyboardInterrupt for SIGINT and exit status 128 + 15 for
    SIGTERM; the last checkpoint on disk stays as it was (it is only ever replaced atomically).
    """

    def __init__(self) -> None:
        self.raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum: int, frame: Any) -> None:
        if not self.raised:
            self.raised = True
            return
        self.__exit__()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in history)
    atomic_write_bytes(out / "metrics.jsonl", lines.encode())
    if history:  # one column per key of any row (train_eval_acc is in the last row only)
        keys = list(dict.fromkeys(k for row in history for k in row))
        write_csv(out / "metrics.csv", [{k: row.get(k) for k in keys} for row in history])


def _augment(cfg: TrainConfig, data: ImageSet | DetectionSet) -> Augment:
    """The config's crop padding and flip; crop_pad=-1 takes the data set's default padding (detection
    data: flips only)."""
    if isinstance(data, DetectionSet):
        return Augment(flip=cfg.flip)
    pad = cfg.crop_pad if cfg.crop_pad >= 0 else default_augment(data).crop_pad
    return Augment(crop_pad=pad, flip=cfg.flip)


def is_detection(cfg: TrainConfig) -> bool:
    """Whether `cfg.model` is a detector (trained on a `DetectionSet` with DETR's set loss)."""
    return model_info(cfg.model).task == "detection"


def _check_task(cfg: TrainConfig, detection_data: bool, data: str) -> None:
    """A ValueError naming the model and the data unless a detector meets detection data and a
    classifier an image set."""
    detector = is_detection(cfg)
    if detector != detection_data:
        task = "detection" if detector else "classification"
        wants = "detection data (detect_shapes, coco:PATH)" if detector else "an image set"
        raise ValueError(f"{cfg.model!r} is a {task} model: it trains on {wants}, not on {data!r}")


def build_model(cfg: TrainConfig, train_set: ImageSet | DetectionSet) -> nn.Module:
    """The model a run of `cfg` starts from: seeded with cfg.seed, shaped by its training set.

    Raises:
        ValueError: a detector for an image set or a classifier for a detection set, or a detector with
            fewer queries than the most objects an image of its training set holds.
    """
    _check_task(cfg, isinstance(train_set, DetectionSet), train_set.name)
    torch.manual_seed(cfg.seed)
    C, H = train_set.images.shape[1:3]
    model = create_model(
        cfg.model, num_classes=train_set.num_classes, in_chans=C, image_size=H, **cfg.model_options
    )
    if isinstance(train_set, DetectionSet):
        queries = int(getattr(model, "num_queries", 0))
        if train_set.max_objects > queries:
            raise ValueError(
                f"{cfg.model!r} has {queries} queries, but an image of {train_set.name!r} holds "
                f"{train_set.max_objects} objects: raise num_queries (e.g. --set "
                f"num_queries={train_set.max_objects})"
            )
    return model


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics a run folder holds (metrics.jsonl)."""
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


@dataclass
class _Run:
    """A run in progress: what it trains, where it writes, and where it stands."""

    cfg: TrainConfig
    out: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_set: ImageSet | DetectionSet
    eval_set: ImageSet | DetectionSet  # the test split, or the validation split with a holdout
    device: torch.device
    steps_per_epoch: int
    net: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    epoch: int = 0
    state: EpochState = field(default_factory=EpochState)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoint.pt"

    def lr(self, step: int) -> float:
        return lr_at(step, self.steps_per_epoch * self.cfg.epochs, self.cfg)


def _train_only(model: nn.Module, prefix: str) -> nn.Module:
    """Freeze every parameter whose name does not start with `prefix`; a ValueError when none does."""
    names = [n for n, _ in model.named_parameters()]
    if not any(n.startswith(prefix) for n in names):
        raise ValueError(
            f"train_only={prefix!r} names no parameter of this model (they start with: "
            f"{', '.join(sorted({n.split('.')[0] for n in names}))})"
        )
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefix))
    return model


def _load_data(cfg: TrainConfig) -> tuple[ImageSet | DetectionSet, ImageSet | DetectionSet]:
    """(train, evaluation) splits of cfg.data: an image set, or detection data for a detector."""
    _check_task(cfg, cfg.data == "detect_shapes" or cfg.data.startswith("coco:"), cfg.data)
    if is_detection(cfg):
        if cfg.holdout:
            raise ValueError(
                f"holdout={cfg.holdout}: a validation split of detection data is not supported; "
                "detection runs evaluate on the test split"
            )
        if cfg.crop_pad > 0:
            raise ValueError(
                f"crop_pad={cfg.crop_pad}: random crops would cut objects out of their boxes; detection "
                "runs flip only (--flip)"
            )
        size = model_info(cfg.model).image_size
        return load_detection(cfg.data, image_size=size, seed=cfg.data_seed, n_train=cfg.n_train or None)
    # n_train and holdout go to both loads: they never change the evaluated images, but they decide the
    # statistics (of the generated or remaining training images) that normalise them.
    options: dict[str, Any] = {"seed": cfg.data_seed, "n_train": cfg.n_train or None, "holdout": cfg.holdout}
    return load(cfg.data, "train", **options), load(cfg.data, "val" if cfg.holdout else "test", **options)


def _check_splits(
    cfg: TrainConfig, train_set: ImageSet | DetectionSet, eval_set: ImageSet | DetectionSet
) -> None:
    """Refuse data a run could only report a meaningless score on."""
    if len(eval_set) == 0:
        raise ValueError(
            f"the {eval_set.split} split of {cfg.data!r} holds no images: nothing to evaluate on"
        )
    if cfg.batch_size > len(train_set):
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(train_set)} training images")


def _start(
    cfg: TrainConfig, resume: bool, held: contextlib.ExitStack, log: Callable[[str], None] = print
) -> _Run:
    """Load the data, build the model (from `cfg.init_from`'s weights where they fit) and its optimiser,
    then make (or check) the run folder, whose lock `held` keeps."""
    world = dist.world_size()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must divide evenly over {world} processes")
    check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device if cfg.device == "cpu" else f"cuda:{dist.local_rank()}")
    train_set, eval_set = _load_data(cfg)
    _check_splits(cfg, train_set, eval_set)
    model = build_model(cfg, train_set)
    if cfg.init_from and not (resume and (Path(cfg.out) / "checkpoint.pt").exists()):
        copied, skipped = init_from_export(model, Path(cfg.init_from))
        if dist.is_main():
            log(f"initialised {len(copied)} tensors from {cfg.init_from}" +
                (f"; skipped (other shapes): {', '.join(skipped)}" if skipped else ""))  # fmt: skip
    if cfg.train_only:
        model = _train_only(model, cfg.train_only)
    if cfg.method == "moco":
        if is_detection(cfg):
            raise ValueError(
                f"method='moco' pre-trains a classifier's encoder, not a detector ({cfg.model!r})"
            )
        model = MoCo(model, batch_size=cfg.batch_size, **cfg.moco_options)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # 4-D weights only
    optimizer = _optimizer(model, cfg)
    # Only now that the model and data are known good: a mistyped name leaves no folder behind.
    out = _prepare_folder(cfg, resume, dist.is_main(), held)
    dist.barrier()
    steps_per_epoch = len(train_set) // cfg.batch_size  # whole global batches: every rank steps alike (>= 1)
    return _Run(cfg, out, model, optimizer, train_set, eval_set, device, steps_per_epoch, net=model)


def _restore_weights(run: _Run, state: dict[str, Any]) -> None:
    """The checkpoint's model and optimiser states; a ValueError naming the file and both models if it
    was written by a run of another model (a checkpoint copied from elsewhere)."""
    theirs, ours = state.get("model_name"), run.cfg.model
    if theirs is not None and theirs != ours:
        raise ValueError(
            f"{run.ckpt} is a checkpoint of model {theirs!r}, not of {ours!r}: it cannot resume this run"
        )
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        said = [
            line.strip() for line in str(err).splitlines() if line.strip()
        ]  # torch: a header, then each key
        first = said[min(1, len(said) - 1)] if said else type(err).__name__
        of = f"model {theirs!r}" if theirs is not None else "another model"
        raise ValueError(
            f"{run.ckpt} holds the weights of {of}, which do not fit model {ours!r} with these options "
            f"({first})"
        ) from None


def _resume(run: _Run, log: Callable[[str], None]) -> None:
    """Restore the model, optimiser, position, history and every random state from checkpoint.pt."""
    state = load_checkpoint(run.ckpt)
    _restore_weights(run, state)
    run.epoch, run.history = state["epoch"], list(state["history"])
    partial = dict(state["partial"])  # the running sums of an interrupted epoch ({} at a boundary)
    run.state = EpochState(
        batch=state["batch"],
        step=state["step"],
        seen=int(partial.get("seen", 0)),
        loss_sum=float(partial.get("loss_sum", 0.0)),
        correct=int(partial.get("correct", 0)),
    )
    set_rng_state(state["rng"])
    if dist.is_main():
        _write_metrics(run.out, run.history)  # the files may be ahead of the checkpoint after a kill
        log(f"resuming {run.out} at epoch {run.epoch + 1}, batch {run.state.batch}")


def _diverged(run: _Run, what: str) -> Diverged:
    """The error that stops a run whose loss or weights are no longer finite, saying what is kept."""
    cfg = run.cfg
    kept = (
        f"the last good checkpoint ({run.ckpt}, epoch {load_checkpoint(run.ckpt)['epoch']}) is kept"
        if run.ckpt.exists()
        else "no checkpoint had been written"
    )
    return Diverged(
        f"training diverged: {what}; try a lower --lr (it is {cfg.lr:g}) or --clip-grad; {kept}, and no "
        "model was exported"
    )


def _save(run: _Run) -> None:
    """checkpoint.pt at the run's position (main process only; the sums only mid-epoch), then
    metrics.jsonl and metrics.csv with the epochs it holds: the files follow the checkpoints, so
    thousands of short epochs do not rewrite a growing history after every one."""
    if not dist.is_main():
        return
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise _diverged(run, f"the weights are no longer finite after epoch {run.epoch}")
    save_checkpoint(
        run.ckpt,
        {
            "model_name": run.cfg.model,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "epoch": run.epoch,
            "batch": run.state.batch,
            "step": run.state.step,
            "history": run.history,
            "partial": run.state.sums() if run.state.batch else {},
            "rng": rng_state(),
        },
    )
    _write_metrics(run.out, run.history)


def _epoch(run: _Run, augment: Augment, stop: Callable[[], bool]) -> dict[str, Any]:
    """Train epoch `run.epoch` from its next batch, then evaluate (when due); its row of the history.

    Raises:
        Interrupted: `stop` answered True; checkpoint.pt then holds the position inside the epoch.
    """
    cfg, state, world = run.cfg, run.state, dist.world_size()
    t0 = time.perf_counter()
    # Batches depend only on (seed, epoch, index): a resumed epoch starts at its next batch.
    where: dict[str, Any] = {"seed": cfg.seed, "epoch": run.epoch, "shuffle": True, "rank": dist.rank(),
                             "world_size": world, "drop_last": True, "start": state.batch}  # fmt: skip
    data = run.train_set
    if isinstance(data, DetectionSet):
        stream: Any = detection_batches(data, cfg.batch_size // world, flip=cfg.flip, **where)
        criterion = detection_criterion(data.num_classes)
    elif cfg.method == "moco":  # two views per image, from (seed, epoch, batch)
        place = {k: where[k] for k in ("seed", "epoch", "start", "rank", "world_size")}
        stream = view_batches(data, cfg.batch_size // world, **place)
        criterion = moco_criterion
    else:
        stream = batches(data, cfg.batch_size // world, augment=augment, **where)
        criterion = classification_criterion(cfg.label_smoothing)
    bar = progress_bar(run.steps_per_epoch, f"epoch {run.epoch + 1}/{cfg.epochs}", dist.is_main())
    bar.update(state.batch)
    try:
        stopped = train_one_epoch(
            run.net, run.optimizer, stream, state, lr=run.lr, device=run.device,
            criterion=criterion, clip_grad=cfg.clip_grad, freeze_norms=bool(cfg.train_only), stop=stop,
            bar=bar, memory_format=_layout(run.cfg),
        )  # fmt: skip
    except Diverged as err:
        raise _diverged(run, f"{err} of epoch {run.epoch + 1}") from None
    finally:
        bar.close()
    if stopped:
        _save(run)
        raise Interrupted(
            f"stopped at epoch {run.epoch + 1}, batch {state.batch}; checkpoint saved in {run.ckpt}"
        )
    seconds = time.perf_counter() - t0
    # The evaluation split every eval_every epochs and after the last; None in between.
    last = run.epoch + 1 == cfg.epochs
    due = (run.epoch + 1) % cfg.eval_every == 0 or last
    split = run.eval_set.split
    scores = _evaluate(run, run.eval_set) if due else dict.fromkeys(_score_names(run), None)
    row: dict[str, Any] = {
        "epoch": run.epoch + 1,
        "step": state.step,
        "lr": run.lr(max(state.step - 1, 0)),
        "train_loss": state.loss_sum / max(state.seen, 1),
    }
    if not isinstance(run.train_set, DetectionSet):
        row["train_acc"] = state.correct / max(state.seen, 1)
    row |= {f"{split}_{k}": v for k, v in scores.items()}
    row |= {"seconds": seconds, "images_per_s": state.seen * world / max(seconds, 1e-9)}
    if last and cfg.method != "moco":  # convergence beside the held-out score: no-grad, no augmentation
        if isinstance(run.train_set, DetectionSet):  # a detector's check costs a forward and COCO's matching
            row["train_eval_AP50"] = _evaluate(run, run.train_set.first(TRAIN_EVAL_SCENES))["AP50"]
        else:
            row["train_eval_acc"] = _evaluate(run, run.train_set)["acc"]
    return row


def _layout(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _score_names(run: _Run) -> tuple[str, ...]:
    """What an evaluation reports: loss and acc, a detector's loss and COCO mAP numbers, or MoCo's
    k-NN accuracy."""
    if isinstance(run.eval_set, DetectionSet):
        return ("loss", "AP", "AP50", "AP75", "recall")
    if run.cfg.method == "moco":
        return ("knn_acc",)
    return ("loss", "acc")


def _evaluate(run: _Run, data: ImageSet | DetectionSet) -> dict[str, float]:
    """The scores `_score_names` names of the model on `data`, measured by the main process (the
    others: zeros)."""
    if not dist.is_main():
        return dict.fromkeys(_score_names(run), 0.0)
    layout = _layout(run.cfg)
    if isinstance(data, DetectionSet):
        return evaluate_detection(run.model, data, device=run.device, memory_format=layout)
    if run.cfg.method == "moco":
        assert isinstance(run.train_set, ImageSet) and isinstance(data, ImageSet)
        k = min(200, len(run.train_set))
        return {"knn_acc": evaluate_knn(run.model, run.train_set, data, k, run.device, layout)}
    acc, loss = evaluate(run.model, data, device=run.device, memory_format=layout)
    return {"loss": loss, "acc": acc}


def _log_epoch(row: dict[str, Any], epochs: int, log: Callable[[str], None]) -> None:
    split = "val" if any(k.startswith("val_") for k in row) else "test"
    score = next(s for s in ("acc", "AP50", "knn_acc") if f"{split}_{s}" in row)
    scored = ""
    if row[f"{split}_{score}"] is not None:
        loss = f" loss {row[f'{split}_loss']:.4f}" if f"{split}_loss" in row else ""
        scored = f"  {split}{loss} {score} {row[f'{split}_{score}']:.3f}"
        if score == "AP50":
            scored += f" AP {row[f'{split}_AP']:.3f}"
    if f"train_eval_{score}" in row:
        scored += f"  final train {score} (eval mode) {row[f'train_eval_{score}']:.3f}"
    train = f"train loss {row['train_loss']:.4f}" + (
        f" acc {row['train_acc']:.3f}" if "train_acc" in row else ""
    )
    log(f"epoch {row['epoch']}/{epochs}  {train}{scored}  ({row['seconds']:.1f} s)")


def train(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> RunResult:
    """Train `cfg.model` on `cfg.data`; see the module docstring for the run folder and resumption.

    Raises:
        Interrupted: on SIGINT/SIGTERM, after saving a checkpoint.
        FileExistsError: `cfg.out` already holds files and resume is False;
            `convattn.utils.folders.FolderInUseError` (a FileExistsError) while another process trains
            into it.
        NotADirectoryError, PermissionError: `cfg.out` is a file, or cannot be written.
        ValueError: resuming a folder that holds a different run, or a bad checkpoint or one of another
            model; device 'cuda' without a CUDA device; an empty evaluation split.
    """
    with dist.process_group("nccl" if cfg.device == "cuda" else "gloo"), contextlib.ExitStack() as held:
        run = _start(cfg, resume, held, log)
        if resume and run.ckpt.exists():
            _resume(run, log)
        if dist.world_size() > 1:
            run.net = nn.parallel.DistributedDataParallel(  # a detector's dict of outputs works too
                run.model, device_ids=[dist.local_rank()] if cfg.device == "cuda" else None
            )
        augment = _augment(cfg, run.train_set)
        clock = _SaveClock()
        with _StopFlag() as flag:
            while run.epoch < cfg.epochs:
                run.history.append(_epoch(run, augment, stop=lambda: dist.any_process(flag.raised)))
                run.epoch += 1
                run.state.next_epoch()
                if clock.due(last=run.epoch == cfg.epochs):
                    clock.save(run)
                if dist.is_main():
                    _log_epoch(run.history[-1], cfg.epochs, log)
        if dist.is_main():
            export_model(run.out, run.model, cfg, run.train_set)
        dist.barrier()  # leave together: a process that exits while gloo still talks aborts
    final = run.history[-1] if run.history else {}
    nan = math.nan
    return RunResult(
        run.out,
        final.get("test_acc", nan),
        final.get("test_loss", nan),
        run.history,
        val_acc=final.get("val_acc", nan),
        val_loss=final.get("val_loss", nan),
        scores={k: v for k, v in final.items() if k.startswith(("test_", "val_")) and v is not None},
    )
