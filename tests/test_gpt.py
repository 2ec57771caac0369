"""The GPT-2 split: part shapes, causal masking, client -> server equal to the whole model, LoRA, local checkpoints."""

from __future__ import annotations

import sys

import pytest
import torch

from fsl_sage_flwr.core.gpt import GPTSplitConfig, build_gpt2, gpt_split_parts, load_gpt2
from fsl_sage_flwr.core.gpt_lora import LoRASettings
from fsl_sage_flwr.core.gpt_split import GPTSplit
from fsl_sage_flwr.core.training import make_adam
from fsl_sage_flwr.extras import MissingExtraError

pytest.importorskip("transformers")

TINY = GPTSplitConfig(vocab_size=50, context_length=12, width=32, depth=3, heads=4, client_blocks=1, dropout=0.0)


def _tokens(seed: int = 0, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.vocab_size, (batch, TINY.context_length), generator=generator)


def test_parts_map_token_ids_to_hidden_states_and_logits():
    # Prepare
    torch.manual_seed(0)
    split = GPTSplit(TINY)
    client, server, aux = split.build_client(), split.build_server(), split.build_aux()
    tokens = _tokens()

    # Execute
    hidden = client(tokens)
    from_floats = client(tokens.float())

    # Assert
    assert hidden.shape == (2, *split.cut_shape) == (2, 12, 32)
    assert server(hidden).shape == aux(hidden).shape == (2, 12, TINY.vocab_size)
    assert len(server.blocks) == 2 and len(aux.blocks) == 1
    torch.testing.assert_close(from_floats, hidden, rtol=0, atol=0)


def test_a_later_token_changes_no_earlier_logit():
    # Prepare
    torch.manual_seed(0)
    client, server, _ = gpt_split_parts(build_gpt2(TINY).eval(), 1, 1)
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % TINY.vocab_size

    # Execute
    with torch.no_grad():
        before, after = server(client(tokens)), server(client(changed))

    # Assert
    torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=0)
    assert not torch.allclose(after[:, 6:], before[:, 6:])


@pytest.mark.parametrize("client_blocks", [1, 2])
def test_client_then_server_computes_the_whole_model(client_blocks):
    # Prepare
    torch.manual_seed(1)
    model = build_gpt2(TINY).eval()
    client, server, _ = gpt_split_parts(model, client_blocks, 1)
    tokens = _tokens(1)

    # Execute
    with torch.no_grad():
        split_logits = server(client(tokens))
        whole_logits = model(tokens).logits

    # Assert
    torch.testing.assert_close(split_logits, whole_logits, rtol=1e-5, atol=1e-5)


def test_the_aux_input_gradient_can_be_differentiated_as_alignment_does():
    # Prepare
    torch.manual_seed(0)
    aux = GPTSplit(TINY).build_aux()
    hidden = torch.randn(2, *TINY.cut_shape, requires_grad=True)

    # Execute: the gradient of a loss of the aux's input gradient reaches the aux's weights
    (input_gradient,) = torch.autograd.grad(aux(hidden).logsumexp(-1).sum(), hidden, create_graph=True)
    input_gradient.square().sum().backward()

    # Assert
    assert aux.blocks[0].attn.c_attn.weight.grad is not None
    assert torch.isfinite(aux.blocks[0].attn.c_attn.weight.grad).all()


def test_the_parts_hold_copies_not_the_models_weights():
    # Prepare
    model = build_gpt2(TINY)
    client, server, _ = gpt_split_parts(model, 1, 1)

    # Execute
    with torch.no_grad():
        server.lm_head.weight.add_(1.0)

    # Assert: the head is untied from the client's token embedding and from the model
    torch.testing.assert_close(client.wte.weight, model.transformer.wte.weight, rtol=0, atol=0)
    assert not torch.equal(server.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"client_blocks": 3}, "client_blocks"),
        ({"width": 30}, "multiple of heads"),
        ({"aux_blocks": -1}, "aux_blocks"),
        ({"dropout": 1.0}, "dropout"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_a_config_that_cannot_be_built_is_refused(change, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        GPTSplitConfig(**{**TINY.__dict__, **change})


def test_with_lora_the_client_trains_and_holds_only_its_adapters():
    # Prepare
    torch.manual_seed(0)
    client = GPTSplit(TINY, lora=LoRASettings(rank=2, targets=("c_attn", "c_fc"))).build_client()
    frozen_before = client.blocks[0].mlp.c_proj.weight.clone()
    adapters_before = {k: v.clone() for k, v in client.state_dict().items()}
    optimizer = make_adam(client, lr=0.01, weight_decay=0.0)

    # Execute
    client(_tokens()).square().mean().backward()
    optimizer.step()

    # Assert
    names = [name for name, _ in client.named_parameters()]
    assert names and all("lora_" in name for name in names)
    assert list(client.state_dict()) == names
    assert any(not torch.equal(client.state_dict()[k], v) for k, v in adapters_before.items())
    torch.testing.assert_close(client.blocks[0].mlp.c_proj.weight, frozen_before, rtol=0, atol=0)


def test_lora_clients_built_under_any_seed_share_their_frozen_weights():
    # Prepare
    settings = LoRASettings(rank=2, base_seed=7)
    torch.manual_seed(1)
    first = GPTSplit(TINY, lora=settings).build_client()
    torch.manual_seed(2)
    second = GPTSplit(TINY, lora=settings).build_client()
    plain = GPTSplit(TINY).build_client()
    tokens = _tokens()

    # Execute: the adapters are what travels; load the first's into the second
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        first_out, second_out = first.eval()(tokens), second.eval()(tokens)

    # Assert
    torch.testing.assert_close(second_out, first_out, rtol=0, atol=0)
    assert sum(t.numel() for t in first.state_dict().values()) < sum(t.numel() for t in plain.state_dict().values())


def test_a_local_checkpoint_is_split_with_its_weights(tmp_path):
    # Prepare
    torch.manual_seed(3)
    saved = build_gpt2(TINY).eval()
    saved.save_pretrained(tmp_path)
    tokens = _tokens(3)

    # Execute
    split = GPTSplit(GPTSplitConfig(client_blocks=2, aux_blocks=1), checkpoint_dir=tmp_path)
    client, server = split.build_client().eval(), split.build_server().eval()
    with torch.no_grad():
        split_logits = server(client(tokens))

    # Assert
    assert split.config == GPTSplitConfig(**{**TINY.__dict__, "client_blocks": 2})
    torch.testing.assert_close(split_logits, saved(tokens).logits, rtol=1e-5, atol=1e-5)


def test_a_folder_without_a_checkpoint_is_named(tmp_path):
    # Execute / Assert
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_gpt2(tmp_path)


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    # Prepare: a None entry makes importing the module fail as if it were not installed
    monkeypatch.setitem(sys.modules, "transformers", None)

    # Execute / Assert
    with pytest.raises(MissingExtraError, match=r"fsl-sage-flwr\[lm\]"):
        build_gpt2(TINY)
