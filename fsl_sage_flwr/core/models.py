"""Split models for FSL-SAGE: client part, server part and auxiliary head, built by name."""

from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from fsl_sage_flwr.core.losses import CROSS_ENTROPY, LabelSpec, Objective, SplitLoss
from fsl_sage_flwr.core.resnet18 import ResNet18Split
from fsl_sage_flwr.core.small_cnn import SmallSplitCNN
from fsl_sage_flwr.core.split_architecture import InputShape, SplitArchitecture

__all__ = [
    "SPLIT_MODELS",
    "ResNet18Split",
    "SmallSplitCNN",
    "SplitArchitecture",
    "SplitModel",
    "aux_variants",
    "build_full_model",
    "build_split_model",
    "register_split_model",
    "required_input_shape",
]


@dataclass
class SplitModel:
    """The three trainable parts of one split network.

    Attributes
    ----------
    client : nn.Module
        First layers ``h(.; x_c)``: images ``(N, C, H, W)`` to cut activations ``z``.
    server : nn.Module
        Remaining layers ``s(.; x_s)``: ``z`` to class logits ``(N, num_classes)``.
    aux : nn.Module
        Auxiliary head ``a(.; x_a)``: ``z`` to class logits; FSL-SAGE (Nair et al.,
        ICML 2025) uses its input gradient as the estimate of the server's cut-layer
        gradient.
    cut_shape : tuple of int
        Shape of one sample's ``z`` (no batch dimension), e.g. ``(128, 4, 4)``.
    objective : Objective, optional
        The loss, labels and metric the parts train on; ``None``: cross-entropy
        over classes, one integer label per sample.

    ``server`` or ``aux`` is ``None`` where a build left it out (a client needs
    no server part).
    """

    client: nn.Module
    server: nn.Module | None
    aux: nn.Module | None
    cut_shape: tuple[int, ...]
    objective: Objective | None = None

    @property
    def loss(self) -> SplitLoss:
        """The loss of the heads' outputs (the objective's, else cross-entropy)."""
        return self.objective.loss if self.objective is not None else CROSS_ENTROPY

    @property
    def labels(self) -> LabelSpec | None:
        """One sample's label as the objective declares it; ``None``: one int64 class."""
        return self.objective.labels if self.objective is not None else None

    def to(self, device: torch.device) -> "SplitModel":
        """Move every part this split holds to ``device``; return the split."""
        for module in (self.client, self.server, self.aux):
            if module is not None:
                module.to(device)
        return self


SPLIT_MODELS: dict[str, type[SplitArchitecture]] = {}
"""Registry of split architectures by name, filled by :func:`register_split_model`."""

_Arch = TypeVar("_Arch", bound=type[SplitArchitecture])


def register_split_model(name: str) -> Callable[[_Arch], _Arch]:
    """Class decorator that adds a :class:`SplitArchitecture` to ``SPLIT_MODELS``.

    Parameters
    ----------
    name : str
        Name under which :func:`build_split_model` finds the architecture.

    Returns
    -------
    callable
        The decorator; it returns the class unchanged.

    Raises
    ------
    ValueError
        If ``name`` is taken or the class offers no ``"default"`` aux head.
    TypeError
        If the decorated class is not a :class:`SplitArchitecture`.
    """

    def decorator(cls: _Arch) -> _Arch:
        if not (isinstance(cls, type) and issubclass(cls, SplitArchitecture)):
            raise TypeError(f"{cls!r} is not a SplitArchitecture subclass")
        if name in SPLIT_MODELS:
            raise ValueError(f"split model {name!r} is already registered")
        if "default" not in getattr(cls, "aux_variants", ()):
            raise ValueError(f"split model {name!r} must offer a 'default' aux variant")
        SPLIT_MODELS[name] = cls
        return cls

    return decorator


def _lookup(name: str) -> type[SplitArchitecture]:
    try:
        return SPLIT_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown split model {name!r}; choose one of {sorted(SPLIT_MODELS)}") from None


def required_input_shape(name: str) -> InputShape | None:
    """Input shape ``(C, H, W)`` that model ``name`` requires, or None if it adapts.

    Raises
    ------
    ValueError
        If ``name`` is not registered.
    """
    return _lookup(name).required_input_shape


def aux_variants(name: str) -> tuple[str, ...]:
    """Auxiliary head variants that model ``name`` offers.

    Raises
    ------
    ValueError
        If ``name`` is not registered.
    """
    return _lookup(name).aux_variants


def build_split_model(
    name: str,
    *,
    num_classes: int,
    input_shape: InputShape,
    aux_variant: str = "default",
    parts: Collection[str] = ("client", "server", "aux"),
) -> SplitModel:
    """Build the client part, server part and auxiliary head of a split network.

    Parts are created in the order client, server, aux with PyTorch's default
    initialisation, so seeding ``torch.manual_seed`` beforehand makes the build
    reproducible.

    Parameters
    ----------
    name : str
        Registered architecture, e.g. ``"resnet18"`` or ``"cnn"``.
    num_classes : int
        Number of output logits of the server part and the aux head.
    input_shape : tuple of int
        ``(C, H, W)`` of one input sample.
    aux_variant : str, default "default"
        Auxiliary head size; see :func:`aux_variants`.
    parts : collection of str
        Which of ``"server"`` and ``"aux"`` to build besides the client part; the
        others are ``None`` (a client has no use for the server part).

    Returns
    -------
    SplitModel
        The three parts, all in training mode, and the measured cut shape.

    Raises
    ------
    ValueError
        For an unknown name or aux variant, an input shape the network cannot
        take, or a non-positive ``num_classes``.
    """
    arch_cls = _lookup(name)
    if aux_variant not in arch_cls.aux_variants:
        raise ValueError(
            f"unknown aux variant {aux_variant!r} for model {name!r}; choose one of {list(arch_cls.aux_variants)}"
        )
    input_shape = _as_input_shape(input_shape)
    arch_cls.check_input_shape(name, input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")

    arch = arch_cls()
    client = arch.build_client(input_shape)
    server = arch.build_server(num_classes) if "server" in parts else None
    aux = arch.build_aux(aux_variant, num_classes) if "aux" in parts else None
    return SplitModel(client, server, aux, _measure_cut_shape(client, input_shape))


def build_full_model(split: SplitModel) -> nn.Module:
    """Compose client and server into one network, as FedAvg trains it.

    The returned module holds the very same client and server objects, so training
    it trains ``split``'s parts too.

    Parameters
    ----------
    split : SplitModel
        Parts to compose; its aux head is left out.

    Returns
    -------
    nn.Module
        ``nn.Sequential(split.client, split.server)``.
    """
    return nn.Sequential(OrderedDict(client=split.client, server=split.server))


def _as_input_shape(input_shape: InputShape) -> InputShape:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {shape}")
    return shape  # type: ignore[return-value]


def _measure_cut_shape(client: nn.Module, input_shape: InputShape) -> tuple[int, ...]:
    # Eval mode and no_grad so the probe neither moves BatchNorm running statistics
    # nor draws random numbers: a seeded build stays reproducible.
    was_training = client.training
    client.eval()
    try:
        with torch.no_grad():
            z = client(torch.zeros(1, *input_shape))
    finally:
        client.train(was_training)
    return tuple(z.shape[1:])


# The built-in architectures are registered here rather than by a decorator in
# their own modules: they then need only the base class, never this module, so
# importing the registry always fills it and no import runs in a cycle.
register_split_model("resnet18")(ResNet18Split)
register_split_model("cnn")(SmallSplitCNN)
