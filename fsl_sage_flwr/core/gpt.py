"""A GPT-2 decoder-only transformer split after k blocks, built with Hugging Face transformers (extra ``lm``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fsl_sage_flwr.extras import import_extra

__all__ = [
    "ATTENTION",
    "GPTAux",
    "GPTClient",
    "GPTServer",
    "GPTSplitConfig",
    "build_gpt2",
    "gpt_split_parts",
    "load_gpt2",
]


@dataclass(frozen=True)
class GPTSplitConfig:
    """Sizes of a GPT-2 split: the whole network and where it is cut.

    FSL-SAGE (Nair et al., ICML 2025) cuts GPT-2 after its first block and gives
    the auxiliary model one block; the defaults follow that ratio at toy scale.

    Parameters
    ----------
    vocab_size : int
        Token ids lie in ``[0, vocab_size)`` (256 for bytes).
    context_length : int
        Longest sequence the position embedding covers.
    width : int
        Hidden size ``D`` of every block; a multiple of ``heads``.
    depth : int
        Number of transformer blocks of the whole network.
    heads : int
        Attention heads per block.
    client_blocks : int
        Blocks on the client, ``1 <= client_blocks < depth``; the cut is their output.
    aux_blocks : int
        Blocks of the auxiliary model, ``>= 0`` (0: final norm and head only).
    dropout : float
        Dropout on embeddings, attention and residual branches (GPT-2: 0.1).
    """

    vocab_size: int = 256
    context_length: int = 64
    width: int = 128
    depth: int = 4
    heads: int = 4
    client_blocks: int = 1
    aux_blocks: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "width", "depth", "heads", "client_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if not self.client_blocks < self.depth:
            raise ValueError(
                f"client_blocks must leave the server at least one block: 1 <= client_blocks < depth "
                f"({self.depth}), got {self.client_blocks}"
            )
        if isinstance(self.aux_blocks, bool) or not isinstance(self.aux_blocks, int) or self.aux_blocks < 0:
            raise ValueError(f"aux_blocks must be an int >= 0, got {self.aux_blocks!r}")
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def cut_shape(self) -> tuple[int, int]:
        """One sequence's cut activation: ``(context_length, width)`` hidden states."""
        return (self.context_length, self.width)

    def hf_config(self) -> Any:
        """The matching ``transformers.GPT2Config`` (no download)."""
        transformers = _transformers()
        return transformers.GPT2Config(
            vocab_size=self.vocab_size,
            n_positions=self.context_length,
            n_embd=self.width,
            n_layer=self.depth,
            n_head=self.heads,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            # GPT-2's special token 50256 does not exist in a small vocabulary.
            bos_token_id=self.vocab_size - 1,
            eos_token_id=self.vocab_size - 1,
            attn_implementation=ATTENTION,
        )

    @classmethod
    def from_hf_config(cls, hf_config: Any, *, client_blocks: int = 1, aux_blocks: int = 1) -> GPTSplitConfig:
        """The split of a ``GPT2Config`` (e.g. of a checkpoint) after ``client_blocks`` blocks."""
        return cls(
            vocab_size=int(hf_config.vocab_size),
            context_length=int(hf_config.n_positions),
            width=int(hf_config.n_embd),
            depth=int(hf_config.n_layer),
            heads=int(hf_config.n_head),
            client_blocks=client_blocks,
            aux_blocks=aux_blocks,
            dropout=float(hf_config.resid_pdrop),
        )


#: Attention written out in matmuls and softmax: FSL-SAGE's alignment differentiates the aux's
#: input gradient (second derivatives), which the fused attention kernels on CPU cannot.
ATTENTION = "eager"


def _transformers() -> Any:
    return import_extra("transformers", "lm", "the split model 'gpt'")


def build_gpt2(config: GPTSplitConfig) -> nn.Module:
    """A randomly initialised ``GPT2LMHeadModel`` of ``config``'s sizes (GPT-2's own initialisation).

    Raises
    ------
    MissingExtraError
        If transformers (extra ``lm``) is not installed.
    """
    return _transformers().GPT2LMHeadModel(config.hf_config())


def load_gpt2(local_dir: str | Path) -> nn.Module:
    """Load a GPT-2 checkpoint (``config.json`` and weights) from a local folder, never from the network.

    Parameters
    ----------
    local_dir : str or Path
        A folder written by ``save_pretrained``, e.g. a downloaded ``gpt2``.

    Returns
    -------
    nn.Module
        The ``GPT2LMHeadModel``, in training mode.

    Raises
    ------
    FileNotFoundError
        If ``local_dir`` is not a folder holding ``config.json``.
    ValueError
        If the checkpoint is not a GPT-2 model.
    MissingExtraError
        If transformers (extra ``lm``) is not installed.
    """
    folder = Path(local_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no GPT-2 checkpoint in {folder}: config.json is missing")
    transformers = _transformers()
    hf_config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    if hf_config.model_type != "gpt2":
        raise ValueError(f"the checkpoint in {folder} is a {hf_config.model_type!r} model, not 'gpt2'")
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, attn_implementation=ATTENTION)
    return model.train()


def _causal_mask(hidden: torch.Tensor) -> torch.Tensor:
    """Additive mask ``(1, 1, T, T)``: position ``t`` attends to positions ``<= t`` only."""
    length = hidden.shape[-2]
    blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
    mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device)
    return mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)[None, None]


def _run_blocks(blocks: nn.ModuleList, hidden: torch.Tensor) -> torch.Tensor:
    # Blocks called one by one get no mask from a GPT2Model, and eager attention is
    # causal only with one. Older transformers return a tuple.
    mask = _causal_mask(hidden)
    for block in blocks:
        out = block(hidden, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class GPTClient(nn.Module):
    """Token and position embeddings and the first blocks: token ids ``(B, T)`` to hidden states ``(B, T, D)``.

    Token ids may come as floats (datasets hold float32 inputs); they are rounded to int64.
    """

    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding, blocks: list[nn.Module], dropout: float) -> None:
        super().__init__()
        self.wte = wte
        self.wpe = wpe
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states after the client's blocks (the cut activation)."""
        ids = token_ids if token_ids.dtype == torch.long else token_ids.round().long()
        length = ids.shape[-1]
        if length > self.wpe.num_embeddings:
            raise ValueError(f"sequence of {length} tokens is longer than the context of {self.wpe.num_embeddings}")
        positions = torch.arange(length, device=ids.device)
        hidden = self.drop(self.wte(ids) + self.wpe(positions))
        return _run_blocks(self.blocks, hidden)


class GPTServer(nn.Module):
    """Blocks, final layer norm and language-model head: hidden states ``(B, T, D)`` to logits ``(B, T, V)``."""

    def __init__(self, blocks: list[nn.Module], ln_f: nn.LayerNorm, lm_head: nn.Linear) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = ln_f
        self.lm_head = lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position."""
        return self.lm_head(self.ln_f(_run_blocks(self.blocks, hidden)))


class GPTAux(GPTServer):
    """The auxiliary model: fewer blocks, then a final norm and head like the server's."""


def _untied_head(model: nn.Module) -> nn.Linear:
    # GPT-2 ties its head to the token embedding; split, they sit on different nodes
    # and train apart, so the head gets its own copy of the weights.
    head = copy.deepcopy(model.lm_head)
    head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    return head


def gpt_split_parts(model: nn.Module, client_blocks: int, aux_blocks: int) -> tuple[GPTClient, GPTServer, GPTAux]:
    """Cut a ``GPT2LMHeadModel`` after ``client_blocks`` blocks into client, server and aux.

    The parts hold copies of ``model``'s weights, so client then server computes
    what ``model`` computes. The aux starts as the server's first ``aux_blocks``
    blocks with the final norm and head: a short prefix of the server, as FSL-SAGE's
    auxiliary models are.

    Parameters
    ----------
    model : nn.Module
        A ``GPT2LMHeadModel`` (built by :func:`build_gpt2` or loaded by :func:`load_gpt2`).
    client_blocks : int
        Blocks on the client, ``1 <= client_blocks < number of blocks``.
    aux_blocks : int
        Blocks of the aux, ``0 <= aux_blocks <= number of server blocks``.

    Raises
    ------
    ValueError
        If the cut or the aux size does not fit the model.
    """
    body = model.transformer
    depth = len(body.h)
    if not 1 <= client_blocks < depth:
        raise ValueError(f"client_blocks must be in [1, {depth - 1}] for {depth} blocks, got {client_blocks}")
    if not 0 <= aux_blocks <= depth - client_blocks:
        raise ValueError(f"aux_blocks must be in [0, {depth - client_blocks}], got {aux_blocks}")
    blocks = [copy.deepcopy(block) for block in body.h]
    dropout = float(body.drop.p)
    client = GPTClient(copy.deepcopy(body.wte), copy.deepcopy(body.wpe), blocks[:client_blocks], dropout)
    server = GPTServer(blocks[client_blocks:], copy.deepcopy(body.ln_f), _untied_head(model))
    aux_source = blocks[client_blocks : client_blocks + aux_blocks]
    aux = GPTAux([copy.deepcopy(block) for block in aux_source], copy.deepcopy(body.ln_f), _untied_head(model))
    return client, server, aux
