"""The 8×8 handwritten digits that ship with scikit-learn: 1,797 real images, the default data set.

The images are the test part of the UCI "optical recognition of handwritten digits" data (Alpaydin &
Kaynak 1998): 32×32 bitmaps with each 4×4 block counted into one pixel, so values are 0..16. They are kept
as uint8 with ``max_value=16``. The split is fixed (see `stratified_split`): 20 % of every class is
test, whatever the seed, so results on "digits" are comparable across runs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from convattn.data.imageset import ImageSet, make_splits, stratified_split

__all__ = ["TEST_FRACTION", "load_digits", "load_digits32"]

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


def load_digits32() -> tuple[ImageSet, ImageSet]:
    """The same digits and split, bilinearly enlarged 4× to (1, 32, 32), as uint8 in 0..255.

    A 2×2 space-to-depth of these images gives a 16×16 token map on which each original pixel spans
    2×2 tokens: the scale of Cordonnier et al.'s CIFAR-10 nets (32×32 images, 16×16 maps), where a
    3×3 grid of head offsets means "a token and its neighbours" inside a stroke. `align_corners=False`
    keeps the enlarged image centred on the original one.
    """
    train, test = load_digits()
    pairs = []
    for part in (train, test):
        x = part.images.to(torch.float32) * (255.0 / 16.0)  # (N, 1, 8, 8) in 0..255
        big = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)  # (N, 1, 32, 32)
        pairs.append((big.round().clamp(0, 255).to(torch.uint8), part.labels))
    return make_splits("digits32", pairs[0], pairs[1], train.classes)
