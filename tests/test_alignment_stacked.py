"""Stacked (vmapped) alignment gives each client what one-by-one alignment gives it."""

import copy

import pytest
import torch

from fsl_sage_flwr.core.alignment import align_auxiliaries_stacked, align_auxiliary
from fsl_sage_flwr.core.models import build_split_model

#: In the ``cnn`` aux head, the biases of the convolutions that feed a BatchNorm.
_BIASES_BEFORE_BATCHNORM = {"0.bias", "3.bias"}


def _clients(lengths: list[int]):
    """A server part and, per client, an aux head, its Adam and a buffer of ``length``."""
    torch.manual_seed(0)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    clients = []
    for k, n in enumerate(lengths):
        torch.manual_seed(10 + k)
        aux = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8), parts=("aux",)).aux
        g = torch.Generator().manual_seed(100 + k)
        x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
        with torch.no_grad():
            z = split.client(x)
        optimizer = torch.optim.Adam(aux.parameters(), lr=1e-3, weight_decay=1e-4)
        clients.append((aux, optimizer, (z, y)))
    return split.server, clients


def _one_by_one(server, clients, **kwargs):
    return [
        align_auxiliary(aux, opt, server, z, y, generator=torch.Generator().manual_seed(7 + k), **kwargs)
        for k, (aux, opt, (z, y)) in enumerate(clients)
    ]


def _stacked(server, clients, **kwargs):
    return align_auxiliaries_stacked(
        [c[0] for c in clients],
        [c[1] for c in clients],
        server,
        [c[2] for c in clients],
        generators=[torch.Generator().manual_seed(7 + k) for k in range(len(clients))],
        **kwargs,
    )


@pytest.mark.parametrize(
    ("lengths", "kwargs"),
    [
        ([60, 60, 60], dict(epochs=4, batch_size=25)),
        ([60, 41, 60], dict(epochs=4, batch_size=1000)),
        ([80, 80], dict(epochs=30, batch_size=40, patience=1, min_improvement=0.2)),
    ],
)
def test_stacked_alignment_matches_one_by_one_per_client(lengths, kwargs):
    # Prepare: two identical copies of the same server, clients and seeds.
    server, clients = _clients(lengths)
    twins = copy.deepcopy(clients)

    # Execute
    expected = _one_by_one(server, clients, **kwargs)
    got = _stacked(server, twins, **kwargs)

    # Assert: same reports, weights, BatchNorm statistics and Adam moments per client.
    for want, have, (aux, opt, _), (aux2, opt2, _) in zip(expected, got, clients, twins):
        assert have.epochs == want.epochs
        assert have.num_samples == want.num_samples
        assert have.loss_before == pytest.approx(want.loss_before, rel=1e-5)
        assert have.loss_after == pytest.approx(want.loss_after, rel=1e-4)
        assert have.cosine_after == pytest.approx(want.cosine_after, abs=1e-5)
        for (name, a), b in zip(aux.state_dict().items(), aux2.state_dict().values()):
            # A convolution bias feeding a BatchNorm has a true gradient of zero; Adam
            # scales its rounding noise up to steps of up to lr, and the running mean
            # after it follows. Those get a tolerance of a few lr-sized steps, the rest
            # (where near-zero gradients meet Adam too) a tenth of one step.
            loose = name in _BIASES_BEFORE_BATCHNORM or name.endswith("running_mean")
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 if loose else 1e-4)
        for p, q in zip(aux.parameters(), aux2.parameters()):
            torch.testing.assert_close(opt2.state[q]["exp_avg"], opt.state[p]["exp_avg"], rtol=1e-3, atol=1e-6)
    assert any(r.loss_after < r.loss_before for r in got)


def test_stacked_alignment_rejects_lists_of_different_lengths():
    server, clients = _clients([20, 20])
    with pytest.raises(ValueError, match="same length"):
        align_auxiliaries_stacked(
            [c[0] for c in clients],
            [c[1] for c in clients],
            server,
            [c[2] for c in clients],
            epochs=1,
            batch_size=10,
            generators=[None],
        )


def test_run_config_names_a_bad_align_stacked_value():
    # Prepare: a run config whose align-stacked is not a boolean
    from fsl_sage_flwr.app.config import RunSettings

    config = {**RunSettings().to_config(), "align-stacked": "yes"}
    # Execute / Assert
    with pytest.raises(ValueError, match="'align-stacked' must be"):
        RunSettings.from_run_config(config)
    assert RunSettings.from_run_config({**config, "align-stacked": True}).alignment.stacked
