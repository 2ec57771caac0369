"""Image datasets: local loading, normalisation, reshaping and federated partitioning."""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib
import logging
import pickle
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Where Debian's dataset packages install their files (``dataset-fashion-mnist`` puts
#: the IDX files in ``/usr/share/datasets/fashion-mnist``). Module-level so tests can
#: point it elsewhere.
SYSTEM_DATASET_ROOT = Path("/usr/share/datasets")

# The digits test split must be the same in every run, whatever the run seed, so that
# accuracies of different runs are measured on the same images.
_DIGITS_SPLIT_SEED = 1797
_DIGITS_TEST_FRACTION = 0.2

# Divides a constant channel by 1 instead of ~0 when normalising.
_MIN_STD = 1e-8

# How often the Dirichlet partitioning is redrawn (each draw already retries 11 times
# inside Flower Datasets) before a too-small ``alpha`` is reported as an error.
_DIRICHLET_ATTEMPTS = 20

PARTITIONINGS = ("iid", "dirichlet")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are in none of the places searched."""


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Inputs and labels held in memory as NumPy arrays.

    Attributes
    ----------
    images : np.ndarray
        ``float32`` inputs of shape ``(N, ...)``: images ``(N, C, H, W)`` for the
        built-in datasets (normalised with the training split's per-channel mean
        and standard deviation), or any per-sample shape, e.g. ``(N, features)``.
    labels : np.ndarray
        ``int64`` array of shape ``(N,)``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim < 2:
            raise ValueError(f"inputs must be (N, ...) with one row per sample, got shape {self.images.shape}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError(f"labels must be (N,) with N = {len(self.images)}, got shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Return the samples at ``indices`` (a copy, in the order given).

        Parameters
        ----------
        indices : np.ndarray
            Integer indices (or a boolean mask) into this dataset.

        Returns
        -------
        ArrayDataset
            A new dataset holding copies of the selected samples.
        """
        indices = np.asarray(indices)
        return ArrayDataset(self.images[indices], self.labels[indices])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """The train and test splits of a dataset, ready for training.

    Attributes
    ----------
    train, test : ArrayDataset
        Both normalised with the statistics of the full training split.
    num_classes : int
        Number of label classes.
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of the images as returned (after any :func:`adapt_images`).
    """

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class RawSplits:
    """What a registered loader returns: images scaled to ``[0, 1]``, not yet normalised.

    Attributes
    ----------
    train_images, test_images : np.ndarray
        Arrays of shape ``(N, C, H, W)`` with values in ``[0, 1]``.
    train_labels, test_labels : np.ndarray
        Integer arrays of shape ``(N,)``.
    num_classes : int
        Number of label classes.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int


DatasetLoader = Callable[[Path | None], RawSplits]

#: Registered datasets: name -> loader taking the user's data directory (or ``None``).
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register the decorated loader under ``name`` in :data:`DATASETS`.

    Parameters
    ----------
    name : str
        Name used in :func:`load_dataset` and in the run config.

    Returns
    -------
    Callable
        The decorator; it returns the loader unchanged.

    Raises
    ------
    ValueError
        If ``name`` is already registered.
    """

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorator


# --------------------------------------------------------------------------- loading


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    train_subset: int | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Load a registered dataset, normalised and optionally reshaped.

    The per-channel mean and standard deviation are computed on the full training split
    (before ``train_subset``), so the test set is identical for every subset and seed.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``,
        ``cifar100``).
    data_dir : str or None
        Folder with the dataset files, or its parent when they sit in a subfolder named
        after the dataset (or, for CIFAR, after the archive's folder). ``None`` or ``""``:
        none given (MNIST-style sets are still looked for in
        :data:`SYSTEM_DATASET_ROOT`, CIFAR on the Hugging Face hub).
    input_shape : tuple of int or None
        ``(C, H, W)`` the model needs. Applied with :func:`adapt_images` after
        normalisation, so padded pixels hold 0, the normalised value of the training mean.
    train_subset : int or None
        Keep a stratified random sample of this many training images (seeded with
        ``seed``); ignored when not smaller than the training split.
    seed : int
        Seed of the ``train_subset`` sample.

    Returns
    -------
    DatasetSplits
        Normalised ``float32`` images and ``int64`` labels.

    Raises
    ------
    ValueError
        If ``name`` is unknown, ``train_subset`` is not positive or the images cannot be
        adapted to ``input_shape``.
    DatasetNotFoundError
        If the dataset's files cannot be found.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))}")
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset must be positive, got {train_subset}")

    raw = DATASETS[name](Path(data_dir) if data_dir else None)
    mean, std = _channel_stats(raw.train_images)
    train = ArrayDataset(_normalise(raw.train_images, mean, std), raw.train_labels.astype(np.int64, copy=False))
    test = ArrayDataset(_normalise(raw.test_images, mean, std), raw.test_labels.astype(np.int64, copy=False))

    if train_subset is not None and train_subset < len(train):
        train = train.subset(_stratified_sample(train.labels, train_subset, seed))
    if input_shape is not None:
        train = ArrayDataset(adapt_images(train.images, input_shape), train.labels)
        test = ArrayDataset(adapt_images(test.images, input_shape), test.labels)

    c, h, w = train.images.shape[1:]
    return DatasetSplits(train, test, raw.num_classes, (int(c), int(h), int(w)))


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


def _scale_to_unit(images: np.ndarray, max_value: int) -> np.ndarray:
    """Return ``images / max_value`` as ``float32``, without a float64 intermediate."""
    out = images.astype(np.float32)
    out /= max_value
    return out


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, shaped ``(1, C, 1, 1)`` for broadcasting."""
    # One channel at a time keeps the float64 temporaries to a third of CIFAR's size.
    mean = np.array([images[:, ch].mean(dtype=np.float64) for ch in range(images.shape[1])])
    std = np.array([images[:, ch].std(dtype=np.float64) for ch in range(images.shape[1])])
    std = np.maximum(std, _MIN_STD)
    shape = (1, -1, 1, 1)
    return mean.reshape(shape).astype(np.float32), std.reshape(shape).astype(np.float32)


def _normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Return ``(images - mean) / std`` as a new ``float32`` array."""
    out = images.astype(np.float32, copy=True)
    out -= mean
    out /= std
    return out


def _stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` samples keeping each class's share of ``labels``.

    Every class gets the floor of its proportional quota; the slots left over go to the
    classes with the largest fractional parts (random order among ties).
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    quotas = np.floor(exact).astype(np.int64)
    leftover = size - int(quotas.sum())
    order = np.lexsort((rng.random(len(classes)), -(exact - quotas)))
    quotas[order[:leftover]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), quota, replace=False)
        for cls, quota in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------- digits


@register_dataset("digits")
def _load_digits(data_dir: Path | None) -> RawSplits:
    """Scikit-learn's bundled 8x8 digits with a fixed stratified 80/20 split."""
    del data_dir  # Bundled with scikit-learn: nothing to look for.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = _scale_to_unit(bunch.images[:, None], 16)  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=_DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=_DIGITS_SPLIT_SEED,
    )
    return RawSplits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], 10)


# --------------------------------------------------------------------------- IDX (MNIST)

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


def _idx_search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    """Folders searched for a dataset's IDX files, in order."""
    dirs = [data_dir, data_dir / name] if data_dir is not None else []
    return [*dirs, SYSTEM_DATASET_ROOT / name]


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
    searched = _idx_search_dirs(name, data_dir)
    files = next((f for d in searched if (f := _find_idx_files(d)) is not None), None)
    if files is None:
        places = "\n".join(f"  - {d}" for d in searched)
        wanted = ", ".join(f"{stem}[.gz]" for stem in _IDX_STEMS.values())
        no_dir = "" if data_dir is not None else " (no data-dir given)"
        raise DatasetNotFoundError(
            f"{name}: IDX files ({wanted}) not found in any of{no_dir}:\n{places}\n"
            f"To get them: {_IDX_HOW_TO_GET[name]}."
        )

    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{name}: {split} images {images.shape} and labels {labels.shape} do not match")
    logger.info("%s: loaded from %s", name, files["train_images"].parent)
    return RawSplits(
        _scale_to_unit(arrays["train_images"][:, None], 255),
        arrays["train_labels"].astype(np.int64),
        _scale_to_unit(arrays["test_images"][:, None], 255),
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


# --------------------------------------------------------------------------- CIFAR


def _numpy_core_attr(submodule: str, attr: str) -> Any:
    """Look up ``attr`` in ``numpy._core.<submodule>`` (NumPy 2) or ``numpy.core`` (NumPy 1)."""
    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, attr)


@functools.cache
def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """Map the only globals a dataset pickle may name (those rebuilding arrays) to objects."""
    reconstruct = _numpy_core_attr("multiarray", "_reconstruct")
    frombuffer = _numpy_core_attr("numeric", "_frombuffer")  # used by pickle protocol 5
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols 0-2.
        ("_codecs", "encode"): codecs.encode,
    }
    # Files pickled under NumPy 1 name numpy.core, under NumPy 2 numpy._core.
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds dicts, lists, bytes, numbers and NumPy arrays, nothing else.

    A pickle can call any importable function while loading; refusing every global but
    NumPy's array constructors (and the codec call Python 3 writes for bytes) keeps a
    tampered dataset file from running code.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_pickle_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return allowed


def load_array_pickle(path: str | Path) -> Any:
    """Load a pickle that may hold only containers, scalars, bytes and NumPy arrays.

    Parameters
    ----------
    path : str or Path
        The file, e.g. a batch of the CIFAR "python version".

    Returns
    -------
    Any
        The unpickled object. Strings pickled by Python 2 come back as ``bytes``.

    Raises
    ------
    pickle.UnpicklingError
        If the pickle references any other global (such as ``os.system``) or is corrupt;
        the message names the file.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            # encoding="bytes": the official CIFAR batches were pickled by Python 2.
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
        except Exception as exc:  # a corrupt pickle fails in many ways: name the file
            raise pickle.UnpicklingError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class _CifarSpec:
    """Where one CIFAR variant lives, locally and on the hub."""

    title: str
    folder: str  # the folder name inside the official archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    hub_id: str
    hub_label_column: str
    num_classes: int


_CIFAR_SPECS = {
    "cifar10": _CifarSpec(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        "uoft-cs/cifar10",
        "label",
        10,
    ),
    "cifar100": _CifarSpec(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
        "uoft-cs/cifar100",
        "fine_label",
        100,
    ),
}


def _read_cifar_files(directory: Path, names: tuple[str, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the batches ``names`` of ``directory`` into uint8 images and labels."""
    images, labels = [], []
    for name in names:
        path = directory / name
        batch = load_array_pickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[label_key]):
            raise ValueError(f"{path}: data of shape {data.shape} is not (N, 3072) with N labels")
        # Rows hold the red, then green, then blue 32x32 plane: already channel-first.
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _hub_split_to_arrays(split: Any, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn a Hugging Face split with ``img`` and a label column into uint8 NCHW and labels."""
    table = split.with_format("numpy")
    images = np.asarray(table["img"], dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images from the hub, got {images.shape}")
    return images.transpose(0, 3, 1, 2), np.asarray(table[label_column], dtype=np.int64)


def _load_cifar_from_hub(spec: _CifarSpec) -> tuple[np.ndarray, ...]:
    """Download (or reuse the cache of) ``spec.hub_id`` through Flower Datasets."""
    from flwr_datasets import FederatedDataset  # heavy and only needed without local files

    # One partition: the split is only read whole here and partitioned elsewhere.
    fds = FederatedDataset(dataset=spec.hub_id, partitioners={"train": 1})
    train = _hub_split_to_arrays(fds.load_split("train"), spec.hub_label_column)
    test = _hub_split_to_arrays(fds.load_split("test"), spec.hub_label_column)
    return (*train, *test)


def _load_cifar(name: str, data_dir: Path | None) -> RawSplits:
    """Load CIFAR from a local "python version" folder, else from the hub."""
    spec = _CIFAR_SPECS[name]
    searched = [data_dir, data_dir / spec.folder, data_dir / name] if data_dir is not None else []
    needed = spec.train_files + spec.test_files
    directory = next((d for d in searched if all((d / f).is_file() for f in needed)), None)

    if directory is not None:
        train_images, train_labels = _read_cifar_files(directory, spec.train_files, spec.label_key)
        test_images, test_labels = _read_cifar_files(directory, spec.test_files, spec.label_key)
        logger.info("%s: loaded from %s", name, directory)
    else:
        try:
            train_images, train_labels, test_images, test_labels = _load_cifar_from_hub(spec)
        except Exception as exc:  # offline, package missing, bad cache: all mean not found
            places = "\n".join(f"  - {d}" for d in searched) or "  (no data-dir given)"
            raise DatasetNotFoundError(
                f"{name}: the {spec.title} python-version files ({', '.join(needed)}) are in "
                f"none of:\n{places}\nand loading {spec.hub_id!r} from the Hugging Face hub "
                f"failed: {type(exc).__name__}: {exc}\nTo get it: download the "
                f"{spec.title} python version from the CIFAR site, extract it into a folder "
                f"and pass run-config data-dir=<folder>, or run online so Flower Datasets "
                f"can fetch {spec.hub_id!r}."
            ) from exc
        logger.info("%s: loaded from the hub (%s)", name, spec.hub_id)

    return RawSplits(
        _scale_to_unit(train_images, 255),
        train_labels,
        _scale_to_unit(test_images, 255),
        test_labels,
        spec.num_classes,
    )


@register_dataset("cifar10")
def _load_cifar10(data_dir: Path | None) -> RawSplits:
    """CIFAR-10 (50,000 train / 10,000 test colour 32x32 images, 10 classes)."""
    return _load_cifar("cifar10", data_dir)


@register_dataset("cifar100")
def _load_cifar100(data_dir: Path | None) -> RawSplits:
    """CIFAR-100 with its 100 fine labels."""
    return _load_cifar("cifar100", data_dir)


# --------------------------------------------------------------------------- partitioning


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    *,
    partitioning: str = "iid",
    alpha: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices among clients with Flower Datasets partitioners.

    ``iid`` shuffles the indices with ``seed`` and cuts them into ``num_partitions``
    contiguous shards of near-equal size. ``dirichlet`` draws each class's share per
    client from ``Dirichlet(alpha)`` (small ``alpha``: few classes per client), requiring
    ``min(10, n // (2 * num_partitions))`` samples per client; draws that miss this are
    repeated with seeds derived from ``seed``.

    Parameters
    ----------
    labels : np.ndarray
        Label of every sample, shape ``(n,)``.
    num_partitions : int
        Number of clients, between 1 and ``n``.
    partitioning : str
        ``"iid"`` or ``"dirichlet"``.
    alpha : float
        Dirichlet concentration, > 0; unused by ``iid``.
    seed : int
        Seed; the same arguments always give the same partitions.

    Returns
    -------
    list of np.ndarray
        Sorted ``int64`` indices into ``labels``, one array per partition; the arrays are
        disjoint and together cover every sample.

    Raises
    ------
    ValueError
        On bad arguments, or if no Dirichlet draw gives every client enough samples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 1 <= num_partitions <= len(labels):
        raise ValueError(f"num_partitions must be in [1, {len(labels)}], got {num_partitions}")
    if partitioning == "iid":
        return _iid_partition(labels, num_partitions, seed)
    if partitioning == "dirichlet":
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {alpha}")
        return _dirichlet_partition(labels, num_partitions, alpha, seed)
    raise ValueError(f"unknown partitioning {partitioning!r}; choose one of {', '.join(PARTITIONINGS)}")


def _label_table(labels: np.ndarray, order: np.ndarray) -> Any:
    """Build a Hugging Face table of labels and sample indices, rows in ``order``.

    Only labels go in: the partitioners need nothing else, and copying images into
    Arrow would be slow.
    """
    import datasets

    return datasets.Dataset.from_dict({"label": labels[order], "index": order})


def _partition_index_arrays(partitioner: Any, num_partitions: int) -> list[np.ndarray]:
    """Read the ``index`` column of every partition, sorted."""
    return [
        np.sort(np.asarray(partitioner.load_partition(pid)["index"], dtype=np.int64)) for pid in range(num_partitions)
    ]


def _iid_partition(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """IID shards of a seeded shuffle (the partitioner itself cuts rows contiguously)."""
    from flwr_datasets.partitioner import IidPartitioner

    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = IidPartitioner(num_partitions)
    partitioner.dataset = _label_table(labels, order)
    return _partition_index_arrays(partitioner, num_partitions)


def _dirichlet_partition(labels: np.ndarray, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Dirichlet label-skewed partitions, redrawn until every client has enough samples."""
    from flwr_datasets.partitioner import DirichletPartitioner

    table = _label_table(labels, np.arange(len(labels)))
    # 10 is Flower's default; small sets (digits over many clients) need less.
    min_size = min(10, len(labels) // (2 * num_partitions))
    for attempt in range(_DIRICHLET_ATTEMPTS):
        # The first attempt uses the seed as given, so it matches a plain partitioner.
        attempt_seed = seed if attempt == 0 else _derived_seed(seed, attempt)
        partitioner = DirichletPartitioner(
            num_partitions,
            partition_by="label",
            alpha=alpha,
            seed=attempt_seed,
            min_partition_size=min_size,
        )
        partitioner.dataset = table
        try:
            with warnings.catch_warnings():
                # Flower warns on each of its internal redraws; the outcome is logged below.
                warnings.filterwarnings("ignore", message="The specified min_partition_size")
                return _partition_index_arrays(partitioner, num_partitions)
        except ValueError:
            # Arguments were checked above, so this is Flower giving up on min_size.
            logger.info(
                "Dirichlet draw %d (alpha=%g) left a client under %d samples",
                attempt,
                alpha,
                min_size,
            )
    raise ValueError(
        f"none of {_DIRICHLET_ATTEMPTS} Dirichlet(alpha={alpha}) draws gave all "
        f"{num_partitions} partitions at least {min_size} samples; "
        "use a larger alpha or fewer partitions"
    )


def _derived_seed(seed: int, attempt: int) -> int:
    """Derive the seed of redraw ``attempt`` from ``seed`` alone."""
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


# --------------------------------------------------------------------------- per client


def load_partition(
    name: str,
    partition_id: int,
    num_partitions: int,
    *,
    partitioning: str,
    alpha: float,
    seed: int,
    data_dir: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    train_subset: int | None = None,
) -> ArrayDataset:
    """Return one client's share of the training split.

    The dataset and its partitioning are cached in-process, so a Ray actor that plays
    several clients or rounds loads them once.

    Parameters
    ----------
    name, data_dir, input_shape, train_subset, seed
        As in :func:`load_dataset` (``seed`` also seeds the partitioning).
    partition_id : int
        This client's partition, in ``[0, num_partitions)``.
    num_partitions, partitioning, alpha
        As in :func:`partition_indices`.

    Returns
    -------
    ArrayDataset
        A copy of the client's training samples.

    Raises
    ------
    ValueError
        If ``partition_id`` is out of range, or as :func:`load_dataset` and
        :func:`partition_indices` do.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    key = _dataset_key(name, data_dir, input_shape, train_subset, seed)
    train = _memoised_dataset(*key).train
    parts = _memoised_partitions(key, num_partitions, partitioning, float(alpha))
    return train.subset(parts[partition_id])


def load_dataset_cached(
    name: str,
    *,
    data_dir: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    train_subset: int | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Return :func:`load_dataset`'s result, memoised in-process (clients ask every round).

    Equivalent arguments (a list or a tuple ``input_shape``, ``data_dir`` ``None`` or
    ``""``) share one cache entry, which :func:`load_partition` uses too. The result is
    shared: do not modify its arrays in place.

    Parameters
    ----------
    name, data_dir, input_shape, train_subset, seed
        As in :func:`load_dataset`.

    Returns
    -------
    DatasetSplits
        The cached splits.
    """
    return _memoised_dataset(*_dataset_key(name, data_dir, input_shape, train_subset, seed))


_DatasetKey = tuple[str, str | None, tuple[int, ...] | None, int | None, int]


def _dataset_key(
    name: str,
    data_dir: str | None,
    input_shape: tuple[int, int, int] | None,
    train_subset: int | None,
    seed: int,
) -> _DatasetKey:
    """Canonical, hashable form of :func:`load_dataset`'s arguments (configs give lists)."""
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    return name, str(data_dir) if data_dir else None, shape, train_subset, int(seed)


@functools.lru_cache(maxsize=2)  # a full CIFAR copy is ~600 MB: keep few
def _memoised_dataset(
    name: str,
    data_dir: str | None,
    input_shape: tuple[int, int, int] | None,
    train_subset: int | None,
    seed: int,
) -> DatasetSplits:
    """Call :func:`load_dataset` once per canonical key."""
    return load_dataset(name, data_dir=data_dir, input_shape=input_shape, train_subset=train_subset, seed=seed)


@functools.lru_cache(maxsize=8)
def _memoised_partitions(
    key: _DatasetKey, num_partitions: int, partitioning: str, alpha: float
) -> tuple[np.ndarray, ...]:
    """Call :func:`partition_indices` once per dataset key and partitioning."""
    labels = _memoised_dataset(*key).train.labels
    seed = key[-1]
    return tuple(partition_indices(labels, num_partitions, partitioning=partitioning, alpha=alpha, seed=seed))
