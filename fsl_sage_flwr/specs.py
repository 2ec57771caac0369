"""The built-in split models (``cnn``, ``resnet18``, ...) as SplitSpecs, like any user's own."""

from __future__ import annotations

import functools

import torch

from fsl_sage_flwr.core.models import SPLIT_MODELS, build_split_model
from fsl_sage_flwr.core.split_architecture import InputShape
from fsl_sage_flwr.plugin import DataLike, SplitSpec


def builtin_spec(
    model: str,
    *,
    num_classes: int,
    input_shape: InputShape,
    aux_variant: str = "default",
    testset: DataLike | None = None,
) -> SplitSpec:
    """Describe a registered split model as a :class:`SplitSpec`.

    ``spec.build()`` then creates the client, server and aux parts in the same
    order, with the same random draws, as
    :func:`~fsl_sage_flwr.core.models.build_split_model`, so a seeded run gives
    the same initial models either way.

    Parameters
    ----------
    model : str
        Registered architecture, e.g. ``"cnn"`` or ``"resnet18"``.
    num_classes : int
        Number of classes.
    input_shape : tuple of int
        ``(C, H, W)`` of one input sample.
    aux_variant : str, default "default"
        Auxiliary head size (see :func:`~fsl_sage_flwr.core.models.aux_variants`).
    testset : DataLike, optional
        Held-out data the server evaluates on.

    Returns
    -------
    SplitSpec
        The model's spec.

    Raises
    ------
    ValueError
        For an unknown model or aux variant, or an input shape the model cannot take.
    """
    # The probe checks the arguments and measures the cut shape without moving the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        probe = build_split_model(
            model, num_classes=num_classes, input_shape=input_shape, aux_variant=aux_variant, parts=("client",)
        )
    architecture = SPLIT_MODELS[model]()
    shape = tuple(input_shape)
    return SplitSpec(
        client_model=functools.partial(architecture.build_client, shape),
        server_model=functools.partial(architecture.build_server, num_classes),
        aux_model=functools.partial(architecture.build_aux, aux_variant, num_classes),
        cut_shape=probe.cut_shape,
        num_classes=num_classes,
        testset=testset,
    )
