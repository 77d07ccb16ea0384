"""torchrun's process topology in one place: rank, world size, the main process, a process group, a barrier,
and one collective vote (`any_process`).

Outside torchrun every function answers as for one process (rank 0 of 1) and nothing is initialised.
Inside it, the answers come from the process group when one is up, else from torchrun's environment
variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

__all__ = [
    "all_gather_cat",
    "any_process",
    "barrier",
    "is_main",
    "local_rank",
    "process_group",
    "rank",
    "shuffled_forward",
    "world_size",
]


def _group_up() -> bool:
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


def rank() -> int:
    """This process's rank: the process group's if one is up, else torchrun's `RANK` (0 without it)."""
    if _group_up():
        import torch.distributed as dist

        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes: the process group's size if one is up, else torchrun's `WORLD_SIZE` (1)."""
    if _group_up():
        import torch.distributed as dist

        return int(dist.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """The rank within this node (torchrun's `LOCAL_RANK`): which GPU this process drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True for the one process that writes files and prints (rank 0)."""
    return rank() == 0


@contextlib.contextmanager
def process_group(backend: str, *, timeout: timedelta | None = None) -> Iterator[bool]:
    """Under torchrun, a process group for the block unless one is up already; yields whether it was
    made here (and is then destroyed at the end). Outside torchrun, nothing (yields False)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _group_up():
        yield False
        return
    import torch.distributed as dist

    if timeout is None:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, timeout=timeout)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process of the group; nothing when there is one process or no group."""
    if _group_up() and world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any of them (an all-reduce: every process must call it).

    With one process, or no group, `flag` itself. Under nccl the vote travels on this process's GPU
    (nccl reduces CUDA tensors only), else on the CPU.
    """
    if not (_group_up() and world_size() > 1):
        return flag
    import torch
    import torch.distributed as dist

    device = torch.device(f"cuda:{local_rank()}" if dist.get_backend() == "nccl" else "cpu")
    votes = torch.tensor([float(flag)], device=device)
    dist.all_reduce(votes)
    return bool(votes.item() > 0)


def all_gather_cat(x: Any) -> Any:
    """Every process's (B, ...) tensor, concatenated in rank order (an all-gather, no gradient); `x`
    itself with one process."""
    if not (_group_up() and world_size() > 1):
        return x
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shuffled_forward(module: Any, x: Any, after: Callable[[Any], Any] = lambda y: y) -> Any:
    """MoCo's batch shuffle: `after(module(...))` of this process's batch `x`, computed on a random
    share of the global batch (so that batch-norm statistics mix images of every process), then put
    back in `x`'s order. The permutation is drawn on rank 0 from torch's global generator and
    broadcast. With one process: `after(module(x))`."""
    if not (_group_up() and world_size() > 1):
        return after(module(x))
    import torch
    import torch.distributed as dist

    every = all_gather_cat(x)  # (B·world, ...)
    perm = torch.randperm(every.shape[0]).to(x.device)
    dist.broadcast(perm, src=0)
    mine = perm.view(world_size(), -1)[rank()]  # this process's share of the shuffled batch
    y = all_gather_cat(after(module(every[mine])))  # (B·world, ...) in shuffled order
    return y[torch.argsort(perm)].view(world_size(), -1, *y.shape[1:])[rank()]
