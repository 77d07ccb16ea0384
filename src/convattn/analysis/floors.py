"""Floors for a comparison: what a linear classifier and an MLP reach on the raw pixels of the same data.

A network that ends below the linear floor has not learned what the pixels give away for free: it is
undertrained (or broken), and its number measures the set-up, not the architecture. Both floors are
scikit-learn models on the flattened, normalised images of the same training and test splits the
networks see (no augmentation), so they are computed in the same run on the same data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from convattn.data import ImageSet

__all__ = ["Floors", "pixel_floors"]


@dataclass(frozen=True)
class Floors:
    """Test accuracies of the two floors, with what they were.

    Attributes:
        linear: multinomial logistic regression on the pixels (L2, C = 1).
        mlp: one hidden layer of `mlp_hidden` ReLU units, Adam, early stopping on 10% of the training set.
        train_images, test_images: how many images each split held.
    """

    linear: float
    mlp: float
    mlp_hidden: int
    train_images: int
    test_images: int


def _flat(images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    x, y = images.tensors()  # (N, C, H, W) normalised, (N,)
    return x.flatten(1).double().numpy(), y.numpy()


def pixel_floors(train: ImageSet, test: ImageSet, *, seed: int = 0, mlp_hidden: int = 256) -> Floors:
    """Fit both floors on `train` and score them on `test`."""
    if train.num_classes != test.num_classes or train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"train and test must be splits of one data set, got {train.name}/{test.name} with "
            f"shapes {tuple(train.images.shape[1:])} and {tuple(test.images.shape[1:])}"
        )
    (x, y), (xt, yt) = _flat(train), _flat(test)
    # One BLAS thread: beside torch's OpenMP threads, more oversubscribe the cores (100× slower here).
    # An iteration cap reached is still a floor; the caller's warning filters stay as they were.
    from sklearn.exceptions import ConvergenceWarning  # scikit-learn takes a second to import: here only
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        linear = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
        mlp = MLPClassifier(
            (mlp_hidden,), early_stopping=True, max_iter=300, random_state=seed, n_iter_no_change=15
        ).fit(x, y)
    return Floors(
        linear=float(linear.score(xt, yt)),
        mlp=float(mlp.score(xt, yt)),
        mlp_hidden=mlp_hidden,
        train_images=len(y),
        test_images=len(yt),
    )
