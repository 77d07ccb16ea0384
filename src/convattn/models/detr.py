"""DETR (Carion et al. 2020): a CNN (or attention) backbone, a Transformer, and a set of object queries.

    image (B, 3, H, W) -> backbone (the project's ResNet without its head, any mixer) -> (B, C, H/s, W/s)
    -> 1×1 conv to d -> tokens (B, S, d) + normalised 2-D sine encoding at every attention layer
    -> encoder (self-attention over pixels) -> decoder (Q learned queries; self-attention among them,
    cross-attention to the pixels) -> per query: class logits (K + 1, the last "no object") and a box
    (cx, cy, w, h) in [0, 1] from a 3-layer MLP with a sigmoid.

Every decoder layer's state goes through the shared final LayerNorm and the same heads, and the
earlier layers' predictions are returned as "aux" for the auxiliary losses of `SetCriterion`.
The backbone is the question this project asks of attention: `mixer="conv"` is a CNN, `mixer="sasa"`
or `"window"` the same ResNet with local attention in place of every 3×3 conv.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from convattn.layers.pos_embed import normalized_sine_2d
from convattn.layers.transformer import DetrDecoderLayer, DetrEncoderLayer
from convattn.models.registry import register_preset
from convattn.models.resnet import ResNet
from convattn.utils.checks import check_positive_int, check_probability, check_tensor

__all__ = ["DETR", "BoxMLP", "postprocess", "targets_to_coco"]


class BoxMLP(nn.Module):
    """`layers` linear layers with ReLU between them (DETR's box head: 3 layers, then a sigmoid)."""

    def __init__(self, dim: int, hidden: int, out: int, layers: int = 3) -> None:
        super().__init__()
        widths = [dim] + [hidden] * (check_positive_int("layers", layers) - 1) + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


class DETR(nn.Module):
    """A small DETR on the project's parts.

    Args:
        num_classes: K object classes (the class head has K + 1 outputs).
        in_chans: input channels.
        image_size: accepted for the registry (any size the backbone's stride divides works).
        backbone_layers, backbone_width: the ResNet's blocks per stage and first width; the feature map
            has stride 2^(stages - 1) and width·2^(stages - 1) channels.
        mixer, mixer_options: the ResNet's spatial layer (conv, sasa, window, ...).
        hidden: d, the Transformer's width.
        num_heads, enc_layers, dec_layers, ffn: the Transformer's shape.
        num_queries: Q, the most objects one image can hold.
        dropout: in the Transformer (0.1, as DETR).
    """

    def __init__(
        self,
        *,
        num_classes: int = 4,
        in_chans: int = 3,
        image_size: int | None = None,
        backbone_layers: tuple[int, ...] = (1, 1, 1, 1),
        backbone_width: int = 16,
        mixer: str = "conv",
        mixer_options: dict[str, Any] | None = None,
        hidden: int = 64,
        num_heads: int = 4,
        enc_layers: int = 2,
        dec_layers: int = 2,
        ffn: int = 128,
        num_queries: int = 10,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_queries = check_positive_int("num_queries", num_queries)
        self.hidden = check_positive_int("hidden", hidden)
        if hidden % 4:
            raise ValueError(f"hidden must be a multiple of 4 (the 2-D sine encoding), got hidden={hidden}")
        dropout = check_probability("dropout", dropout)
        resnet = ResNet(
            num_classes=1,
            in_chans=in_chans,
            layers=backbone_layers,
            width=backbone_width,
            mixer=mixer,
            mixer_options=mixer_options,
        )
        self.backbone = nn.Sequential(resnet.stem, resnet.blocks)  # the ResNet without pooling and head
        self.stride = 2 ** (len(backbone_layers) - 1)
        features = backbone_width * 2 ** (len(backbone_layers) - 1)
        self.input_proj = nn.Conv2d(features, hidden, 1)
        self.encoder = nn.ModuleList(
            DetrEncoderLayer(hidden, ffn, num_heads, dropout)
            for _ in range(check_positive_int("enc_layers", enc_layers))
        )
        self.decoder = nn.ModuleList(
            DetrDecoderLayer(hidden, ffn, num_heads, dropout)
            for _ in range(check_positive_int("dec_layers", dec_layers))
        )
        self.decoder_norm = nn.LayerNorm(hidden)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.class_head = nn.Linear(hidden, num_classes + 1)
        self.box_head = BoxMLP(hidden, hidden, 4, 3)
        for layer in (*self.encoder, *self.decoder):  # DETR's Xavier initialisation of the Transformer
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def _heads(self, state: Tensor) -> dict[str, Tensor]:
        state = self.decoder_norm(state)  # (B, Q, d)
        return {"logits": self.class_head(state), "boxes": self.box_head(state).sigmoid()}

    def forward(self, x: Tensor) -> dict[str, Any]:
        """(B, C, H, W) images -> {"logits": (B, Q, K + 1), "boxes": (B, Q, 4) cxcywh in [0, 1],
        "aux": the same for every earlier decoder layer}."""
        check_tensor("x", x, 4)
        H, W = x.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(
                f"image sides must be multiples of the backbone's stride {self.stride}, got {H}x{W}"
            )
        f = self.input_proj(self.backbone(x))  # (B, d, h, w)
        B, d, h, w = f.shape
        tokens = f.flatten(2).transpose(1, 2)  # (B, S = h·w, d)
        pos = normalized_sine_2d(h, w, d, dtype=f.dtype, device=f.device).flatten(1).T[None]  # (1, S, d)
        memory = tokens
        for layer in self.encoder:
            memory = layer(memory, pos)  # (B, S, d)
        query_pos = self.query_embed(torch.arange(self.num_queries, device=f.device))[None]  # (1, Q, d)
        state = f.new_zeros(B, self.num_queries, d)  # (B, Q, d): DETR starts the decoder from zeros
        outputs = []
        for layer in self.decoder:
            state = layer(state, memory, pos, query_pos)  # (B, Q, d)
            outputs.append(self._heads(state))
        return {**outputs[-1], "aux": outputs[:-1]}

    def cross_attention(self) -> Tensor:
        """The last decoder layer's cross-attention of the latest forward: (B, heads, Q, h·w)."""
        last = self.decoder[-1]
        assert isinstance(last, DetrDecoderLayer)
        weights = last.cross_attention.attention_weights
        if weights is None:
            raise ValueError("run the model on images first: no cross-attention has been computed yet")
        return weights


@torch.no_grad()
def postprocess(outputs: dict[str, Any], height: int, width: int) -> list[dict[str, Tensor]]:
    """DETR's predictions as detections, one dict per image: every query with its best object class.

    "scores" (Q,) the class probability (softmax over all K + 1, "no object" left out of the max),
    "labels" (Q,), "boxes" (Q, 4) in COCO's pixel (x, y, w, h) for an image of height × width, the form
    `convattn.analysis.coco_map` reads. No thresholding and no non-maximum suppression: the ranking by
    score is what average precision measures.
    """
    prob = outputs["logits"].softmax(-1)[..., :-1]  # (B, Q, K)
    scores, labels = prob.max(-1)  # (B, Q) each
    cx, cy, w, h = outputs["boxes"].unbind(-1)  # (B, Q) each, normalised
    boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], dim=-1)
    return [{"boxes": b, "scores": s, "labels": y} for b, s, y in zip(boxes, scores, labels, strict=True)]


def targets_to_coco(targets: list[dict[str, Tensor]], height: int, width: int) -> list[dict[str, Tensor]]:
    """Targets with normalised cxcywh boxes -> ground truth with COCO pixel (x, y, w, h) boxes."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    out = []
    for t in targets:
        cx, cy, w, h = (t["boxes"].double() * scale).unbind(-1)
        out.append({"boxes": torch.stack([cx - w / 2, cy - h / 2, w, h], dim=-1), "labels": t["labels"]})
    return out


_PRESETS: list[tuple[str, str, dict[str, Any]]] = [
    ("detr_tiny", "a DETR for tests: ResNet width 8 (1, 1, 1, 1), d 32, one encoder and decoder layer",
     {"backbone_width": 8, "hidden": 32, "num_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn": 64}),
    ("detr_resnet_small", "DETR on a small ResNet (width 16, stages 1-1-1-1, stride 8), d 64, 2+2 layers",
     {}),
    ("detr_resnet_small_sasa", "the same DETR whose ResNet has SASA 5×5 local attention for every 3×3 conv",
     {"mixer": "sasa", "mixer_options": {"kernel_size": 5, "num_heads": 4}}),
]  # fmt: skip
for _name, _description, _preset in _PRESETS:
    register_preset(
        "detr",
        DETR,
        _name,
        _description,
        image_size=64,
        num_classes=4,
        divisor=8,
        task="detection",
        **_preset,
    )
