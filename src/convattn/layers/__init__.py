"""Operators: each a pure function, a thin module, and a loop-based reference in `reference.py`.

One concept per file. Sequences: `attention` (masked softmax, additive and dot-product scoring),
`multihead`, `transformer` (encoder/decoder blocks), `pos_embed`, `kernel_regression`. Images,
(B, C, H, W): `mhsa2d` (global attention with positional encodings), `neighborhood` and `window`
(local attention), `dynamic` (dynamic depth-wise convolutions), all behind one interface in
`mixers`. Shared machinery: `geometry` (window index tables), `kernels` (the C++ kernels and the one
backend chooser), `blocks` (the building blocks of the model families), `pointwise` (the mixers' 1×1
projections), `_macs` (multiply-add tally).
"""

from convattn.utils.lazy import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__, globals())
