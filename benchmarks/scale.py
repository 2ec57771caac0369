"""FSL-SAGE federations of growing size through ``flwr run``: round times with a fixed number sampled.

For each federation size, one after the other, the app runs through Flower's
simulation (``flwr run``) with the same data per node (``--samples-per-node``
Fashion-MNIST images, IID shares, the ``cnn`` split), ``fraction-train`` set so that
``--sampled`` nodes train per round, and the default settings otherwise. It prints,
per size: the seconds of round 1 (which holds the warm-up of the nodes first
sampled) and of an ordinary round (the median of rounds 2 on); the peak resident
memory of the ServerApp's process and of the largest client actor (sampled every
second, ``VmHWM``); the CPU seconds the ServerApp's process and the client actors
used, which unlike wall time hardly depend on the machine's load; the client
store's disk use; the load average when the size started and ended; and each
size's round 1 and CPU seconds over the smallest size's. With ``--plot`` it draws
the round times and memory against the size.

Usage (from the repository folder)::

    python -m benchmarks.scale --nodes 100 1000 10000 --rounds 2 --out scale.json --plot scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.process_memory import MemorySampler
from fsl_sage_flwr.app.results import ResultsWriter, read_results
from simulations.flwr_run import FlwrRunError, run_app
from simulations.paths import shared_fashion_mnist
from simulations.processes import become_subreaper

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    """Run one federation per size; print a table, the round-1 ratios and, with ``--out``, write JSON."""
    args = _parser().parse_args(argv)
    data_dir = args.data_dir or shared_fashion_mnist()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="scale-"))
    # The SuperLink `flwr run` starts detaches; as a sub-reaper this process keeps it
    # (and the simulation and Ray workers below it) in its tree for the memory sampler.
    become_subreaper()
    figures: list[dict[str, Any]] = []
    for nodes in args.nodes:
        figures.append(_run_size(args, data_dir, work, nodes))
        print(json.dumps(figures[-1]), flush=True)
        if args.out:  # after each size: a later, larger size may not finish
            Path(args.out).write_text(json.dumps(figures, indent=2))
    smallest = min(figures, key=lambda row: row["nodes"])
    for row in figures:
        row["round_1_over_smallest"] = _ratio(row["round_1_seconds"], smallest["round_1_seconds"])
        row["cpu_over_smallest"] = _ratio(_cpu(row), _cpu(smallest))
    print(_table(figures), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    if args.plot:
        from benchmarks.scale_plot import plot_scale

        plot_scale(figures, Path(args.plot))
    return 0


def _run_size(args: argparse.Namespace, data_dir: str, work: Path, nodes: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "dataset": "fashion-mnist",
        "data-dir": data_dir,
        "model": "cnn",
        "partitioning": "iid",
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
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    store = work / f"nodes-{nodes}"
    failure = ""
    with MemorySampler() as memory:
        try:
            run_app(config, num_supernodes=nodes, cpus_per_client=1.0, timeout=args.timeout, echo=False)
        except FlwrRunError as err:  # e.g. the timeout: keep the rounds it finished, go on with the next size
            failure = str(err).splitlines()[0]
    wall = time.perf_counter() - start
    results = store / ResultsWriter.FILE_NAME
    rows = [r for r in read_results(results) if r["round"] >= 1] if results.exists() else []
    return {
        "nodes": nodes,
        "sampled_per_round": max(int(nodes * config["fraction-train"]), 1),
        "failed": failure,
        "round_1_seconds": rows[0]["round_seconds"] if rows else None,
        # The same alignment work at every size (each first-sampled node's aux): a gauge of the load.
        "round_1_align_seconds": rows[0].get("align_seconds", 0.0) if rows else None,
        "later_round_median_seconds": statistics.median(r["round_seconds"] for r in rows[1:]) if rows[1:] else None,
        "nodes_warmed_up": [r.get("nodes_warmed_up", 0) for r in rows],
        "alignments": [r.get("alignments", 0) for r in rows],
        "server_state_mib": max((r["server_memory_bytes"] for r in rows), default=0) / MIB,
        **memory.figures(),
        "client_store_disk_mib": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / MIB,
        "wall_seconds": wall,
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
    }


def _cpu(row: dict[str, Any]) -> float:
    return float(row["server_app_cpu_seconds"] + row["client_actor_cpu_seconds"])


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top and bottom else None


def _number(value: float | None, pattern: str, missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)


def _table(figures: list[dict[str, Any]]) -> str:
    header = (
        "| nodes | sampled | round 1 s (over smallest) | its alignment s | ordinary round s | warmed up per round "
        "| ServerApp peak RSS MiB | client actor peak RSS MiB | CPU s, ServerApp + clients (over smallest) "
        "| client store disk MiB | load before / after |"
    )
    lines = [header, "|" + "---|" * 11]
    for f in figures:
        round_1 = _number(f["round_1_seconds"], "{:.1f}") + _number(f["round_1_over_smallest"], " ({:.2f}x)", "")
        if f["failed"]:
            round_1 += f" failed: {f['failed']}"
        lines.append(
            f"| {f['nodes']} | {f['sampled_per_round']} | {round_1} | {_number(f['round_1_align_seconds'], '{:.1f}')} "
            f"| {_number(f['later_round_median_seconds'], '{:.1f}')} | {f['nodes_warmed_up']} "
            f"| {f['server_app_peak_rss_mib']:.0f} | {f['client_actor_peak_rss_mib']:.0f} "
            f"| {f['server_app_cpu_seconds']:.0f} + {f['client_actor_cpu_seconds']:.0f}"
            f"{_number(f['cpu_over_smallest'], ' ({:.2f}x)', '')} "
            f"| {f['client_store_disk_mib']:.1f} | {f['load_1min_before']:.2f} / {f['load_1min_after']:.2f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[100, 1000], help="federation sizes, run in this order")
    p.add_argument("--sampled", type=int, default=50, help="nodes that train per round")
    p.add_argument(
        "--samples-per-node", type=int, default=5, help="Fashion-MNIST training images per node (60,000 in all)"
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warm-up", default="sampled", choices=["sampled", "all"], help="the run config's warm-up")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX folder (default: looked for)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run")
    p.add_argument("--out", default="", help="write the figures as JSON here (after each size)")
    p.add_argument("--plot", default="", help="draw round times and memory against the size into this image")
    p.add_argument("--work-dir", default="", help="run folders go here (default: a fresh temporary folder)")
    return p


if __name__ == "__main__":
    sys.exit(main())
