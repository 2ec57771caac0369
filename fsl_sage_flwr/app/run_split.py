"""The run's split network and data, from the run config: a built-in model by name, or the user's SplitSpec.

With ``split-spec`` empty, the built-in ``model`` becomes a SplitSpec
(:func:`fsl_sage_flwr.specs.builtin_spec`) for the run's ``dataset``; otherwise the
function it names builds one. Either way every algorithm is built from the spec
(``fsl_sage_flwr.split_algorithms``), the server and the nodes alike.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from flwr.app import Context

from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.node_data import load_node_data
from fsl_sage_flwr.app.user_code import UserCodeError, call_reference
from fsl_sage_flwr.core.models import SplitModel, required_input_shape
from fsl_sage_flwr.data import ArrayDataset, DatasetSplits, load_dataset, load_dataset_cached
from fsl_sage_flwr.lm_specs import APP_TEST_WINDOWS, LANGUAGE_MODELS, app_gpt_spec, bible_testset, bible_train_size
from fsl_sage_flwr.plugin import SplitSpec, as_dataset
from fsl_sage_flwr.specs import builtin_spec
from fsl_sage_flwr.split_algorithms import node_parts

#: The bound on a node's claimed sample count when the server cannot see the training data.
UNSEEN_TRAIN_MAX_EXAMPLES = 1_000_000
#: Runs whose node parts a process keeps.
NODE_SPLIT_CACHE_SIZE = 4
#: Nodes' own training data kept per process (a SplitFed node reads it every batch).
NODE_DATA_CACHE_SIZE = 32


@dataclass(frozen=True)
class RunSplit:
    """The run's split network as the server builds it."""

    spec: SplitSpec
    """The split network; its ``testset`` is what the server evaluates on."""
    max_examples: int
    """The most samples a node may claim: the training split's size where the server has it."""

    @property
    def testset(self) -> ArrayDataset | None:
        """The spec's test set, as arrays."""
        return None if self.spec.testset is None else as_dataset(self.spec.testset, self.spec.objective.labels)


def server_split(settings: RunSettings, context: Context | None = None) -> RunSplit:
    """Return the run's split network with its test set, checked against the settings.

    ``context`` (the ServerApp's) is what the ``split-spec`` and ``test-data``
    functions are called with, if they take an argument.

    Raises
    ------
    UserCodeError
        Naming the key, when ``split-spec`` or ``test-data`` cannot be used, or a
        user's SplitSpec has no test set and neither ``test-data`` nor the
        ``dataset`` can give one.
    ValueError
        When the settings do not fit the data (see :meth:`RunSettings.check_data`).
    """
    if settings.model in LANGUAGE_MODELS:
        spec = app_gpt_spec(
            settings.aux_variant, lora_rank=settings.lora_rank, testset=bible_testset(max_windows=APP_TEST_WINDOWS)
        )
        return RunSplit(spec, bible_train_size(train_subset=settings.train_subset, seed=settings.training.seed))
    if not settings.split_spec:
        data = _dataset(settings, required_input_shape(settings.model))
        spec = builtin_spec(
            settings.model,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            aux_variant=settings.aux_variant,
            testset=data.test,
        )
        return RunSplit(spec, len(data.train))
    spec = user_spec(settings, context)
    # Nodes without node-data train on the dataset's partitions: the server knows their size.
    data = None if settings.node_data else _dataset(settings, None)
    if spec.testset is None:
        spec = dataclasses.replace(spec, testset=_test_set(settings, data, context))
    return RunSplit(spec, len(data.train) if data is not None else UNSEEN_TRAIN_MAX_EXAMPLES)


def user_spec(settings: RunSettings, context: Context | None) -> SplitSpec:
    """Call the ``split-spec`` function (with ``context``, if it takes an argument); check it gives a SplitSpec.

    Raises
    ------
    UserCodeError
        Naming ``split-spec``, when it cannot be imported or returns something else.
    """
    spec = call_reference(settings.split_spec, "split-spec", context)
    if not isinstance(spec, SplitSpec):
        raise UserCodeError(
            f"run config 'split-spec': {settings.split_spec!r} returned a {type(spec).__name__}, not a SplitSpec"
        )
    return spec


def node_split(context: Context, settings: RunSettings) -> tuple[SplitModel, int]:
    """The parts a node of the run's algorithm holds and the number of classes, built once per process.

    A ``split-spec`` function that takes an argument gets the first node's ``context``.

    Every message loads the models' whole state (weights and BatchNorm buffers)
    from the request or from ``Context.state`` before it trains, so reusing the
    modules carries nothing from one node or round to the next.
    """
    key = settings
    if key not in _node_splits:
        _node_splits[key] = _build_node_split(context, settings)
        while len(_node_splits) > NODE_SPLIT_CACHE_SIZE:
            _node_splits.popitem(last=False)
    return _node_splits[key]


def _build_node_split(context: Context, settings: RunSettings) -> tuple[SplitModel, int]:
    if settings.model in LANGUAGE_MODELS:
        spec = app_gpt_spec(settings.aux_variant, lora_rank=settings.lora_rank)
    elif settings.split_spec:
        spec = user_spec(settings, context)
    else:
        data = load_dataset_cached(settings.dataset, **_dataset_args(settings, required_input_shape(settings.model)))
        spec = builtin_spec(
            settings.model,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            aux_variant=settings.aux_variant,
        )
    return node_parts(settings.algorithm, spec.build()), spec.num_classes


_node_splits: OrderedDict[RunSettings, tuple[SplitModel, int]] = OrderedDict()
_node_data_cache: OrderedDict[tuple, ArrayDataset] = OrderedDict()


def node_trainset(context: Context, settings: RunSettings) -> ArrayDataset:
    """This node's training data: the ``node-data`` function's, or its partition of the ``dataset``.

    Raises
    ------
    UserCodeError
        Naming ``node-data``, when it cannot be imported or its data cannot be read.
    """
    if not settings.node_data:
        return load_node_data(context.node_config, settings)
    key = (settings, tuple(sorted(context.node_config.items())))
    if key not in _node_data_cache:
        data = call_reference(settings.node_data, "node-data", context)
        try:
            _node_data_cache[key] = as_dataset(data)
        except ValueError as err:
            raise UserCodeError(f"run config 'node-data': {settings.node_data!r} gave unusable data: {err}") from err
        while len(_node_data_cache) > NODE_DATA_CACHE_SIZE:
            _node_data_cache.popitem(last=False)
    return _node_data_cache[key]


def _test_set(settings: RunSettings, data: DatasetSplits | None, context: Context | None) -> ArrayDataset:
    if settings.test_data:
        loaded = call_reference(settings.test_data, "test-data", context)
        try:
            return as_dataset(loaded)
        except ValueError as err:
            raise UserCodeError(f"run config 'test-data': {settings.test_data!r} gave unusable data: {err}") from err
    if data is None:
        raise UserCodeError(
            f"run config 'split-spec': {settings.split_spec!r} gives no testset and the nodes bring their own "
            "data ('node-data'); give the SplitSpec a testset or set 'test-data'"
        )
    return data.test


def _dataset(settings: RunSettings, input_shape: tuple[int, int, int] | None) -> DatasetSplits:
    data = load_dataset(settings.dataset, **_dataset_args(settings, input_shape))
    settings.check_data(len(data.train), data.num_classes)
    return data


def _dataset_args(settings: RunSettings, input_shape: tuple[int, int, int] | None) -> dict:
    return {
        "data_dir": settings.data_dir or None,
        "input_shape": input_shape,
        "train_subset": settings.train_subset or None,
        "seed": settings.training.seed,
    }
