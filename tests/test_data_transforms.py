"""Tests for fsl_sage_flwr.data's image transforms."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_sage_flwr.data import adapt_images

# --------------------------------------------------------------------------- adapt_images


def test_adapt_images_pads_centrally_and_repeats_the_channel():
    # Prepare
    images = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28) + 1

    # Execute
    adapted = adapt_images(images, (3, 32, 32))

    # Assert: 2 px of zeros on each side, the same image in every channel.
    assert adapted.shape == (2, 3, 32, 32) and adapted.dtype == np.float32
    for channel in range(3):
        np.testing.assert_array_equal(adapted[:, channel, 2:30, 2:30], images[:, 0])
    assert np.count_nonzero(adapted) == 3 * images.size


def test_adapt_images_puts_odd_padding_at_bottom_right():
    # Prepare
    images = np.ones((1, 1, 5, 5), dtype=np.float32)

    # Execute
    adapted = adapt_images(images, (1, 8, 8))

    # Assert: (8 - 5) // 2 = 1 row/column before, 2 after.
    assert adapted[0, 0, 1:6, 1:6].all() and np.count_nonzero(adapted) == 25


def test_adapt_images_is_identity_for_the_right_shape():
    # Prepare
    images = np.zeros((2, 3, 32, 32), dtype=np.float32)

    # Execute / Assert
    assert adapt_images(images, (3, 32, 32)) is images


@pytest.mark.parametrize(
    ("shape", "target", "message"),
    [
        ((1, 1, 40, 40), (3, 32, 32), "shrink"),
        ((1, 2, 8, 8), (3, 32, 32), "channels"),
        ((1, 3, 8, 8), (1, 32, 32), "channels"),
        ((8, 8), (1, 32, 32), "N, C, H, W"),
        ((1, 1, 8, 8), (32, 32), "three positive"),
    ],
)
def test_adapt_images_rejects_impossible_conversions(shape, target, message):
    # Prepare
    images = np.zeros(shape, dtype=np.float32)

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        adapt_images(images, target)
