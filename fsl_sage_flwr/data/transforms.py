"""Array transforms of image batches: scaling to [0, 1], normalisation, padding, channel repeat."""

from __future__ import annotations

import numpy as np

# Divides a constant channel by 1 instead of ~0 when normalising.
_MIN_STD = 1e-8


def adapt_images(images: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Zero-pad and channel-repeat images to the ``(C, H, W)`` a model needs.

    Smaller images are padded with zeros around the centre: ``(H_out - H) // 2`` rows on
    top and the rest at the bottom, likewise for columns on the left and right (28x28 to
    32x32 adds 2 pixels on every side, 8x8 to 32x32 adds 12). A single channel is
    repeated to fill all output channels. Applied to normalised images, the padding is
    the training mean.

    Parameters
    ----------
    images : np.ndarray
        Array of shape ``(N, C, H, W)``.
    input_shape : tuple of int
        Target ``(C, H, W)``.

    Returns
    -------
    np.ndarray
        ``images`` itself when already of the target shape, else a new array of shape
        ``(N, *input_shape)`` and the same dtype.

    Raises
    ------
    ValueError
        If ``images`` is not 4-D, is higher or wider than the target (images are
        never cropped), or has several channels but not the target's number.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    target = tuple(int(d) for d in input_shape)
    if len(target) != 3 or min(target) < 1:
        raise ValueError(f"input_shape must be three positive ints (C, H, W), got {input_shape}")
    n, c, h, w = images.shape
    out_c, out_h, out_w = target
    if (c, h, w) == target:
        return images
    if h > out_h or w > out_w:
        raise ValueError(f"cannot shrink {h}x{w} images to {out_h}x{out_w}; only padding is done")
    if c not in (out_c, 1):
        raise ValueError(f"cannot turn {c}-channel images into {out_c} channels")

    top, left = (out_h - h) // 2, (out_w - w) // 2
    out = np.zeros((n, out_c, out_h, out_w), dtype=images.dtype)
    # Broadcasting a single source channel fills every output channel with it.
    out[:, :, top : top + h, left : left + w] = images
    return out


def scale_to_unit(images: np.ndarray, max_value: int) -> np.ndarray:
    """Return ``images / max_value`` as ``float32``, without a float64 intermediate."""
    out = images.astype(np.float32)
    out /= max_value
    return out


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, shaped ``(1, C, 1, 1)`` for broadcasting."""
    # One channel at a time keeps the float64 temporaries to a third of CIFAR's size.
    mean = np.array([images[:, ch].mean(dtype=np.float64) for ch in range(images.shape[1])])
    std = np.array([images[:, ch].std(dtype=np.float64) for ch in range(images.shape[1])])
    std = np.maximum(std, _MIN_STD)
    shape = (1, -1, 1, 1)
    return mean.reshape(shape).astype(np.float32), std.reshape(shape).astype(np.float32)


def normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Return ``(images - mean) / std`` as a new ``float32`` array."""
    out = images.astype(np.float32, copy=True)
    out -= mean
    out /= std
    return out
