"""A split's objective: the loss the server and the auxiliary models train on, the labels it takes, its metric."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ACCURACY",
    "CROSS_ENTROPY",
    "LABEL_DTYPES",
    "LabelSpec",
    "LossFn",
    "Metric",
    "Objective",
    "SplitLoss",
    "classification",
    "as_split_loss",
    "evaluate_model",
    "perplexity",
    "split_objective",
    "token_cross_entropy",
]

#: ``loss(outputs, labels) -> scalar``: the batch-mean loss of a head's outputs.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: The label dtypes a split may declare: class indices or real-valued targets.
LABEL_DTYPES = ("int64", "float32")


@dataclass(frozen=True)
class SplitLoss:
    """The loss of a head's outputs against the labels, in its two reductions.

    Parameters
    ----------
    mean : LossFn
        The batch-mean loss: what the server model and the client (through the
        auxiliary model's input gradient, Nair et al., ICML 2025, Eq. 4) train on.
    total : LossFn, optional
        The loss summed over the batch's samples, used for per-sample gradients
        (alignment targets) and evaluation. Without it, ``mean * batch size``.
    """

    mean: LossFn
    total: LossFn | None = None

    def __post_init__(self) -> None:
        if not callable(self.mean) or (self.total is not None and not callable(self.total)):
            raise ValueError("a loss must be a function loss(outputs, labels) -> scalar tensor")

    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The loss with ``reduction`` ``"mean"`` (over the batch) or ``"sum"`` (over its samples)."""
        if reduction == "mean":
            return self.mean(outputs, labels)
        if self.total is not None:
            return self.total(outputs, labels)
        return self.mean(outputs, labels) * outputs.shape[0]


def _cross_entropy_sum(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, labels, reduction="sum")


#: Cross-entropy over classes: logits ``(N, C)``, labels ``(N,)`` int64 in ``[0, C)``.
CROSS_ENTROPY = SplitLoss(F.cross_entropy, _cross_entropy_sum)


def _token_cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.flatten(0, -2), labels.flatten())


#: Per-token cross-entropy: logits ``(N, T, V)``, labels ``(N, T)`` int64, mean over all tokens.
token_cross_entropy = SplitLoss(_token_cross_entropy)


@dataclass(frozen=True)
class LabelSpec:
    """What one sample's label is: its shape and dtype, and for class indices their range.

    Parameters
    ----------
    shape : tuple[int, ...]
        One sample's label shape: ``()`` for a class, ``(T,)`` for one per token,
        ``(K,)`` for multi-label or regression targets.
    dtype : str
        ``"int64"`` (class indices in ``[0, num_classes)``) or ``"float32"``
        (finite real values).
    num_classes : int, optional
        Bounds integer labels; required for them, unused for float ones.
    """

    shape: tuple[int, ...] = ()
    dtype: str = "int64"
    num_classes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < 1 for d in self.shape):
            raise ValueError(f"label_shape must be positive sizes, got {self.shape}")
        if self.dtype not in LABEL_DTYPES:
            raise ValueError(f"label dtype must be one of {LABEL_DTYPES}, got {self.dtype!r}")
        if self.dtype == "int64" and (self.num_classes is None or int(self.num_classes) < 2):
            raise ValueError(f"integer labels need num_classes >= 2, got {self.num_classes}")

    @property
    def itemsize(self) -> int:
        """Bytes of one label value."""
        return np.dtype(self.dtype).itemsize

    def problem(self, labels: np.ndarray) -> str | None:
        """Why ``labels`` (one row per sample) do not fit, in one line starting ``labels``; ``None`` if they fit."""
        labels = np.asarray(labels)
        if labels.shape[1:] != self.shape or str(labels.dtype) != self.dtype:
            return (
                f"labels have shape {labels.shape[1:]} and dtype {labels.dtype} per sample, "
                f"expected {self.shape} {self.dtype}"
            )
        if labels.size == 0:
            return None
        if self.dtype == "float32":
            return None if np.all(np.isfinite(labels)) else "labels hold NaN or inf"
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= int(self.num_classes or 0):
            return f"labels outside [0, {self.num_classes}): found {high if low >= 0 else low}"
        return None

    def cast(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` in this spec's dtype when the cast loses nothing (integers to int64, floats to float32)."""
        labels = np.asarray(labels)
        if self.dtype == "int64" and labels.dtype.kind in "iu":
            return labels.astype(np.int64, copy=False)
        if self.dtype == "float32" and labels.dtype.kind in "fiub":
            return labels.astype(np.float32, copy=False)
        return labels


@dataclass(frozen=True)
class Metric:
    """A test metric besides the loss: a per-sample value averaged over the test set, then finished.

    Parameters
    ----------
    name : str
        Its key in the evaluation metrics and results rows (``"accuracy"``).
    batch_sum : Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        ``(outputs, labels) -> scalar``: the metric summed over a batch's samples.
    finish : Callable[[float], float], optional
        Applied to the test-set mean (``math.exp`` turns a mean token loss into perplexity).
    """

    name: str
    batch_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    finish: Callable[[float], float] | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name == "loss":
            raise ValueError(f"a metric needs a name other than 'loss', got {self.name!r}")


def _correct(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == labels).sum()


def _token_loss_sum(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return token_cross_entropy(outputs, labels, reduction="sum")


#: Top-1 accuracy of class logits ``(N, C)`` against labels ``(N,)``.
ACCURACY = Metric("accuracy", _correct)
#: ``exp`` of the mean per-token cross-entropy: logits ``(N, T, V)``, labels ``(N, T)``.
perplexity = Metric("perplexity", _token_loss_sum, math.exp)


@dataclass(frozen=True)
class Objective:
    """What a split trains on and reports: loss, labels and an optional metric.

    Parameters
    ----------
    labels : LabelSpec
        One sample's label; bounds what a client may upload.
    loss : SplitLoss
        The server model's loss; the auxiliary models stand in for the server under it.
    metric : Metric, optional
        Reported next to the loss after every round.
    """

    labels: LabelSpec
    loss: SplitLoss = CROSS_ENTROPY
    metric: Metric | None = None

    @property
    def num_classes(self) -> int | None:
        """The bound on integer labels; ``None`` for float ones."""
        return self.labels.num_classes if self.labels.dtype == "int64" else None


def classification(num_classes: int | None) -> Objective:
    """The classic objective: cross-entropy over ``num_classes``, one class per sample, accuracy."""
    return Objective(LabelSpec((), "int64", num_classes), CROSS_ENTROPY, ACCURACY)


def as_split_loss(loss: SplitLoss | LossFn) -> SplitLoss:
    """A :class:`SplitLoss` from itself or from a batch-mean loss function (ValueError if neither)."""
    return loss if isinstance(loss, SplitLoss) else SplitLoss(loss)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: SplitLoss = CROSS_ENTROPY,
    metric: Metric | None = ACCURACY,
    batch_size: int = 512,
) -> dict[str, float]:
    """``{<metric>: value, "loss": mean per-sample loss}`` of ``model`` in eval mode on ``(x, y)``."""
    model.eval()
    loss_sum, metric_sum = 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        outputs = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(loss(outputs, target, reduction="sum"))
        if metric is not None:
            metric_sum += float(metric.batch_sum(outputs, target))
    n = max(int(x.shape[0]), 1)
    metrics = {}
    if metric is not None:
        metrics[metric.name] = metric.finish(metric_sum / n) if metric.finish else metric_sum / n
    metrics["loss"] = loss_sum / n
    return metrics


def split_objective(
    num_classes: int | None,
    loss: SplitLoss | LossFn | None = None,
    label_shape: tuple[int, ...] = (),
    label_dtype: str = "int64",
    metric: Metric | None = None,
) -> Objective:
    """The objective a split describes; checked when built (ValueError naming the field).

    Without ``loss``: cross-entropy over classes. Without ``metric``: accuracy
    for one integer class per sample, none otherwise (the loss is always reported).
    """
    labels = LabelSpec(tuple(label_shape), label_dtype, num_classes)
    if metric is None and labels.shape == () and labels.dtype == "int64":
        metric = ACCURACY
    return Objective(labels, CROSS_ENTROPY if loss is None else as_split_loss(loss), metric)
