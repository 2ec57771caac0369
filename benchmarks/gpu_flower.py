"""FSL-SAGE on GPUs through ``flwr run``: fractional GPU clients, stacked alignment and CSE-FSL beside the floor loop.

One setting (a preset of run-config keys, e.g. the paper's Fashion-MNIST ResNet-18
one) runs in two parts, each meant to fit one call of at most ten minutes:

``part1``
    the floor loop (:mod:`benchmarks.floor`, no Flower, no Ray) on the same data,
    partitions and seeds; FSL-SAGE through ``flwr run`` with the first
    ``--gpus-per-client`` (one client actor per that share of a GPU), aligning one
    client after another; the same with ``align-stacked=true``.
``part2``
    FSL-SAGE with each further ``--gpus-per-client`` (more actors per GPU); CSE-FSL
    with the first.
``summary``
    only the table, from what earlier parts left in ``--out``.

Every part ends by writing ``summary.json`` and ``summary.md`` from all the runs
found in ``--out`` and printing the table (see :mod:`benchmarks.gpu_flower_report`).
A run that fails or outlasts the part's ``--budget`` is recorded as such and the
part goes on. With ``--gpus-per-client 0`` and a tiny setting the same code runs on
CPUs (the smoke test in ``tests/test_gpu_flower.py``).

Usage (from the repository folder)::

    python -m benchmarks.gpu_flower part1 --out gpu-out --preset simulations/presets/fashion-mnist-resnet18.toml \\
        --data-dir /path/to/fashion-mnist --rounds 40 --gpus-per-client 0.25 0.125
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu_flower_report import write_summary
from simulations.flower_cli import parse_run_config
from simulations.flwr_run import FlwrRunError, run_app
from simulations.processes import become_subreaper

PARTS = ("part1", "part2", "summary")
#: Seconds a run needs at least; a part with less left skips its further runs.
MIN_RUN_SECONDS = 30.0


@dataclass(frozen=True)
class FlowerSetting:
    """One ``flwr run`` of the benchmark: its folder name, algorithm, GPU share per client and alignment mode."""

    name: str
    algorithm: str
    gpus_per_client: float
    align_stacked: bool

    def __post_init__(self) -> None:
        if self.algorithm not in ("fsl-sage", "cse-fsl"):
            raise ValueError(f"algorithm must be fsl-sage or cse-fsl, got {self.algorithm!r}")
        if not 0 <= self.gpus_per_client <= 1:
            raise ValueError(f"gpus_per_client must be in [0, 1], got {self.gpus_per_client}")


def flower_settings(part: str, gpu_shares: list[float]) -> list[FlowerSetting]:
    """The ``flwr run`` settings of ``part``: see the module docstring."""
    if not gpu_shares:
        raise ValueError("give at least one --gpus-per-client value")
    first, *others = gpu_shares
    if part == "part1":
        return [
            FlowerSetting(f"fsl-sage-gpu{first:g}", "fsl-sage", first, False),
            FlowerSetting(f"fsl-sage-gpu{first:g}-stacked", "fsl-sage", first, True),
        ]
    if part == "part2":
        more = [FlowerSetting(f"fsl-sage-gpu{share:g}", "fsl-sage", share, False) for share in others]
        return more + [FlowerSetting(f"cse-fsl-gpu{first:g}", "cse-fsl", first, False)]
    return []


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys every run shares: the preset's, then ``--run-config``'s, then rounds, device and data."""
    config: dict[str, Any] = {}
    if args.preset:
        config.update(tomllib.loads(Path(args.preset).read_text()))
    config.update(parse_run_config(args.run_config))
    config["num-server-rounds"] = args.rounds
    config["device"] = args.device
    if args.data_dir:
        config["data-dir"] = str(Path(args.data_dir).resolve())
    elif config.get("data-dir"):
        config["data-dir"] = str(Path(str(config["data-dir"])).resolve())
    config.setdefault("min-available-nodes", 10)
    return config


def main(argv: list[str] | None = None) -> int:
    """Run one part, then write and print the summary of every run in ``--out``."""
    args = _parser().parse_args(argv)
    out = Path(args.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    config = run_config(args)
    deadline = time.monotonic() + args.budget
    # The SuperLink `flwr run` starts detaches; as a sub-reaper this process keeps it in its tree.
    become_subreaper()
    if args.part == "part1":
        _run_floor(args, config, out, deadline)
    for setting in flower_settings(args.part, args.gpus_per_client):
        _run_flower(args, config, setting, out, deadline)
    table = write_summary(out, target=args.target_accuracy)
    print(table, flush=True)
    return 0


def _run_floor(args: argparse.Namespace, config: dict[str, Any], out: Path, deadline: float) -> None:
    """Run the floor loop on the run config's data, partitions and seeds; record a failure instead of raising."""
    command = [sys.executable, "-m", "benchmarks.floor", "--out", str(out / "floor.json"), "--rounds", str(args.rounds)]
    command += ["--device", "cuda" if args.device == "auto" and _has_cuda() else args.device]
    for flag, key in _FLOOR_FLAGS.items():
        if key in config:
            command += [flag, str(config[key])]
    left = deadline - time.monotonic()
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(left, 1.0))
    except subprocess.TimeoutExpired:
        _record_failure(out, "floor", f"outlasted the part's budget ({left:.0f} s left)", time.monotonic() - start)
        return
    (out / "floor.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        _record_failure(out, "floor", (done.stderr.strip().splitlines() or ["no output"])[-1], time.monotonic() - start)


#: benchmarks.floor's options and the run-config keys they take their values from.
_FLOOR_FLAGS = {
    "--dataset": "dataset",
    "--data-dir": "data-dir",
    "--train-subset": "train-subset",
    "--model": "model",
    "--clients": "min-available-nodes",
    "--partitioning": "partitioning",
    "--alpha": "alpha",
    "--local-epochs": "local-epochs",
    "--batch-size": "batch-size",
    "--lr": "lr",
    "--weight-decay": "weight-decay",
    "--upload-interval": "upload-interval",
    "--align-interval": "align-interval",
    "--buffer-size": "buffer-size",
    "--align-epochs": "align-epochs",
    "--align-batch-size": "align-batch-size",
    "--align-lr": "align-lr",
    "--seed": "seed",
}


def _run_flower(
    args: argparse.Namespace, config: dict[str, Any], setting: FlowerSetting, out: Path, deadline: float
) -> None:
    """One ``flwr run`` of ``setting`` into ``out/runs/<name>``; a failure is recorded, not raised."""
    left = deadline - time.monotonic()
    if left < MIN_RUN_SECONDS:
        _record_failure(out, setting.name, f"not started: {left:.0f} s of the part's budget left", 0.0)
        return
    run = {
        **config,
        "algorithm": setting.algorithm,
        "align-stacked": setting.align_stacked,
        "output-dir": str(out / "runs"),
        "run-name": setting.name,
    }
    start = time.monotonic()
    try:
        outcome = run_app(
            run,
            num_supernodes=int(config["min-available-nodes"]),
            cpus_per_client=args.cpus_per_client,
            gpus_per_client=setting.gpus_per_client,
            timeout=left,
            echo=False,
        )
    except FlwrRunError as err:
        _record_failure(out, setting.name, str(err).splitlines()[0], time.monotonic() - start)
        return
    (out / "runs" / setting.name / "flower.log").write_text(outcome.log)
    meta = {**vars(setting), "wall_seconds": outcome.wall_seconds, "train_images": _train_images(config)}
    (out / "runs" / setting.name / "setting.json").write_text(json.dumps(meta, indent=2))
    print(f"{setting.name}: completed in {outcome.wall_seconds:.0f} s", flush=True)


def _train_images(config: dict[str, Any]) -> int:
    """Images the sampled clients train on per round (0 when the config does not say: the whole set)."""
    epochs = int(config.get("local-epochs", 1))
    return int(int(config.get("train-subset", 0)) * epochs * float(config.get("fraction-train", 1.0)))


def _record_failure(out: Path, name: str, reason: str, seconds: float) -> None:
    """Write ``out/failed/<name>.json`` so the summary names the run and why it has no figures."""
    (out / "failed").mkdir(exist_ok=True)
    (out / "failed" / f"{name}.json").write_text(json.dumps({"name": name, "reason": reason, "seconds": seconds}))
    print(f"{name}: FAILED: {reason}", flush=True)


def _has_cuda() -> bool:
    """Whether torch sees a GPU, asked in a child so this process does not import torch for it."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], env=dict(os.environ)).returncode == 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=PARTS, help="which runs: see the module docstring")
    p.add_argument("--out", required=True, help="the output folder every part writes into")
    p.add_argument("--preset", default="", help="TOML file of run-config keys")
    p.add_argument("--run-config", default="", help="run-config overrides, over the preset's")
    p.add_argument("--data-dir", default="", help="data folder (over the preset's)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--device", default="auto", help="the run config's device: auto, cpu, cuda")
    p.add_argument(
        "--gpus-per-client", type=float, nargs="+", default=[0.25, 0.125], help="GPU shares per client actor"
    )
    p.add_argument("--cpus-per-client", type=float, default=2.0, help="Ray CPUs per client actor")
    p.add_argument("--budget", type=float, default=570.0, help="seconds the part may take in all")
    p.add_argument("--target-accuracy", type=float, default=0.85, help="accuracy the bytes-to-target figure uses")
    return p


if __name__ == "__main__":
    sys.exit(main())
