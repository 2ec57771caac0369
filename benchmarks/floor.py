"""FSL-SAGE's round loop in one process, with no Flower and no Ray: the floor a simulation is measured against.

It calls the same core functions the Flower apps call (client step, server step,
buffer, alignment, evaluation) on the same data, partitions, models and seeds,
with the clients one after another. It imports neither Flower nor Flower
Datasets, so it also runs where only torch and numpy are installed: pass
``--partitions`` (a ``.npz`` written by ``--write-partitions`` on a machine that
has Flower Datasets) to use the simulation's exact partition there.

Usage::

    python -m benchmarks.floor --dataset fashion-mnist --data-dir ../shared/data/fashion-mnist \\
        --model resnet18 --clients 10 --rounds 10 --batch-size 256 --device auto
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from fsl_sage_flwr.core.alignment import align_auxiliary
from fsl_sage_flwr.core.buffer import SmashedBuffer
from fsl_sage_flwr.core.estimation import client_step, preserved_buffers, server_step
from fsl_sage_flwr.core.models import build_split_model, required_input_shape
from fsl_sage_flwr.core.training import derive_seed, evaluate_classifier, make_adam, minibatches, run_local_epochs
from fsl_sage_flwr.data import load_dataset


def main() -> None:
    """Parse arguments, run the loop, print one line per round and a summary."""
    args = build_parser().parse_args()
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}", flush=True)
    data = load_dataset(
        args.dataset,
        data_dir=args.data_dir or None,
        input_shape=required_input_shape(args.model),
        train_subset=args.train_subset or None,
        seed=args.seed,
    )
    parts = _partitions(args, data.train.labels)
    if args.write_partitions:
        np.savez(args.write_partitions, *parts)
        print(f"partitions written to {args.write_partitions}")
        return
    figures = run_floor(args, data, parts, device)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.out}")


def run_floor(
    args: argparse.Namespace, data, parts: list[np.ndarray], device: torch.device, models: dict | None = None
) -> dict:
    """Run warm-up and ``args.rounds`` FSL-SAGE rounds; return per-round figures.

    When ``models`` is given, the trained ``"client"`` (the global client model),
    ``"server"`` and ``"auxes"`` (one per partition) are put into it.
    """
    torch.manual_seed(derive_seed(args.seed, "server-init"))
    split = build_split_model(
        args.model, num_classes=data.num_classes, input_shape=data.input_shape, aux_variant=args.aux_variant
    )
    client_model, server = split.client.to(device), split.server.to(device)
    server_opt = make_adam(server, args.lr, args.weight_decay)
    train_x = torch.from_numpy(data.train.images).to(device)
    train_y = torch.from_numpy(data.train.labels).to(device)
    test_x, test_y = torch.from_numpy(data.test.images).to(device), torch.from_numpy(data.test.labels).to(device)
    shards = [(train_x[torch.from_numpy(p).to(device)], train_y[torch.from_numpy(p).to(device)]) for p in parts]
    auxes, aux_opts, buffers = [], [], []
    for pid in range(len(parts)):
        torch.manual_seed(derive_seed(args.seed, pid, "aux-init"))
        aux = build_split_model(
            args.model, num_classes=data.num_classes, input_shape=data.input_shape, aux_variant=args.aux_variant
        ).aux.to(device)
        auxes.append(aux)
        aux_opts.append(make_adam(aux, args.align_lr, args.weight_decay))
        buffers.append(SmashedBuffer(args.buffer_size))
    _sync(device)
    rows = []
    start = time.perf_counter()
    # Warm-up, as the strategy does it: per client in partition order, one batch of the
    # initial client model trains the server, fills the buffer and aligns that aux.
    align_seconds = 0.0
    for pid, (x, y) in enumerate(shards):
        gen = torch.Generator().manual_seed(derive_seed(args.seed, 0, pid, "warmup"))
        xb, yb = next(minibatches(x, y, args.batch_size, gen))
        with torch.no_grad(), preserved_buffers(client_model):
            client_model.train()
            z = client_model(xb)
        server_step(server, server_opt, z, yb)
        buffers[pid].append(z, yb)
        align_seconds += _align(args, server, auxes[pid], aux_opts[pid], buffers[pid], 0, pid, device)
    _sync(device)
    rows.append({"round": 0, "seconds": time.perf_counter() - start, "align_seconds": align_seconds, "accuracy": None})
    print(f"warm-up: {rows[0]['seconds']:.2f} s ({align_seconds:.2f} s alignment)", flush=True)
    for server_round in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        states, weights, uploads = [], [], []
        for pid, (x, y) in enumerate(shards):
            local = copy.deepcopy(client_model)
            optimizer = make_adam(local, args.lr, args.weight_decay)
            torch.manual_seed(derive_seed(args.seed, server_round, pid, "client"))
            gen = torch.Generator().manual_seed(derive_seed(args.seed, server_round, pid, "batches"))
            kept, _ = run_local_epochs(
                lambda xb, yb, local=local, optimizer=optimizer, aux=auxes[pid]: client_step(
                    local, aux, optimizer, xb, yb
                ),
                x,
                y,
                epochs=args.local_epochs,
                batch_size=args.batch_size,
                generator=gen,
                upload_interval=args.upload_interval,
            )
            states.append(local.state_dict())
            weights.append(len(y))
            uploads.append(kept)
        _sync(device)
        t_local = time.perf_counter()
        client_model.load_state_dict(average_states(states, weights))
        for pid, kept in enumerate(uploads):
            for z, yb in kept:
                server_step(server, server_opt, z, yb)
                buffers[pid].append(z, yb)
        _sync(device)
        t_server = time.perf_counter()
        align = 0.0
        if server_round % args.align_interval == 0 and server_round < args.rounds:
            align = _align_all(args, server, auxes, aux_opts, buffers, server_round, device)
        loss, accuracy = evaluate_classifier(torch.nn.Sequential(client_model, server), test_x, test_y)
        _sync(device)
        row = {
            "round": server_round,
            "seconds": time.perf_counter() - t0,
            "local_seconds": t_local - t0,
            "server_seconds": t_server - t_local,
            "align_seconds": align,
            "accuracy": accuracy,
            "loss": loss,
            "images_per_second": sum(weights) * args.local_epochs / (t_local - t0),
        }
        rows.append(row)
        print(
            f"round {server_round}: accuracy {accuracy:.4f}, {row['seconds']:.2f} s "
            f"(clients {row['local_seconds']:.2f}, server {row['server_seconds']:.2f}, alignment {align:.2f}), "
            f"{row['images_per_second']:.0f} images/s",
            flush=True,
        )
    if models is not None:
        models.update(client=client_model, server=server, auxes=auxes)
    ordinary = [r["seconds"] for r in rows[1:] if not r["align_seconds"]]
    summary = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "mean_ordinary_round_seconds": float(np.mean(ordinary)) if ordinary else None,
        "final_accuracy": rows[-1]["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in rows[1:]) if len(rows) > 1 else None,
        "rounds": rows,
    }
    if COMPARISONS:
        full = [c["full"] for c in COMPARISONS]
        early = [c["early"] for c in COMPARISONS]
        summary["alignment_comparison"] = {
            "alignments": len(full),
            "full_mean_cosine_after": float(np.mean([r["cosine_after"] for r in full])),
            "early_mean_cosine_after": float(np.mean([r["cosine_after"] for r in early])),
            "full_seconds": float(sum(r["seconds"] for r in full)),
            "early_seconds": float(sum(r["seconds"] for r in early)),
            "full_epochs": int(sum(r["epochs"] for r in full)),
            "early_epochs": int(sum(r["epochs"] for r in early)),
            "per_alignment": COMPARISONS,
        }
        print(
            json.dumps({k: v for k, v in summary["alignment_comparison"].items() if k != "per_alignment"}), flush=True
        )
    print(
        json.dumps({k: v for k, v in summary.items() if k not in ("rounds", "settings", "alignment_comparison")}),
        flush=True,
    )
    return summary


def _align_all(args, server, auxes, aux_opts, buffers, server_round: int, device: torch.device) -> float:
    return sum(
        _align(args, server, aux, opt, buffer, server_round, pid, device)
        for pid, (aux, opt, buffer) in enumerate(zip(auxes, aux_opts, buffers))
    )


def _align(args, server, aux, opt, buffer, server_round: int, pid: int, device: torch.device) -> float:
    if not len(buffer):
        return 0.0
    z, y = buffer.tensors()
    seed = derive_seed(args.seed, server_round, pid, "align")
    if args.compare_patience:
        # The early-stopping variant on copies, from the same start: only the figures are kept.
        twin = copy.deepcopy(aux)
        twin_opt = torch.optim.Adam(twin.parameters(), lr=args.align_lr, weight_decay=args.weight_decay)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        early = align_auxiliary(
            twin,
            twin_opt,
            server,
            z,
            y,
            epochs=args.align_epochs,
            batch_size=args.align_batch_size,
            generator=torch.Generator().manual_seed(seed),
            patience=args.compare_patience,
            min_improvement=args.min_improvement,
        )
        _sync(device)
        COMPARISONS.append({"round": server_round, "client": pid, "early": vars(early)})
    report = align_auxiliary(
        aux,
        opt,
        server,
        z,
        y,
        epochs=args.align_epochs,
        batch_size=args.align_batch_size,
        generator=torch.Generator().manual_seed(seed),
        patience=args.align_patience,
        min_improvement=args.min_improvement,
    )
    _sync(device)
    if args.compare_patience:
        COMPARISONS[-1]["full"] = vars(report)
        print(
            f"  client {pid}: cosine {report.cosine_before:.3f} -> {report.cosine_after:.3f} "
            f"in {report.epochs} epochs, {report.seconds:.2f} s; early stop: -> {early.cosine_after:.3f} "
            f"in {early.epochs} epochs, {early.seconds:.2f} s",
            flush=True,
        )
    else:
        print(
            f"  client {pid}: cosine {report.cosine_before:.3f} -> {report.cosine_after:.3f} "
            f"in {report.epochs} epochs, {report.seconds:.2f} s",
            flush=True,
        )
    return report.seconds


#: Per alignment: the paper's full alignment against early stopping (``--compare-patience``).
COMPARISONS: list[dict] = []


def average_states(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """FedAvg of state dicts weighted by ``weights``, with the apps' arithmetic; integer counters rounded.

    The apps average through Flower's ``aggregate_arrayrecords`` (see
    ``fsl_sage_flwr.strategies.averaging``): each array times its weight share,
    summed in order in the array's own precision. The same arithmetic here keeps
    the two loops equal to the last bit, so their accuracies can be compared exactly.
    """
    total = float(sum(weights))
    averaged = {}
    for name, first in states[0].items():
        mean = None
        for state, weight in zip(states, weights):
            term = state[name].detach().cpu().numpy() * (weight / total)
            mean = term if mean is None else mean + term
        if not first.is_floating_point():
            mean = np.rint(mean)
        averaged[name] = torch.from_numpy(np.asarray(mean).astype(first.cpu().numpy().dtype)).to(first.device)
    return averaged


def _partitions(args: argparse.Namespace, labels: np.ndarray) -> list[np.ndarray]:
    if args.partitions:
        with np.load(args.partitions) as stored:
            return [stored[f"arr_{i}"] for i in range(len(stored.files))]
    from fsl_sage_flwr.data import partition_indices  # needs Flower Datasets

    return partition_indices(labels, args.clients, partitioning=args.partitioning, alpha=args.alpha, seed=args.seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the floor loop."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="")
    p.add_argument("--train-subset", type=int, default=0)
    p.add_argument("--model", default="cnn")
    p.add_argument("--aux-variant", default="default")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--partitioning", default="dirichlet")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--partitions", default="", help=".npz of partition index arrays (arr_0, arr_1, ...)")
    p.add_argument("--write-partitions", default="", help="write the partitions to this .npz and stop")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--upload-interval", type=int, default=5)
    p.add_argument("--align-interval", type=int, default=10)
    p.add_argument("--buffer-size", type=int, default=1000)
    p.add_argument("--align-epochs", type=int, default=100)
    p.add_argument("--align-batch-size", type=int, default=1000)
    p.add_argument("--align-lr", type=float, default=1e-3)
    p.add_argument("--align-patience", type=int, default=0, help="early stop of each alignment (0: all epochs)")
    p.add_argument("--min-improvement", type=float, default=0.01)
    p.add_argument(
        "--compare-patience", type=int, default=0, help="also time early stopping with this patience, on copies"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="", help="write the figures as JSON here")
    return p


if __name__ == "__main__":
    main()
