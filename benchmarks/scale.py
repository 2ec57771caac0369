"""FSL-SAGE federations of growing size through ``flwr run``: round times with a fixed number sampled.

For each federation size the app runs through Flower's simulation (``flwr run``) with
the same data per node (``--samples-per-node`` Fashion-MNIST images, the ``cnn``
split), ``fraction-train`` set so that ``--sampled`` nodes train per round, and the
default settings otherwise. It prints, per size, the seconds of round 1 (which holds
the warm-up of the nodes first sampled), the median of the other rounds, the nodes
warmed up and the alignments run, the server's memory and the client store's disk
use, then the ratio of each size's round 1 to the smallest one's.

Usage (from the repository folder)::

    python -m benchmarks.scale --nodes 50 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.flwr_run import run_app
from simulations.paths import shared_fashion_mnist

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    """Run one federation per size; print a table, the round-1 ratios and, with ``--out``, write JSON."""
    args = _parser().parse_args(argv)
    data_dir = args.data_dir or shared_fashion_mnist()
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    figures = [_run_size(args, data_dir, work, nodes) for nodes in args.nodes]
    smallest = figures[0]["round_1_seconds"]
    for row in figures:
        row["round_1_over_smallest"] = row["round_1_seconds"] / smallest
    print(_table(figures), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


def _run_size(args: argparse.Namespace, data_dir: str, work: Path, nodes: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "dataset": "fashion-mnist",
        "data-dir": data_dir,
        "model": "cnn",
        "train-subset": args.samples_per_node * nodes,
        "num-server-rounds": args.rounds,
        "fraction-train": min(1.0, args.sampled / nodes),
        "min-available-nodes": nodes,
        "warm-up": args.warm_up,
        "client-threads": 1,
        "device": "cpu",
        "output-dir": str(work),
        "run-name": f"nodes-{nodes}",
    }
    start = time.perf_counter()
    outcome = run_app(config, num_supernodes=nodes, cpus_per_client=1.0, timeout=args.timeout, echo=False)
    wall = time.perf_counter() - start
    rows = [r for r in outcome.rows if r["round"] >= 1]
    store = work / f"nodes-{nodes}"
    return {
        "nodes": nodes,
        "sampled_per_round": max(int(nodes * config["fraction-train"]), 1),
        "round_1_seconds": rows[0]["round_seconds"],
        "later_round_median_seconds": statistics.median(r["round_seconds"] for r in rows[1:]) if rows[1:] else None,
        "nodes_warmed_up": [r.get("nodes_warmed_up", 0) for r in rows],
        "alignments": [r.get("alignments", 0) for r in rows],
        "server_memory_mib": max(r["server_memory_bytes"] for r in rows) / MIB,
        "client_store_disk_mib": sum(f.stat().st_size for f in store.rglob("*.pt")) / MIB,
        "wall_seconds": wall,
    }


def _table(figures: list[dict[str, Any]]) -> str:
    header = "| nodes | sampled | round 1 (s) | later rounds (s) | warmed up per round | server MiB | disk MiB |"
    lines = [header, "|" + "---|" * 7]
    for f in figures:
        later = f"{f['later_round_median_seconds']:.1f}" if f["later_round_median_seconds"] is not None else "-"
        lines.append(
            f"| {f['nodes']} | {f['sampled_per_round']} | {f['round_1_seconds']:.1f} "
            f"({f['round_1_over_smallest']:.2f}x) | {later} | {f['nodes_warmed_up']} | "
            f"{f['server_memory_mib']:.1f} | {f['client_store_disk_mib']:.1f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[50, 1000], help="federation sizes, smallest first")
    p.add_argument("--sampled", type=int, default=50, help="nodes that train per round")
    p.add_argument("--samples-per-node", type=int, default=60, help="Fashion-MNIST training images per node")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warm-up", default="sampled", choices=["sampled", "all"], help="the run config's warm-up")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX folder (default: looked for)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run")
    p.add_argument("--out", default="", help="write the figures as JSON here")
    return p


if __name__ == "__main__":
    sys.exit(main())
