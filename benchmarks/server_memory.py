"""Peak memory of the FSL-SAGE server for 100 and for 1,000 clients.

Drives the real strategy (warm-up, server training on uploads, buffering,
alignment, the disk-backed per-client store) for ``--rounds`` rounds of CNN on
Fashion-MNIST, sampling 10% of the clients each round. Clients are not run:
each sampled client's reply is built as the ClientApp builds it (the global
client model back, and the cut-layer activations of every q-th batch of its own
IID share of the data, computed with the current client model), in Flower's
fit-record layout, so the server parses, checks and trains on it as it would a
real reply. Each client count runs in a fresh process, which reports its peak
resident set size (``VmHWM`` in ``/proc/self/status``).

The peak has two parts: what the server keeps (bounded by the cache of client
states, whatever the number of clients) and the working set of one alignment,
which grows with the samples in the aligned client's buffer. With the paper's
1,000-sample buffer, the 100-client run's clients (600 samples each) fill far
larger buffers than the 1,000-client run's (60 each), so that comparison mixes
the client count with the per-client work. The check therefore caps every buffer
at ``--buffer-size`` samples (default 64, which clients of both runs fill), so
the two runs differ in the number of clients only; pass ``--buffer-size 1000``
for the paper's buffer.

Usage (from the repository folder)::

    python -m benchmarks.server_memory                 # both client counts, then the ratio
    python -m benchmarks.server_memory --clients 1000  # one count, in this process

The IDX files are looked for in ``$FASHION_MNIST_DIR``, ``../shared/data/fashion-mnist``
and ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fsl_sage_flwr.app.algorithms import get_algorithm
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.run_split import server_split
from fsl_sage_flwr.data import dataset_folders, describe_search, find_idx_folder, load_partition
from fsl_sage_flwr.transport.keys import WARMUP_KEY
from fsl_sage_flwr.transport.metrics import TrainMetricsTap
from fsl_sage_flwr.transport.replies import TrainReply
from fsl_sage_flwr.transport.uploads import pack_uploads
from simulations.flower_internals import set_task_identity
from simulations.paths import PROJECT_DIR, SHARED_DATA
from simulations.testing import fit_reply_content, reply_from


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _data_dir() -> str:
    roots = [Path(d) for d in os.environ.get("FASHION_MNIST_DIR", "").split(os.pathsep) if d] + [SHARED_DATA]
    folder = next((f for root in roots if (f := find_idx_folder("fashion-mnist", root)) is not None), None)
    if folder is None:
        searched = [f for root in roots for f in dataset_folders("fashion-mnist", root)]
        raise SystemExit(f"Fashion-MNIST not found in {describe_search(list(dict.fromkeys(searched)), SHARED_DATA)}")
    return str(folder)


def _settings(num_clients: int, rounds: int, align_epochs: int, max_cached: int, buffer_size: int) -> RunSettings:
    config = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config.update(
        {
            "dataset": "fashion-mnist",
            "data-dir": _data_dir(),
            "model": "cnn",
            "partitioning": "iid",
            "num-server-rounds": rounds,
            "fraction-train": 0.1,
            "min-available-nodes": num_clients,
            "align-epochs": align_epochs,
            "max-cached-clients": max_cached,
            "buffer-size": buffer_size,
        }
    )
    return RunSettings.from_run_config(config)


class _Clients:
    """Replies of simulated clients, built from their data with the current client model."""

    def __init__(self, settings: RunSettings, num_clients: int) -> None:
        self.settings = settings
        self.num_clients = num_clients
        self.node_ids = [1000 + i for i in range(num_clients)]
        self.model = server_split(settings).spec.build().client

    def partition(self, node_id: int):
        s = self.settings
        return load_partition(
            s.dataset,
            node_id - 1000,
            self.num_clients,
            partitioning=s.partitioning,
            alpha=s.alpha,
            seed=s.training.seed,
            data_dir=s.data_dir,
        )

    def reply(self, node_id: int, arrays: ArrayRecord, warmup: bool) -> RecordDict:
        data = self.partition(node_id)
        x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels)
        state = arrays.to_torch_state_dict()
        self.model.load_state_dict(state)
        b, q = self.settings.training.batch_size, self.settings.training.upload_interval
        steps = [0] if warmup else range(0, math.ceil(len(y) / b), q)
        uploads = []
        with torch.no_grad():
            self.model.eval()
            for step in steps:
                xb, yb = x[step * b : (step + 1) * b], y[step * b : (step + 1) * b]
                if len(yb) >= 2:
                    uploads.append((self.model(xb), yb))
        smashed = pack_uploads(uploads, tuple(uploads[0][0].shape[1:]))
        shared = None if warmup else {k: v.numpy().copy() for k, v in self.model.state_dict().items()}
        reply = TrainReply(partition_id=node_id - 1000, num_examples=len(y), shared=shared, smashed=smashed)
        return fit_reply_content(reply)


class _Grid:
    """Answers the warm-up requests the strategy sends itself."""

    def __init__(self, clients: _Clients, arrays: ArrayRecord) -> None:
        self.clients = clients
        self.arrays = arrays

    def get_node_ids(self) -> list[int]:
        return list(self.clients.node_ids)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            config = next(iter(message.content.config_records.values()))
            assert config.get(WARMUP_KEY), "only warm-up requests go through the grid"
            replies.append(reply_from(node_id, self.clients.reply(node_id, self.arrays, True)))
        return replies


def run(num_clients: int, rounds: int, align_epochs: int, max_cached: int, buffer_size: int) -> dict:
    """Run the server for ``rounds`` rounds with ``num_clients`` clients; return the figures."""
    set_task_identity(run_id=1)
    torch.set_num_threads(1)
    settings = _settings(num_clients, rounds, align_epochs, max_cached, buffer_size)
    torch.manual_seed(0)
    run_split = server_split(settings)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="server-state-") as state_dir:
        setup = get_algorithm("fsl-sage").build_server(
            settings, run_split, TrainMetricsTap(), state_dir=Path(state_dir)
        )
        strategy, arrays = setup.strategy, setup.initial_arrays
        strategy.prepare_run(rounds)
        clients = _Clients(settings, num_clients)
        grid = _Grid(clients, arrays)
        for server_round in range(1, rounds + 1):
            grid.arrays = arrays
            requests = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
            replies = [
                reply_from(m.metadata.dst_node_id, clients.reply(m.metadata.dst_node_id, arrays, False))
                for m in requests
            ]
            new_arrays, _ = strategy.aggregate_train(server_round, replies)
            arrays = new_arrays if new_arrays is not None else arrays
            del requests, replies
        accuracy = float(setup.evaluate(rounds, arrays)["accuracy"])
        disk = sum(f.stat().st_size for f in Path(state_dir).glob("*.pt"))
        kept = setup.server_memory_bytes()
    return {
        "clients": num_clients,
        "rounds": rounds,
        "max_cached_clients": max_cached,
        "buffer_size": buffer_size,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "server_state_mib": kept / 2**20,
        "client_state_on_disk_mib": disk / 2**20,
        "final_accuracy": accuracy,
        "seconds": time.monotonic() - start,
    }


def main(argv: list[str] | None = None) -> int:
    """Run one client count here, or each in a fresh process and compare their peaks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, help="one client count, in this process")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--align-epochs", type=int, default=5)
    parser.add_argument("--max-cached-clients", type=int, default=64)
    parser.add_argument("--buffer-size", type=int, default=64, help="per-client buffer cap (paper: 1000)")
    args = parser.parse_args(argv)
    if args.clients is not None:
        figures = run(args.clients, args.rounds, args.align_epochs, args.max_cached_clients, args.buffer_size)
        print(json.dumps(figures), flush=True)
        return 0
    figures = []
    for clients in (100, 1000):
        command = [
            sys.executable,
            "-m",
            "benchmarks.server_memory",
            "--clients",
            str(clients),
            "--rounds",
            str(args.rounds),
            "--align-epochs",
            str(args.align_epochs),
            "--max-cached-clients",
            str(args.max_cached_clients),
            "--buffer-size",
            str(args.buffer_size),
        ]
        out = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
        figures.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(figures[-1]), flush=True)
    small, large = (f["peak_rss_mib"] for f in figures)
    ratio = large / small
    print(f"peak RSS: {small:.0f} MiB for 100 clients, {large:.0f} MiB for 1,000 clients (ratio {ratio:.3f})")
    return 0 if ratio <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
