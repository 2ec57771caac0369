"""The recipe every split network follows: the base class the split-model registry takes."""

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import nn

InputShape = tuple[int, int, int]


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
