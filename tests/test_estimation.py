"""Tests of gradient estimation, the client step and auxiliary alignment."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fsl_sage_flwr.core.alignment import align_auxiliary, chunks, gradient_matching_loss, server_cut_gradients
from fsl_sage_flwr.core.estimation import client_step, estimate_cut_gradient, input_gradient
from fsl_sage_flwr.core.models import build_split_model


def _split(aux_variant: str = "default"):
    torch.manual_seed(0)
    return build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8), aux_variant=aux_variant)


def _batch(n: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_estimate_equals_true_gradient_when_aux_is_a_copy_of_the_server():
    # Prepare: an aux that is exactly the server model
    split = _split()
    x, y = _batch()
    z = split.client(x).detach()
    aux = copy.deepcopy(split.server)
    # Execute
    estimated = estimate_cut_gradient(aux, z, y)
    split.server.train()
    z_true = z.clone().requires_grad_(True)
    F.cross_entropy(split.server(z_true), y).backward()
    # Assert
    torch.testing.assert_close(estimated, z_true.grad, rtol=1e-5, atol=1e-7)


def test_estimate_leaves_aux_weights_statistics_and_grads_untouched():
    # Prepare
    split = _split()
    x, y = _batch()
    z = split.client(x).detach()
    before = copy.deepcopy(split.aux.state_dict())
    # Execute
    estimate_cut_gradient(split.aux, z, y)
    # Assert
    for name, value in split.aux.state_dict().items():
        torch.testing.assert_close(value, before[name])
    assert all(p.grad is None for p in split.aux.parameters())


def test_client_step_changes_only_the_client_model():
    # Prepare
    split = _split()
    x, y = _batch()
    client_before = copy.deepcopy(split.client.state_dict())
    aux_before = copy.deepcopy(split.aux.state_dict())
    optimizer = torch.optim.SGD(split.client.parameters(), lr=0.1)
    # Execute
    z = client_step(split.client, split.aux, optimizer, x, y)
    # Assert
    assert z.shape == (32, *split.cut_shape) and not z.requires_grad
    changed = [k for k, v in split.client.state_dict().items() if not torch.equal(v, client_before[k])]
    assert "0.weight" in changed
    for name, value in split.aux.state_dict().items():
        assert torch.equal(value, aux_before[name])


def test_server_targets_are_per_sample_and_keep_batchnorm_statistics():
    # Prepare
    split = _split()
    x, y = _batch(64)
    z = split.client(x).detach()
    stats_before = copy.deepcopy(dict(split.server.named_buffers()))
    # Execute: one chunk of 64
    targets = server_cut_gradients(split.server, z, y, batch_size=64)
    stats_after = copy.deepcopy(dict(split.server.named_buffers()))
    mean_grad = input_gradient(split.server, z, y, reduction="mean")
    # Assert: sum-reduced targets are the mean-loss gradient times the batch size
    torch.testing.assert_close(targets, mean_grad * 64, rtol=1e-4, atol=1e-6)
    for name, value in stats_after.items():
        assert torch.equal(value, stats_before[name]), name


@pytest.mark.parametrize(("variant", "loss_ratio", "cosine_gain"), [("linear", 0.8, 0.02), ("default", 0.5, 0.2)])
def test_alignment_lowers_matching_loss_and_raises_cosine(variant, loss_ratio, cosine_gain):
    # Prepare: a fixed buffer of activations
    split = _split(variant)
    x, y = _batch(200, seed=3)
    with torch.no_grad():
        z = split.client(x)
    optimizer = torch.optim.Adam(split.aux.parameters(), lr=1e-3)
    target = server_cut_gradients(split.server, z, y, batch_size=100)
    loss_before = sum(
        float(gradient_matching_loss(split.aux, z[s : s + 100], y[s : s + 100], target[s : s + 100]).detach())
        for s in (0, 100)
    )
    # Execute
    report = align_auxiliary(
        split.aux,
        optimizer,
        split.server,
        z,
        y,
        epochs=60,
        batch_size=100,
        generator=torch.Generator().manual_seed(0),
    )
    # Assert
    assert report.loss_before == pytest.approx(loss_before, rel=1e-4)
    assert report.loss_after < loss_ratio * report.loss_before
    assert report.cosine_after > report.cosine_before + cosine_gain


def _aligned(epochs: int, patience: int, n: int = 200, batch_size: int = 100, min_improvement: float = 0.05):
    split = _split("default")
    x, y = _batch(n, seed=3)
    with torch.no_grad():
        z = split.client(x)
    optimizer = torch.optim.Adam(split.aux.parameters(), lr=1e-3)
    return align_auxiliary(
        split.aux,
        optimizer,
        split.server,
        z,
        y,
        epochs=epochs,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(0),
        patience=patience,
        min_improvement=min_improvement,
    )


def test_alignment_stops_once_the_matching_loss_stops_improving():
    # Execute: a demanding 5% gain per epoch ends the alignment long before 120 epochs
    early = _aligned(epochs=120, patience=2)
    full = _aligned(epochs=120, patience=0)
    # Assert: fewer epochs, still aligned
    assert full.epochs == 120
    assert 2 < early.epochs < 120
    assert early.cosine_after > early.cosine_before + 0.2


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stop_ends_exactly_patience_epochs_after_the_last_gain(patience):
    # Execute: no epoch can lower the loss by 99.99%, so only the first one counts as a gain
    report = _aligned(epochs=20, patience=patience, min_improvement=0.9999)
    # Assert
    assert report.epochs == 1 + patience


def test_a_buffer_one_sample_past_a_batch_aligns():
    # 17 buffered samples in batches of 16 would leave one sample to BatchNorm alone
    report = _aligned(epochs=2, patience=0, n=17, batch_size=16)
    assert report.num_samples == 17 and report.epochs == 2


@pytest.mark.parametrize(("n", "size"), [(17, 16), (16, 16), (33, 16), (1, 16), (5, 2)])
def test_chunks_cover_everything_without_one_sample_chunks(n, size):
    parts = chunks(n, size)
    covered = [i for part in parts for i in range(n)[part]]
    assert covered == list(range(n))
    assert all(len(range(n)[part]) >= 2 for part in parts) or n == 1
    assert all(len(range(n)[part]) <= size + 1 for part in parts)
