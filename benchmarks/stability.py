"""Why FSL-SAGE's accuracy swings on non-IID data: the round loop with one factor changed at a time.

Runs FSL-SAGE as :mod:`benchmarks.floor` does (same core functions, partitions and
seeds, no Flower) and prints per round: test accuracy, the accuracy the same models
reach when the server's BatchNorm statistics are recomputed on the averaged client
model's activations of 2,000 training images (a diagnostic: the server never holds
that data), and, in alignment rounds, the mean cosine before and after alignment.
The summary gives the swing over the second half of the run: standard deviation, the
largest drop below the best so far, and the largest round-to-round drop.

Usage (from the repository folder)::

    python -m benchmarks.stability --server-order partition --out partition.json
    python -m benchmarks.stability --server-order mixed --out mixed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.floor import average_states
from fsl_sage_flwr.core.alignment import AlignmentReport, align_auxiliary
from fsl_sage_flwr.core.buffer import SmashedBuffer
from fsl_sage_flwr.core.estimation import client_step, preserved_buffers, server_step
from fsl_sage_flwr.core.models import build_split_model, required_input_shape
from fsl_sage_flwr.core.training import derive_seed, evaluate_classifier, make_adam, minibatches, run_local_epochs
from fsl_sage_flwr.data import load_dataset, partition_indices
from simulations.paths import SHARED_DATA


def main(argv: list[str] | None = None) -> None:
    """Run the loop and print one JSON line per round and a summary line."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args)
    summary = summarise(rows) | {"server_order": args.server_order, "align_interval": args.align_interval}
    print("SUMMARY", json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


def run(args: argparse.Namespace) -> list[dict]:
    """FSL-SAGE with ``args``' settings; one row per round."""
    data = load_dataset(
        "fashion-mnist",
        data_dir=args.data_dir or str(SHARED_DATA / "fashion-mnist"),
        input_shape=required_input_shape(args.model),
        train_subset=args.train_subset,
        seed=args.seed,
    )
    parts = partition_indices(
        data.train.labels, args.clients, partitioning="dirichlet", alpha=args.alpha, seed=args.seed
    )
    torch.manual_seed(derive_seed(args.seed, "server-init"))
    split = build_split_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape)
    client_model, server = split.client, split.server
    server_opt = make_adam(server, 1e-3, 1e-4)
    train_x, train_y = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)
    test_x, test_y = torch.from_numpy(data.test.images), torch.from_numpy(data.test.labels)
    shards = [(train_x[torch.from_numpy(p)], train_y[torch.from_numpy(p)]) for p in parts]
    auxes, aux_opts, buffers = [], [], []
    for pid in range(args.clients):
        torch.manual_seed(derive_seed(args.seed, pid, "aux-init"))
        aux = build_split_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape).aux
        auxes.append(aux)
        aux_opts.append(make_adam(aux, 1e-3, 1e-4))
        buffers.append(SmashedBuffer(1000))

    def align(pid: int, server_round: int) -> AlignmentReport:
        z, y = buffers[pid].tensors()
        generator = torch.Generator().manual_seed(derive_seed(args.seed, server_round, pid, "align"))
        return align_auxiliary(
            auxes[pid], aux_opts[pid], server, z, y, epochs=args.align_epochs, batch_size=1000, generator=generator
        )

    for pid, (x, y) in enumerate(shards):  # warm-up, as the strategy does it
        generator = torch.Generator().manual_seed(derive_seed(args.seed, 0, pid, "warmup"))
        xb, yb = next(minibatches(x, y, args.batch_size, generator))
        with torch.no_grad(), preserved_buffers(client_model):
            client_model.train()
            z = client_model(xb)
        server_step(server, server_opt, z, yb)
        buffers[pid].append(z, yb)
        align(pid, 0)
    rows = []
    for server_round in range(1, args.rounds + 1):
        started = time.perf_counter()
        states, weights, batches = [], [], []
        for pid, (x, y) in enumerate(shards):
            local = copy.deepcopy(client_model)
            optimizer = make_adam(local, 1e-3, 1e-4)
            torch.manual_seed(derive_seed(args.seed, server_round, pid, "client"))
            generator = torch.Generator().manual_seed(derive_seed(args.seed, server_round, pid, "batches"))
            kept, _ = run_local_epochs(
                lambda xb, yb, local=local, optimizer=optimizer, aux=auxes[pid]: client_step(
                    local, aux, optimizer, xb, yb
                ),
                x,
                y,
                epochs=1,
                batch_size=args.batch_size,
                generator=generator,
                upload_interval=5,
            )
            states.append(local.state_dict())
            weights.append(len(y))
            batches += [(pid, z, yb) for z, yb in kept]
        client_model.load_state_dict(average_states(states, weights))
        if args.server_order == "mixed":
            generator = torch.Generator().manual_seed(derive_seed(args.seed, server_round, "server-order"))
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        for pid, z, yb in batches:
            server_step(server, server_opt, z, yb)
            buffers[pid].append(z, yb)
        cosine = None
        if server_round % args.align_interval == 0 and server_round < args.rounds:
            reports = [align(pid, server_round) for pid in range(args.clients)]
            cosine = [
                float(np.mean([r.cosine_before for r in reports])),
                float(np.mean([r.cosine_after for r in reports])),
            ]
        loss, accuracy = evaluate_classifier(nn.Sequential(client_model, server), test_x, test_y)
        recalibrated = _accuracy_with_recomputed_statistics(client_model, server, train_x, test_x, test_y, server_round)
        rows.append(
            {
                "round": server_round,
                "accuracy": accuracy,
                "accuracy_recalibrated_bn": recalibrated,
                "loss": loss,
                "align_cosine": cosine,
                "seconds": time.perf_counter() - started,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Best and final accuracy, and the swing over the second half of the rounds."""
    figures = {}
    for key in ("accuracy", "accuracy_recalibrated_bn"):
        values = np.array([r[key] for r in rows])
        late = values[len(values) // 2 :]
        figures[key] = {
            "best": float(values.max()),
            "final": float(values[-1]),
            "late_mean": float(late.mean()),
            "late_std": float(late.std()),
            "late_largest_drop_below_best": float(np.max(np.maximum.accumulate(late) - late)),
            "largest_round_to_round_drop": float(-np.min(np.diff(values))),
        }
    return figures


def _accuracy_with_recomputed_statistics(
    client: nn.Module, server: nn.Module, train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, seed: int
) -> float:
    probe = copy.deepcopy(server)
    for module in probe.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    picked = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:2000]
    with torch.no_grad(), preserved_buffers(client):
        client.eval()
        probe.train()
        for start in range(0, len(picked), 250):
            probe(client(train_x[picked[start : start + 250]]))
    return evaluate_classifier(nn.Sequential(client, probe), test_x, test_y)[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server-order", choices=["partition", "mixed"], default="partition")
    p.add_argument("--model", default="cnn")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX folder")
    p.add_argument("--train-subset", type=int, default=12000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--align-interval", type=int, default=10)
    p.add_argument("--align-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="", help="write rows and summary as JSON here")
    return p


if __name__ == "__main__":
    main()
