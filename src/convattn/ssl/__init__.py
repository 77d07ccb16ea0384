"""Self-supervised pre-training: MoCo v2 (momentum contrast), its loss, and the k-NN monitor."""

from convattn.ssl.moco import (
    MoCo,
    SplitBatchNorm,
    encoder_features,
    feature_dim,
    info_nce,
    knn_accuracy,
    linear_probe,
)

__all__ = [
    "MoCo",
    "SplitBatchNorm",
    "encoder_features",
    "feature_dim",
    "info_nce",
    "knn_accuracy",
    "linear_probe",
]
