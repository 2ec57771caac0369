"""Image datasets: local loading, normalisation, reshaping and federated partitioning."""

from __future__ import annotations

# Importing the source modules registers their datasets in DATASETS.
from fsl_sage_flwr.data import cifar, digits, idx  # noqa: F401
from fsl_sage_flwr.data.caching import load_dataset_cached, load_partition
from fsl_sage_flwr.data.containers import ArrayDataset, DatasetSplits, RawSplits
from fsl_sage_flwr.data.idx import find_idx_folder, read_idx
from fsl_sage_flwr.data.loading import (
    DATASETS,
    DatasetLoader,
    DatasetNotFoundError,
    load_dataset,
    register_dataset,
)
from fsl_sage_flwr.data.locations import SYSTEM_DATASET_ROOT, dataset_folders, describe_search, first_folder_holding
from fsl_sage_flwr.data.partitioning import PARTITIONINGS, partition_indices
from fsl_sage_flwr.data.transforms import adapt_images
from fsl_sage_flwr.data.unpickler import load_array_pickle

__all__ = [
    "DATASETS",
    "PARTITIONINGS",
    "SYSTEM_DATASET_ROOT",
    "ArrayDataset",
    "DatasetLoader",
    "DatasetNotFoundError",
    "DatasetSplits",
    "RawSplits",
    "adapt_images",
    "dataset_folders",
    "describe_search",
    "find_idx_folder",
    "first_folder_holding",
    "load_array_pickle",
    "load_dataset",
    "load_dataset_cached",
    "load_partition",
    "partition_indices",
    "read_idx",
    "register_dataset",
]
