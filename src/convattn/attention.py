"""The attention primitives of Dive into Deep Learning ch. 11, gathered in one namespace.

`convattn.attention.masked_softmax`, `MultiHeadAttention`, `Transformer`, ... re-exported from
`convattn.layers` and `convattn.models.transformer`, where they are defined.
"""

from convattn.layers.attention import (
    AdditiveAttention,
    DotProductAttention,
    additive_attention,
    dot_product_attention,
    masked_softmax,
)
from convattn.layers.kernel_regression import NadarayaWatson, leave_one_out, nadaraya_watson
from convattn.layers.multihead import (
    MultiHeadAttention,
    SelfAttention,
    attend_heads,
    merge_heads,
    multi_head_attention,
    split_heads,
)
from convattn.layers.pos_embed import (
    PositionalEncoding,
    PositionalEncoding2d,
    sinusoidal_1d,
    sinusoidal_2d,
)
from convattn.layers.transformer import (
    AddNorm,
    PositionWiseFFN,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)
from convattn.models.transformer import (
    Transformer,
    TransformerConfig,
    TransformerDecoder,
    TransformerEncoder,
)

__all__ = [
    "AddNorm",
    "AdditiveAttention",
    "DotProductAttention",
    "MultiHeadAttention",
    "NadarayaWatson",
    "PositionWiseFFN",
    "PositionalEncoding",
    "PositionalEncoding2d",
    "SelfAttention",
    "Transformer",
    "TransformerConfig",
    "TransformerDecoder",
    "TransformerDecoderBlock",
    "TransformerEncoder",
    "TransformerEncoderBlock",
    "additive_attention",
    "attend_heads",
    "dot_product_attention",
    "leave_one_out",
    "masked_softmax",
    "merge_heads",
    "multi_head_attention",
    "nadaraya_watson",
    "sinusoidal_1d",
    "sinusoidal_2d",
    "split_heads",
]
