"""The summary of a comparison: per-strategy numbers, the Markdown table, the CSV file and the plots."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsl_sage_flwr.extras import import_extra

GIB = 1024**3
MIB = 1024**2


#: Headline metrics a comparison knows, in order of preference; every other one ranks lower-is-better.
HEADLINE_METRICS = ("accuracy", "perplexity")
#: Metrics where a larger value is the better model.
HIGHER_IS_BETTER = frozenset({"accuracy"})


def headline_metric(rows_by_strategy: dict[str, list[dict[str, Any]]]) -> str:
    """The metric the comparison ranks by: accuracy for classifiers, perplexity for language models, else the loss.

    Every strategy's rows must carry it; a split without a metric of its own reports its test loss only.
    """
    for name in HEADLINE_METRICS:
        if all(rows and name in rows[0] for rows in rows_by_strategy.values()):
            return name
    return "loss"


def is_better(metric: str, value: float, than: float) -> bool:
    """Whether ``value`` is at least as good as ``than`` under ``metric``'s direction."""
    return value >= than if metric in HIGHER_IS_BETTER else value <= than


@dataclass(frozen=True)
class StrategySummary:
    """One row of the summary table: the headline ``metric``'s final and best values, bytes, memory, time."""

    strategy: str
    metric: str
    final: float
    best: float
    gib_to_target: float | None
    total_gib: float
    client_peak_mib: float
    server_mib: float
    seconds_per_round: float

    def csv_row(self) -> dict[str, Any]:
        """The summary as a CSV row; the metric's name is in its columns (``final_accuracy``)."""
        values = {name: getattr(self, name) for name in StrategySummary.__dataclass_fields__}
        del values["metric"]
        return {
            ("final_" + self.metric if name == "final" else "best_" + self.metric if name == "best" else name): value
            for name, value in values.items()
        }


def best_value(metric: str, values: list[float]) -> float:
    """The best of ``values`` under ``metric``'s direction."""
    return max(values) if metric in HIGHER_IS_BETTER else min(values)


def summarise(rows_by_strategy: dict[str, list[dict[str, Any]]], target: float) -> list[StrategySummary]:
    """Summarise each strategy's per-round rows against ``target``, a value of the headline metric."""
    metric = headline_metric(rows_by_strategy)
    summaries = []
    for name, rows in rows_by_strategy.items():
        trained = [r for r in rows if r["round"] > 0]
        reached = next((r for r in rows if is_better(metric, r[metric], target)), None)
        summaries.append(
            StrategySummary(
                strategy=name,
                metric=metric,
                final=rows[-1][metric],
                best=best_value(metric, [r[metric] for r in rows]),
                gib_to_target=reached["cumulative_bytes"] / GIB if reached else None,
                total_gib=rows[-1]["cumulative_bytes"] / GIB,
                client_peak_mib=max((r.get("client_peak_memory_bytes", 0) for r in rows), default=0) / MIB,
                server_mib=max((r.get("server_memory_bytes", 0) for r in rows), default=0) / MIB,
                seconds_per_round=sum(r["round_seconds"] for r in trained) / max(len(trained), 1),
            )
        )
    return summaries


def target_value(rows_by_strategy: dict[str, list[dict[str, Any]]], fraction: float) -> float:
    """The target from the best value any strategy reached.

    ``fraction`` of it for accuracy; for a lower-is-better metric (perplexity, loss) it divided by ``fraction``.
    """
    metric = headline_metric(rows_by_strategy)
    best = best_value(metric, [r[metric] for rows in rows_by_strategy.values() for r in rows])
    return fraction * best if metric in HIGHER_IS_BETTER else best / fraction


def _format_target(metric: str, target: float) -> str:
    return f"{target:.2%}" if metric == "accuracy" else f"{metric} {target:.4g}"


def markdown_table(summaries: list[StrategySummary], target: float) -> str:
    """Render the summary as a Markdown table."""
    metric = summaries[0].metric if summaries else "accuracy"
    short = "acc." if metric == "accuracy" else metric
    lines = [
        f"| strategy | final {short} | best {short} | GiB to {_format_target(metric, target)} | total GiB "
        "| client peak MiB | server MiB | s / round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        to_target = f"{s.gib_to_target:.4f}" if s.gib_to_target is not None else "not reached"
        lines.append(
            f"| {s.strategy} | {s.final:.4f} | {s.best:.4f} | {to_target} | "
            f"{s.total_gib:.4f} | {s.client_peak_mib:.2f} | {s.server_mib:.2f} | {s.seconds_per_round:.2f} |"
        )
    return "\n".join(lines)


def write_outputs(
    output_dir: Path, rows_by_strategy: dict[str, list[dict[str, Any]]], target: float, command: str
) -> list[StrategySummary]:
    """Write summary.md, summary.csv and the two plots; return the summaries."""
    summaries = summarise(rows_by_strategy, target)
    metric = summaries[0].metric
    table = markdown_table(summaries, target)
    (output_dir / "summary.md").write_text(
        f"# Comparison\n\nCommand: `{command}`\n\nTarget {metric}: {target:.4f}\n\n{table}\n\n"
        f"![{metric} against rounds]({metric}_vs_rounds.png)\n\n"
        f"![{metric} against GiB]({metric}_vs_gib.png)\n"
    )
    with (output_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summaries[0].csv_row()))
        writer.writeheader()
        writer.writerows(s.csv_row() for s in summaries)
    plot_metric(output_dir, rows_by_strategy, metric)
    return summaries


def plot_metric(output_dir: Path, rows_by_strategy: dict[str, list[dict[str, Any]]], metric: str = "accuracy") -> None:
    """Write ``<metric>_vs_rounds.png`` and ``<metric>_vs_gib.png``, one line per named run."""
    # Files only, no window: the Agg backend, chosen before pyplot loads.
    import_extra("matplotlib", "plots", "the comparison plots").use("Agg")
    plt = import_extra("matplotlib.pyplot", "plots", "the comparison plots")

    for x_key, x_label, file_name, scale in (
        ("round", "round", f"{metric}_vs_rounds.png", 1.0),
        ("cumulative_bytes", "communication (GiB, cumulative)", f"{metric}_vs_gib.png", 1 / GIB),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for name, rows in rows_by_strategy.items():
            ax.plot([r[x_key] * scale for r in rows], [r[metric] for r in rows], marker=".", label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test {metric}")
        if metric not in HIGHER_IS_BETTER:
            ax.set_yscale("log")  # perplexity and loss fall over orders of magnitude early on
        if x_key == "cumulative_bytes":
            ax.set_xscale("symlog", linthresh=1e-3)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / file_name)
        plt.close(fig)
