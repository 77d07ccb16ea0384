"""The study's training runs: shared between sections, reused when finished, resumed when interrupted.

`run_training(cfg)` is how every section trains: inside `shared_runs(root)` a run lives in
root/<model>-<hash of its config>, so two sections that ask for the same run share one; `progress_to`
sends a line per run to the study's log; `run_trainings` trains several runs at once in worker
processes inside `parallel(jobs)`, and `run_chains` several sequences of runs, each in one worker.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from convattn.train import TrainConfig, read_history, train
from convattn.utils.checks import check_positive_int

__all__ = [
    "parallel",
    "progress_to",
    "run_chains",
    "run_folder",
    "run_training",
    "run_trainings",
    "shared_runs",
]


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


def _train_or_reuse(cfg: TrainConfig) -> tuple[list[dict[str, Any]], str]:
    """(history, a progress line) of the run `cfg` in its own folder `cfg.out`: reused when finished,
    resumed when interrupted, trained otherwise."""
    out = Path(cfg.out)
    name = _run_name(cfg)
    saved = out / "config.json"
    if saved.exists() and (diff := TrainConfig.load(saved).differences(cfg)):
        raise ValueError(f"{out} holds a different run ({'; '.join(diff)}); use another folder")
    if (out / "model.safetensors").exists():
        history = read_history(out)
        return history, f"kept {name}: {_score(history)}"
    resume = saved.exists()
    start = last = time.perf_counter()
    sink = _PROGRESS.get()

    def epoch_line(line: str) -> None:
        nonlocal last
        if sink and time.perf_counter() - last >= 30.0:
            sink(f"{name}: {line}")
            last = time.perf_counter()

    threads = torch.get_num_threads()
    try:
        history = train(cfg, resume=resume, log=epoch_line).history
    finally:
        torch.set_num_threads(threads)  # a run with cfg.threads leaves the caller's setting alone
    took, verb = time.perf_counter() - start, "resumed" if resume else "trained"
    return history, f"{verb} {name}: {_score(history)} ({took:.1f} s)"


def _score(history: list[dict[str, Any]]) -> str:
    last = history[-1]
    if "val_acc" in last:
        return f"validation accuracy {last['val_acc']:.1%}"
    if "test_knn_acc" in last:  # MoCo's monitor
        return f"test k-NN accuracy {last['test_knn_acc']:.1%}"
    if "test_AP50" in last:  # a detector
        return f"test AP50 {last['test_AP50']:.3f}, AP {last['test_AP']:.3f}"
    return f"test accuracy {last['test_acc']:.1%}"


def run_training(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The epochs' metrics of the run `cfg`: reused when its folder (`run_folder`) holds a finished run,
    resumed when it holds an interrupted one, trained otherwise (reporting to `progress_to`'s sink).

    Raises:
        ValueError: the folder holds a run of another configuration (it is never reused).
    """
    history, line = _train_or_reuse(replace(cfg, out=str(run_folder(cfg))))
    if sink := _PROGRESS.get():
        sink(line)
    return history


_JOBS: ContextVar[int] = ContextVar("jobs", default=1)


@contextmanager
def parallel(jobs: int) -> Iterator[None]:
    """Within the block, `run_trainings` trains up to `jobs` runs at once, each in a worker process.

    The workers are spawned, so a script that calls this must guard its own code with
    `if __name__ == "__main__":` (the `convattn` command does).
    """
    token = _JOBS.set(check_positive_int("jobs", jobs))
    try:
        yield
    finally:
        _JOBS.reset(token)


def _worker_init() -> None:
    torch.set_num_threads(1)  # the runs of a study set threads=1: one core per worker


def _work(cfg: TrainConfig) -> int:
    """A run's expected work for scheduling: images it trains on (n_train 0, the whole split: the most)."""
    return cfg.epochs * (cfg.n_train or 2**40)


def run_trainings(cfgs: Sequence[TrainConfig]) -> list[list[dict[str, Any]]]:
    """The histories of several runs, in order, as `run_training` gives them.

    Inside `parallel(jobs)` with jobs > 1 they train in `jobs` worker processes (spawned, one run each
    at a time, the longest first); a run asked for twice trains once. The results do not depend on
    `jobs` when the runs fix their thread count (`TrainConfig.threads`): a run is the same function of
    its config anywhere.
    On Ctrl-C or SIGTERM the workers checkpoint their runs and stop (`convattn.train.Interrupted`).
    """
    unique = list({str(run_folder(c)): c for c in cfgs}.values())
    histories = _chains([[c] for c in unique])
    done = {str(run_folder(c)): h[0] for c, h in zip(unique, histories, strict=True)}
    return [done[str(run_folder(c))] for c in cfgs]


def run_chains(chains: Sequence[Sequence[TrainConfig]]) -> list[list[list[dict[str, Any]]]]:
    """The histories of chains of runs: the runs of a chain train one after the other in one worker, so
    that a run may start from an earlier one's weights (`TrainConfig.init_from`), and the chains train
    side by side inside `parallel(jobs)` (longest first) in one pool of workers, which start once.

    Raises:
        ValueError: a chain is empty, or one run is in two chains (it would train twice at once).
    """
    owner: dict[str, int] = {}
    for i, chain in enumerate(chains):
        if not chain:
            raise ValueError(f"chain {i} holds no run")
        for c in chain:
            if owner.setdefault(str(run_folder(c)), i) != i:
                raise ValueError(f"{_run_name(c)} is in chains {owner[str(run_folder(c))]} and {i}")
    return _chains(chains)


def _chains(chains: Sequence[Sequence[TrainConfig]]) -> list[list[list[dict[str, Any]]]]:
    resolved = [[replace(c, out=str(run_folder(c))) for c in chain] for chain in chains]
    jobs = min(_JOBS.get(), len(resolved))
    sink = _PROGRESS.get()
    if jobs <= 1:
        histories: list[list[list[dict[str, Any]]]] = []
        for chain in resolved:
            histories.append([])
            for c in chain:
                history, line = _train_or_reuse(c)
                histories[-1].append(history)
                if sink:
                    sink(line)
        return histories
    # Longest first (images seen: epochs x training images; a whole split counts as the largest), so that
    # no long chain starts last and trains alone while the other workers idle.
    order = sorted(range(len(resolved)), key=lambda i: sum(map(_work, resolved[i])), reverse=True)
    done: dict[int, list[list[dict[str, Any]]]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init) as pool:
        futures = {pool.submit(_train_chain, resolved[i]): i for i in order}
        try:
            for future in as_completed(futures):
                results = future.result()
                done[futures[future]] = [history for history, _ in results]
                for _, line in results:
                    if sink:
                        sink(line)
        except BaseException:
            _stop_workers(pool)
            raise
    return [done[i] for i in range(len(resolved))]


def _train_chain(chain: Sequence[TrainConfig]) -> list[tuple[list[dict[str, Any]], str]]:
    return [_train_or_reuse(c) for c in chain]


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker: the trainer saves a checkpoint at the next batch and stops."""
    for future_process in list(getattr(pool, "_processes", {}).values()):  # the executor's own workers
        if future_process.is_alive():
            future_process.terminate()
