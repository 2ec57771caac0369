"""MNIST-style datasets (``mnist``, ``fashion-mnist``) read from IDX files."""

from __future__ import annotations

import gzip
import zlib
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log

from fsl_sage_flwr.data.containers import RawSplits
from fsl_sage_flwr.data.loading import DatasetNotFoundError, register_dataset
from fsl_sage_flwr.data.locations import dataset_folders, describe_search, first_folder_holding
from fsl_sage_flwr.data.transforms import scale_to_unit

# IDX type byte -> big-endian element dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_HOW_TO_GET = {
    "mnist": ("download the four MNIST IDX .gz files into a folder and pass run-config data-dir=<folder>"),
    "fashion-mnist": (
        "install the Debian package dataset-fashion-mnist (it fills "
        "/usr/share/datasets/fashion-mnist), or download the four Fashion-MNIST IDX .gz "
        "files into a folder and pass run-config data-dir=<folder>"
    ),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, by its ``.gz`` suffix).

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    np.ndarray
        The array in native byte order, with the shape stored in the header.

    Raises
    ------
    ValueError
        If the file is not a well-formed IDX file; the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: not a valid gzip file ({exc})") from exc

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: IDX header truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(f"{path}: IDX payload has {len(raw) - header_size} bytes, shape {shape} needs {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def find_idx_folder(name: str, data_dir: Path | None) -> Path | None:
    """Return the folder that :func:`load_dataset` would read MNIST-style dataset ``name`` from.

    Parameters
    ----------
    name : str
        ``mnist`` or ``fashion-mnist``.
    data_dir : Path or None
        The data folder (or its parent), as run config ``data-dir``; ``None`` when none is given.

    Returns
    -------
    Path or None
        The first searched folder holding the four IDX files, or ``None``.
    """
    return first_folder_holding(dataset_folders(name, data_dir), _holds_idx_files)


def _holds_idx_files(directory: Path) -> bool:
    return _find_idx_files(directory) is not None


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """Find the four IDX files in ``directory`` (``.gz`` or not); ``None`` if any is missing."""
    found = {}
    for key, stem in _IDX_STEMS.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _load_idx_dataset(name: str, data_dir: Path | None) -> RawSplits:
    """Load an MNIST-style dataset stored as four IDX files."""
    searched = dataset_folders(name, data_dir)
    folder = first_folder_holding(searched, _holds_idx_files)
    files = _find_idx_files(folder) if folder is not None else None
    if files is None:
        wanted = ", ".join(f"{stem}[.gz]" for stem in _IDX_STEMS.values())
        raise DatasetNotFoundError(
            f"{name}: IDX files ({wanted}) not found in {describe_search(searched, data_dir)}\n"
            f"To get them: {_IDX_HOW_TO_GET[name]}."
        )

    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{name}: {split} images {images.shape} and labels {labels.shape} do not match")
    log(INFO, "%s: loaded from %s", name, files["train_images"].parent)
    return RawSplits(
        scale_to_unit(arrays["train_images"][:, None], 255),
        arrays["train_labels"].astype(np.int64),
        scale_to_unit(arrays["test_images"][:, None], 255),
        arrays["test_labels"].astype(np.int64),
        10,
    )


@register_dataset("mnist")
def _load_mnist(data_dir: Path | None) -> RawSplits:
    """MNIST handwritten digits from IDX files."""
    return _load_idx_dataset("mnist", data_dir)


@register_dataset("fashion-mnist")
def _load_fashion_mnist(data_dir: Path | None) -> RawSplits:
    """Fashion-MNIST product images from IDX files."""
    return _load_idx_dataset("fashion-mnist", data_dir)
