"""Label privacy: randomized response drawn once per sample, and the loss corrected for its known flips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsl_sage_flwr.clients.private_uploads import PrivateUploads
from fsl_sage_flwr.core.label_privacy import ForwardCorrectedLoss, keep_probability, randomized_labels
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.upload_privacy import UploadPrivacy


def test_randomized_response_keeps_a_label_with_e_eps_over_e_eps_plus_k_minus_1_else_flips_uniformly():
    # Prepare
    labels = torch.arange(20000) % 10
    # Execute
    noisy = randomized_labels(labels, 1.0, 10, torch.Generator().manual_seed(0))
    # Assert
    kept = noisy == labels
    assert keep_probability(1.0, 10) == pytest.approx(math.e / (math.e + 9))
    assert float(kept.float().mean()) == pytest.approx(keep_probability(1.0, 10), abs=0.01)
    flipped_to = torch.bincount((noisy[~kept] - labels[~kept]) % 10, minlength=10).float()
    assert flipped_to[0] == 0 and float(flipped_to[1:].std() / flipped_to[1:].mean()) < 0.1


def test_a_node_uploads_the_same_randomized_label_for_a_sample_in_every_round():
    # Prepare
    privacy = UploadPrivacy(label_epsilon=0.5)
    labels = torch.arange(50) % 10
    # Execute: one node's uploads of two rounds, and another partition's
    uploads = PrivateUploads(privacy, LocalTraining(seed=3), 1, labels, 10)
    first = uploads.batch_labels
    again = PrivateUploads(privacy, LocalTraining(seed=3), 1, labels, 10).batch_labels
    other = PrivateUploads(privacy, LocalTraining(seed=3), 2, labels, 10).batch_labels
    # Assert: the local step still reads the true labels; the upload column is fixed per sample
    assert torch.equal(uploads.true_labels(first), labels)
    assert torch.equal(first, again) and not torch.equal(first[:, 1], other[:, 1])
    released = PrivateUploads(privacy, LocalTraining(seed=3), 1, labels, 10).release(
        [(torch.zeros(5, 2), first[:5])], 1
    )
    assert torch.equal(released[0][1], first[:5, 1])


def test_the_corrected_loss_is_cross_entropy_without_flips_and_prefers_the_true_class_under_them():
    # Prepare
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    # Execute
    no_flips = ForwardCorrectedLoss(60.0, 4)(logits, labels)
    loss = ForwardCorrectedLoss(0.5, 4)
    # Expected loss over the noisy label of a class-0 sample, predicting class 0 or class 1 confidently
    keep = keep_probability(0.5, 4)
    weights = torch.tensor([keep] + [(1 - keep) / 3] * 3)

    def expected(prediction: int) -> float:
        confident = torch.full((4, 4), -4.0)
        confident[:, prediction] = 4.0
        return float(sum(w * loss(confident[:1], torch.tensor([j])) for j, w in enumerate(weights)))

    # Assert
    assert float(no_flips) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert expected(0) < expected(1)
