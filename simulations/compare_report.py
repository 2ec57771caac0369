"""The summary of a comparison: per-strategy numbers, the Markdown table, the CSV file and the plots."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsl_sage_flwr.extras import import_extra

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class StrategySummary:
    """One row of the summary table."""

    strategy: str
    final_accuracy: float
    best_accuracy: float
    gib_to_target: float | None
    total_gib: float
    client_peak_mib: float
    server_mib: float
    seconds_per_round: float


def summarise(rows_by_strategy: dict[str, list[dict[str, Any]]], target: float) -> list[StrategySummary]:
    """Summarise each strategy's per-round rows against the accuracy ``target``."""
    summaries = []
    for name, rows in rows_by_strategy.items():
        trained = [r for r in rows if r["round"] > 0]
        reached = next((r for r in rows if r["accuracy"] >= target), None)
        summaries.append(
            StrategySummary(
                strategy=name,
                final_accuracy=rows[-1]["accuracy"],
                best_accuracy=max(r["accuracy"] for r in rows),
                gib_to_target=reached["cumulative_bytes"] / GIB if reached else None,
                total_gib=rows[-1]["cumulative_bytes"] / GIB,
                client_peak_mib=max((r.get("client_peak_memory_bytes", 0) for r in rows), default=0) / MIB,
                server_mib=max((r.get("server_memory_bytes", 0) for r in rows), default=0) / MIB,
                seconds_per_round=sum(r["round_seconds"] for r in trained) / max(len(trained), 1),
            )
        )
    return summaries


def markdown_table(summaries: list[StrategySummary], target: float) -> str:
    """Render the summary as a Markdown table."""
    lines = [
        f"| strategy | final acc. | best acc. | GiB to {target:.2%} | total GiB "
        "| client peak MiB | server MiB | s / round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        to_target = f"{s.gib_to_target:.4f}" if s.gib_to_target is not None else "not reached"
        lines.append(
            f"| {s.strategy} | {s.final_accuracy:.4f} | {s.best_accuracy:.4f} | {to_target} | "
            f"{s.total_gib:.4f} | {s.client_peak_mib:.2f} | {s.server_mib:.2f} | {s.seconds_per_round:.2f} |"
        )
    return "\n".join(lines)


def write_outputs(
    output_dir: Path, rows_by_strategy: dict[str, list[dict[str, Any]]], target: float, command: str
) -> list[StrategySummary]:
    """Write summary.md, summary.csv and the two plots; return the summaries."""
    summaries = summarise(rows_by_strategy, target)
    table = markdown_table(summaries, target)
    (output_dir / "summary.md").write_text(
        f"# Comparison\n\nCommand: `{command}`\n\nTarget accuracy: {target:.4f}\n\n{table}\n\n"
        "![accuracy against rounds](accuracy_vs_rounds.png)\n\n"
        "![accuracy against GiB](accuracy_vs_gib.png)\n"
    )
    with (output_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(StrategySummary.__dataclass_fields__))
        for s in summaries:
            writer.writerow([getattr(s, f) for f in StrategySummary.__dataclass_fields__])
    plot_accuracy(output_dir, rows_by_strategy)
    return summaries


def plot_accuracy(output_dir: Path, rows_by_strategy: dict[str, list[dict[str, Any]]]) -> None:
    """Write ``accuracy_vs_rounds.png`` and ``accuracy_vs_gib.png``, one line per named run."""
    # Files only, no window: the Agg backend, chosen before pyplot loads.
    import_extra("matplotlib", "plots", "the accuracy plots").use("Agg")
    plt = import_extra("matplotlib.pyplot", "plots", "the accuracy plots")

    for x_key, x_label, file_name, scale in (
        ("round", "round", "accuracy_vs_rounds.png", 1.0),
        ("cumulative_bytes", "communication (GiB, cumulative)", "accuracy_vs_gib.png", 1 / GIB),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for name, rows in rows_by_strategy.items():
            ax.plot([r[x_key] * scale for r in rows], [r["accuracy"] for r in rows], marker=".", label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel("test accuracy")
        if x_key == "cumulative_bytes":
            ax.set_xscale("symlog", linthresh=1e-3)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / file_name)
        plt.close(fig)
