"""Split models for FSL-SAGE: client part, server part and auxiliary head, built by name."""

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import nn

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

InputShape = tuple[int, int, int]


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

    ``server`` or ``aux`` is ``None`` where a build left it out (a client needs
    no server part).
    """

    client: nn.Module
    server: nn.Module | None
    aux: nn.Module | None
    cut_shape: tuple[int, ...]

    def to(self, device: torch.device) -> "SplitModel":
        """Move every part this split holds to ``device``; return the split."""
        for module in (self.client, self.server, self.aux):
            if module is not None:
                module.to(device)
        return self


class SplitArchitecture(ABC):
    """Recipe for one split network; subclass it and register it by name.

    Subclasses declare which auxiliary heads they offer and which inputs they take,
    and build each part afresh on every call so that two builds never share weights.
    """

    aux_variants: ClassVar[tuple[str, ...]]
    """Auxiliary heads on offer; must include ``"default"``."""

    required_input_shape: ClassVar[InputShape | None] = None
    """The one ``(C, H, W)`` the network takes, or None when it adapts to the data."""

    @classmethod
    def check_input_shape(cls, name: str, input_shape: InputShape) -> None:
        """Raise ValueError if the network cannot take ``input_shape``.

        Parameters
        ----------
        name : str
            Registry name, quoted in the error message.
        input_shape : tuple of int
            ``(C, H, W)`` of one input sample.
        """
        required = cls.required_input_shape
        if required is not None and tuple(input_shape) != required:
            raise ValueError(f"model {name!r} needs input shape {required}, got {tuple(input_shape)}")

    @abstractmethod
    def build_client(self, input_shape: InputShape) -> nn.Module:
        """Return a fresh client part for inputs of shape ``input_shape``."""

    @abstractmethod
    def build_server(self, num_classes: int) -> nn.Module:
        """Return a fresh server part ending in ``num_classes`` logits."""

    @abstractmethod
    def build_aux(self, variant: str, num_classes: int) -> nn.Module:
        """Return a fresh auxiliary head of kind ``variant`` (one of ``aux_variants``)."""


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


# --------------------------------------------------------------------------- ResNet-18


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or 1x1-projection shortcut (He et al.)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # Bias is dropped because each convolution feeds a BatchNorm that re-centres it.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _resnet_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [_BasicBlock(in_channels, out_channels, stride)]
    layers += [_BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _pooled_classifier(in_features: int, num_classes: int) -> list[tuple[str, nn.Module]]:
    return [
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(in_features, num_classes)),
    ]


@register_split_model("resnet18")
class ResNet18Split(SplitArchitecture):
    """ResNet-18 cut after ``layer2``, as in FSL-SAGE (Nair et al., ICML 2025).

    The reference keeps the ImageNet stem (7x7 stride-2 convolution and max pool)
    on CIFAR's 32x32 images, so the cut activation is 128x4x4 (8 KiB per sample).

    Sizes on 3x32x32 input with 10 classes (parameters / BatchNorm buffer elements):

    - client (stem + layer1 + layer2): 683,072 / 1,930
    - server (layer3 + layer4 + pool + fc): 10,498,570 / 7,690
    - aux ``linear`` (pool + fc): 1,290 / 0
    - aux ``half`` (layer3 with one block + pool + fc): 921,610 / 1,539
    - aux ``default`` (layer3 + pool + fc): 2,102,282 / 2,565
    - aux ``full`` (copy of the server architecture): as the server
    """

    aux_variants = ("linear", "half", "default", "full")
    required_input_shape = (3, 32, 32)

    def build_client(self, input_shape: InputShape) -> nn.Module:
        return nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False),
                bn1=nn.BatchNorm2d(64),
                relu=nn.ReLU(inplace=True),
                maxpool=nn.MaxPool2d(3, 2, 1),
                layer1=_resnet_stage(64, 64, blocks=2, stride=1),
                layer2=_resnet_stage(64, 128, blocks=2, stride=2),
            )
        )

    def build_server(self, num_classes: int) -> nn.Module:
        return nn.Sequential(
            OrderedDict(
                [
                    ("layer3", _resnet_stage(128, 256, blocks=2, stride=2)),
                    ("layer4", _resnet_stage(256, 512, blocks=2, stride=2)),
                    *_pooled_classifier(512, num_classes),
                ]
            )
        )

    def build_aux(self, variant: str, num_classes: int) -> nn.Module:
        if variant == "full":
            return self.build_server(num_classes)
        if variant == "linear":
            return nn.Sequential(OrderedDict(_pooled_classifier(128, num_classes)))
        blocks = {"half": 1, "default": 2}[variant]
        return nn.Sequential(
            OrderedDict(
                [
                    ("layer3", _resnet_stage(128, 256, blocks=blocks, stride=2)),
                    *_pooled_classifier(256, num_classes),
                ]
            )
        )


# --------------------------------------------------------------------------- small CNN


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


@register_split_model("cnn")
class SmallSplitCNN(SplitArchitecture):
    """Small split CNN for 1-channel images, in the proportions of FSL-SAGE's ResNet-18.

    Mirrors the paper's split (Nair et al., ICML 2025) at toy scale: a thin client
    (two conv blocks, each halving the image), a server about 366x larger, and aux
    heads that are cheap prefixes of the server. Takes any 1-channel ``(1, H, W)``
    input with ``H, W >= 4``; the cut is ``16 x H//4 x W//4``, and the server's
    ceil-mode pool keeps a 1x1 or 2x2 cut usable.

    Sizes with 10 classes, independent of H and W (parameters / BatchNorm buffer
    elements):

    - client: 2,544 / 66
    - server: 931,530 / 1,155
    - aux ``linear``: 170 / 0; ``half``: 10,058 / 129; ``default``: 84,810 / 386;
      ``full``: as the server

    Cut shape: 16x2x2 on 8x8 input (256 B per sample, fp32), 16x7x7 on 28x28
    (3,136 B per sample), against 3,736,296 B for client + server parameters.
    """

    aux_variants = ("linear", "half", "default", "full")

    @classmethod
    def check_input_shape(cls, name: str, input_shape: InputShape) -> None:
        channels, height, width = input_shape
        # Two 2x2 max pools on the client must leave at least one pixel.
        if channels != 1 or height < 4 or width < 4:
            raise ValueError(f"model {name!r} needs input shape (1, H, W) with H, W >= 4, got {tuple(input_shape)}")

    def build_client(self, input_shape: InputShape) -> nn.Module:
        return nn.Sequential(
            *_conv_bn_relu(input_shape[0], 16),
            nn.MaxPool2d(2),
            *_conv_bn_relu(16, 16),
            nn.MaxPool2d(2),
        )

    def build_server(self, num_classes: int) -> nn.Module:
        return nn.Sequential(
            *_conv_bn_relu(16, 64),
            *_conv_bn_relu(64, 128),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(128, 384),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(384, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def build_aux(self, variant: str, num_classes: int) -> nn.Module:
        if variant == "full":
            return self.build_server(num_classes)
        widths = {"linear": [16], "half": [16, 64], "default": [16, 64, 128]}[variant]
        convs = [m for c_in, c_out in zip(widths, widths[1:]) for m in _conv_bn_relu(c_in, c_out)]
        return nn.Sequential(
            *convs,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )
