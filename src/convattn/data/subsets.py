"""Parts of a training split: the nested class-stratified order, `n_train` subsets and the holdout.

One seeded, class-stratified order of the N training images (`subset_order`) decides both parts:

* ``n_train=n`` keeps the first n images of the order. A prefix of a prefix is a prefix, so the subsets
  are nested: a learning curve adds images, it never swaps them.
* ``holdout=H`` makes the last H images of the order the validation split ("val") and leaves the
  first N - H for training. An ``n_train`` subset is then still the first n images of the same order
  (n <= N - H): holding out only takes candidates from the end, so a run with a holdout trains on
  exactly the images the same ``(n_train, seed)`` trains on without one, and validates on images no
  such subset contains. Every prefix holds each class within one image of its share, so the last H
  (the whole minus a prefix) do too: the validation split is stratified as well.

Normalisation: without a holdout every split keeps the statistics of the whole training split, as
before. With one, the mean and std are measured on the N - H remaining images (never on a validation
image) and the train, val and test splits all use them; an ``n_train`` subset keeps them too. The
test images themselves never change.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from convattn.data.imageset import ImageSet, channel_stats, derive_seed

__all__ = ["split_training", "subset_order"]


def subset_order(labels: np.ndarray, seed: int, n: int) -> np.ndarray:
    """The first `n` items of a seeded, class-stratified order of `labels`: an (n,) index array.

    Within each class the items are ranked by a hash of (seed, index), as in `stratified_split`, so no
    library's random generator is involved. The classes are then interleaved greedily: item k + 1 comes
    from the class furthest below its proportional share (k + 1) · n_c / N (ties: the lower label), so every
    prefix is as close to the class proportions as one image allows, and a prefix of a prefix is a
    prefix: the subsets are nested.

    Args:
        labels: (N,) int class labels.
        seed: picks the order within each class.
        n: how many items to take, 0 <= n <= N.
    """
    labels = np.asarray(labels)
    if not 0 <= n <= len(labels):
        raise ValueError(f"n must lie in [0, {len(labels)}], got {n=}")
    rank = np.array([derive_seed("subset", seed, i) for i in range(len(labels))], dtype=np.int64)
    classes = np.unique(labels)
    queues = []  # (n_c,) indices of each class, in rank order
    for c in classes:
        members = np.flatnonzero(labels == c)
        queues.append(members[np.argsort(rank[members], kind="stable")])
    sizes = np.array([len(q) for q in queues], dtype=np.int64)
    taken = np.zeros(len(classes), dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    for k in range(n):
        # Shortfall below the share (k + 1) · n_c / N, times N to stay in integers; argmax takes the lowest
        # label among ties, and a full class never has the largest shortfall (its share is at most n_c).
        shortfall = (k + 1) * sizes - taken * len(labels)
        c = int(np.argmax(shortfall))
        order[k] = queues[c][taken[c]]
        taken[c] += 1
    return order


def _check_sizes(train: ImageSet, n_train: int | None, holdout: int) -> None:
    """ValueErrors naming a holdout or n_train that the training split cannot serve."""
    N, k, name = len(train), train.num_classes, train.name
    if holdout and holdout >= N:
        raise ValueError(f"holdout={holdout} must be below the {N} training images of {name}")
    if holdout and N - holdout < k:
        raise ValueError(
            f"holdout={holdout} leaves {N - holdout} of the {N} training images of {name}, fewer than its "
            f"{k} classes: the rest needs at least one image per class"
        )
    if n_train is None:
        return
    if n_train > N - holdout:
        after = f" left after holdout={holdout}" if holdout else ""
        raise ValueError(f"n_train={n_train} exceeds the {N - holdout} training images of {name}{after}")
    if n_train < k:
        raise ValueError(
            f"n_train={n_train} is below the {k} classes of {name}: a class-stratified subset needs at "
            "least one image per class"
        )


def _part(data: ImageSet, index: np.ndarray, split: str, stats: tuple[tuple[float, ...], ...]) -> ImageSet:
    """The images of `data` at `index` (kept in the split's own order) as `split`, with `stats`."""
    part = data.subset(torch.from_numpy(np.sort(index)))
    return replace(part, split=split, mean=stats[0], std=stats[1])


def split_training(
    train: ImageSet, test: ImageSet, *, seed: int, n_train: int | None = None, holdout: int = 0
) -> dict[str, ImageSet]:
    """The splits a loaded data set serves: "train", "test" and, with a holdout, "val" (module doc).

    Args:
        train: the whole training split, normalised with its own statistics.
        test: the test split.
        seed: picks the stratified order (the same order for `n_train` and `holdout`).
        n_train: keep the first n_train images of the order for training (None: all that remain).
        holdout: hold out the last `holdout` images of the order as "val" (0: none).

    Raises:
        ValueError: a holdout that leaves fewer images than classes, an n_train above the images that
            remain or below the number of classes.
    """
    _check_sizes(train, n_train, holdout)
    labels = train.labels.numpy()
    if not holdout:  # as before the holdout existed: the whole split's statistics
        if n_train is None:
            return {"train": train, "test": test}
        index = subset_order(labels, seed, n_train)
        return {"train": train.subset(torch.from_numpy(np.sort(index))), "test": test}
    N = len(train)
    order = subset_order(labels, seed, N)
    rest, val = order[: N - holdout], order[N - holdout :]
    stats = channel_stats(train.images[torch.from_numpy(np.sort(rest))], train.max_value)
    kept = rest if n_train is None else order[:n_train]
    return {
        "train": _part(train, kept, "train", stats),
        "val": _part(train, val, "val", stats),
        "test": replace(test, mean=stats[0], std=stats[1]),
    }
