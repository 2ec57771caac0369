"""Helpers for testing the apps without a SuperLink: run configs, reply messages, a Grid double, fake data."""

from __future__ import annotations

import gzip
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, Metadata, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies.fsl_sage import FSLSage
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.replies import TrainReply

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def app_config(output_dir: Path, **overrides: object) -> dict:
    """Return the app's default run config, writing to ``output_dir``, with ``overrides``.

    Parameters
    ----------
    output_dir : Path
        The ``output-dir`` of the run; the run is named ``run``.
    **overrides : object
        Run-config values; underscores in the names stand for dashes.
    """
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    config.update({"output-dir": str(output_dir), "run-name": "run"})
    config.update({key.replace("_", "-"): value for key, value in overrides.items()})
    return config


def fit_reply_content(reply: TrainReply) -> RecordDict:
    """Return the records a NumPyClient's ``fit`` result becomes on its way to the server."""
    arrays, num_examples, metrics = reply.to_fit_result()
    fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, metrics)
    return fitres_to_recorddict(fit_res, keep_input=False)


def reply_from(node_id: int, content: RecordDict, message_type: str = "train") -> Message:
    """Return a reply message as it arrives at the server from ``node_id``."""
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


class ScriptedGrid:
    """A Grid double: fixed node ids, replies produced by a function of each message.

    Parameters
    ----------
    node_ids : list[int]
        The ids ``get_node_ids`` reports.
    respond : Callable[[Message], Message]
        Builds the reply to each message sent.
    """

    def __init__(self, node_ids: list[int], respond: Callable[[Message], Message]) -> None:
        self.node_ids = node_ids
        self.respond = respond
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        """Return the fixed node ids."""
        return list(self.node_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Record ``messages`` and return one scripted reply to each."""
        messages = list(messages)
        self.sent.extend(messages)
        return [self.respond(m) for m in messages]


def write_fake_mnist(folder: Path, n_train: int = 20, n_test: int = 10) -> None:
    """Write tiny MNIST files (IDX format, random pixels, labels cycling 0-9) into a new ``folder``."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed if the name ends in .gz."""
    # IDX header: two zero bytes, type code 0x08 (uint8), rank, then big-endian dims.
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


# --------------------------------------------------------------------------- a two-node FSL-SAGE strategy


#: The two nodes of the strategy tests: node id -> partition id.
NODES = {101: 0, 202: 1}


def two_node_fsl_sage(
    align_interval: int = 2,
    server_order: str = "partition",
    allow_partial_federation: bool = False,
    **alignment_changes: object,
) -> tuple[FSLSage, object]:
    """An FSL-SAGE strategy on the 8x8 ``cnn`` split for the nodes of :data:`NODES`; return it and the split."""
    torch.manual_seed(0)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    strategy = FSLSage(
        shared_model=split.client,
        client_model=split.client,
        server_model=split.server,
        aux_factory=lambda: build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).aux,
        alignment=AlignmentSettings(interval=align_interval, epochs=3, batch_size=64, **alignment_changes),
        training=LocalTraining(batch_size=8, upload_interval=1),
        cut_shape=split.cut_shape,
        num_classes=10,
        min_train_nodes=1,
        min_available_nodes=2,
        server_order=server_order,
        allow_partial_federation=allow_partial_federation,
    )
    return strategy, split


def smashed_batches(partition: int, n: int = 8, batches: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded activations ``(z, y, batch sizes)`` of ``batches`` batches of ``n`` for the ``cnn`` cut."""
    rng = np.random.default_rng(partition)
    z = rng.normal(size=(n * batches, 16, 2, 2)).astype(np.float32)
    y = rng.integers(0, 10, size=n * batches).astype(np.int64)
    return z, y, np.full(batches, n, dtype=np.int64)


def train_reply_content(node_id: int, weights: ArrayRecord, num_examples: int) -> RecordDict:
    """The content of node ``node_id``'s train reply with these weights."""
    return fit_reply_content(two_node_reply(node_id, weights, num_examples))


def two_node_reply(node_id: int, weights: ArrayRecord | None, num_examples: int, **changes) -> TrainReply:
    """Node ``node_id``'s train reply as a named record; ``changes`` replace its fields."""
    shared = {k: v.numpy() for k, v in weights.to_torch_state_dict().items()} if weights is not None else None
    fields = {
        "partition_id": NODES[node_id],
        "num_examples": num_examples,
        "shared": shared,
        "smashed": smashed_batches(NODES[node_id]),
    }
    return TrainReply(**{**fields, **changes})


def warm_up_two_nodes(strategy: FSLSage, split) -> None:
    """Run the strategy's warm-up exchange with both nodes of :data:`NODES`."""

    def respond(msg):
        node = msg.metadata.dst_node_id
        z, y, _ = smashed_batches(NODES[node], n=8, batches=1)
        reply = TrainReply(partition_id=NODES[node], num_examples=100, smashed=(z, y, np.asarray([8], np.int64)))
        return reply_from(node, fit_reply_content(reply))

    strategy.warm_up(ScriptedGrid(list(NODES), respond), ArrayRecord(split.client.state_dict()))


def constant_weights(split, factor: float) -> ArrayRecord:
    """The client model's arrays, every float one filled with ``factor``."""
    return ArrayRecord(
        {k: (torch.ones_like(v) * factor if v.is_floating_point() else v) for k, v in split.client.state_dict().items()}
    )
