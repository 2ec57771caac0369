"""LoRA adapters (peft, extra ``lm``) on a GPT-2 client part, with only the adapters as the part's state."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from fsl_sage_flwr.extras import import_extra

__all__ = ["LORA_TARGETS", "LoRASettings", "add_lora", "hold_frozen_as_constants"]

#: GPT-2's projections that can carry adapters: attention in, attention out, MLP in, MLP out.
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class LoRASettings:
    """Low-rank adapters (Hu et al., 2022) on the client's GPT-2 projections.

    Parameters
    ----------
    rank : int
        Rank ``r`` of each adapter ``B A``.
    alpha : float
        Scale numerator: the adapter's output is multiplied by ``alpha / rank``.
    dropout : float
        Dropout on the adapter's input.
    targets : tuple of str
        Projections that get adapters, from :data:`LORA_TARGETS`.
    base_seed : int
        Seed of the frozen random weights when no checkpoint is given: every node
        must hold the same ones, and they never travel.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("c_attn",)
    base_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive int, got {self.rank!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if not self.targets or unknown:
            raise ValueError(f"LoRA targets must be some of {LORA_TARGETS}, got {self.targets}")


def add_lora(module: nn.Module, settings: LoRASettings) -> nn.Module:
    """Put adapters on ``module``'s target projections and freeze everything else.

    The frozen weights become non-persistent buffers (:func:`hold_frozen_as_constants`):
    the module's ``state_dict`` then holds the adapters only, so the client-model
    average, the uploads and the checkpoints carry adapters and nothing else. Every
    node must therefore build the same frozen weights (a checkpoint, or
    ``settings.base_seed``).

    Parameters
    ----------
    module : nn.Module
        A client part holding GPT-2 blocks; changed in place.
    settings : LoRASettings
        Rank, scale and targets.

    Returns
    -------
    nn.Module
        ``module``, with adapters.

    Raises
    ------
    ValueError
        If ``module`` has none of the target projections.
    MissingExtraError
        If peft (extra ``lm``) is not installed.
    """
    peft = import_extra("peft", "lm", "LoRA adapters")
    present = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    if not present.intersection(settings.targets):
        raise ValueError(f"the module has none of the LoRA targets {settings.targets}")
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        # GPT-2's projections are Conv1D layers, which store their weight transposed.
        fan_in_fan_out=True,
    )
    module = peft.inject_adapter_in_model(config, module)
    for name, parameter in module.named_parameters():
        parameter.requires_grad_("lora_" in name)
    hold_frozen_as_constants(module)
    return module


def hold_frozen_as_constants(module: nn.Module) -> None:
    """Turn every parameter that does not require grad into a non-persistent buffer, in place.

    The forward pass is unchanged (a buffer is read like the parameter was); the
    weights leave ``parameters()`` and ``state_dict()``, so optimizers skip them and
    they are neither sent, averaged nor saved.
    """
    for owner in module.modules():
        frozen = [name for name, p in owner.named_parameters(recurse=False) if not p.requires_grad]
        for name in frozen:
            value = getattr(owner, name).detach()
            delattr(owner, name)
            owner.register_buffer(name, value, persistent=False)
