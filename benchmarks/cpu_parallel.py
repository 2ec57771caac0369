"""FSL-SAGE on CPU: the Flower simulation with 1 or 2 client actors against the no-Flower floor.

Runs the same work four ways and prints the ordinary (non-alignment) round's median
seconds for each, and the ratios the performance targets speak of:

- ``floor``: :mod:`benchmarks.floor`, one process, clients one after another, torch
  using ``--cores`` threads;
- ``1 actor x 1 thread``, ``1 actor x N threads`` and ``N actors x 1 thread``: the app
  through ``flwr run`` with Flower's Ray simulation (``client-resources-num-cpus`` sets
  how many ClientApps run at once, ``client-threads`` their torch threads).

Every variant uses the same data, partition, models, seed and settings, so the rounds
differ only in how the clients are run. Alignment rounds are left out of the medians:
the server aligns the same way in all of them.

Usage (from the repository folder, on an otherwise idle machine)::

    python -m benchmarks.cpu_parallel --model cnn
    python -m benchmarks.cpu_parallel --model resnet18 --train-subset 12000 --align-epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from simulations.flwr_run import run_app
from simulations.paths import PROJECT_DIR, shared_fashion_mnist


def main(argv: list[str] | None = None) -> int:
    """Run the floor and the simulation variants; print a table and the ratios."""
    args = _parser().parse_args(argv)
    data_dir = args.data_dir or shared_fashion_mnist()
    work = Path(tempfile.mkdtemp(prefix="cpu-parallel-"))
    medians: dict[str, float] = {"floor": _floor_median(args, data_dir, work)}
    print(f"floor ({args.cores} threads): {medians['floor']:.2f} s per ordinary round", flush=True)
    for actors, threads in [(1, 1), (1, args.cores), (args.cores, 1)]:
        label = f"{actors} actor(s) x {threads} thread(s)"
        medians[label] = _simulation_median(args, data_dir, work, actors, threads)
        print(f"{label}: {medians[label]:.2f} s per ordinary round", flush=True)
    one, many = medians["1 actor(s) x 1 thread(s)"], medians[f"{args.cores} actor(s) x 1 thread(s)"]
    figures = {
        "model": args.model,
        "train_subset": args.train_subset,
        "median_ordinary_round_seconds": medians,
        "speedup_2_actors_over_1": one / many,
        "speedup_2_actors_over_1_actor_all_threads": medians[f"1 actor(s) x {args.cores} thread(s)"] / many,
        "simulation_over_floor": many / medians["floor"],
    }
    print(json.dumps(figures, indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


def _floor_median(args: argparse.Namespace, data_dir: str, work: Path) -> float:
    out = work / "floor.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.floor",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data_dir,
        "--model",
        args.model,
        "--clients",
        str(args.clients),
        "--rounds",
        str(args.rounds),
        "--batch-size",
        str(args.batch_size),
        "--align-epochs",
        str(args.align_epochs),
        "--train-subset",
        str(args.train_subset),
        "--device",
        "cpu",
        "--threads",
        str(args.cores),
        "--out",
        str(out),
    ]
    subprocess.run(command, cwd=PROJECT_DIR, check=True, stdout=subprocess.DEVNULL)
    rows = json.loads(out.read_text())["rounds"][1:]
    return statistics.median(r["seconds"] for r in rows if not r["align_seconds"])


def _simulation_median(args: argparse.Namespace, data_dir: str, work: Path, actors: int, threads: int) -> float:
    config: dict[str, Any] = {
        "dataset": "fashion-mnist",
        "data-dir": data_dir,
        "model": args.model,
        "train-subset": args.train_subset,
        "num-server-rounds": args.rounds,
        "batch-size": args.batch_size,
        "align-interval": 10,
        "align-epochs": args.align_epochs,
        "min-available-nodes": args.clients,
        "client-threads": threads,
        "device": "cpu",
        "output-dir": str(work),
        "run-name": f"sim-{actors}x{threads}",
    }
    outcome = run_app(
        config, num_supernodes=args.clients, cpus_per_client=args.cores / actors, timeout=args.timeout, echo=False
    )
    rows = [r for r in outcome.rows if r["round"] >= 1 and not r.get("alignments")]
    return statistics.median(r["round_seconds"] for r in rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn", help="cnn or resnet18")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX folder (default: looked for)")
    p.add_argument("--train-subset", type=int, default=0, help="stratified training subsample (0: all 60,000)")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10, help="rounds after the warm-up")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--align-epochs", type=int, default=100)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed per simulation")
    p.add_argument("--out", default="", help="write the figures as JSON here")
    return p


if __name__ == "__main__":
    sys.exit(main())
