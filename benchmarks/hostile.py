"""One hostile client among ten: final accuracy under each attack, with the defences on and off.

Each run is the real ServerApp and ClientApp in one process (no Ray), on digits.
One node (partition ``HOSTILE_PARTITION``) changes every reply it sends:

- ``model-x10``, ``model-x100``, ``model-1e30``: its client-model arrays times the factor;
- ``flip-x1``, ``flip-x10``: its update sign-flipped (and boosted): ``sent - k (local - sent)``;
- ``act-x10``, ``act-x30``: its uploaded activations times the factor (split algorithms);
- ``labels``: it trains on, and uploads, the labels ``9 - y`` (through ``node-data``).

"defended" is the default run config (upload guard, ``update-norm-factor = 10``) with
the ``aggregation`` chosen; "undefended" turns the update guard off, averages with
the mean and loosens the upload guard to its former factor of 100 (it has no run-config
key, so the benchmark swaps the strategy's default limits for that run).

Usage::

    python -m benchmarks.hostile --algorithms fsl-sage fedavg --rounds 8 --out hostile.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, Context, Message

import fsl_sage_flwr.strategies.split_server as split_server
from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.node_data import load_node_data
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.transport.guard import UploadLimits
from fsl_sage_flwr.transport.keys import ARRAYS_KEY, REPLY_ARRAYS_KEY, REQUEST_ARRAYS_KEY
from simulations.in_process import run_in_process
from simulations.testing import app_config

HOSTILE_PARTITION = 3
SMASHED_KEYS = 3  # an FSL-SAGE / CSE-FSL train reply's last arrays: z, y and the batch sizes
ATTACKS = ("none", "model-x10", "model-x100", "model-1e30", "flip-x1", "flip-x10", "act-x10", "act-x30", "labels")
DEFAULT_ATTACKS = ("none", "model-x10", "model-x100", "model-1e30", "flip-x10", "act-x10", "act-x30", "labels")
LOOSE_UPLOAD_FACTOR = 100.0
MODEL_ATTACKS = ("none", "model-x10", "model-x100", "model-1e30", "flip-x1", "flip-x10", "labels")


def flipped_node_data(context: Context) -> ArrayDataset:
    """``node-data`` of the label attack: the node's usual partition, the hostile one with labels ``9 - y``."""
    settings = RunSettings.from_run_config(context.run_config)
    data = load_node_data(context.node_config, settings)
    if context.node_config["partition-id"] == HOSTILE_PARTITION:
        return ArrayDataset(data.images, (9 - data.labels).astype(data.labels.dtype))
    return data


class HostileClientApp:
    """The real ClientApp; the hostile partition's train replies are changed as ``attack`` says."""

    def __init__(self, attack: str) -> None:
        self.attack = attack
        self.changed = 0

    def __call__(self, message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        if context.node_config["partition-id"] != HOSTILE_PARTITION or self.attack in ("none", "labels"):
            return reply
        split = REPLY_ARRAYS_KEY in reply.content.array_records
        arrays = reply.content.array_records.get(REPLY_ARRAYS_KEY if split else ARRAYS_KEY)
        if arrays is None:
            return reply
        keys = list(arrays.keys())
        model_keys, smashed_keys = (keys[:-SMASHED_KEYS], keys[-SMASHED_KEYS:]) if split else (keys, [])
        kind, factor = self.attack.split("-x") if "-x" in self.attack else ("model", "1e30")
        factor = float(factor)
        if kind == "act":
            z = arrays[smashed_keys[0]].numpy()
            arrays[smashed_keys[0]] = Array(z * z.dtype.type(factor))
        else:
            sent = message.content.array_records[REQUEST_ARRAYS_KEY if split else ARRAYS_KEY]
            sent_keys = list(sent.keys())
            for index, key in enumerate(model_keys):
                local = arrays[key].numpy()
                if local.dtype.kind != "f":
                    continue
                if kind == "model":
                    changed = local * local.dtype.type(factor)
                else:
                    base = sent[sent_keys[index]].numpy()
                    changed = base - local.dtype.type(factor) * (local - base)
                arrays[key] = Array(changed.astype(local.dtype))
        self.changed += 1
        return reply


def run_one(algorithm: str, attack: str, defended: bool, aggregation: str, args: argparse.Namespace) -> dict:
    """One run; return its final accuracy, drop count and seconds."""
    settings = {
        "algorithm": algorithm,
        "num_server_rounds": args.rounds,
        "min_available_nodes": args.clients,
        "align_epochs": args.align_epochs,
        "update_norm_factor": 10.0 if defended else 0.0,
        "aggregation": aggregation if defended else "mean",
        "seed": args.seed,
    }
    if attack == "labels":
        settings["node_data"] = "benchmarks.hostile:flipped_node_data"
    client = HostileClientApp(attack)
    counter = _DropCounter()
    logging.getLogger("flwr").addHandler(counter)
    start = time.perf_counter()
    default_limits = split_server.UploadLimits
    if not defended:
        split_server.UploadLimits = lambda: UploadLimits(factor=LOOSE_UPLOAD_FACTOR)
    accuracy, error = None, ""
    try:
        with tempfile.TemporaryDirectory() as folder:
            run_in_process(server_app, client, app_config(Path(folder), **settings), num_nodes=args.clients)
            accuracy = read_results(Path(folder) / "run" / "results.jsonl")[-1]["accuracy"]
    except Exception as err:  # a run an attack breaks is a result of the table, not an end of it
        error = f"{type(err).__name__}: {str(err)[:200]}"
    finally:
        split_server.UploadLimits = default_limits
        logging.getLogger("flwr").removeHandler(counter)
    return {
        "algorithm": algorithm,
        "attack": attack,
        "defended": defended,
        "aggregation": aggregation if defended else "mean",
        "final_accuracy": float(accuracy) if accuracy is not None and np.isfinite(accuracy) else None,
        "dropped": counter.count,
        "error": error,
        "seconds": time.perf_counter() - start,
    }


class _DropCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "dropped reply from node" in record.getMessage():
            self.count += 1


def attacks_for(algorithm: str, chosen: list[str]) -> list[str]:
    """The attacks that apply to ``algorithm``: activations exist only in split algorithms."""
    return [a for a in chosen if algorithm != "fedavg" or a in MODEL_ATTACKS]


def run_table(args: argparse.Namespace, report: Callable[[dict], None] = print) -> list[dict]:
    """Every algorithm x attack x (defended, undefended) run; ``report`` sees each row as it ends."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    for algorithm in args.algorithms:
        for attack in attacks_for(algorithm, args.attacks):
            # With no attack nothing is dropped, and the undefended run is the same run.
            for defended in (True, False) if not args.defended_only and attack != "none" else (True,):
                row = run_one(algorithm, attack, defended, args.aggregation, args)
                rows.append(row)
                report(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithms", nargs="+", default=["fsl-sage", "fedavg"])
    p.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS), choices=ATTACKS)
    p.add_argument("--aggregation", default="mean", help="defended runs: mean, trimmed-mean, median or krum")
    p.add_argument("--defended-only", action="store_true")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--align-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the rows as JSON here")
    return p


def main() -> None:
    """Run the table and print one line per run."""
    args = build_parser().parse_args()

    def report(row: dict) -> None:
        accuracy = "failed" if row["final_accuracy"] is None else f"{row['final_accuracy']:.4f}"
        defence = f"defended ({row['aggregation']})" if row["defended"] else "undefended"
        print(
            f"{row['algorithm']:9s} {row['attack']:11s} {defence:24s} accuracy {accuracy}, "
            f"{row['dropped']} replies dropped, {row['seconds']:.0f} s",
            flush=True,
        )

    rows = run_table(args, report)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
