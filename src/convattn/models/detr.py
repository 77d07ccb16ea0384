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

`spatial_prior=σ` (> 0) gives the decoder's cross-attention a locality prior, as SMCA (Gao et al. 2021)
does and as Cordonnier et al.'s quadratic encoding does for self-attention: every query owns a learned
reference point r_q in [0, 1]², its positional embedding is an MLP of r_q's sine encoding (the
encoding the pixels have), its box centre is predicted as an offset to r_q (in logit space), and each
head h adds -‖p - c_q‖² / (2 σ_h²) to the score of pixel centre p, with c_q the reference point in the
first decoder layer and the previous layer's predicted centre (no gradient) after it; σ_h is learned
per head from σ. Without it (0) the queries are DETR's: learned embeddings that must discover where
to look from the matching alone, which is why DETR needs hundreds of epochs.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from convattn.layers.pos_embed import normalized_sine_2d, sine_points
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
        spatial_prior: σ, the initial width of the cross-attention's Gaussian prior around each query's
            reference point, as a fraction of the image side (0: none, DETR's queries; see above).
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
        spatial_prior: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_queries = check_positive_int("num_queries", num_queries)
        self.hidden = check_positive_int("hidden", hidden)
        if hidden % 4:
            raise ValueError(f"hidden must be a multiple of 4 (the 2-D sine encoding), got hidden={hidden}")
        dropout = check_probability("dropout", dropout)
        if (
            isinstance(spatial_prior, bool)
            or not isinstance(spatial_prior, (int, float))
            or not (0 <= spatial_prior <= 1)
        ):
            raise ValueError(
                "spatial_prior is a width in [0, 1] of the image (0: none), got "
                f"spatial_prior={spatial_prior!r}"
            )
        self.spatial_prior = float(spatial_prior)
        resnet = ResNet(
            num_classes=1,
            in_chans=in_chans,
            layers=backbone_layers,
            width=backbone_width,
            mixer=mixer,
            mixer_options=mixer_options,
        )
        # the ResNet without pooling and head, its parts named as in the ResNet ("backbone.stem.0.weight"
        # is a ResNet's "stem.0.weight"), so that a trained classifier's weights initialise it
        self.backbone = nn.Sequential(OrderedDict(stem=resnet.stem, blocks=resnet.blocks))
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
        if self.spatial_prior:
            # reference points spread over the image, away from the borders; embedded as the pixels are
            self.reference = nn.Parameter(0.1 + 0.8 * torch.rand(num_queries, 2))  # (Q, 2) as (x, y)
            self.reference_embed = BoxMLP(hidden, hidden, hidden, 2)
            self.log_sigma = nn.Parameter(torch.full((num_heads,), math.log(self.spatial_prior)))
        else:
            self.query_embed = nn.Embedding(num_queries, hidden)
        self.class_head = nn.Linear(hidden, num_classes + 1)
        self.box_head = BoxMLP(hidden, hidden, 4, 3)
        for layer in (*self.encoder, *self.decoder):  # DETR's Xavier initialisation of the Transformer
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def _heads(self, state: Tensor) -> dict[str, Tensor]:
        state = self.decoder_norm(state)  # (B, Q, d)
        raw = self.box_head(state)  # (B, Q, 4)
        if self.spatial_prior:  # the centre as an offset to the reference point, in logit space
            offset = torch.logit(self.reference.clamp(1e-4, 1 - 1e-4))  # (Q, 2)
            raw = torch.cat([raw[..., :2] + offset, raw[..., 2:]], dim=-1)
        return {"logits": self.class_head(state), "boxes": raw.sigmoid()}

    def _query_pos(self, device: torch.device) -> Tensor:
        """(1, Q, d): the queries' positional embeddings."""
        if self.spatial_prior:
            return self.reference_embed(sine_points(self.reference, self.hidden))[None]
        return self.query_embed(torch.arange(self.num_queries, device=device))[None]

    def _prior(self, centres: Tensor, h: int, w: int) -> Tensor:
        """(B, heads, Q, h·w) score bias -‖p - c‖² / (2σ²) of every pixel centre p for centres (B, Q, 2)."""
        ys = (torch.arange(h, dtype=centres.dtype, device=centres.device) + 0.5) / h
        xs = (torch.arange(w, dtype=centres.dtype, device=centres.device) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)  # (S, 2) (x, y)
        dist2 = (centres[:, :, None, :] - grid).square().sum(-1)  # (B, Q, S)
        variance = (2 * self.log_sigma).exp()[None, :, None, None]  # (1, heads, 1, 1)
        return -dist2[:, None] / (2 * variance)  # (B, heads, Q, S)

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
        query_pos = self._query_pos(f.device)  # (1, Q, d)
        state = f.new_zeros(B, self.num_queries, d)  # (B, Q, d): DETR starts the decoder from zeros
        outputs: list[dict[str, Tensor]] = []
        for layer in self.decoder:
            bias = None
            if self.spatial_prior:  # around the reference points, then around the last layer's centres
                centres = outputs[-1]["boxes"][..., :2].detach() if outputs else self.reference[None]
                bias = self._prior(centres.expand(B, -1, -1), h, w)  # (B, heads, Q, S)
            state = layer(state, memory, pos, query_pos, bias)  # (B, Q, d)
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
    `convattn.data.coco_map` reads. No thresholding and no non-maximum suppression: the ranking by
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


_TINY = {"backbone_width": 8, "hidden": 32, "num_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn": 64}
_PRESETS: list[tuple[str, str, dict[str, Any]]] = [
    ("detr_tiny", "a DETR for tests: ResNet width 8 (1, 1, 1, 1), d 32, one encoder and decoder layer",
     _TINY),
    ("detr_shapes", "detr_tiny with the cross-attention's spatial prior (σ 0.1): trains on detect_shapes in "
     "a minute", {**_TINY, "spatial_prior": 0.1}),
    ("detr_shapes_sasa", "detr_shapes whose ResNet has SASA 3×3 local attention (2 heads) for every 3×3 conv",
     {**_TINY, "spatial_prior": 0.1, "mixer": "sasa", "mixer_options": {"kernel_size": 3, "num_heads": 2}}),
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
