"""Differential privacy for uploads: the mechanism, the settings, and the epsilon the accountant reports."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from opacus.accountants import RDPAccountant
from opacus.accountants import utils as opacus_utils
from opacus.accountants.utils import get_noise_multiplier

from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.clients import FSLSageClient
from fsl_sage_flwr.core.activation_noise import clip_and_noise
from fsl_sage_flwr.core.dp_accounting import noise_multiplier_for, opacus_module
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.extras import MissingExtraError
from fsl_sage_flwr.plugin import as_dataset
from fsl_sage_flwr.strategies.upload_releases import UploadReleases
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.requests import TrainRequest, decode_request, request_content
from fsl_sage_flwr.transport.upload_privacy import UploadPrivacy
from simulations.testing import app_config

TRAINING = LocalTraining(batch_size=8, upload_interval=2)


def test_the_reported_epsilon_is_the_rdp_accountants_for_batch_over_n_and_the_releases():
    # Prepare: sigma 1.1, a node of 120 samples, 37 uploads of B = 8
    privacy = UploadPrivacy(dp_clip=1.0, dp_noise_multiplier=1.1, dp_delta=1e-5)
    releases = UploadReleases()
    releases.record(3, 120, 30)
    releases.record(3, 120, 7)
    accountant = RDPAccountant()
    accountant.history = [(1.1, 8 / 120, 37)]
    # Execute
    row = releases.summary(privacy, TRAINING)
    # Assert
    expected = accountant.get_epsilon(delta=1e-5)
    assert row["dp_epsilon_by_partition"]["3"] == pytest.approx(expected, rel=1e-9)
    assert row["dp_epsilon_max"] == row["dp_epsilon_mean"] == pytest.approx(expected, rel=1e-9)


def test_a_target_epsilon_gives_each_node_opacus_noise_for_its_own_plan(monkeypatch):
    # Prepare: 3 rounds of a node of 80 samples: E * ceil(80 / 8) = 10 steps, q = 2 -> 5 uploads, + 1 warm-up.
    # Opacus's search runs once (seconds); the spy records what it was asked.
    asked = []

    def spy(**kwargs):
        asked.append(kwargs)
        return get_noise_multiplier(**kwargs)

    monkeypatch.setattr(opacus_utils, "get_noise_multiplier", spy)
    noise_multiplier_for.cache_clear()
    privacy = UploadPrivacy(dp_clip=1.0, dp_epsilon=4.0, dp_rounds=3)
    # Execute
    sigma = privacy.noise_multiplier(80, TRAINING)
    # Assert
    assert asked == [
        {"target_epsilon": 4.0, "target_delta": 1e-5, "sample_rate": 0.1, "steps": 3 * 5 + 1, "accountant": "rdp"}
    ]
    assert privacy.planned_releases(80, TRAINING) == 16
    accountant = RDPAccountant()
    accountant.history = [(sigma, 0.1, 16)]
    assert privacy.epsilon(80, TRAINING, 16) == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    assert 4.0 - 0.05 <= privacy.epsilon(80, TRAINING, 16) <= 4.0 + 0.01


def test_dp_without_opacus_names_the_extra_that_installs_it(monkeypatch):
    # Prepare: opacus's accountants cannot be imported
    monkeypatch.setitem(sys.modules, "opacus.accountants", None)
    # Execute / Assert
    with pytest.raises(MissingExtraError, match=r'dp-clip.*pip install "fsl-sage-flwr\[privacy\]"'):
        opacus_module("accountants")


def test_each_sample_is_clipped_to_c_and_the_noise_has_scale_sigma_c():
    # Prepare: 4 samples, two over the bound
    z = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0], [0.0, 0.0]])
    # Execute
    clipped = clip_and_noise(z, 1.0, 0.0, torch.Generator().manual_seed(0))
    big = torch.randn(4000, 64, generator=torch.Generator().manual_seed(1)) * 0.01
    noised = clip_and_noise(big, 2.0, 1.5, torch.Generator().manual_seed(2))
    # Assert
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.6, 0.8], [0.0, 0.0]]))
    assert float((noised - big).std()) == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dp_noise_multiplier": 1.0}, "'dp-noise-multiplier' must be 0 while 'dp-clip' is 0"),
        ({"dp_clip": 1.0}, "'dp-noise-multiplier' must be > 0 with 'dp-epsilon' 0"),
        ({"dp_clip": 1.0, "dp_noise_multiplier": 1.0, "dp_epsilon": 2.0}, "one of the two sets the noise"),
        ({"dp_clip": 1.0, "dp_epsilon": 2.0}, "'dp-rounds' must be >= 1 when 'dp-epsilon' is set"),
        ({"dp_delta": 1.0}, "'dp-delta' must be in \\(0, 1\\)"),
        ({"label_correction": "debiased"}, "'label-correction' must be one of forward, none"),
    ],
)
def test_settings_that_do_not_fit_together_are_refused_naming_the_key(changes, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        UploadPrivacy(**changes)


def test_the_run_config_plans_a_target_epsilon_over_the_runs_rounds(tmp_path):
    # Execute
    settings = RunSettings.from_run_config(app_config(tmp_path, num_server_rounds=7, dp_clip=2.0, dp_epsilon=3.0))
    # Assert
    assert settings.privacy.dp_rounds == 7 and settings.privacy.dp_epsilon == 3.0
    with pytest.raises(ValueError, match="apply to fsl-sage and cse-fsl uploads, not fedavg"):
        RunSettings.from_run_config(app_config(tmp_path, algorithm="fedavg", label_epsilon=1.0))


def test_requests_carry_privacy_only_when_it_is_on():
    # Prepare
    arrays = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).client.state_dict()
    shared = ArrayRecord(arrays)
    on = UploadPrivacy(dp_clip=1.0, dp_noise_multiplier=2.0, dp_rounds=3, label_epsilon=1.5)
    # Execute
    plain = request_content(shared, server_round=1, training=TRAINING, privacy=UploadPrivacy())
    private = request_content(shared, server_round=1, training=TRAINING, privacy=on)
    # Assert: off sends no key at all, so a run without privacy exchanges what it always has
    assert dict(plain["fitins.config"]) == dict(
        request_content(shared, server_round=1, training=TRAINING)["fitins.config"]
    )
    decoded = decode_request(
        private["fitins.parameters"].to_numpy_ndarrays(), dict(private["fitins.config"]), shared_keys=list(arrays)
    )
    assert decoded.privacy == on


def _client_reply(privacy: UploadPrivacy):
    torch.manual_seed(0)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    rng = np.random.default_rng(0)
    data = as_dataset((rng.normal(size=(32, 1, 8, 8)).astype(np.float32), np.arange(32) % 10))
    client = FSLSageClient(split, data, partition_id=0, state=RecordDict())
    shared = {k: v.numpy().copy() for k, v in split.client.state_dict().items()}
    aux = {k: v.numpy().copy() for k, v in split.aux.state_dict().items()}
    request = TrainRequest(server_round=1, training=TRAINING, warmup=False, shared=shared, aux=aux, privacy=privacy)
    return client.train(request)


def test_the_server_receives_only_noised_activations_and_the_client_trains_as_without_dp():
    # Prepare
    privacy = UploadPrivacy(dp_clip=1.0, dp_noise_multiplier=2.0, dp_rounds=3)
    # Execute
    clean = _client_reply(UploadPrivacy())
    noisy = _client_reply(privacy)
    # Assert: same local training (model, uploaded labels), uploads noised at sigma * C around clipped values
    for key in clean.shared:
        np.testing.assert_array_equal(clean.shared[key], noisy.shared[key])
    np.testing.assert_array_equal(clean.smashed[2], noisy.smashed[2])
    z_clean, z_noisy = clean.smashed[0].reshape(32 // 2, -1), noisy.smashed[0].reshape(32 // 2, -1)
    assert not np.allclose(z_clean, z_noisy)
    norms = np.linalg.norm(z_clean, axis=1, keepdims=True)
    clipped = z_clean * np.minimum(1.0, 1.0 / norms)
    assert float(np.std(z_noisy - clipped)) == pytest.approx(2.0, rel=0.15)
    assert math.isfinite(float(np.abs(z_noisy).max()))
