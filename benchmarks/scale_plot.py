"""Draw :mod:`benchmarks.scale`'s figures: round seconds, CPU seconds and peak memory against the federation size."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fsl_sage_flwr.extras import import_extra


def plot_scale(figures: list[dict[str, Any]], path: Path) -> None:
    """Write a two-panel figure to ``path``: times (left) and peak RSS (right) against the number of SuperNodes.

    Parameters
    ----------
    figures : list[dict[str, Any]]
        One row per size, as :mod:`benchmarks.scale` writes them.
    path : Path
        The image to write (its suffix picks the format).
    """
    matplotlib = import_extra("matplotlib", "plots", "the scale plot")
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    rows = sorted((row for row in figures if row["round_1_seconds"] is not None), key=lambda row: row["nodes"])
    nodes = [row["nodes"] for row in rows]
    fig, (times, memory) = plt.subplots(1, 2, figsize=(10, 4))
    times.plot(nodes, [row["round_1_seconds"] for row in rows], "o-", label="round 1, wall s")
    ordinary = [(row["nodes"], row["later_round_median_seconds"]) for row in rows if row["later_round_median_seconds"]]
    if ordinary:
        times.plot(*zip(*ordinary), "s-", label="later round, wall s")
    cpu = [
        (row["nodes"], (row.get("server_app_cpu_seconds") or 0) + (row.get("client_actor_cpu_seconds") or 0))
        for row in rows
    ]
    cpu = [(n, seconds) for n, seconds in cpu if seconds]
    if cpu:
        times.plot(*zip(*cpu), "^--", label="whole run, CPU s")
    times.plot(nodes, [row["round_1_align_seconds"] for row in rows], "x:", label="round 1's alignment, wall s")
    for row in rows:
        times.annotate(f"load {row['load_1min_before']:.1f}", (row["nodes"], row["round_1_seconds"]), fontsize=7)
    for key, style, label in (
        ("server_app_peak_rss_mib", "o-", "ServerApp process"),
        ("client_actor_peak_rss_mib", "s-", "largest client actor"),
        ("client_store_disk_mib", "^--", "client store on disk"),
    ):
        measured = [(row["nodes"], row[key]) for row in rows if row.get(key) is not None]
        if measured:
            memory.plot(*zip(*measured), style, label=label)
    for axis, label in ((times, "seconds"), (memory, "MiB")):
        axis.set_xscale("log")
        axis.set_xlabel("simulated SuperNodes (50 sampled per round)")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    times.set_title("time")
    memory.set_title("peak resident memory and disk")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    # python -m benchmarks.scale_plot scale.json scale.png
    plot_scale(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
