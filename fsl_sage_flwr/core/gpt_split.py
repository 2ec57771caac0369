"""Fresh client, server and aux parts of a GPT-2 split, from a config or a local checkpoint, with optional LoRA."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fsl_sage_flwr.core.gpt import GPTAux, GPTClient, GPTServer, GPTSplitConfig, build_gpt2, gpt_split_parts, load_gpt2
from fsl_sage_flwr.core.gpt_lora import LoRASettings, add_lora

__all__ = ["GPTSplit"]


class GPTSplit:
    """Builds the three parts of a GPT-2 split afresh on every call (FSL-SAGE's second setting).

    Each call builds a whole GPT-2 and keeps its part, so two builds never share
    weights. Without a checkpoint the weights are GPT-2's random initialisation,
    drawn from torch's global RNG (seed it for reproducible builds); with one, every
    part starts from the checkpoint's weights, loaded once.

    Parameters
    ----------
    config : GPTSplitConfig, optional
        Sizes and cut. With ``checkpoint_dir`` only ``client_blocks`` and
        ``aux_blocks`` are used; the rest comes from the checkpoint.
    checkpoint_dir : str or Path, optional
        Local folder of a GPT-2 checkpoint (see :func:`~fsl_sage_flwr.core.gpt.load_gpt2`).
    lora : LoRASettings, optional
        Adapters on the client part; its other weights are then frozen constants
        (see :func:`~fsl_sage_flwr.core.gpt_lora.add_lora`), drawn from
        ``lora.base_seed`` when there is no checkpoint, so every node holds the same.
    """

    def __init__(
        self,
        config: GPTSplitConfig | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        lora: LoRASettings | None = None,
    ) -> None:
        config = config or GPTSplitConfig()
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.lora = lora
        self._checkpoint: nn.Module | None = None
        if self.checkpoint_dir is not None:
            self._checkpoint = load_gpt2(self.checkpoint_dir)
            config = GPTSplitConfig.from_hf_config(
                self._checkpoint.config, client_blocks=config.client_blocks, aux_blocks=config.aux_blocks
            )
        if config.aux_blocks > config.depth - config.client_blocks:
            raise ValueError(
                f"aux_blocks ({config.aux_blocks}) must not exceed the server's "
                f"{config.depth - config.client_blocks} blocks"
            )
        self.config = config

    @property
    def cut_shape(self) -> tuple[int, int]:
        """One sequence's cut activation, ``(context_length, width)``."""
        return self.config.cut_shape

    def build_client(self) -> GPTClient:
        """Embeddings and the first ``client_blocks`` blocks (with adapters when ``lora`` is set)."""
        if self.lora is None:
            return self._parts()[0]
        if self._checkpoint is not None:
            client = self._parts()[0]
        else:
            # The frozen base must be the same on every node, whatever their RNG state.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.lora.base_seed)
                client = self._parts()[0]
        return add_lora(client, self.lora)

    def build_server(self) -> GPTServer:
        """The remaining blocks, final norm and language-model head."""
        return self._parts()[1]

    def build_aux(self) -> GPTAux:
        """``aux_blocks`` blocks, final norm and head."""
        return self._parts()[2]

    def _parts(self) -> tuple[GPTClient, GPTServer, GPTAux]:
        model = self._checkpoint if self._checkpoint is not None else build_gpt2(self.config)
        return gpt_split_parts(model, self.config.client_blocks, self.config.aux_blocks)
