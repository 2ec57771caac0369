"""Tests for fsl_sage_flwr.core.models: split model sizes, shapes, registry and errors."""

import pytest
import torch
from torch import nn

from fsl_sage_flwr.core import models
from fsl_sage_flwr.core.models import (
    SPLIT_MODELS,
    SmallSplitCNN,
    SplitArchitecture,
    SplitModel,
    aux_variants,
    build_full_model,
    build_split_model,
    register_split_model,
    required_input_shape,
)

CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)

# Every (model, input shape) the project trains; forward tests cover each aux variant.
MODEL_INPUTS = [("resnet18", CIFAR), ("cnn", DIGITS), ("cnn", MNIST)]
MODEL_INPUT_VARIANTS = [
    (name, shape, variant) for name, shape in MODEL_INPUTS for variant in ("linear", "half", "default", "full")
]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _n_buffer_elements(module: nn.Module) -> int:
    return sum(b.numel() for b in module.buffers())


def _fp32_bytes(numel: int) -> int:
    return 4 * numel


def _state_bytes(module: nn.Module) -> int:
    # What travels: fp32 weights and statistics, int64 BatchNorm batch counters.
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _last_linear_name(module: nn.Module) -> str:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)][-1]


# ----------------------------------------------------------------------------- sizes


def test_resnet18_sizes_match_reference_configuration():
    # Prepare: the paper's CIFAR-10 split (spec, "Reference configuration")
    expected = {
        "client": (683_072, 1_930),
        "server": (10_498_570, 7_690),
        "aux": (2_102_282, 2_565),
    }

    # Execute
    split = build_split_model("resnet18", num_classes=10, input_shape=CIFAR)
    sizes = {part: (_n_params(getattr(split, part)), _n_buffer_elements(getattr(split, part))) for part in expected}

    # Assert
    assert sizes == expected
    assert _state_bytes(split.client) == 2_740_048
    assert _state_bytes(split.aux) == 8_419_408
    assert _state_bytes(split.server) == 42_025_080


@pytest.mark.parametrize(
    ("variant", "expected_params"),
    [("linear", 1_290), ("half", 921_610), ("default", 2_102_282), ("full", 10_498_570)],
)
def test_resnet18_aux_variant_sizes(variant, expected_params):
    # Prepare / Execute
    split = build_split_model("resnet18", num_classes=10, input_shape=CIFAR, aux_variant=variant)

    # Assert
    assert _n_params(split.aux) == expected_params


@pytest.mark.parametrize("input_shape", [DIGITS, MNIST])
def test_cnn_sizes_match_its_docstring(input_shape):
    # Prepare: the counts SmallSplitCNN's docstring promises
    expected = {"client": 2_544, "server": 931_530, "aux": 84_810}

    # Execute
    split = build_split_model("cnn", num_classes=10, input_shape=input_shape)
    sizes = {part: _n_params(getattr(split, part)) for part in expected}

    # Assert
    assert sizes == expected
    for count in expected.values():
        assert f"{count:,}" in SmallSplitCNN.__doc__


@pytest.mark.parametrize(("input_shape", "expected_cut"), [(DIGITS, (16, 2, 2)), (MNIST, (16, 7, 7))])
def test_cnn_cut_shape_is_a_quarter_of_the_image(input_shape, expected_cut):
    # Prepare / Execute
    split = build_split_model("cnn", num_classes=10, input_shape=input_shape)

    # Assert
    assert split.cut_shape == expected_cut
    assert "x".join(map(str, expected_cut)) in SmallSplitCNN.__doc__


@pytest.mark.parametrize("input_shape", [DIGITS, MNIST])
def test_cnn_keeps_the_papers_proportions(input_shape):
    # Prepare
    split = build_split_model("cnn", num_classes=10, input_shape=input_shape)
    client_params, server_params = _n_params(split.client), _n_params(split.server)

    # Execute
    cut_bytes = _fp32_bytes(torch.Size(split.cut_shape).numel())
    model_bytes = _fp32_bytes(client_params + server_params)

    # Assert: most compute sits on the server, and uploading one sample's z costs
    # far less than shipping the model, as for ResNet-18 on CIFAR
    assert server_params >= 10 * client_params
    assert cut_bytes * 1000 <= model_bytes


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("name", "input_shape", "variant"), MODEL_INPUT_VARIANTS)
def test_forward_shapes(name, input_shape, variant):
    # Prepare
    torch.manual_seed(0)
    split = build_split_model(name, num_classes=10, input_shape=input_shape, aux_variant=variant)
    x = torch.randn(3, *input_shape)

    # Execute
    z = split.client(x)
    server_logits = split.server(z)
    aux_logits = split.aux(z)

    # Assert
    assert tuple(z.shape) == (3, *split.cut_shape)
    assert server_logits.shape == (3, 10)
    assert aux_logits.shape == (3, 10)


@pytest.mark.parametrize(("name", "input_shape", "variant"), MODEL_INPUT_VARIANTS)
def test_aux_supports_gradient_matching(name, input_shape, variant):
    # Prepare: alignment differentiates the aux head's input gradient (double backprop)
    torch.manual_seed(0)
    split = build_split_model(name, num_classes=10, input_shape=input_shape, aux_variant=variant)
    z = torch.randn(4, *split.cut_shape, requires_grad=True)
    y = torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(split.aux(z), y, reduction="sum")

    # Execute
    (grad_z,) = torch.autograd.grad(loss, z, create_graph=True)
    grad_z.pow(2).sum().backward()

    # Assert
    last_fc = dict(split.aux.named_modules())[_last_linear_name(split.aux)]
    assert grad_z.shape == z.shape
    assert last_fc.weight.grad is not None
    assert last_fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "input_shape"), MODEL_INPUTS)
def test_full_model_equals_server_after_client(name, input_shape):
    # Prepare
    torch.manual_seed(0)
    split = build_split_model(name, num_classes=10, input_shape=input_shape)
    full = build_full_model(split)
    full.eval()
    x = torch.randn(2, *input_shape)

    # Execute
    with torch.no_grad():
        composed = full(x)
        by_parts = split.server(split.client(x))

    # Assert: same objects, so FedAvg trains the very parts it was given
    assert full[0] is split.client
    assert full[1] is split.server
    torch.testing.assert_close(composed, by_parts, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "input_shape"), MODEL_INPUTS)
def test_num_classes_changes_only_the_final_linear_layers(name, input_shape):
    # Prepare
    small = build_split_model(name, num_classes=10, input_shape=input_shape)
    large = build_split_model(name, num_classes=100, input_shape=input_shape)

    for part in ("client", "server", "aux"):
        # Execute
        small_state = getattr(small, part).state_dict()
        large_state = getattr(large, part).state_dict()
        changed = {key for key in small_state if small_state[key].shape != large_state[key].shape}

        # Assert
        assert small_state.keys() == large_state.keys()
        if part == "client":
            assert changed == set()
        else:
            fc = _last_linear_name(getattr(large, part))
            assert changed == {f"{fc}.weight", f"{fc}.bias"}
            assert large_state[f"{fc}.weight"].shape[0] == 100
    assert small.cut_shape == large.cut_shape


# ------------------------------------------------------------------- construction


@pytest.mark.parametrize(("name", "input_shape"), MODEL_INPUTS)
def test_seeded_builds_are_identical(name, input_shape):
    # Prepare / Execute
    torch.manual_seed(7)
    first = build_split_model(name, num_classes=10, input_shape=input_shape)
    torch.manual_seed(7)
    second = build_split_model(name, num_classes=10, input_shape=input_shape)

    # Assert
    for part in ("client", "server", "aux"):
        first_state = getattr(first, part).state_dict()
        second_state = getattr(second, part).state_dict()
        for key, tensor in first_state.items():
            assert torch.equal(tensor, second_state[key]), f"{part}.{key} differs"


@pytest.mark.parametrize(("name", "input_shape"), MODEL_INPUTS)
def test_cut_probe_leaves_client_untouched(name, input_shape):
    # Prepare / Execute
    split = build_split_model(name, num_classes=10, input_shape=input_shape)

    # Assert: measuring cut_shape must not count as a training batch
    assert split.client.training
    assert all(
        module.num_batches_tracked.item() == 0
        for module in split.client.modules()
        if isinstance(module, nn.BatchNorm2d)
    )


def test_parts_are_distinct_objects_even_for_full_aux():
    # Prepare / Execute
    split = build_split_model("resnet18", num_classes=10, input_shape=CIFAR, aux_variant="full")

    # Assert: the full aux is a fresh copy of the architecture, not the server itself
    assert split.aux is not split.server
    assert not torch.equal(split.aux.fc.weight, split.server.fc.weight), "full aux should be freshly initialised"


def test_registry_queries():
    # Prepare / Execute
    resnet_shape = required_input_shape("resnet18")
    cnn_shape = required_input_shape("cnn")

    # Assert
    assert {"resnet18", "cnn"} <= SPLIT_MODELS.keys()
    assert resnet_shape == CIFAR
    assert cnn_shape is None
    assert aux_variants("resnet18") == ("linear", "half", "default", "full")
    assert aux_variants("cnn") == ("linear", "half", "default", "full")


def test_register_split_model_plugs_a_new_model_into_the_builder(monkeypatch):
    # Prepare: a private registry copy so the new entry does not leak into other tests
    monkeypatch.setattr(models, "SPLIT_MODELS", dict(SPLIT_MODELS))

    @register_split_model("toy-mlp")
    class ToyMLP(SplitArchitecture):
        aux_variants = ("default",)

        def build_client(self, input_shape):
            return nn.Sequential(nn.Flatten(), nn.Linear(torch.Size(input_shape).numel(), 5))

        def build_server(self, num_classes):
            return nn.Linear(5, num_classes)

        def build_aux(self, variant, num_classes):
            return nn.Linear(5, num_classes)

    # Execute
    split = build_split_model("toy-mlp", num_classes=3, input_shape=(1, 2, 2))

    # Assert
    assert models.SPLIT_MODELS["toy-mlp"] is ToyMLP
    assert isinstance(split, SplitModel)
    assert split.cut_shape == (5,)
    assert "toy-mlp" not in SPLIT_MODELS


def test_register_split_model_rejects_duplicates_and_non_architectures(monkeypatch):
    # Prepare
    monkeypatch.setattr(models, "SPLIT_MODELS", dict(SPLIT_MODELS))

    # Execute / Assert
    with pytest.raises(ValueError, match="already registered"):
        register_split_model("cnn")(SmallSplitCNN)
    with pytest.raises(TypeError, match="SplitArchitecture"):
        register_split_model("not-a-model")(nn.Linear)


# ---------------------------------------------------------------------------- errors


def test_unknown_model_name_lists_the_choices():
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=r"'cnn'.*'resnet18'|'resnet18'.*'cnn'"):
        build_split_model("vgg16", num_classes=10, input_shape=CIFAR)
    with pytest.raises(ValueError, match="resnet18"):
        required_input_shape("vgg16")
    with pytest.raises(ValueError, match="resnet18"):
        aux_variants("vgg16")


@pytest.mark.parametrize(("name", "input_shape"), [("resnet18", CIFAR), ("cnn", MNIST)])
def test_unknown_aux_variant_lists_the_choices(name, input_shape):
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="linear.*half.*default.*full"):
        build_split_model(name, num_classes=10, input_shape=input_shape, aux_variant="tiny")


@pytest.mark.parametrize("bad_shape", [MNIST, (3, 64, 64), (3, 32, 31)])
def test_resnet18_rejects_other_input_shapes_naming_the_required_one(bad_shape):
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        build_split_model("resnet18", num_classes=10, input_shape=bad_shape)


@pytest.mark.parametrize("bad_shape", [CIFAR, (2, 28, 28), (1, 3, 28), (1, 28, 3)])
def test_cnn_rejects_multichannel_or_tiny_inputs(bad_shape):
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        build_split_model("cnn", num_classes=10, input_shape=bad_shape)


@pytest.mark.parametrize("bad_shape", [(28, 28), (1, 0, 28), (1, 28, 28, 1)])
def test_malformed_input_shape_is_rejected(bad_shape):
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_split_model("cnn", num_classes=10, input_shape=bad_shape)


@pytest.mark.parametrize("bad_classes", [0, -1, 2.0, True])
def test_num_classes_must_be_a_positive_int(bad_classes):
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="num_classes"):
        build_split_model("cnn", num_classes=bad_classes, input_shape=MNIST)
