"""Tests of the per-client FIFO buffer of smashed activations."""

import pytest
import torch

from fsl_sage_flwr.core.buffer import SmashedBuffer


def _batch(start: int, n: int):
    ids = torch.arange(start, start + n)
    return ids.float().view(n, 1, 1, 1).expand(n, 2, 1, 1).clone(), ids


def test_keeps_the_newest_samples_up_to_the_cap():
    # Prepare
    buffer = SmashedBuffer(capacity=10)
    # Execute: 4 + 4 + 4 samples, ids 0..11
    for start in (0, 4, 8):
        buffer.append(*_batch(start, 4))
    z, y = buffer.tensors()
    # Assert: ids 2..11 survive, oldest first, z and y still paired
    assert len(buffer) == 10
    assert y.tolist() == list(range(2, 12))
    assert torch.equal(z[:, 0, 0, 0], y.float())


def test_a_batch_larger_than_the_cap_keeps_its_tail():
    buffer = SmashedBuffer(capacity=3)
    buffer.append(*_batch(0, 5))
    assert buffer.tensors()[1].tolist() == [2, 3, 4]


def test_stores_copies_not_views():
    # Prepare
    buffer = SmashedBuffer(capacity=5)
    z, y = _batch(0, 2)
    # Execute
    buffer.append(z, y)
    z.zero_()
    # Assert
    assert buffer.tensors()[0][1, 0, 0, 0] == 1.0


def test_rejects_mismatched_lengths_and_bad_capacity():
    with pytest.raises(ValueError, match="labels"):
        SmashedBuffer(4).append(torch.zeros(3, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="capacity"):
        SmashedBuffer(0)
    with pytest.raises(ValueError, match="empty"):
        SmashedBuffer(2).tensors()
