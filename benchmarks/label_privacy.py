"""What label privacy costs, and what the corrected loss wins back: plain against forward-corrected loss.

Runs the package's apps in this process (``simulations.in_process``) on digits with
10 nodes, once per label epsilon and server loss, the same seed for all, and prints
one line per run and a table of the final test accuracies: randomized labels
trained with plain cross-entropy (``label-correction=none``) against the loss
corrected for the known flip probability (``forward``), next to true labels.

Usage (from the repository folder)::

    python -m benchmarks.label_privacy --epsilons 0.5,1,2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from simulations.in_process import run_in_process
from simulations.testing import app_config


def main(argv: list[str] | None = None) -> None:
    """Run every (epsilon, loss) pair and print the accuracies."""
    args = _parser().parse_args(argv)
    table: dict[str, dict[str, float]] = {}
    runs = [("true labels", 0.0, "forward")] + [
        (f"{eps:g}", eps, loss) for eps in args.epsilons for loss in ("none", "forward")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, eps, loss) in enumerate(runs):
            start = time.perf_counter()
            accuracy = final_accuracy(Path(tmp) / str(index), args, eps, loss)
            seconds = time.perf_counter() - start
            print(json.dumps({"label_epsilon": name, "loss": loss, "accuracy": accuracy, "seconds": seconds}))
            table.setdefault(name, {})["true labels" if eps == 0 else loss] = accuracy
    print(f"\n{args.algorithm}, digits, {args.nodes} nodes, {args.rounds} rounds, seed {args.seed}: test accuracy")
    print("| label epsilon | plain (none) | corrected (forward) |")
    print("|---|---|---|")
    for name, row in table.items():
        if "true labels" in row:
            print(f"| inf (true labels) | {row['true labels']:.4f} | {row['true labels']:.4f} |")
        else:
            print(f"| {name} | {row['none']:.4f} | {row['forward']:.4f} |")


def final_accuracy(folder: Path, args: argparse.Namespace, label_epsilon: float, loss: str) -> float:
    """The last round's test accuracy of one run."""
    config = app_config(
        folder,
        algorithm=args.algorithm,
        num_server_rounds=args.rounds,
        min_available_nodes=args.nodes,
        seed=args.seed,
        label_epsilon=label_epsilon,
        label_correction=loss,
        align_epochs=args.align_epochs,
        fidelity_samples=0,
    )
    run_in_process(server_app, client_app, config, args.nodes)
    return float(read_results(folder / "run" / "results.jsonl")[-1]["accuracy"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=lambda s: [float(v) for v in s.split(",")], default=[0.5, 1.0, 2.0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithm", default="cse-fsl", choices=["cse-fsl", "fsl-sage"])
    parser.add_argument("--align-epochs", type=int, default=30, help="FSL-SAGE only")
    return parser


if __name__ == "__main__":
    main()
