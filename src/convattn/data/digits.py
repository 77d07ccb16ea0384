"""The 8×8 handwritten digits that ship with scikit-learn: 1,797 real images, the default data set.

The images are the test part of the UCI "optical recognition of handwritten digits" data (Alpaydin &
Kaynak 1998): 32×32 bitmaps with each 4×4 block counted into one pixel, so values are 0..16. They are kept
as uint8 with ``max_value=16``. The split is fixed (see `stratified_split`): 20 % of every class is
test, whatever the seed, so results on "digits" are comparable across runs.
"""

from __future__ import annotations

import numpy as np
import torch

from convattn.data.imageset import ImageSet, make_splits, stratified_split

__all__ = ["TEST_FRACTION", "load_digits"]

TEST_FRACTION = 0.2


def load_digits() -> tuple[ImageSet, ImageSet]:
    """Both splits of the digits: (1, 8, 8) uint8 images in 0..16, 10 classes named "0".."9"."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, so only when asked

    bunch = sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), integers 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    x = torch.from_numpy(images.round().astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    train_idx, test_idx = stratified_split(labels, [str(i) for i in range(len(labels))], TEST_FRACTION)
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    classes = tuple(str(d) for d in range(10))
    return make_splits("digits", (x[tr], y[tr]), (x[te], y[te]), classes, max_value=16.0)
