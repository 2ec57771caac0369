"""Tests of the ablation runner: its studies, its table and plots, and its failures."""

from __future__ import annotations

import csv
import json

import pytest

from fsl_sage_flwr.core.models import build_split_model
from simulations import ablations

TINY = 'dataset="digits" train-subset=0 min-available-nodes=3 align-epochs=2 batch-size=16'


def test_studies_hold_the_values_the_ablations_ask_for():
    intervals = [v["align-interval"] for v in ablations.STUDIES["interval"].values()]
    assert intervals == [1, 2, 5, 10, 20, 50]
    assert [v["aux-variant"] for v in ablations.STUDIES["aux-size"].values()] == ["linear", "half", "default", "full"]
    assert [v["alpha"] for v in ablations.STUDIES["alpha"].values()] == [0.1, 1.0, 10.0, 100.0]
    assert [v["upload-dtype"] for v in ablations.STUDIES["compression"].values()] == [
        "float32",
        "float16",
        "bfloat16",
        "int8",
    ]
    adaptive = ablations.STUDIES["adaptive"].values()
    assert any(v.get("align-threshold", 0) == 0 for v in adaptive)
    assert any(v.get("align-threshold", 0) > 0 for v in adaptive)


def test_every_variant_is_a_valid_run_config():
    # Prepare / Execute: each study's configs, checked as the ServerApp checks them
    from fsl_sage_flwr.app.config import RunSettings

    for study in ablations.STUDIES:
        for name, config in ablations.variant_configs(study, ablations.BASE).items():
            # Assert
            settings = RunSettings.from_run_config({**config, "data-dir": ""})
            assert settings.algorithm == ("cse-fsl" if name == "cse-fsl" else "fsl-sage"), name


def test_an_aux_budget_becomes_bytes_of_that_many_auxes():
    configs = ablations.variant_configs("adaptive", ablations.BASE)
    budgets = {name: c["align-budget-bytes"] for name, c in configs.items()}
    # the base's aux: the default variant of the cnn split on 1x28x28 images, 10 classes
    aux = build_split_model("cnn", num_classes=10, input_shape=(1, 28, 28), parts=("client", "aux")).aux
    one_aux = sum(t.numel() * t.element_size() for t in aux.state_dict().values())
    assert budgets["cosine<0.25 within 30 auxes"] == 30 * one_aux > 0
    assert budgets["fixed l=5"] == 0


def test_an_unknown_variant_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="no variant.*l=5"):
        ablations.variant_configs("interval", ablations.BASE, ["l=3"])


def test_the_table_comes_from_the_rows(tmp_path):
    # Prepare: two variants' rows
    rows = {
        "a": [_row(0, 0.1, 0), _row(1, 0.6, 2**20, alignments=2, cosine=0.5), _row(2, 0.5, 2**21, cosine=0.3)],
        "b": [_row(0, 0.1, 0), _row(1, 0.3, 2**22), _row(2, 0.58, 2**23)],
    }
    # Execute
    ablations.write_outputs(tmp_path, rows, target=0.55)
    # Assert
    table = {r["variant"]: r for r in csv.DictReader((tmp_path / "table.csv").open())}
    assert float(table["a"]["final_accuracy"]) == 0.5 and float(table["a"]["best_accuracy"]) == 0.6
    assert float(table["a"]["mib_to_target"]) == 1.0 and float(table["b"]["mib_to_target"]) == 8.0
    assert float(table["a"]["late_drop"]) == pytest.approx(0.1) and float(table["b"]["late_drop"]) == 0.0
    assert int(table["a"]["alignments"]) == 2 and float(table["a"]["fidelity_cosine"]) == pytest.approx(0.4)
    assert float(table["b"]["mib_up"]) == pytest.approx(sum(r["bytes_up"] for r in rows["b"]) / 2**20)
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 6
    assert (tmp_path / "accuracy_vs_rounds.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_gib.png").stat().st_size > 0


def _row(round_no: int, accuracy: float, cumulative: int, alignments: int = 0, cosine: float | None = None) -> dict:
    previous = cumulative // 2 if round_no == 2 else 0
    row = {
        "round": round_no,
        "accuracy": accuracy,
        "cumulative_bytes": cumulative,
        "bytes_up": (cumulative - previous) // 2,
        "bytes_down": (cumulative - previous) // 2,
        "round_seconds": 1.0,
        "alignments": alignments,
    }
    if cosine is not None:
        row["fidelity_cosine_mean"] = cosine
    return row


@pytest.mark.e2e  # two FSL-SAGE runs of 2 rounds on digits
def test_a_study_runs_its_variants_and_writes_table_and_plots(tmp_path, capsys):
    # Execute
    code = ablations.main(
        ["compression", "--variants", "float32,int8", "--rounds", "2", "--run-config", TINY]
        + ["--output-dir", str(tmp_path)]
    )
    # Assert: both variants ran; the table's final accuracy is each run's last row
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "compression" / "rows.jsonl").read_text().splitlines()]
    table = {r["variant"]: r for r in csv.DictReader((tmp_path / "compression" / "table.csv").open())}
    for name in ("float32", "int8"):
        last = [r for r in rows if r["variant"] == name][-1]
        assert last["round"] == 2
        assert float(table[name]["final_accuracy"]) == pytest.approx(last["accuracy"])
    assert float(table["int8"]["mib_up"]) < float(table["float32"]["mib_up"])
    assert "int8: final accuracy" in capsys.readouterr().out
    # Execute again: the finished runs are read, not repeated
    code = ablations.main(
        ["compression", "--variants", "int8", "--rounds", "2", "--run-config", TINY, "--output-dir", str(tmp_path)]
    )
    assert code == 0 and "int8: finished before" in capsys.readouterr().out


@pytest.mark.e2e  # one run that fails at its configuration check
def test_a_failing_variant_makes_the_command_fail_naming_it(tmp_path, capsys):
    code = ablations.main(
        ["compression", "--variants", "int8", "--rounds", "2", "--run-config", TINY + ' autocast="fp16"']
        + ["--output-dir", str(tmp_path)]
    )
    assert code == 1
    assert "FAILED variants: int8" in capsys.readouterr().err
