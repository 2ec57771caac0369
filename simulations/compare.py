"""Compare FSL-SAGE with its baselines on one partition: accuracy against rounds and bytes.

Runs each chosen algorithm through ``flwr run`` (Flower's Ray simulation engine),
one after another, with the same data, split model, partition, seed and local
work, then writes per-round results, ``summary.md``, ``summary.csv`` and two plots
to one folder.

Usage::

    python -m simulations.compare [--strategies fsl-sage,cse-fsl,fedavg] [--dataset digits]
        [--model cnn] [--clients 10] [--rounds 20] [--alpha 1.0] [--seed 0]
        [--output-dir outputs/compare] [--preset simulations/presets/paper-cifar10-resnet18.toml]
        [--target-accuracy 0.9] [--run-config "batch-size=64"]

A preset is a TOML file of run-config keys, the format ``flwr run --run-config
FILE.toml`` reads, plus optional comment lines ``# compare: --strategies ...`` with
this command's own options. Later settings win: the defaults, the preset's keys, its
``# compare:`` options, ``--run-config``, then the other options of the command line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsl_sage_flwr.app.algorithms import ALGORITHMS
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import ResultsWriter
from simulations.flwr_run import FlwrRunError, parse_run_config, run_app

GIB = 1024**3
MIB = 1024**2
DEFAULTS: dict[str, Any] = {
    "strategies": "fsl-sage,cse-fsl,fedavg",
    "dataset": "digits",
    "model": "cnn",
    "clients": 10,
    "rounds": 20,
    "alpha": 1.0,
    "partitioning": "dirichlet",
    "seed": 0,
    "output_dir": "outputs/compare",
    "target_accuracy": 0.0,
    "target_fraction": 0.95,
    "run_config": "",
    "timeout": 3600.0,
}
# A preset's comment lines that start so hold compare options; Flower skips them.
COMPARE_LINE = "# compare:"
# Run-config keys that are compare options as well, and the option each sets.
RUN_CONFIG_OPTIONS = {
    "dataset": "dataset",
    "model": "model",
    "num-server-rounds": "rounds",
    "alpha": "alpha",
    "partitioning": "partitioning",
    "seed": "seed",
    "min-available-nodes": "clients",
    "output-dir": "output_dir",
}
# Set by compare for each strategy: a preset's values serve plain `flwr run` only.
PER_STRATEGY_KEYS = ("algorithm", "run-name")


@dataclass(frozen=True)
class Preset:
    """One preset file: run-config keys and the compare options of its ``# compare:`` lines."""

    run_config: dict[str, Any]
    compare_args: list[str]


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


def build_run_configs(options: dict[str, Any], output_dir: Path) -> dict[str, dict[str, Any]]:
    """Return each strategy's run config: identical but for ``algorithm`` and ``run-name``.

    ``options["run_config"]`` holds the extra keys, as a ``"key=value ..."`` string or a mapping.
    """
    extra = options["run_config"]
    common = {
        **(parse_run_config(extra) if isinstance(extra, str) else dict(extra)),
        "dataset": options["dataset"],
        "model": options["model"],
        "num-server-rounds": int(options["rounds"]),
        "alpha": float(options["alpha"]),
        "partitioning": options["partitioning"],
        "seed": int(options["seed"]),
        "min-available-nodes": int(options["clients"]),
        "output-dir": str(output_dir.resolve()),
    }
    configs = {}
    for name in _strategy_names(options["strategies"]):
        configs[name] = {**common, "algorithm": name, "run-name": name}
    return configs


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


class Progress:
    """One status line: which strategy and round runs, and the time left.

    It follows the running strategy's ``results.jsonl``, the rows the ServerApp
    writes as each round ends, not Flower's log output.
    """

    def __init__(self, strategies: list[str], rounds: int) -> None:
        self.strategies = strategies
        self.rounds = rounds
        self.start = time.monotonic()
        self.done_rounds = 0
        self.current = 0
        self.results_path: Path | None = None
        self._seen_size = 0
        self._last_round = 0

    def begin(self, index: int, results_path: Path) -> None:
        """Mark strategy ``index`` as running, writing its rows to ``results_path``."""
        self.current = index
        self.results_path = results_path
        self._seen_size = 0
        self._last_round = 0
        self._show(0)

    def poll(self, _line: str = "") -> None:
        """Show the rounds the results file gained since the last call (an ``on_line`` hook)."""
        if self.results_path is None:
            return
        try:
            size = self.results_path.stat().st_size
        except FileNotFoundError:
            return
        if size == self._seen_size:
            return
        self._seen_size = size
        for row in _complete_rows(self.results_path):
            round_no = int(row.get("round", 0))
            if round_no > self._last_round:
                self._last_round = round_no
                self.done_rounds = self.current * self.rounds + round_no
                self._show(round_no, float(row["accuracy"]))

    def _show(self, round_no: int, accuracy: float | None = None) -> None:
        elapsed = time.monotonic() - self.start
        total = len(self.strategies) * self.rounds
        left = elapsed / self.done_rounds * (total - self.done_rounds) if self.done_rounds else math.nan
        acc = f", accuracy {accuracy:.4f}" if accuracy is not None else ""
        left_text = f"~{left / 60:.1f} min left" if left == left else "estimating time left"
        print(
            f"[{self.current + 1}/{len(self.strategies)} {self.strategies[self.current]}] "
            f"round {round_no}/{self.rounds}{acc}; {elapsed / 60:.1f} min elapsed, {left_text}",
            flush=True,
        )


def _complete_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file being written: every line that already ends."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; exits non-zero if any strategy's run failed."""
    options = _parse_options(argv)
    output_dir = Path(options["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    configs = build_run_configs(options, output_dir)
    names = list(configs)
    progress = Progress(names, int(options["rounds"]))
    rows_by_strategy: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    for index, name in enumerate(names):
        progress.begin(index, output_dir / configs[name]["run-name"] / ResultsWriter.FILE_NAME)
        try:
            outcome = run_app(
                configs[name],
                num_supernodes=int(options["clients"]),
                timeout=float(options["timeout"]),
                echo=False,
                on_line=progress.poll,
            )
            rows_by_strategy[name] = outcome.rows
        except FlwrRunError as err:
            print(f"strategy {name} FAILED: {err}", file=sys.stderr, flush=True)
            failed.append(name)
    if rows_by_strategy:
        best = max(max(r["accuracy"] for r in rows) for rows in rows_by_strategy.values())
        target = float(options["target_accuracy"]) or float(options["target_fraction"]) * best
        command = "python -m simulations.compare " + " ".join(argv if argv is not None else sys.argv[1:])
        summaries = write_outputs(output_dir, rows_by_strategy, target, command.strip())
        print("\n" + markdown_table(summaries, target))
        print(f"\nsummary, plots and per-round results in {output_dir.resolve()}")
    if failed:
        print(f"FAILED strategies: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _strategy_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or not names:
        raise SystemExit(f"unknown strategies {unknown}; choose from {', '.join(ALGORITHMS)}")
    return names


def read_preset(path: str | Path) -> Preset:
    """Read a preset: top-level run-config keys and ``# compare:`` option lines.

    The same file serves ``flwr run . --run-config FILE.toml``, which passes every
    key to the app (Flower refuses keys absent from ``[tool.flwr.app.config]``), so
    only run-config keys are allowed as keys; compare's own options live in comments.

    Parameters
    ----------
    path : str or Path
        The TOML file.

    Returns
    -------
    Preset
        Its run-config keys and its compare options as command-line words.

    Raises
    ------
    ValueError
        Naming the file, when it is missing, is not TOML, or sets a key that is not a
        run-config key (a table, or a misspelt or retired key) or a value of a type
        Flower cannot pass (a list).
    """
    path = Path(path)
    try:
        text = path.read_text()
        values = tomllib.loads(text)
    except OSError as err:
        raise ValueError(f"preset {path}: cannot be read ({err})") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset {path}: not TOML ({err})") from err
    known = _run_config_keys()
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise ValueError(
            f"preset {path}: {', '.join(map(repr, unknown))} not run-config keys; known: {', '.join(sorted(known))}"
        )
    not_scalar = sorted(k for k, v in values.items() if not isinstance(v, (bool, int, float, str)))
    if not_scalar:
        raise ValueError(f"preset {path}: {', '.join(map(repr, not_scalar))} must be a bool, number or string")
    compare_args: list[str] = []
    for line in text.splitlines():
        if line.startswith(COMPARE_LINE):
            compare_args += shlex.split(line[len(COMPARE_LINE) :])
    return Preset(run_config=values, compare_args=compare_args)


def _run_config_keys() -> set[str]:
    return set(RunSettings().to_config())


def _option_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, help="TOML file of run-config keys and '# compare:' option lines")
    parser.add_argument("--strategies", help=f"comma-separated, from: {', '.join(ALGORITHMS)}")
    parser.add_argument("--dataset")
    parser.add_argument("--model")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--partitioning")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output-dir")
    parser.add_argument("--target-accuracy", type=float, help="absolute target; default: 95%% of the best")
    parser.add_argument("--target-fraction", type=float, help="target as a share of the best accuracy")
    parser.add_argument("--run-config", help="extra run-config overrides for every strategy; win over a preset's")
    parser.add_argument("--timeout", type=float, help="seconds allowed per strategy")
    return parser


def _apply_run_config(options: dict[str, Any], extra: dict[str, Any], run_config: Mapping[str, Any]) -> None:
    """Set compare options from the run-config keys that name one, keep the rest in ``extra``."""
    for key, value in run_config.items():
        if key in RUN_CONFIG_OPTIONS:
            options[RUN_CONFIG_OPTIONS[key]] = value
        elif key not in PER_STRATEGY_KEYS:
            extra[key] = value


def _apply_arguments(options: dict[str, Any], extra: dict[str, Any], args: dict[str, Any]) -> None:
    """Apply parsed command-line words: their ``--run-config`` first, then the other options."""
    if args.get("run_config"):
        _apply_run_config(options, extra, parse_run_config(args["run_config"]))
    options.update({k: v for k, v in args.items() if v is not None and k not in ("run_config", "preset")})


def _parse_options(argv: list[str] | None) -> dict[str, Any]:
    parser = _option_parser()
    args = vars(parser.parse_args(argv))
    options = dict(DEFAULTS)
    extra: dict[str, Any] = {}
    if args["preset"] is not None:
        try:
            preset = read_preset(args["preset"])
        except ValueError as err:
            parser.error(str(err))
        _apply_run_config(options, extra, preset.run_config)
        preset_args = vars(parser.parse_args(preset.compare_args))
        if preset_args["preset"] is not None:
            parser.error(f"preset {args['preset']}: a '{COMPARE_LINE}' line may not name another preset")
        _apply_arguments(options, extra, preset_args)
    _apply_arguments(options, extra, args)
    options["run_config"] = extra
    return options


if __name__ == "__main__":
    sys.exit(main())
