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
        [--spec my_app.task:make_spec --node-data my_app.task:load_partition
         --test-data my_app.task:load_testset] [--in-process]

``--spec`` trains a split network of one's own instead of the built-in ``--model``
(the run-config keys ``split-spec``, ``node-data`` and ``test-data``); the current
folder is put on the apps' ``PYTHONPATH``, so ``my_app`` may be a folder there.

A preset is a TOML file of run-config keys, the format ``flwr run --run-config
FILE.toml`` reads, plus optional comment lines ``# compare: --strategies ...`` with
this command's own options. Later settings win: the defaults, the preset's keys, its
``# compare:`` options, ``--run-config``, then the other options of the command line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from fsl_sage_flwr.app.results import ResultsWriter
from fsl_sage_flwr.app.user_code import UserCodeError, import_reference
from simulations.compare_options import parse_options, strategy_names
from simulations.compare_report import HEADLINE_METRICS, headline_metric, markdown_table, target_value, write_outputs
from simulations.flower_cli import parse_run_config
from simulations.flwr_run import FlwrRunError, run_app


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
    # A split network of one's own: only set keys, so a built-in run's config is as it always was.
    for key, option in (("split-spec", "spec"), ("node-data", "node_data"), ("test-data", "test_data")):
        if options.get(option):
            common[key] = options[option]
    configs = {}
    for name in strategy_names(options["strategies"]):
        configs[name] = {**common, "algorithm": name, "run-name": name}
    return configs


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
                metric = next((name for name in HEADLINE_METRICS if name in row), "loss")
                self._show(round_no, f", {metric} {float(row[metric]):.4f}")

    def _show(self, round_no: int, figure: str = "") -> None:
        elapsed = time.monotonic() - self.start
        total = len(self.strategies) * self.rounds
        left = elapsed / self.done_rounds * (total - self.done_rounds) if self.done_rounds else math.nan
        left_text = f"~{left / 60:.1f} min left" if left == left else "estimating time left"
        print(
            f"[{self.current + 1}/{len(self.strategies)} {self.strategies[self.current]}] "
            f"round {round_no}/{self.rounds}{figure}; {elapsed / 60:.1f} min elapsed, {left_text}",
            flush=True,
        )


def _complete_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file being written: every line that already ends."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def _check_user_code(configs: dict[str, dict[str, Any]]) -> None:
    """Find the user's functions before any run starts; put the current folder on the apps' path.

    Raises
    ------
    SystemExit
        Naming the option's run-config key, when a function cannot be imported.
    """
    config = next(iter(configs.values()))
    references = {key: config[key] for key in ("split-spec", "node-data", "test-data") if config.get(key)}
    if not references:
        return
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)
    # The apps run in child processes (``flwr run``); they find the user's modules from here too.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    for key, reference in references.items():
        try:
            import_reference(reference, key)
        except UserCodeError as err:
            raise SystemExit(str(err)) from err


def run_here(config: dict[str, Any], clients: int, progress: Progress) -> list[dict[str, Any]]:
    """Run the apps in this process on ``clients`` nodes with ``config`` over the app's defaults; return the rows."""
    from fsl_sage_flwr.app.client_app import app as client_app
    from fsl_sage_flwr.app.results import read_results
    from fsl_sage_flwr.app.server_app import app as server_app
    from simulations.in_process import run_in_process
    from simulations.paths import PROJECT_DIR

    defaults = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    run_in_process(server_app, client_app, {**defaults, **config}, clients)
    progress.poll()
    return read_results(Path(config["output-dir"]) / str(config["run-name"]) / ResultsWriter.FILE_NAME)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; exits non-zero if any strategy's run failed."""
    options = parse_options(argv, __doc__.splitlines()[0])
    output_dir = Path(options["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    configs = build_run_configs(options, output_dir)
    _check_user_code(configs)
    names = list(configs)
    progress = Progress(names, int(options["rounds"]))
    rows_by_strategy: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    for index, name in enumerate(names):
        progress.begin(index, output_dir / configs[name]["run-name"] / ResultsWriter.FILE_NAME)
        try:
            if options.get("in_process"):
                rows_by_strategy[name] = run_here(configs[name], int(options["clients"]), progress)
            else:
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
        accuracy = headline_metric(rows_by_strategy) == "accuracy"
        given = float(options["target_accuracy"]) if accuracy else 0.0
        target = given or target_value(rows_by_strategy, float(options["target_fraction"]))
        command = "python -m simulations.compare " + " ".join(argv if argv is not None else sys.argv[1:])
        summaries = write_outputs(output_dir, rows_by_strategy, target, command.strip())
        print("\n" + markdown_table(summaries, target))
        print(f"\nsummary, plots and per-round results in {output_dir.resolve()}")
    if failed:
        print(f"FAILED strategies: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
