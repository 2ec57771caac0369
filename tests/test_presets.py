"""Tests of the preset files: Flower and compare read them alike, and the CIFAR ones run."""

from __future__ import annotations

import math
import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.data import cifar
from simulations.compare import build_run_configs
from simulations.compare_options import parse_options, read_preset, strategy_names
from simulations.in_process import run_in_process
from simulations.paths import PROJECT_DIR

PRESETS_DIR = PROJECT_DIR / "simulations" / "presets"
PRESETS = sorted(PRESETS_DIR.glob("*.toml"))
PAPER_CIFAR = ["paper-cifar10-resnet18.toml", "paper-cifar100-resnet18.toml"]


def _app_defaults() -> dict:
    """The run config `flwr run` starts from: ``[tool.flwr.app.config]``, flattened."""
    pyproject = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    return flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])


def _as_flower_reads_it(preset: Path) -> dict:
    """What the app gets from ``flwr run . --run-config PRESET``: Flower's own parsing and key check."""
    overrides = parse_config_args([str(preset)])
    return fuse_dicts(_app_defaults(), overrides, check_keys=True)


def test_the_paper_setups_are_there():
    # Execute
    names = {p.name for p in PRESETS}
    # Assert: CIFAR-10/100 with ResNet-18, MNIST and Fashion-MNIST with both models
    expected = {
        *PAPER_CIFAR,
        "paper-fashion-mnist-resnet18.toml",
        "paper-fashion-mnist-cnn.toml",
        "paper-mnist-resnet18.toml",
        "paper-mnist-cnn.toml",
    }
    assert expected <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_key_of_a_preset_is_a_run_config_key(preset):
    # Prepare
    keys = set(tomllib.loads(preset.read_text()))
    known = set(RunSettings().to_config())
    # Execute: Flower's reading, then the app's checks of every value
    fused = _as_flower_reads_it(preset)
    settings = RunSettings.from_run_config(fused)
    # Assert
    assert keys <= known, keys - known
    assert keys <= set(_app_defaults()), keys - set(_app_defaults())
    assert all(settings.to_config()[k] == fused[k] for k in keys)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_compare_reads_every_preset(tmp_path, preset):
    # Execute
    options = parse_options(["--preset", str(preset)])
    configs = build_run_configs(options, tmp_path)
    # Assert: valid strategies; every strategy gets the preset's keys but its own algorithm
    names = strategy_names(options["strategies"])
    preset_keys = tomllib.loads(preset.read_text())
    for name in names:
        expected = {k: v for k, v in preset_keys.items() if k not in ("algorithm", "run-name", "output-dir")}
        assert {k: configs[name][k] for k in expected} == expected
        assert configs[name]["algorithm"] == name


@pytest.mark.parametrize("preset", PAPER_CIFAR)
def test_paper_cifar_presets_hold_the_paper_setup(preset):
    # Execute
    fused = _as_flower_reads_it(PRESETS_DIR / preset)
    # Assert: the spec's reference configuration
    paper = {
        "min-available-nodes": 10,
        "num-server-rounds": 200,
        "batch-size": 256,
        "lr": 0.001,
        "weight-decay": 0.0001,
        "upload-interval": 5,
        "align-interval": 10,
        "buffer-size": 1000,
        "align-epochs": 100,
        "align-batch-size": 1000,
        "model": "resnet18",
        "local-epochs": 1,
        "train-subset": 0,
        "fraction-train": 1.0,
    }
    assert {k: fused[k] for k in paper} == paper


def test_fashion_mnist_preset_keeps_its_measured_meaning(tmp_path):
    # Prepare: what its former compare-only format gave (docs/results.md was measured so)
    before = {
        "data-dir": "../shared/data",
        "train-subset": 12000,
        "batch-size": 64,
        "align-interval": 10,
        "align-epochs": 30,
        "dataset": "fashion-mnist",
        "model": "resnet18",
        "num-server-rounds": 30,
        "alpha": 1.0,
        "partitioning": "dirichlet",
        "seed": 0,
        "min-available-nodes": 10,
    }
    # Execute
    options = parse_options(["--preset", str(PRESETS_DIR / "fashion-mnist-resnet18.toml")])
    configs = build_run_configs(options, tmp_path)
    # Assert
    assert list(configs) == ["fsl-sage", "cse-fsl", "fedavg", "splitfed-ms", "splitfed-ss"]
    assert options["timeout"] == 5400
    assert options["output_dir"] == "outputs/fashion-mnist-resnet18"
    assert {k: v for k, v in configs["fedavg"].items() if k not in ("algorithm", "run-name", "output-dir")} == before


def test_command_line_wins_over_the_preset(tmp_path):
    # Prepare
    preset = tmp_path / "p.toml"
    preset.write_text(
        "# compare: --strategies fsl-sage,fedavg --timeout 60\n"
        'alpha = 1.0\nbatch-size = 64\nnum-server-rounds = 200\nmodel = "cnn"\n'
    )
    # Execute
    overridden = parse_options(
        ["--preset", str(preset), "--run-config", "alpha=0.1 batch-size=32 num-server-rounds=2", "--model", "resnet18"]
    )
    configs = build_run_configs(overridden, tmp_path)
    # Assert: the compare line, then --run-config, then the options win in turn
    assert list(configs) == ["fsl-sage", "fedavg"]
    assert overridden["timeout"] == 60
    assert overridden["rounds"] == 2
    assert {k: configs["fedavg"][k] for k in ("alpha", "batch-size", "num-server-rounds", "model")} == {
        "alpha": 0.1,
        "batch-size": 32,
        "num-server-rounds": 2,
        "model": "resnet18",
    }


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("batchsize = 64\n", "'batchsize'"),  # misspelt
        ('[compare]\nstrategies = "fedavg"\n', "'compare'"),  # Flower would refuse compare.strategies
        ('dataset = ["mnist"]\n', "'dataset'"),  # Flower passes scalars only
        ("alpha = \n", "not TOML"),
    ],
)
def test_a_bad_preset_is_refused_naming_the_key(tmp_path, text, named):
    # Prepare
    preset = tmp_path / "bad.toml"
    preset.write_text(text)
    # Execute / Assert
    with pytest.raises(ValueError, match=named):
        read_preset(preset)


def test_compare_stops_on_a_bad_preset(tmp_path, capsys):
    # Prepare
    preset = tmp_path / "bad.toml"
    preset.write_text("batchsize = 64\n")
    # Execute
    with pytest.raises(SystemExit) as exit_info:
        parse_options(["--preset", str(preset)])
    # Assert
    assert exit_info.value.code == 2
    assert "'batchsize' not run-config keys" in capsys.readouterr().err


# ----------------------------------------------------------------- CIFAR presets, 2 rounds


def _write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    """One file of the CIFAR "python version": a dict with bytes keys, as Python 2 wrote them."""
    batch = {
        b"batch_label": b"synthetic",
        b"data": images.reshape(len(images), 3 * 32 * 32),
        label_key: [int(label) for label in labels],
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def _write_synthetic_cifar(root: Path, name: str, rng: np.random.Generator) -> None:
    """A tiny CIFAR-10 or CIFAR-100 folder in the on-disk layout the preset looks for."""
    if name == "cifar10":
        folder, classes, label_key = root / "cifar-10-batches-py", 10, b"labels"
        files = {f"data_batch_{i}": 40 for i in range(1, 6)} | {"test_batch": 40}
    else:
        folder, classes, label_key = root / "cifar-100-python", 100, b"fine_labels"
        files = {"train": 1000, "test": 100}
    folder.mkdir(parents=True)
    for file_name, count in files.items():
        labels = np.arange(count) % classes
        images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
        # A class-dependent brightness gives the model something to learn.
        images[:, 0] = (labels[:, None, None] * (255 // classes)).astype(np.uint8)
        _write_cifar_batch(folder / file_name, images, labels, label_key)


@pytest.mark.parametrize(("preset", "dataset"), zip(PAPER_CIFAR, ["cifar10", "cifar100"]))
def test_paper_cifar_preset_runs_two_rounds_on_a_synthetic_folder(tmp_path, monkeypatch, preset, dataset):
    # Prepare: the preset as Flower passes it, pointed at a tiny folder, with small work
    def no_download(spec):
        raise AssertionError(f"tried to fetch {spec.hub_id}")

    monkeypatch.setattr(cifar, "_load_cifar_from_hub", no_download)
    config = _as_flower_reads_it(PRESETS_DIR / preset)
    _write_synthetic_cifar(tmp_path / "data", dataset, np.random.default_rng(0))
    config.update(
        {
            "data-dir": str(tmp_path / "data"),
            "num-server-rounds": 2,
            "align-epochs": 1,
            "output-dir": str(tmp_path / "out"),
            "run-name": "run",
        }
    )
    # Execute
    run_in_process(server_app, client_app, config, num_nodes=config["min-available-nodes"])
    # Assert
    rows = read_results(tmp_path / "out" / "run" / "results.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
