"""Text data, the split causal transformer and its SplitSpec, shared by the ServerApp and the ClientApp."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from torch import nn

from fsl_sage_flwr import SplitSpec
from fsl_sage_flwr.core.losses import perplexity, token_cross_entropy
from fsl_sage_flwr.data.text import partition_books

VOCAB_SIZE = 256  # byte-level: every byte of the UTF-8 text is one token
CONTEXT = 32  # tokens per window
WIDTH = 64  # hidden size D of every block
HEADS = 4  # attention heads per block
DEPTH = 3  # blocks of the whole model
CLIENT_BLOCKS = 1  # blocks on the client; the cut is their (T, D) output
AUX_BLOCKS = 1  # blocks of the auxiliary model (FSL-SAGE's GPT-2 setting gives it one)
VALIDATION_FRACTION = 0.1  # the last tenth of every file is held out for the server

#: Source files of Python's standard library the text comes from (about 330 KB); every
#: node reads whole files, so each learns from a few modules only (non-IID by file).
SOURCES = (
    "difflib.py",
    "shutil.py",
    "statistics.py",
    "functools.py",
    "fractions.py",
    "contextlib.py",
    "calendar.py",
    "heapq.py",
    "textwrap.py",
    "csv.py",
    "shlex.py",
    "string.py",
)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions up to t only.

    Written out (``q @ k^T``, a causal mask, softmax) rather than with a fused kernel:
    FSL-SAGE aligns the auxiliary model on its input gradient, which takes the second
    derivative of this block, and fused attention kernels have no double backward.
    """

    def __init__(self, width: int = WIDTH, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        q, k, v = self.qkv(hidden).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        future = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        return self.out(mixed)


class Block(nn.Module):
    """A pre-norm transformer block: causal attention, then a two-layer MLP, each added back."""

    def __init__(self, width: int = WIDTH, heads: int = HEADS) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attention(self.attention_norm(hidden))
        return hidden + self.mlp(self.mlp_norm(hidden))


class Embedding(nn.Module):
    """Token ids ``(B, T)`` to hidden states ``(B, T, D)``: token plus position embeddings.

    Datasets hold inputs as float32; the ids are rounded back to integers (exact below 2^24).
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE, context: int = CONTEXT, width: int = WIDTH) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(context, width)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        ids = token_ids.round().long()
        return self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))


class LanguageHead(nn.Module):
    """Hidden states ``(B, T, D)`` to next-token logits ``(B, T, V)``: blocks, final norm, linear head."""

    def __init__(self, blocks: list[Block], width: int = WIDTH, vocab_size: int = VOCAB_SIZE) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(hidden)))


class TinyTransformer(nn.Module):
    """The whole decoder-only model: embeddings, ``depth`` causal blocks, final norm, LM head."""

    def __init__(self, depth: int = DEPTH) -> None:
        super().__init__()
        self.embedding = Embedding()
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB_SIZE)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(token_ids)
        for block in self.blocks:
            hidden = block(hidden)
        return self.head(self.norm(hidden))


def cut(model: TinyTransformer, client_blocks: int = CLIENT_BLOCKS) -> tuple[nn.Module, LanguageHead]:
    """The client part (embeddings, first ``client_blocks`` blocks) and the server part (the rest).

    The parts hold the model's own modules, so together they compute what it computes.
    """
    client = nn.Sequential(model.embedding, *model.blocks[:client_blocks])
    server = LanguageHead(list(model.blocks[client_blocks:]))
    server.norm, server.head = model.norm, model.head
    return client, server


def client_part() -> nn.Module:
    """A fresh client part: token ids ``(B, T)`` to the cut ``(B, T, D)``."""
    return cut(TinyTransformer())[0]


def server_part() -> LanguageHead:
    """A fresh server part: the cut to logits ``(B, T, V)``."""
    return cut(TinyTransformer())[1]


def aux_part() -> LanguageHead:
    """A fresh auxiliary model, smaller than the server's part: the cut to logits."""
    return LanguageHead([Block() for _ in range(AUX_BLOCKS)])


def source_texts() -> list[bytes]:
    """The bytes of :data:`SOURCES`, from the standard library of the Python running this.

    Raises
    ------
    FileNotFoundError
        If this Python ships its standard library without the ``.py`` sources.
    """
    folder = Path(sysconfig.get_paths()["stdlib"])
    missing = [name for name in SOURCES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"this Python's standard library ({folder}) lacks the sources {missing}")
    return [(folder / name).read_bytes() for name in SOURCES]


def windows(text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``CONTEXT`` bytes: float32 inputs ``(N, T)`` and int64 next bytes ``(N, T)``."""
    tokens = np.frombuffer(text, dtype=np.uint8)
    count = (len(tokens) - 1) // CONTEXT
    starts = np.arange(count)[:, None] * CONTEXT + np.arange(CONTEXT)[None, :]
    return tokens[starts].astype(np.float32), tokens[starts + 1].astype(np.int64)


def _train_and_validation(text: bytes) -> tuple[bytes, bytes]:
    held_out = int(len(text) * VALIDATION_FRACTION)
    return text[:-held_out], text[-held_out:]


def load_partition(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """This node's training windows: the first nine tenths of the whole files it is given.

    Files go, largest first, to the node holding the fewest bytes so far, by
    ``partition-id`` of ``num-partitions`` (at most ``len(SOURCES)`` nodes). With the
    run config's ``train-windows`` above 0, the node keeps a fixed random sample of
    that many windows.
    """
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    train = [_train_and_validation(text)[0] for text in source_texts()]
    files = partition_books([len(text) for text in train], num_partitions)[partition_id]
    parts = [windows(train[index]) for index in files]
    inputs, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    keep = int(context.run_config.get("train-windows", 0))
    if 0 < keep < len(inputs):  # a fixed sample of the node's windows, the same every round
        generator = np.random.default_rng([int(context.run_config["seed"]), partition_id])
        rows = np.sort(generator.choice(len(inputs), keep, replace=False))
        inputs, labels = inputs[rows], labels[rows]
    return inputs, labels


def load_testset(context: Context | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The held-out windows the server evaluates on: the last tenth of every file."""
    parts = [windows(_train_and_validation(text)[1]) for text in source_texts()]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def make_spec(testset: tuple[np.ndarray, np.ndarray] | None = None) -> SplitSpec:
    """The split transformer: next-byte cross-entropy at every position, perplexity reported."""
    return SplitSpec(
        client_model=client_part,
        server_model=server_part,
        aux_model=aux_part,
        cut_shape=(CONTEXT, WIDTH),
        num_classes=VOCAB_SIZE,
        input_shape=(CONTEXT,),  # one sample: the split checks itself with it
        testset=testset,
        loss=token_cross_entropy,
        label_shape=(CONTEXT,),
        label_dtype="int64",
        metric=perplexity,
    )
