"""MoCo v2 (He et al. 2020; Chen et al. 2020): contrastive learning with a momentum encoder and a queue.

Instance discrimination: the query q = f_q(view 1) of an image must pick its own key k+ = f_k(view 2)
out of K keys of earlier batches (the queue), by the InfoNCE loss

    L = -log exp(q·k+ / τ) / (exp(q·k+ / τ) + Σ_i exp(q·k_i / τ)),   q, k unit vectors,

which is a (1 + K)-way cross-entropy whose right answer is index 0. The key encoder gets no gradient:
after every step it follows the query encoder, k <- m·k + (1 - m)·q parameter by parameter (its
batch-norm statistics are its own), and the step's keys replace the oldest K/B batch of the queue.

Batch-norm leaks: statistics over a batch tell the query which keys came from the same batch.
MoCo shuffles the key batch across processes under torchrun; on one process the key encoder's batch
norms compute their statistics per sub-batch (`split_bn` groups of images, the key batch shuffled
first, so that a sub-batch of keys never matches the queries' sub-batch), as MoCo's one-GPU demo does.

`MoCo(encoder)` takes any classifier of the registry whose classifier is a final linear `head`: its
head becomes MoCo v2's MLP projection (features -> hidden -> ReLU -> dim). The encoder's own
features (the head's input) are what `features` returns, what the k-NN monitor and a linear probe read.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.utils import dist
from convattn.utils.checks import check_positive_int

__all__ = [
    "MoCo",
    "SplitBatchNorm",
    "encoder_features",
    "feature_dim",
    "info_nce",
    "knn_accuracy",
    "linear_probe",
]


def feature_dim(encoder: nn.Module) -> int:
    """The width of the features an encoder's final linear `head` reads.

    Raises:
        ValueError: the encoder has no `head` that is an nn.Linear (no feature output to use).
    """
    head = getattr(encoder, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(encoder).__name__} has no final linear `head` whose input is its features: it cannot be "
            "a MoCo encoder (the ResNets, ViTs, Swin, DWNets, the attention nets and the small CNNs can)"
        )
    return int(head.in_features)


def encoder_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """What an encoder's final `head` reads: its output with the head skipped, (B, feature width)."""
    if not isinstance(getattr(encoder, "head", None), nn.Module):
        raise ValueError(f"{type(encoder).__name__} has no final `head` to read the features of")
    head = encoder.head
    encoder.head = nn.Identity()
    try:
        return cast(Tensor, encoder(x))
    finally:
        encoder.head = head


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(logits (B, 1 + K), labels (B,) zeros): positives first, then the queue's K negatives, over τ.

    q, k: (B, dim) unit vectors; queue: (dim, K) unit columns.
    """
    positive = (q * k).sum(1, keepdim=True)  # (B, 1)
    negative = q @ queue  # (B, K)
    logits = torch.cat([positive, negative], dim=1) / temperature
    return logits, torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)


class SplitBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics are computed per sub-batch: the batch in `splits` consecutive
    groups (the running statistics average the groups'); in eval mode it is plain batch norm."""

    def __init__(self, num_features: int, splits: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.splits = check_positive_int("split_bn", splits)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        B, C, H, W = x.shape
        if B % self.splits:
            raise ValueError(f"the batch of {B} does not split into split_bn={self.splits} equal groups")
        s, n = self.splits, B // self.splits
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)  # type: ignore[union-attr]
        grouped = x.reshape(s, n, C, H, W).transpose(0, 1).reshape(n, s * C, H, W)  # group g: channels g·C..
        y = F.batch_norm(
            grouped,
            mean,
            var,
            self.weight.repeat(s),
            self.bias.repeat(s),
            True,
            self.momentum or 0.1,
            self.eps,
        )
        with torch.no_grad():  # the groups' statistics, averaged, become the running ones
            self.running_mean.copy_(mean.view(s, C).mean(0))  # type: ignore[union-attr]
            self.running_var.copy_(var.view(s, C).mean(0))  # type: ignore[union-attr]
        return y.reshape(n, s, C, H, W).transpose(0, 1).reshape(B, C, H, W)  # back to the batch's order


def _split_batch_norms(module: nn.Module, splits: int) -> None:
    """Replace every BatchNorm2d of `module` by a SplitBatchNorm with the same parameters and statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            split = SplitBatchNorm(child.num_features, splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            _split_batch_norms(child, splits)


class MoCo(nn.Module):
    """MoCo v2 around an encoder; see the module docstring.

    Args:
        encoder: a classifier with a final linear `head` (its head is replaced by the projection).
        dim: width of the projected, normalised embeddings (128).
        hidden: width of the projection's hidden layer (default: the feature width).
        queue_size: K keys in the queue; a multiple of the (global) batch.
        momentum: m of the key encoder's update, in [0, 1) (0.99 for small runs, MoCo's 0.999 for long).
        temperature: τ > 0 (0.2 in MoCo v2, 0.07 in v1).
        split_bn: on one process, the key encoder's batch norms use this many sub-batches (1: off).
        batch_size: the global batch, to check `queue_size` against (None: checked at the first step).

    Raises:
        ValueError: τ ≤ 0, m outside [0, 1), a queue that is not a multiple of the batch, or an encoder
            without a feature output; naming the value.
    """

    queue: Tensor
    queue_ptr: Tensor

    def __init__(
        self,
        encoder: nn.Module,
        *,
        dim: int = 128,
        hidden: int | None = None,
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float = 0.2,
        split_bn: int = 1,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        features = feature_dim(encoder)
        self.dim = check_positive_int("dim", dim)
        self.queue_size = check_positive_int("queue_size", queue_size)
        for name, value in (("momentum", momentum), ("temperature", temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {name}={value!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum m must be in [0, 1), got momentum={momentum!r}")
        if not temperature > 0:
            raise ValueError(f"temperature τ must be > 0, got temperature={temperature!r}")
        if batch_size is not None and queue_size % check_positive_int("batch_size", batch_size):
            raise ValueError(
                f"queue_size={queue_size} must be a multiple of the batch ({batch_size}): every step "
                "replaces one whole batch of keys"
            )
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.split_bn = check_positive_int("split_bn", split_bn)
        width = features if hidden is None else check_positive_int("hidden", hidden)
        encoder.head = nn.Sequential(nn.Linear(features, width), nn.ReLU(inplace=True), nn.Linear(width, dim))
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        if split_bn > 1:
            _split_batch_norms(self.encoder_k, split_bn)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        queue = F.normalize(torch.randn(dim, queue_size), dim=0)
        self.register_buffer("queue", queue)  # (dim, K): unit columns, oldest at queue_ptr
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k <- m·k + (1 - m)·q for every parameter of the key encoder (its buffers are its own)."""
        for k, q in zip(self.encoder_k.parameters(), self.encoder_q.parameters(), strict=True):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write the (B, dim) keys (of every process, under torchrun) over the oldest B of the queue."""
        keys = dist.all_gather_cat(keys)  # (B·world, dim)
        n = keys.shape[0]
        if self.queue_size % n:
            raise ValueError(
                f"queue_size={self.queue_size} must be a multiple of the batch ({n}): every step "
                "replaces one whole batch of keys"
            )
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + n] = keys.T
        self.queue_ptr.fill_((ptr + n) % self.queue_size)

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        """(B, dim) unit keys of the key views, with MoCo's batch shuffle (across processes, or within
        the batch for split batch norm), undone afterwards."""
        if dist.world_size() > 1:
            return dist.shuffled_forward(self.encoder_k, x, lambda y: F.normalize(y, dim=1))
        if self.split_bn > 1:
            perm = torch.randperm(x.shape[0], device=x.device)
            k = F.normalize(self.encoder_k(x[perm]), dim=1)
            return k[torch.argsort(perm)]
        return F.normalize(self.encoder_k(x), dim=1)

    def forward(self, views: Tensor) -> dict[str, Tensor]:
        """(2B, C, H, W): the B query views, then the B key views of the same images ->
        {"logits": (B, 1 + K), "labels": (B,) zeros, "keys": (B, dim)}. In training mode the key
        encoder takes its momentum step first and the keys enter the queue after the logits."""
        if views.dim() != 4 or views.shape[0] % 2:
            raise ValueError(f"views must be (2B, C, H, W), queries then keys, got {tuple(views.shape)}")
        x_q, x_k = views.chunk(2)
        q = F.normalize(self.encoder_q(x_q), dim=1)  # (B, dim)
        if self.training:
            self.momentum_update()
        k = self._keys(x_k)  # (B, dim), no gradient
        logits, labels = info_nce(q, k, self.queue.clone().detach(), self.temperature)
        if self.training:
            self.enqueue(k)
        return {"logits": logits, "labels": labels, "keys": k}

    def features(self, x: Tensor) -> Tensor:
        """The query encoder's features (the projection's input): (B, feature width)."""
        return encoder_features(self.encoder_q, x)


@torch.no_grad()
def knn_accuracy(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor, *, k: int = 200,
    temperature: float = 0.07, num_classes: int | None = None,
) -> float:  # fmt: skip
    """Weighted k-NN accuracy (Wu et al. 2018, MoCo's monitor): cosine similarity of each query to the
    bank's features, the k nearest vote for their labels with weight exp(similarity / temperature).

    bank (N, d), bank_labels (N,), queries (M, d), labels (M,); k is capped at N.
    """
    bank, queries = F.normalize(bank.float(), dim=1), F.normalize(queries.float(), dim=1)
    classes = num_classes or int(max(bank_labels.max(), labels.max())) + 1
    k = min(check_positive_int("k", k), bank.shape[0])
    correct = 0
    for start in range(0, queries.shape[0], 1024):
        sim = queries[start : start + 1024] @ bank.T  # (m, N)
        top, idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(sim.shape[0], classes).scatter_add_(
            1, bank_labels[idx], (top / temperature).exp()
        )
        correct += int((votes.argmax(1) == labels[start : start + 1024]).sum())
    return correct / max(queries.shape[0], 1)


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, l2: float = 1e-4, steps: int = 300
) -> float:
    """Test accuracy of a linear classifier on frozen features: multinomial logistic regression on the
    features standardised with the training set's statistics, fitted to convergence (L-BFGS, float64,
    L2 penalty `l2` on the weights; deterministic), so that the number measures the features, not a
    probe's training budget.

    train_x (N, d), train_y (N,), test_x (M, d), test_y (M,).
    """
    a, b = train_x.double(), test_x.double()
    mean, std = a.mean(0), a.std(0).clamp_min(1e-6)
    a, b = (a - mean) / std, (b - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(a.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=check_positive_int("steps", steps),
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(a @ weight + bias, train_y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((b @ weight + bias).argmax(1) == test_y).double().mean())
