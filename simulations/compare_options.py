"""The options of ``simulations.compare``: defaults, preset files, the command line, in that order."""

from __future__ import annotations

import argparse
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsl_sage_flwr.app.algorithms import ALGORITHMS
from fsl_sage_flwr.app.config import RunSettings
from simulations.flower_cli import parse_run_config

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
    "spec": "",
    "node_data": "",
    "test_data": "",
    "in_process": False,
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
    "split-spec": "spec",
    "node-data": "node_data",
    "test-data": "test_data",
}
# Set by compare for each strategy: a preset's values serve plain `flwr run` only.
PER_STRATEGY_KEYS = ("algorithm", "run-name")


@dataclass(frozen=True)
class Preset:
    """One preset file: run-config keys and the compare options of its ``# compare:`` lines."""

    run_config: dict[str, Any]
    compare_args: list[str]


def strategy_names(text: str) -> list[str]:
    """Split a comma-separated list of algorithm names, checking each.

    Parameters
    ----------
    text : str
        E.g. ``"fsl-sage,cse-fsl"``.

    Returns
    -------
    list[str]
        The names, in order.

    Raises
    ------
    SystemExit
        If the list is empty or names an algorithm that does not exist.
    """
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


def _option_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
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
    parser.add_argument(
        "--target-accuracy",
        type=float,
        help="absolute accuracy target (classifiers); default: 95%% of the best (perplexity, loss: the best / 0.95)",
    )
    parser.add_argument("--target-fraction", type=float, help="target as a share of the best accuracy")
    parser.add_argument("--run-config", help="extra run-config overrides for every strategy; win over a preset's")
    parser.add_argument("--timeout", type=float, help="seconds allowed per strategy")
    parser.add_argument("--spec", help="own split network: 'module:function' returning a SplitSpec (split-spec)")
    parser.add_argument("--node-data", help="own node data: 'module:function' taking the node's Context (node-data)")
    parser.add_argument("--test-data", help="own test set: 'module:function', when the spec has none (test-data)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        default=None,
        help="run the apps in this process, one node after another, instead of through `flwr run`",
    )
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


def parse_options(argv: list[str] | None, description: str | None = None) -> dict[str, Any]:
    """Return the compare options: defaults, then a preset's keys and ``# compare:`` lines, then ``argv``.

    Parameters
    ----------
    argv : list[str] or None
        Command-line words; ``None`` reads ``sys.argv``.
    description : str, optional
        The ``--help`` text's description.

    Returns
    -------
    dict[str, Any]
        Every key of :data:`DEFAULTS`; ``run_config`` holds the extra run-config keys as a mapping.
    """
    parser = _option_parser(description)
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
