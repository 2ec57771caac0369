"""Checks that a split and a node's data fit together before anything trains: shapes and labels."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from fsl_sage_flwr.core.losses import CROSS_ENTROPY, LabelSpec, Objective

#: The kinds of setup fault: a model part's shapes, the labels, the node's identity.
SETUP_KINDS = ("shapes", "labels", "identity")


class SetupError(ValueError):
    """A node's setup does not fit the run: its model shapes, its labels or its identity.

    Its text, ``setup error (<kind>): <detail>``, is the one line a client's
    error reply carries; the server reads the kind back from it (see
    ``fsl_sage_flwr.transport.drop_reasons``).

    Parameters
    ----------
    kind : str
        One of :data:`SETUP_KINDS`.
    detail : str
        What does not fit, with the shapes or values involved.
    """

    def __init__(self, kind: str, detail: str) -> None:
        if kind not in SETUP_KINDS:
            raise ValueError(f"SetupError kind must be one of {list(SETUP_KINDS)}, got {kind!r}")
        super().__init__(f"setup error ({kind}): {detail}")
        self.kind = kind
        self.detail = detail


def check_labels(labels: np.ndarray, num_classes: int | LabelSpec) -> None:
    """Raise SetupError unless the labels fit: one class in ``[0, num_classes)`` each, or the split's label spec."""
    labels = np.asarray(labels)
    if isinstance(num_classes, LabelSpec):
        problem = num_classes.problem(labels)
        if problem is None:
            return
        if num_classes.num_classes is None or not problem.startswith("labels outside"):
            raise SetupError("labels", problem)
        num_classes = num_classes.num_classes  # a class out of range is named as below
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if high >= num_classes or low < 0:
        found = high if high >= num_classes else low
        raise SetupError("labels", f"labels out of range: found {found}, num_classes {num_classes}")


def check_input_shape(sample_shape: Sequence[int], input_shape: Sequence[int], what: str = "inputs") -> None:
    """Raise SetupError unless one sample's shape is ``input_shape``; say so when an axis of size 1 is missing."""
    sample, expected = tuple(int(d) for d in sample_shape), tuple(int(d) for d in input_shape)
    if sample == expected:
        return
    missing = _missing_unit_axis(sample, expected)
    if missing is not None:
        axis = "channel axis" if missing == 0 and len(expected) == 3 else f"axis {missing} (of size 1)"
        raise SetupError(
            "shapes",
            f"{what} of shape {sample} per sample lack the {axis}: the split takes {expected}; "
            f"add it with numpy.expand_dims(x, {missing + 1})",
        )
    raise SetupError("shapes", f"{what} of shape {sample} per sample, the split takes {expected}")


def check_split_shapes(
    client: nn.Module,
    heads: Sequence[tuple[str, nn.Module]],
    input_shape: Sequence[int],
    cut_shape: Sequence[int],
    num_classes: int | None,
    objective: Objective | None = None,
) -> None:
    """Run a 2-sample batch through ``client``, then its output through each head; raise SetupError on a misfit.

    Under cross-entropy over classes each head must return ``(2, num_classes)``
    logits; under another loss, the loss of each head's output against two
    zero labels of the objective's shape must be a finite scalar.

    Parameters
    ----------
    client : nn.Module
        The client-side model.
    heads : Sequence[tuple[str, nn.Module]]
        The named models taking the cut-layer activations (``"server_model"``, ``"aux_model"``).
    input_shape, cut_shape : Sequence[int]
        One sample's input and cut-layer shapes, no batch axis.
    num_classes : int or None
        The number of logits every head returns per sample, under cross-entropy.
    objective : Objective, optional
        The split's loss and labels; ``None``: cross-entropy over ``num_classes``.
    """
    z = check_client_output(client, torch.zeros((2, *input_shape)), cut_shape)
    for name, head in heads:
        with _evaluating(head), torch.no_grad():
            logits = _run_part(name, head, z.to(_device_of(head)), f"the client_model's output {tuple(z.shape)}")
        if objective is not None and not _class_logits(objective):
            _check_loss_takes(name, logits, objective)
        elif tuple(logits.shape) != (z.shape[0], num_classes):
            raise SetupError(
                "shapes", f"{name} outputs {tuple(logits.shape[1:])} per sample, expected ({num_classes},)"
            )


def _class_logits(objective: Objective) -> bool:
    """Whether the heads return class logits: cross-entropy against one int64 class per sample."""
    labels = objective.labels
    return objective.loss is CROSS_ENTROPY and labels.shape == () and labels.dtype == "int64"


def _check_loss_takes(name: str, outputs: torch.Tensor, objective: Objective) -> None:
    """Raise SetupError unless the objective's loss of ``outputs`` against zero labels is a finite scalar."""
    labels = torch.zeros((outputs.shape[0], *objective.labels.shape), dtype=getattr(torch, objective.labels.dtype))
    where = f"{name} outputs {tuple(outputs.shape[1:])} per sample, labels are {objective.labels.shape}"
    try:
        with warnings.catch_warnings():
            # torch warns, and goes on, when a loss broadcasts outputs and labels of other shapes.
            warnings.simplefilter("error", UserWarning)
            value = objective.loss(outputs, labels.to(outputs.device))
    except (RuntimeError, ValueError, IndexError, UserWarning) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SetupError("shapes", f"the loss cannot take them ({where}): {first_line}") from err
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not torch.isfinite(value):
        raise SetupError("shapes", f"the loss must return a finite scalar tensor ({where}), got {value!r}")


def check_client_output(client: nn.Module, inputs: torch.Tensor, cut_shape: Sequence[int]) -> torch.Tensor:
    """Run ``inputs[:2]`` through ``client`` in eval mode; return its output or raise SetupError.

    The modules' train/eval modes are restored; nothing else changes (no_grad,
    eval-mode BatchNorm keeps its running statistics).
    """
    x = torch.as_tensor(inputs[:2], dtype=torch.float32).to(_device_of(client))
    with _evaluating(client), torch.no_grad():
        try:
            z = _run_part("client_model", client, x, f"inputs of shape {tuple(x.shape[1:])}")
        except SetupError as err:
            raise SetupError("shapes", err.detail + _channel_hint(client, x)) from err.__cause__
    if tuple(z.shape[1:]) != tuple(cut_shape):
        raise SetupError(
            "shapes", f"client_model outputs {tuple(z.shape[1:])} per sample, cut_shape says {tuple(cut_shape)}"
        )
    return z


def _run_part(name: str, module: nn.Module, x: torch.Tensor, source: str) -> torch.Tensor:
    """``module(x)``, with torch's shape error turned into one line naming the part and the shapes."""
    try:
        return module(x)
    except RuntimeError as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SetupError("shapes", f"{name} cannot take {source}: {first_line}") from err


def _channel_hint(client: nn.Module, x: torch.Tensor) -> str:
    """A hint when the client takes the inputs once a channel axis is added (they lack one)."""
    try:
        client(x.unsqueeze(1))
    except RuntimeError:
        return ""
    return f" (it takes {(1, *x.shape[1:])}: do the inputs lack their channel axis?)"


def _missing_unit_axis(sample: tuple[int, ...], expected: tuple[int, ...]) -> int | None:
    """The axis of size 1 of ``expected`` whose removal gives ``sample``, if any."""
    if len(sample) + 1 != len(expected):
        return None
    for axis, size in enumerate(expected):
        if size == 1 and expected[:axis] + expected[axis + 1 :] == sample:
            return axis
    return None


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for a check, then give every submodule its mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
