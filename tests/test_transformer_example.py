"""The example app `examples/tiny-transformer`: its split causal transformer, its text, and a run through `flwr run`."""

from __future__ import annotations

import importlib
import json
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

from simulations.example_apps import EXAMPLES_DIR, run_example

EXAMPLE = EXAMPLES_DIR / "tiny-transformer"
ROUNDS = 4


@pytest.fixture
def task(monkeypatch) -> ModuleType:
    """The example's ``task`` module, imported from its folder as Flower does."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return importlib.import_module("tiny_transformer.task")


def _tokens(task: ModuleType, seed: int = 0, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, task.VOCAB_SIZE, (batch, task.CONTEXT), generator=generator).float()


def test_client_then_server_computes_the_whole_models_logits(task):
    # Prepare
    torch.manual_seed(0)
    model = task.TinyTransformer().eval()
    client, server = task.cut(model)
    tokens = _tokens(task)
    # Execute
    with torch.no_grad():
        whole, cut = model(tokens), client(tokens)
        split = server(cut)
    # Assert: the cut is the spec's shape, and the parts together are the model
    assert cut.shape == (3, *task.make_spec().cut_shape)
    assert whole.shape == (3, task.CONTEXT, task.VOCAB_SIZE)
    torch.testing.assert_close(split, whole, rtol=0, atol=0)


def test_a_later_token_changes_no_earlier_logit_of_the_split_or_the_aux(task):
    # Prepare
    torch.manual_seed(0)
    parts = task.make_spec().build()
    tokens = _tokens(task)
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % task.VOCAB_SIZE
    # Execute
    with torch.no_grad():
        outputs = [(head(parts.client(tokens)), head(parts.client(changed))) for head in (parts.server, parts.aux)]
    # Assert: positions before 10 are untouched, the changed one and later ones move
    for before, after in outputs:
        torch.testing.assert_close(after[:, :10], before[:, :10], rtol=0, atol=0)
        assert not torch.allclose(after[:, 10:], before[:, 10:])


def test_the_aux_has_a_second_derivative_for_the_alignment(task):
    # Prepare: the input gradient of the aux's loss, kept differentiable as the alignment keeps it
    torch.manual_seed(0)
    parts = task.make_spec().build()
    cut = parts.client(_tokens(task)).detach().requires_grad_(True)
    labels = torch.randint(0, task.VOCAB_SIZE, (3, task.CONTEXT))
    (gradient,) = torch.autograd.grad(task.token_cross_entropy(parts.aux(cut), labels), cut, create_graph=True)
    # Execute: differentiate a function of that gradient by the aux's weights
    weights = [p for p in parts.aux.parameters() if p.requires_grad]
    second = torch.autograd.grad(gradient.pow(2).sum(), weights, allow_unused=True)
    # Assert: the attention weights get a non-zero second-order gradient
    by_name = dict(zip([n for n, p in parts.aux.named_parameters() if p.requires_grad], second))
    assert by_name["blocks.0.attention.qkv.weight"] is not None
    assert float(by_name["blocks.0.attention.qkv.weight"].abs().sum()) > 0


def test_each_file_goes_to_one_node_and_labels_are_the_next_bytes(task):
    # Prepare
    contexts = [
        SimpleNamespace(node_config={"partition-id": p, "num-partitions": 3}, run_config={"seed": 0}) for p in range(3)
    ]
    openings = [task.windows(text)[0][0].tobytes() for text in task.source_texts()]  # each file's first window
    # Execute
    shares = [task.load_partition(context) for context in contexts]
    testset = task.load_testset()
    # Assert: float32 ids and int64 next bytes of (T,) each; every file's opening on one node only
    for x, y in [*shares, testset]:
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == y.shape[1:] == (task.CONTEXT,)
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:].astype(np.int64))
    holders = [
        [node for node, (x, _) in enumerate(shares) if opening in {row.tobytes() for row in x}] for opening in openings
    ]
    assert all(len(nodes) == 1 for nodes in holders), holders
    assert sorted({nodes[0] for nodes in holders}) == [0, 1, 2]
    assert not set(openings) & {row.tobytes() for row in testset[0]}


@pytest.mark.e2e  # the example app through `flwr run`, 3 SuperNodes
def test_example_transformer_lowers_validation_perplexity_through_flwr_run(tmp_path):
    # Prepare: a fresh Flower home and 3 simulated SuperNodes, the app's other settings as shipped
    run_configs = [
        f"num-server-rounds={ROUNDS} min-available-nodes=3",
        f"output-dir={json.dumps(str(tmp_path / 'out'))} run-name='test'",
    ]
    # Execute
    run = run_example(
        EXAMPLE,
        tmp_path / "flwr-home",
        federation_config="num-supernodes=3 client-resources-num-cpus=1",
        run_configs=run_configs,
    )
    # Assert: completed, every round evaluated, perplexity well below round 0's and the uniform byte model's
    assert run.statuses == ["finished:completed"], run.log[-3000:]
    rounds = json.loads((tmp_path / "out" / "test" / "perplexity.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    first, last = rounds[0]["perplexity"], rounds[-1]["perplexity"]
    assert last < first / 4 and last < 256 / 4, rounds
    assert f"round {ROUNDS} validation perplexity" in run.log
    assert run.leftovers == []
