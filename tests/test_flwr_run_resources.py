"""The wrapper asks Flower's simulation for the client resources it is given, GPU shares included."""

from __future__ import annotations

import pytest

from simulations.flwr_run import federation_config


def test_fractional_gpus_go_into_the_federation_config_only_when_asked_for():
    assert federation_config(10, 2.0, 0.125) == (
        "num-supernodes=10 client-resources-num-cpus=2 client-resources-num-gpus=0.125"
    )
    assert federation_config(3, 1.0, 0.0) == "num-supernodes=3 client-resources-num-cpus=1"


def test_a_gpu_share_over_one_or_no_cpus_is_refused():
    with pytest.raises(ValueError, match="gpus_per_client"):
        federation_config(3, 1.0, 1.5)
    with pytest.raises(ValueError, match="cpus_per_client"):
        federation_config(3, 0.0, 0.5)
