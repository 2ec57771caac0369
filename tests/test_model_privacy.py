"""Client-level DP of the client-model average: clipped updates, equal weights, seeded noise, epsilon."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.strategies.model_privacy import ModelPrivacy
from fsl_sage_flwr.transport.arrays import ArraySpec, to_array
from simulations.in_process import run_in_process
from simulations.testing import app_config

SPEC = {"w": ArraySpec((1000,), "float32"), "count": ArraySpec((), "int64")}


def _record(w: np.ndarray, count: int = 4) -> ArrayRecord:
    return ArrayRecord({"w": to_array(w.astype(np.float32)), "count": to_array(np.asarray(count, dtype=np.int64))})


def test_a_huge_update_moves_the_average_by_at_most_the_clipping_norm_over_n():
    # Prepare: three honest updates of norm 0.1, one of norm 1e6, noise all but off
    privacy = ModelPrivacy(noise_multiplier=1e-12, clipping_norm=1.0)
    sent = _record(np.zeros(1000))
    honest = [(_record(np.full(1000, 0.1 / math.sqrt(1000))), 10) for _ in range(3)]
    hostile = (_record(np.full(1000, 1e6 / math.sqrt(1000))), 10_000)
    # Execute
    averaged = privacy.average(sent, [*honest, hostile], SPEC, server_round=1)
    # Assert: equal weights whatever the claimed sample counts; the hostile share is clipped to C/n
    moved = np.linalg.norm(averaged["w"].numpy().astype(np.float64))
    assert moved == pytest.approx((3 * 0.1 + 1.0) / 4, rel=1e-4)
    assert averaged["count"].numpy().reshape(-1).tolist() == [4]


def test_noise_has_the_standard_deviation_of_the_mechanism_and_repeats_for_a_round():
    # Prepare
    privacy = ModelPrivacy(noise_multiplier=2.0, clipping_norm=0.5, seed=7)
    sent = _record(np.zeros(1000))
    states = [(_record(np.zeros(1000)), 1) for _ in range(4)]
    # Execute
    first = privacy.average(sent, states, SPEC, server_round=3)["w"].numpy()
    again = privacy.average(sent, states, SPEC, server_round=3)["w"].numpy()
    other_round = privacy.average(sent, states, SPEC, server_round=4)["w"].numpy()
    # Assert: std = noise_multiplier * clip / n (Flower's compute_stdv), seeded by round
    assert np.std(first) == pytest.approx(2.0 * 0.5 / 4, rel=0.1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_round)


def test_epsilon_is_the_accountant_libraries_and_below_the_classic_rdp_bound():
    # Prepare
    from opacus.accountants import RDPAccountant

    privacy = ModelPrivacy(noise_multiplier=1.5, clipping_norm=1.0, delta=1e-5)
    accountant = RDPAccountant()
    for _ in range(20):
        accountant.step(noise_multiplier=1.5, sample_rate=1.0)
    # Execute
    epsilon = privacy.epsilon(20)
    # Assert: the library's own count, step by step, and under the classic RDP-to-DP conversion
    assert epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    classic = min(20 * a / (2 * 1.5**2) + math.log(1e5) / (a - 1) for a in np.linspace(1.01, 200, 20000))
    assert 0 < epsilon <= classic
    assert privacy.epsilon(0) == 0.0 and privacy.epsilon(40) > epsilon


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [("model-dp-noise-multiplier", -1.0, "model_dp_noise_multiplier"), ("model-dp-clip", 0.0, "model_dp_clip")],
)
def test_bad_model_dp_settings_fail_naming_the_key(tmp_path, key, value, field):
    with pytest.raises(ValueError, match=key):
        RunSettings.from_run_config(app_config(tmp_path, **{key: value}))


@pytest.mark.e2e  # in-process runs of the apps, two rounds each
@pytest.mark.parametrize("algorithm", ["fsl-sage", "fedavg"])
def test_a_run_with_model_dp_reports_a_growing_epsilon_in_every_row(tmp_path, algorithm):
    # Prepare
    config = app_config(
        tmp_path,
        algorithm=algorithm,
        num_server_rounds=2,
        min_available_nodes=2,
        device="cpu",
        align_epochs=1,
        model_dp_noise_multiplier=0.1,
        model_dp_clip=0.1,
    )
    # Execute
    run_in_process(server_app, client_app, config, num_nodes=2)
    # Assert
    rows = read_results(tmp_path / "run" / "results.jsonl")
    epsilons = [row["model_dp_epsilon"] for row in rows]
    privacy = ModelPrivacy(0.1, 0.1)
    assert epsilons == [0.0, pytest.approx(privacy.epsilon(1)), pytest.approx(privacy.epsilon(2))]
    assert all(math.isfinite(row["accuracy"]) for row in rows)
