"""The built-in language-model split (``gpt``) and text dataset (``bible``): a SplitSpec, test set and node shares."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from fsl_sage_flwr.core.gpt import GPTSplitConfig
from fsl_sage_flwr.core.gpt_lora import LoRASettings
from fsl_sage_flwr.core.gpt_split import GPTSplit
from fsl_sage_flwr.core.losses import perplexity, token_cross_entropy
from fsl_sage_flwr.core.seeds import derive_seed
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.data.text import BYTE_VOCAB_SIZE, TokenWindows, load_bible, partition_books
from fsl_sage_flwr.plugin import DataLike, SplitSpec

__all__ = [
    "APP_GPT",
    "APP_TEST_WINDOWS",
    "GPT_AUX_VARIANTS",
    "LANGUAGE_MODELS",
    "TEXT_DATASETS",
    "app_gpt_spec",
    "bible_partition",
    "bible_testset",
    "bible_train_size",
    "gpt_spec",
]

#: Built-in language-model splits, by run-config ``model``.
LANGUAGE_MODELS = ("gpt",)
#: Built-in text datasets, by run-config ``dataset``.
TEXT_DATASETS = ("bible",)
#: The ``gpt`` aux variants: blocks of the auxiliary model (``linear``: final norm and head only).
GPT_AUX_VARIANTS = {"linear": 0, "default": 1}
#: Validation windows the app's server evaluates on after every round (of 6,441 at T = 64).
APP_TEST_WINDOWS = 1024
#: The app's ``gpt``: byte-level, cut after the first of two blocks, small enough to train on a CPU.
APP_GPT = GPTSplitConfig(vocab_size=BYTE_VOCAB_SIZE, context_length=64, width=64, depth=2, heads=4, dropout=0.0)


def gpt_spec(
    config: GPTSplitConfig | None = None,
    *,
    testset: DataLike | None = None,
    checkpoint_dir: str | None = None,
    lora: LoRASettings | None = None,
) -> SplitSpec:
    """A GPT-2 split as a :class:`SplitSpec`: next-token cross-entropy per position, perplexity reported.

    Inputs are ``(T,)`` token ids per sample (as float32 in datasets), labels ``(T,)``
    int64 next tokens, the cut ``(T, D)`` hidden states (FSL-SAGE's GPT-2 setting,
    Nair et al., ICML 2025, cut after the first block).

    Parameters
    ----------
    config : GPTSplitConfig, optional
        Sizes and cut (default :data:`APP_GPT`).
    testset : DataLike, optional
        Held-out windows the server evaluates on.
    checkpoint_dir : str, optional
        A local GPT-2 checkpoint to start from (see :class:`~fsl_sage_flwr.core.gpt_split.GPTSplit`).
    lora : LoRASettings, optional
        Adapters on the client; then only they travel.
    """
    split = GPTSplit(config or APP_GPT, checkpoint_dir=checkpoint_dir, lora=lora)
    length = split.config.context_length
    return SplitSpec(
        client_model=split.build_client,
        server_model=split.build_server,
        aux_model=split.build_aux,
        cut_shape=split.cut_shape,
        num_classes=split.config.vocab_size,
        testset=testset,
        input_shape=(length,),
        loss=token_cross_entropy,
        label_shape=(length,),
        label_dtype="int64",
        metric=perplexity,
    )


def app_gpt_spec(aux_variant: str = "default", *, lora_rank: int = 0, testset: DataLike | None = None) -> SplitSpec:
    """The run config's ``model="gpt"``: :data:`APP_GPT` with the aux of ``aux_variant``, LoRA of ``lora_rank``.

    With a positive ``lora_rank`` the client's attention projections get adapters of that
    rank over frozen weights of :class:`LoRASettings`' fixed seed (no checkpoint in the
    app): only the adapters train on the client and travel in the client-model average.

    Raises
    ------
    ValueError
        For an aux variant not in :data:`GPT_AUX_VARIANTS`, or a negative rank.
    """
    if aux_variant not in GPT_AUX_VARIANTS:
        raise ValueError(f"unknown aux variant {aux_variant!r} for model 'gpt'; choose one of {list(GPT_AUX_VARIANTS)}")
    if lora_rank < 0:
        raise ValueError(f"lora-rank must be 0 (off) or positive, got {lora_rank}")
    config = dataclasses.replace(APP_GPT, aux_blocks=GPT_AUX_VARIANTS[aux_variant])
    return gpt_spec(config, testset=testset, lora=LoRASettings(rank=lora_rank) if lora_rank else None)


@functools.lru_cache(maxsize=4)
def _bible(context_length: int, train_subset: int, seed: int) -> tuple[TokenWindows, TokenWindows]:
    train, validation, _ = load_bible(context_length)
    if 0 < train_subset < len(train):
        keep = np.random.default_rng(derive_seed(seed, "bible-subset")).choice(len(train), train_subset, replace=False)
        train = train.subset(np.sort(keep))
    return train, validation


def _as_arrays(windows: TokenWindows) -> ArrayDataset:
    return ArrayDataset(windows.inputs.astype(np.float32), windows.labels)


def bible_testset(context_length: int = APP_GPT.context_length, *, max_windows: int = 0) -> ArrayDataset:
    """The Bible's validation windows (the last tenth of every book).

    With a positive ``max_windows``, that many spread evenly over the whole set, so
    every part of the Bible stays represented.
    """
    _, validation = _bible(context_length, 0, 0)
    if 0 < max_windows < len(validation):
        validation = validation.subset(np.linspace(0, len(validation) - 1, max_windows).round().astype(np.int64))
    return _as_arrays(validation)


def bible_partition(
    partition_id: int,
    num_partitions: int,
    context_length: int = APP_GPT.context_length,
    *,
    train_subset: int = 0,
    seed: int = 0,
) -> ArrayDataset:
    """One client's training windows: whole books, non-IID (see :func:`~fsl_sage_flwr.data.text.partition_books`).

    Parameters
    ----------
    partition_id : int
        The client, in ``[0, num_partitions)``.
    num_partitions : int
        Number of clients, at most the 66 books.
    context_length : int
        ``T``, tokens per window.
    train_subset : int
        Keep a random (seeded) sample of this many training windows first; 0: all.
    seed : int
        Seed of that sample.

    Raises
    ------
    ValueError
        If ``partition_id`` is out of range, or there are more clients than books.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    train, _ = _bible(context_length, train_subset, seed)
    groups = partition_books(np.bincount(train.books), num_partitions)
    return _as_arrays(train.of_books(groups[partition_id]))


def bible_train_size(context_length: int = APP_GPT.context_length, *, train_subset: int = 0, seed: int = 0) -> int:
    """Number of training windows all clients together hold."""
    return len(_bible(context_length, train_subset, seed)[0])
