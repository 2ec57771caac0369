"""Ablations of FSL-SAGE: each study's variants run on the same data and seed, then a table and plots.

A study is a named set of variants; a variant is a set of run-config overrides on a
common base. Each variant is one FSL-SAGE run of this package's ServerApp and
ClientApp, in its own process without Ray (``simulations.in_process``): the same
apps, messages and byte ledger as under ``flwr run``, without the simulation
engine's start-up. A whole configuration runs once: variants equal to one another,
or to a finished run of another study (the base of every study), reuse its rows from
``<output-dir>/runs/``.

Usage (from the repository folder)::

    python -m simulations.ablations interval [--rounds 20] [--jobs 2] [--output-dir outputs/ablations]
    python -m simulations.ablations compression --run-config "train-subset=3000"

Writes ``<output-dir>/<study>/``: ``rows.jsonl`` (every round of every variant, with
its name), ``table.md`` and ``table.csv`` (per variant: best and final accuracy, the
mean of the last five rounds, the largest fall below the best so far in the second half
of the rounds, MiB sent up, MiB in all, MiB until the target accuracy,
alignments run, mean gradient-fidelity cosine, seconds), and ``accuracy_vs_rounds.png``
and ``accuracy_vs_gib.png``. The command exits non-zero, naming them, when variants
fail; what finished is written first.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.core.devices import AUTOCAST_CHOICES
from fsl_sage_flwr.data import find_idx_folder
from fsl_sage_flwr.transport.compression import UPLOAD_DTYPES
from simulations.compare_report import plot_metric
from simulations.flower_cli import parse_run_config
from simulations.paths import PROJECT_DIR, SHARED_DATA

MIB = 1024**2

#: Every study: variant name -> run-config overrides on the base.
STUDIES: dict[str, dict[str, dict[str, Any]]] = {
    "interval": {f"l={interval}": {"align-interval": interval} for interval in (1, 2, 5, 10, 20, 50)},
    "aux-size": {variant: {"aux-variant": variant} for variant in ("linear", "half", "default", "full")},
    "alpha": {f"alpha={alpha:g}": {"alpha": alpha} for alpha in (0.1, 1.0, 10.0, 100.0)},
    "adaptive": {
        "fixed l=5": {},
        "fixed l=10": {"align-interval": 10},
        "l=10 + cosine<0.25": {"align-interval": 10, "align-threshold": 0.25},
        # as many aux downloads as fixed l=5 makes in 20 rounds, spent where fidelity is low
        "cosine<0.25 within 30 auxes": {"align-interval": 1000, "align-threshold": 0.25, "align-budget-aux": 30},
    },
    "compression": {dtype: {"upload-dtype": dtype} for dtype in UPLOAD_DTYPES},
    "autocast": {mode: {"autocast": mode} for mode in AUTOCAST_CHOICES},
    # The stability question: FSL-SAGE's remedies against CSE-FSL on the same split and data.
    "stability": {
        "fsl-sage": {},
        "fsl-sage mixed": {"server-order": "mixed"},
        "fsl-sage mixed + cosine<0.25": {"server-order": "mixed", "align-threshold": 0.25},
        "cse-fsl": {"algorithm": "cse-fsl"},
    },
}

#: The CPU base of every study: Fashion-MNIST subsample, the ``cnn`` split, 10 clients.
BASE: dict[str, Any] = {
    "algorithm": "fsl-sage",
    "dataset": "fashion-mnist",
    "model": "cnn",
    "train-subset": 6000,
    "min-available-nodes": 10,
    "num-server-rounds": 20,
    "batch-size": 32,
    "align-interval": 5,
    "align-epochs": 20,
    "buffer-size": 500,
    "alpha": 1.0,
    "client-threads": 1,
}
_COMPLETE = "complete"  # marks a run folder whose run ended with exit code 0
_INPUT_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


@dataclass(frozen=True)
class VariantSummary:
    """One row of a study's table."""

    variant: str
    final_accuracy: float
    best_accuracy: float
    last5_accuracy: float
    late_drop: float
    mib_up: float
    mib_total: float
    mib_to_target: float | None
    alignments: int
    fidelity_cosine: float | None
    seconds: float


def variant_configs(study: str, base: Mapping[str, Any], names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each chosen variant's full run config (defaults, ``base``, its overrides).

    The override ``align-budget-aux: N`` is a convenience of this script: it becomes
    ``align-budget-bytes``, N times the bytes of one aux model of the base's split.
    """
    variants = STUDIES[study]
    unknown = sorted(set(names or []) - set(variants))
    if unknown:
        raise ValueError(f"study {study!r} has no variant {unknown}; it has {list(variants)}")
    defaults = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    configs = {}
    for name, overrides in variants.items():
        if names and name not in names:
            continue
        config = {**defaults, **base, **overrides}
        if "align-budget-aux" in config:
            config["align-budget-bytes"] = int(config.pop("align-budget-aux")) * _aux_bytes(config)
        configs[name] = config
    return configs


def summarise(rows_by_variant: Mapping[str, list[dict[str, Any]]], target: float) -> list[VariantSummary]:
    """One summary per variant from its per-round rows."""
    summaries = []
    for name, rows in rows_by_variant.items():
        reached = next((r for r in rows if r["accuracy"] >= target), None)
        cosines = [r["fidelity_cosine_mean"] for r in rows if "fidelity_cosine_mean" in r]
        last = rows[-5:]
        summaries.append(
            VariantSummary(
                variant=name,
                final_accuracy=rows[-1]["accuracy"],
                best_accuracy=max(r["accuracy"] for r in rows),
                last5_accuracy=sum(r["accuracy"] for r in last) / len(last),
                late_drop=_late_drop([r["accuracy"] for r in rows]),
                mib_up=sum(r["bytes_up"] for r in rows) / MIB,
                mib_total=rows[-1]["cumulative_bytes"] / MIB,
                mib_to_target=reached["cumulative_bytes"] / MIB if reached else None,
                alignments=sum(int(r.get("alignments", 0)) for r in rows),
                fidelity_cosine=sum(cosines) / len(cosines) if cosines else None,
                seconds=sum(r.get("round_seconds", 0.0) for r in rows),
            )
        )
    return summaries


def _late_drop(accuracies: list[float]) -> float:
    """The largest fall below the best accuracy so far, over the second half of the rounds."""
    best, drop = 0.0, 0.0
    for index, accuracy in enumerate(accuracies):
        best = max(best, accuracy)
        if index >= len(accuracies) // 2:
            drop = max(drop, best - accuracy)
    return drop


def markdown_table(summaries: list[VariantSummary], target: float) -> str:
    """The study's table in Markdown."""
    lines = [
        f"| variant | final | best | mean last 5 | late drop | MiB up | MiB total | MiB to {target:.2%} "
        "| alignments | mean fidelity cosine | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        to_target = f"{s.mib_to_target:.1f}" if s.mib_to_target is not None else "not reached"
        cosine = f"{s.fidelity_cosine:.3f}" if s.fidelity_cosine is not None else "-"
        lines.append(
            f"| {s.variant} | {s.final_accuracy:.4f} | {s.best_accuracy:.4f} | {s.last5_accuracy:.4f} "
            f"| {s.late_drop:.4f} | {s.mib_up:.1f} | {s.mib_total:.1f} | {to_target} | {s.alignments} "
            f"| {cosine} | {s.seconds:.0f} |"
        )
    return "\n".join(lines)


def run_study(
    study: str, configs: Mapping[str, dict[str, Any]], runs_dir: Path, *, jobs: int, timeout: float
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Run each distinct config once, at most ``jobs`` at a time; return rows per variant and the failed.

    Runs live in ``runs_dir``, one folder per whole configuration, shared by the
    studies: a configuration that already finished there (the base of several
    studies, or a study run before) is read, not run again.
    """
    by_key: dict[str, list[str]] = {}
    for name, config in configs.items():
        by_key.setdefault(_config_key(config), []).append(name)
    rows: dict[str, list[dict[str, Any]]] = {}
    pending = []
    for key, names in by_key.items():
        if (runs_dir / key / _COMPLETE).exists():
            for name in names:
                rows[name] = read_results(runs_dir / key / "run" / "results.jsonl")
            print(f"[{study}] {' = '.join(names)}: finished before, in {runs_dir / key}", flush=True)
        else:
            pending.append((key, names))
    running: list[tuple[str, list[str], subprocess.Popen[bytes], float]] = []
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < jobs:
            key, names = pending.pop(0)
            running.append((key, names, _start(configs[names[0]], runs_dir / key), time.monotonic()))
        time.sleep(1.0)
        for entry in list(running):
            key, names, process, started = entry
            if process.poll() is None and time.monotonic() - started < timeout:
                continue
            running.remove(entry)
            if process.poll() is None:
                process.kill()
                process.wait()
            results = runs_dir / key / "run" / "results.jsonl"
            label = " = ".join(names)
            if process.returncode == 0 and results.exists():
                (runs_dir / key / _COMPLETE).touch()
                for name in names:
                    rows[name] = read_results(results)
                final = rows[names[0]][-1]["accuracy"]
                print(f"[{study}] {label}: final accuracy {final:.4f}, {time.monotonic() - started:.0f} s", flush=True)
            else:
                failed.extend(names)
                log = runs_dir / key / "output.log"
                print(f"[{study}] {label} FAILED (exit {process.returncode}); see {log}", file=sys.stderr, flush=True)
    return {name: rows[name] for name in configs if name in rows}, failed


def write_outputs(output_dir: Path, rows_by_variant: Mapping[str, list[dict[str, Any]]], target: float) -> str:
    """Write rows.jsonl, table.md, table.csv and the two plots; return the Markdown table."""
    with (output_dir / "rows.jsonl").open("w") as handle:
        for name, rows in rows_by_variant.items():
            for row in rows:
                handle.write(json.dumps({"variant": name, **row}) + "\n")
    summaries = summarise(rows_by_variant, target)
    table = markdown_table(summaries, target)
    (output_dir / "table.md").write_text(table + "\n")
    with (output_dir / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(VariantSummary.__dataclass_fields__))
        writer.writeheader()
        for summary in summaries:
            writer.writerow(asdict(summary))
    plot_metric(output_dir, dict(rows_by_variant))
    return table


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; exits non-zero if a variant failed."""
    args = _parser().parse_args(argv)
    base = {**BASE, "num-server-rounds": args.rounds, "seed": args.seed, **parse_run_config(args.run_config)}
    if base["dataset"] == "fashion-mnist" and not base.get("data-dir"):
        base["data-dir"] = str(find_idx_folder("fashion-mnist", SHARED_DATA) or SHARED_DATA / "fashion-mnist")
    names = [n for n in args.variants.split(",") if n] if args.variants else None
    configs = variant_configs(args.study, base, names)
    output_dir = Path(args.output_dir) / args.study
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{args.study}] {len(configs)} variants, {args.jobs} at a time, into {output_dir}", flush=True)
    runs_dir = Path(args.output_dir) / "runs"
    rows, failed = run_study(args.study, configs, runs_dir, jobs=args.jobs, timeout=args.timeout)
    if rows:
        best = max(max(r["accuracy"] for r in variant_rows) for variant_rows in rows.values())
        target = args.target_accuracy or 0.95 * best
        print("\n" + write_outputs(output_dir, rows, target))
        print(f"\ntable, plots and rows in {output_dir.resolve()}")
    if failed:
        print(f"FAILED variants: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _start(config: Mapping[str, Any], run_dir: Path) -> subprocess.Popen[bytes]:
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt: the app refuses old rows
    run_dir.mkdir(parents=True)
    config = {**config, "output-dir": str(run_dir.resolve()), "run-name": "run"}
    threads = str(config.get("client-threads", 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [
        sys.executable,
        "-m",
        "simulations.in_process",
        "--nodes",
        str(config["min-available-nodes"]),
        "--run-config",
        json.dumps(config),
    ]
    log = (run_dir / "output.log").open("wb")
    return subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)


def _config_key(config: Mapping[str, Any]) -> str:
    """A short name for a whole configuration: equal configs run once."""
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:12]


def _aux_bytes(config: Mapping[str, Any]) -> int:
    """Bytes of one aux model of ``config``'s split, what the server sends per alignment."""
    from fsl_sage_flwr.core.memory import state_nbytes
    from fsl_sage_flwr.core.models import build_split_model, required_input_shape

    split = build_split_model(
        config["model"],
        num_classes=100 if config["dataset"] == "cifar100" else 10,
        input_shape=required_input_shape(config["model"]) or _INPUT_SHAPES.get(config["dataset"], (1, 28, 28)),
        aux_variant=config["aux-variant"],
        parts=("client", "aux"),
    )
    return state_nbytes(split.aux)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--variants", default="", help="comma-separated subset of the study's variants")
    parser.add_argument("--rounds", type=int, default=BASE["num-server-rounds"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-config", default="", help='overrides of the base for every variant, "key=value ..."')
    parser.add_argument("--jobs", type=int, default=2, help="variants run at once, one thread each")
    parser.add_argument("--target-accuracy", type=float, default=0.0, help="default: 95%% of the best variant's best")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed per variant")
    parser.add_argument("--output-dir", default="outputs/ablations")
    return parser


if __name__ == "__main__":
    sys.exit(main())
