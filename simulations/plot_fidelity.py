"""Plot a FSL-SAGE run's live gradient fidelity (mean cosine) against the round."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.extras import import_extra


def fidelity_series(rows: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float], list[int]]:
    """Rounds with fidelity, their mean and minimum cosine, and the rounds that aligned.

    A round's alignment runs after its server training, so its effect shows
    from the next round's uploads on.
    """
    measured = [row for row in rows if "fidelity_cosine_mean" in row]
    rounds = [int(row["round"]) for row in measured]
    means = [float(row["fidelity_cosine_mean"]) for row in measured]
    minima = [float(row["fidelity_cosine_min"]) for row in measured]
    aligned = [int(row["round"]) for row in rows if row.get("alignments")]
    return rounds, means, minima, aligned


def plot_fidelity(results: Path, output: Path) -> None:
    """Write a plot of mean (and minimum) cosine per round, alignment rounds marked."""
    # Files only, no window: the Agg backend, chosen before pyplot loads.
    import_extra("matplotlib", "plots", "the fidelity plot").use("Agg")
    plt = import_extra("matplotlib.pyplot", "plots", "the fidelity plot")

    rounds, means, minima, aligned = fidelity_series(read_results(results))
    if not rounds:
        raise SystemExit(f"{results} has no fidelity fields: was it a FSL-SAGE run with fidelity measured?")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, means, marker="o", label="mean cosine")
    ax.plot(rounds, minima, linestyle=":", label="min cosine")
    for index, server_round in enumerate(aligned):
        ax.axvline(server_round, color="grey", alpha=0.4, label="alignment" if index == 0 else None)
    ax.set_xlabel("round")
    ax.set_ylabel("cos(g_aux, g_server)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a run's results.jsonl")
    parser.add_argument("--output", type=Path, default=Path("fidelity.png"))
    args = parser.parse_args(argv)
    plot_fidelity(args.results, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
