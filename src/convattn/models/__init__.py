"""Networks built from the operators in `convattn.layers`, one family per file, all in `registry`.

Families: `resnet` (CIFAR ResNet-18 with any mixer), `sasa_resnet` (SASA bottleneck ResNets), `vit`,
`swin`, `dwnet`, `attention_net` (Cordonnier et al.), `small` (the digits CNN), `detr` (set prediction
for detection, with `set_prediction`'s matcher and loss) and `transformer` (the sequence-to-sequence
Transformer, not an image model and not registered).
"""

from convattn.utils.lazy import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__, globals())
