"""A node's uploads made private before they leave it: noised activations, randomized labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fsl_sage_flwr.core.activation_noise import clip_and_noise
from fsl_sage_flwr.core.label_privacy import randomized_labels
from fsl_sage_flwr.core.seeds import derive_seed
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.upload_privacy import UploadPrivacy


class PrivateUploads:
    """What one request's uploads go through on the client (a no-op with privacy off).

    With label privacy the minibatch loop runs over label pairs ``(true,
    randomized)``: the local step reads the true labels, the upload the
    randomized ones, each drawn once per sample from a generator seeded by the
    run seed and the partition, so a sample uploaded in several rounds always
    shows the same label. With DP every uploaded batch is clipped and noised
    from a generator of its own (seed, round, partition): no training stream
    draws differently than without privacy.

    Parameters
    ----------
    privacy : UploadPrivacy
        The request's settings.
    training : LocalTraining
        The request's training settings (seed, B, E, q for the noise multiplier).
    partition_id : int
        The node's partition.
    labels : torch.Tensor
        The node's true labels.
    num_classes : int
        K, for randomized response (unused without label privacy).
    """

    def __init__(
        self,
        privacy: UploadPrivacy,
        training: LocalTraining,
        partition_id: int,
        labels: torch.Tensor,
        num_classes: int,
    ) -> None:
        self.privacy = privacy
        self.training = training
        self.partition_id = partition_id
        self.num_examples = int(labels.shape[0])
        # Decided by the setting, not by the labels' rank: a per-token label is 2-D already.
        self.paired = privacy.label_epsilon > 0
        if self.paired:
            generator = torch.Generator().manual_seed(derive_seed(training.seed, partition_id, "label-privacy"))
            noisy = randomized_labels(labels, privacy.label_epsilon, num_classes, generator)
            self.batch_labels = torch.stack([labels, noisy], dim=1)
        else:
            self.batch_labels = labels

    def true_labels(self, batch_labels: torch.Tensor) -> torch.Tensor:
        """The true labels of a minibatch drawn from :attr:`batch_labels`."""
        return batch_labels[:, 0] if self.paired else batch_labels

    def release(
        self, uploads: Sequence[tuple[torch.Tensor, torch.Tensor]], server_round: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The kept ``(z, labels)`` batches as the server may see them: noised ``z``, uploaded labels."""
        labelled = [(z, yb[:, 1] if self.paired else yb) for z, yb in uploads]
        if not self.privacy.dp_on:
            return labelled
        sigma = self.privacy.noise_multiplier(self.num_examples, self.training)
        generator = torch.Generator().manual_seed(
            derive_seed(self.training.seed, server_round, self.partition_id, "dp-noise")
        )
        return [(clip_and_noise(z, self.privacy.dp_clip, sigma, generator), yb) for z, yb in labelled]
