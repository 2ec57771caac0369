"""What an honest-but-curious server holds after a few FSL-SAGE rounds: the setting of the leak benchmarks.

The floor loop (:mod:`benchmarks.floor`) trains the split model for a few rounds.
Then one client (the victim) runs one more local epoch from the global client
model, as it would in the next round, and uploads activations ``z`` of a batch:
computed by its *local* model, in train mode, as in training. The server holds
the global client model (not the victim's local one), the uploads, the server
model and, for the learned attacks, a small public set: test images the
clients never trained on, disjoint from the victim's batch.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.floor import build_parser as floor_parser
from benchmarks.floor import run_floor
from fsl_sage_flwr.core.estimation import client_step, preserved_buffers
from fsl_sage_flwr.core.models import required_input_shape
from fsl_sage_flwr.core.training import derive_seed, make_adam, minibatches
from fsl_sage_flwr.data import load_dataset, partition_indices

VICTIM = 0


@dataclass
class LeakSetting:
    """What the attacks work with, and the truth they are scored against.

    Attributes
    ----------
    client : nn.Module
        The global client model the server holds.
    server : nn.Module
        The server-side model.
    uploads : torch.Tensor
        The victim's uploaded activations, one batch per row group of ``batch_size``.
    victim_x, victim_y : torch.Tensor
        The inputs and labels behind ``uploads`` (the truth; the server sees ``victim_y``).
    public_x, public_y : torch.Tensor
        The attacker's public set.
    train_x, train_y : torch.Tensor
        The clients' training data, for the fixed classifier that scores reconstructions.
    value_range : tuple[float, float]
        Smallest and largest input value of the (normalised) dataset.
    batch_size : int
        Samples per uploaded batch.
    """

    client: nn.Module
    server: nn.Module
    uploads: torch.Tensor
    victim_x: torch.Tensor
    victim_y: torch.Tensor
    public_x: torch.Tensor
    public_y: torch.Tensor
    train_x: torch.Tensor
    train_y: torch.Tensor
    value_range: tuple[float, float]
    batch_size: int


def build_setting(args: argparse.Namespace) -> LeakSetting:
    """Train for ``args.rounds`` rounds, take the victim's uploads; return what the attacks need."""
    torch.manual_seed(args.seed)
    data = load_dataset(
        args.dataset,
        data_dir=args.data_dir or None,
        input_shape=required_input_shape(args.model),
        train_subset=args.train_subset or None,
        seed=args.seed,
    )
    parts = partition_indices(data.train.labels, args.clients, partitioning="iid", alpha=1.0, seed=args.seed)
    floor_args = floor_parser().parse_args(
        [
            "--model",
            args.model,
            "--clients",
            str(args.clients),
            "--rounds",
            str(args.rounds),
            "--batch-size",
            str(args.batch_size),
            "--align-interval",
            str(max(args.rounds // 2, 1)),
            "--align-epochs",
            str(args.align_epochs),
            "--seed",
            str(args.seed),
        ]
    )
    models: dict = {}
    run_floor(floor_args, data, parts, torch.device("cpu"), models)
    train_x, train_y = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)
    victim_index = torch.from_numpy(parts[VICTIM])
    uploads, victim_x, victim_y = _victim_uploads(
        models["client"], models["auxes"][VICTIM], train_x[victim_index], train_y[victim_index], args
    )
    public = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(data.test.labels))[: args.public])
    return LeakSetting(
        client=models["client"],
        server=models["server"],
        uploads=uploads,
        victim_x=victim_x,
        victim_y=victim_y,
        public_x=torch.from_numpy(data.test.images)[public],
        public_y=torch.from_numpy(data.test.labels)[public],
        train_x=train_x,
        train_y=train_y,
        value_range=(float(data.train.images.min()), float(data.train.images.max())),
        batch_size=args.batch_size,
    )


def _victim_uploads(
    client: nn.Module, aux: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # One more local epoch from the global model, keeping the first ``args.victims``
    # samples' activations as uploaded (each batch's z from the model of that step).
    local = copy.deepcopy(client)
    optimizer = make_adam(local, 1e-3, 1e-4)
    generator = torch.Generator().manual_seed(derive_seed(args.seed, "victim"))
    zs, xs, ys = [], [], []
    for xb, yb in minibatches(x, y, args.batch_size, generator):
        zs.append(client_step(local, aux, optimizer, xb, yb).detach())
        xs.append(xb)
        ys.append(yb)
        if sum(len(b) for b in ys) >= args.victims:
            break
    return torch.cat(zs)[: args.victims], torch.cat(xs)[: args.victims], torch.cat(ys)[: args.victims]


def client_activations(client: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``client(x)`` in train mode batch by batch, as uploads are computed; BatchNorm statistics left as they were."""
    with torch.no_grad(), preserved_buffers(client):
        client.train()
        return torch.cat([client(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, seed: int) -> nn.Module:
    """A small CNN trained on clean ``(x, y)``: the fixed judge of reconstructions."""
    torch.manual_seed(seed)
    channels = x.shape[1]
    model = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 16, num_classes),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for xb, yb in minibatches(x, y, 128, generator):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return model.eval()


def add_setting_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of :func:`build_setting` (defaults: Fashion-MNIST, ``cnn``, a few minutes on one thread)."""
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="", help="default: the shared Fashion-MNIST folder")
    parser.add_argument("--train-subset", type=int, default=3000)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--align-epochs", type=int, default=1)
    parser.add_argument("--victims", type=int, default=64, help="uploaded samples attacked")
    parser.add_argument("--public", type=int, default=1000, help="public samples (from the test split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    return parser


def run_leak_benchmark(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict],
    report: Callable[[argparse.Namespace, dict], None],
) -> None:
    """A leak benchmark's command line: parse, set the torch threads, run, print with ``report``, write ``--out``."""
    args = resolve_data_dir(parser.parse_args())
    torch.set_num_threads(args.threads)
    figures = run(args)
    report(args, figures)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


def resolve_data_dir(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``--data-dir`` with the shared Fashion-MNIST folder when it is left empty for that dataset."""
    if args.dataset == "fashion-mnist" and not args.data_dir:
        from simulations.paths import shared_fashion_mnist

        args.data_dir = shared_fashion_mnist()
    return args
