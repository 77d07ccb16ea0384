"""A small CNN sized for the 8×8 digits: the CNN side of the digits comparisons.

Three 3×3 conv-BN-ReLU layers (32, 64, 64 channels; a 2×2 max-pool after the second), global average
pooling and a linear head: ~60k parameters, seconds per epoch on a CPU.
"""

from __future__ import annotations

from torch import Tensor, nn

from convattn.models.registry import register_preset
from convattn.utils.checks import check_positive_int, check_tensor

__all__ = ["SmallCNN"]


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """Conv(3×3) ×3 with a max-pool after the second, global average pooling, linear head.

    Args:
        num_classes: classes of the head.
        in_chans: input channels.
        width: channels of the first layer (the others use 2×width).
        image_size: accepted for the registry (any size ≥ 2 works).
    """

    def __init__(
        self, *, num_classes: int = 10, in_chans: int = 1, width: int = 32, image_size: int | None = None
    ) -> None:
        super().__init__()
        w = check_positive_int("width", width)
        self.features = nn.Sequential(
            _conv_bn(check_positive_int("in_chans", in_chans), w),
            _conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 2 * w),
        )
        self.head = nn.Linear(2 * w, check_positive_int("num_classes", num_classes))

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        return self.head(self.features(x).mean((2, 3)))  # (B, num_classes)


register_preset(
    "digits", SmallCNN, "cnn_digits", "a 3-layer CNN for the 8×8 digits", image_size=8, in_chans=1, min_size=2
)
register_preset(
    "digits",
    SmallCNN,
    "cnn_tiny",
    "the digits CNN at width 4 (tests)",
    image_size=8,
    in_chans=1,
    min_size=2,
    width=4,
)
