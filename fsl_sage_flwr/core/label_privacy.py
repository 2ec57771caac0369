"""Label privacy: K-ary randomized response on uploaded labels and the loss that corrects for it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def keep_probability(label_epsilon: float, num_classes: int) -> float:
    """P(the uploaded label is the true one) = e^eps / (e^eps + K - 1) (Warner 1965; Kairouz et al. 2016)."""
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(-label_epsilon))


def transition_matrix(label_epsilon: float, num_classes: int) -> torch.Tensor:
    """T with ``T[i, j] = P(uploaded j | true i)``: the keep probability on the diagonal, the rest spread evenly."""
    keep = keep_probability(label_epsilon, num_classes)
    flip = (1.0 - keep) / (num_classes - 1)
    return torch.full((num_classes, num_classes), flip) + torch.eye(num_classes) * (keep - flip)


def randomized_labels(
    labels: torch.Tensor, label_epsilon: float, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Each label kept with :func:`keep_probability`, else replaced by one of the other K - 1 uniformly.

    Every sample is drawn once from ``generator``; a node that seeds it by its
    partition keeps the same answer for a sample in every round, so repeated
    uploads of it reveal nothing more and the label epsilon does not grow.
    """
    keep = torch.rand(labels.shape, generator=generator) < keep_probability(label_epsilon, num_classes)
    # An offset in [1, K) added modulo K is uniform over the other K - 1 classes.
    offset = torch.randint(1, num_classes, labels.shape, generator=generator)
    flipped = (labels.cpu() + offset) % num_classes
    return torch.where(keep, labels.cpu(), flipped).to(labels.device)


class ForwardCorrectedLoss:
    """Cross-entropy of the noisy labels under ``T^T softmax(logits)``: forward loss correction.

    Patrini et al., "Making Deep Neural Networks Robust to Label Noise: a Loss
    Correction Approach", CVPR 2017: with a known transition matrix T the
    minimiser of this loss on noisy labels is the clean-label classifier, so
    the server model learns the true classes from randomized labels.

    Parameters
    ----------
    label_epsilon : float
        The randomized response's epsilon.
    num_classes : int
        K.
    """

    def __init__(self, label_epsilon: float, num_classes: int) -> None:
        self.transition = transition_matrix(label_epsilon, num_classes)

    def __call__(self, logits: torch.Tensor, noisy_labels: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss of ``logits`` (N, K) against the uploaded labels."""
        noisy_probs = F.softmax(logits.float(), dim=1) @ self.transition.to(logits.device)
        return F.nll_loss(torch.log(noisy_probs.clamp_min(1e-12)), noisy_labels)
