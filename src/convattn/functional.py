"""The operators as pure tensor functions (no parameters), in one namespace.

Attention layouts follow NATTEN: heads-last (B, H, W, heads, d). Convolution-like operators take
(B, C, H, W).
"""

from convattn.layers.attention import dot_product_attention, masked_softmax
from convattn.layers.dynamic import image_dwconv2d, pixel_dwconv2d
from convattn.layers.multihead import multi_head_attention
from convattn.layers.neighborhood import neighborhood_attention2d, neighborhood_attention2d_qkv
from convattn.layers.window import window_attention2d, window_attention2d_qkv

__all__ = [
    "dot_product_attention",
    "image_dwconv2d",
    "masked_softmax",
    "multi_head_attention",
    "neighborhood_attention2d",
    "neighborhood_attention2d_qkv",
    "pixel_dwconv2d",
    "window_attention2d",
    "window_attention2d_qkv",
]
