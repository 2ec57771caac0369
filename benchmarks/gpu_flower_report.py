"""The summary of :mod:`benchmarks.gpu_flower`: per-run figures, comparisons and the table, from its folder."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fsl_sage_flwr.app.results import ResultsWriter, read_results

MIB = 1024 * 1024


def late_drop(accuracies: list[float]) -> float:
    """The largest fall below the best accuracy so far, over the second half of the rounds."""
    best, drop = 0.0, 0.0
    for index, accuracy in enumerate(accuracies):
        best = max(best, accuracy)
        if index >= len(accuracies) // 2:
            drop = max(drop, best - accuracy)
    return drop


def flower_figures(rows: list[dict[str, Any]], train_images: int, target: float) -> dict[str, Any]:
    """Figures of one ``flwr run`` from its results rows (round 0 evaluates the initial model).

    An ordinary round is one after round 1 (which holds the warm-up) with no
    alignment; images/s counts the round's training images over its whole time
    (clients, server steps, aggregation, evaluation and Flower's messaging).
    """
    trained = [r for r in rows if r["round"] >= 1]
    ordinary = [r["round_seconds"] for r in trained[1:] if not r.get("alignments")]
    aligning = [r for r in trained if r.get("alignments")]
    round_seconds = statistics.median(ordinary) if ordinary else None
    reached = next((r for r in trained if r["accuracy"] >= target), None)
    return {
        "rounds": len(trained),
        "round_1_seconds": trained[0]["round_seconds"] if trained else None,
        "ordinary_round_seconds": round_seconds,
        "images_per_second": train_images / round_seconds if train_images and round_seconds else None,
        "alignments": sum(int(r.get("alignments", 0)) for r in aligning),
        "align_seconds": sum(float(r.get("align_seconds", 0.0)) for r in aligning),
        "best_accuracy": max((r["accuracy"] for r in trained), default=None),
        "final_accuracy": trained[-1]["accuracy"] if trained else None,
        "late_drop": late_drop([r["accuracy"] for r in trained]) if trained else None,
        "mib_to_target": reached["cumulative_bytes"] / MIB if reached else None,
        "total_mib": trained[-1]["cumulative_bytes"] / MIB if trained else None,
    }


def floor_figures(floor: dict[str, Any], target: float) -> dict[str, Any]:
    """Figures of the floor loop's JSON in the same terms as :func:`flower_figures`."""
    rounds = [r for r in floor["rounds"] if r["round"] >= 1]
    ordinary = [r["seconds"] for r in rounds[1:] if not r["align_seconds"]]
    round_seconds = statistics.median(ordinary) if ordinary else None
    settings = floor["settings"]
    images = int(settings.get("train_subset") or 0) * int(settings.get("local_epochs", 1))
    return {
        "rounds": len(rounds),
        "round_1_seconds": rounds[0]["seconds"] if rounds else None,
        "ordinary_round_seconds": round_seconds,
        "images_per_second": images / round_seconds if images and round_seconds else None,
        "client_images_per_second": statistics.median(r["images_per_second"] for r in rounds) if rounds else None,
        "alignments": None,
        "align_seconds": sum(r["align_seconds"] for r in rounds),
        "best_accuracy": max((r["accuracy"] for r in rounds), default=None),
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "late_drop": late_drop([r["accuracy"] for r in rounds]) if rounds else None,
        "mib_to_target": None,
        "total_mib": None,
        "device_name": floor.get("device_name"),
    }


def collect(out: Path, target: float) -> dict[str, dict[str, Any]]:
    """Every run found in ``out``: the floor loop, each ``runs/<name>`` and each ``failed/<name>``."""
    runs: dict[str, dict[str, Any]] = {}
    if (out / "floor.json").exists():
        runs["floor"] = {"kind": "floor", **floor_figures(json.loads((out / "floor.json").read_text()), target)}
    for setting_file in sorted((out / "runs").glob("*/setting.json")):
        setting = json.loads(setting_file.read_text())
        rows = read_results(setting_file.parent / ResultsWriter.FILE_NAME)
        figures = flower_figures(rows, int(setting["train_images"]), target)
        runs[setting["name"]] = {"kind": "flower", **setting, **figures}
    for failed in sorted((out / "failed").glob("*.json")) if (out / "failed").exists() else []:
        record = json.loads(failed.read_text())
        runs.setdefault(record["name"], {"kind": "failed", **record})
    return runs


def comparisons(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The benchmark's comparisons: Flower over the floor, stacked over one by one, FSL-SAGE's bytes over CSE-FSL's.

    The first FSL-SAGE run aligning one by one is the reference of each.
    """
    flower = {n: r for n, r in runs.items() if r["kind"] == "flower"}
    first = next((r for r in flower.values() if r["algorithm"] == "fsl-sage" and not r["align_stacked"]), None)
    stacked = next((r for r in flower.values() if r["align_stacked"]), None)
    cse = next((r for r in flower.values() if r["algorithm"] == "cse-fsl"), None)
    floor = runs.get("floor") if runs.get("floor", {}).get("kind") == "floor" else None
    return {
        "flower_over_floor_round_seconds": _ratio(first, floor, "ordinary_round_seconds"),
        "stacked_over_one_by_one_align_seconds": _ratio(stacked, first, "align_seconds"),
        "fsl_sage_over_cse_fsl_mib_to_target": _ratio(first, cse, "mib_to_target"),
        # Same data, partitions and seeds: on one device the two loops should end alike.
        "flower_minus_floor_final_accuracy": (
            first["final_accuracy"] - floor["final_accuracy"] if first and floor and floor["final_accuracy"] else None
        ),
    }


def _ratio(top: dict[str, Any] | None, bottom: dict[str, Any] | None, key: str) -> float | None:
    if top is None or bottom is None or not top.get(key) or not bottom.get(key):
        return None
    return float(top[key]) / float(bottom[key])


def markdown(runs: dict[str, dict[str, Any]], ratios: dict[str, float | None], target: float) -> str:
    """The summary table and the ratios in Markdown."""
    lines = [
        f"| run | GPU share per client | images/s | round 1 s | ordinary round s | alignments | alignment s "
        f"| best acc. | final acc. | late drop | MiB to {target:.0%} | total MiB |",
        "|" + "---|" * 12,
    ]
    for name, run in runs.items():
        if run["kind"] == "failed":
            lines.append(f"| {name} | failed: {run['reason']} |" + " |" * 10)
            continue
        share = f"{run['gpus_per_client']:g}" if run["kind"] == "flower" else "whole (no Flower)"
        cells = [
            _fmt(run, "images_per_second", "{:.0f}"),
            _fmt(run, "round_1_seconds", "{:.2f}"),
            _fmt(run, "ordinary_round_seconds", "{:.2f}"),
            _fmt(run, "alignments", "{}"),
            _fmt(run, "align_seconds", "{:.1f}"),
            _fmt(run, "best_accuracy", "{:.4f}"),
            _fmt(run, "final_accuracy", "{:.4f}"),
            _fmt(run, "late_drop", "{:.4f}"),
            _fmt(run, "mib_to_target", "{:.1f}", missing="not reached" if run["kind"] == "flower" else "-"),
            _fmt(run, "total_mib", "{:.1f}"),
        ]
        lines.append(f"| {name} | {share} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, value in ratios.items():
        lines.append(f"- {key.replace('_', ' ')}: {'-' if value is None else f'{value:.4f}'}")
    return "\n".join(lines)


def _fmt(run: dict[str, Any], key: str, pattern: str, missing: str = "-") -> str:
    value = run.get(key)
    return missing if value is None else pattern.format(value)


def write_summary(out: Path, target: float = 0.85) -> str:
    """Write ``summary.json`` and ``summary.md`` into ``out`` from every run there; return the Markdown."""
    runs = collect(out, target)
    ratios = comparisons(runs)
    text = markdown(runs, ratios, target)
    (out / "summary.json").write_text(json.dumps({"target_accuracy": target, "runs": runs, **ratios}, indent=2))
    (out / "summary.md").write_text(text + "\n")
    return text
