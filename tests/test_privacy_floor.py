"""A node's own privacy floor: it refuses requests for weaker upload privacy, and the server reports why."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict

from fsl_sage_flwr.app.client_app import build_client
from fsl_sage_flwr.clients.privacy_floor import PrivacyFloor
from fsl_sage_flwr.core.setup_checks import SetupError
from fsl_sage_flwr.strategies.setup_drops import SetupDropError
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.requests import request_content
from fsl_sage_flwr.transport.upload_privacy import UploadPrivacy
from simulations.testing import ScriptedGrid, app_config, reply_from, two_node_fsl_sage

TRAINING = LocalTraining(batch_size=8, upload_interval=2)
STRONG = UploadPrivacy(dp_clip=1.0, dp_noise_multiplier=2.0, dp_rounds=5, label_epsilon=1.0)


def test_the_floor_is_read_from_the_node_config_and_a_bad_value_is_a_privacy_fault():
    # Execute
    floor = PrivacyFloor.from_node_config({"dp-min-noise-multiplier": "1.5", "label-epsilon-max": 2, "other": 1})
    # Assert
    assert floor == PrivacyFloor(min_noise_multiplier=1.5, label_epsilon_max=2.0)
    assert PrivacyFloor.from_node_config({}) == PrivacyFloor(0.0, math.inf, math.inf)
    with pytest.raises(SetupError, match=r"setup error \(privacy\): node config 'dp-epsilon-max' must be a number > 0"):
        PrivacyFloor.from_node_config({"dp-epsilon-max": "lots"})


@pytest.mark.parametrize(
    ("floor", "asked", "named"),
    [
        (
            PrivacyFloor(min_noise_multiplier=1.0),
            UploadPrivacy(),
            "dp-min-noise-multiplier: the server asks for uploads without differential privacy",
        ),
        (
            PrivacyFloor(min_noise_multiplier=3.0),
            STRONG,
            "dp-min-noise-multiplier: the server asks for dp noise multiplier 2",
        ),
        (PrivacyFloor(epsilon_max=0.5), STRONG, "dp-epsilon-max: the server's settings reach dp epsilon"),
        (PrivacyFloor(label_epsilon_max=2.0), UploadPrivacy(), "label-epsilon-max: the server asks for true labels"),
        (PrivacyFloor(label_epsilon_max=0.5), STRONG, "label-epsilon-max: the server asks for label-epsilon 1"),
    ],
)
def test_a_request_weaker_than_the_floor_is_refused_naming_the_setting(floor, asked, named):
    # Execute / Assert
    with pytest.raises(SetupError, match=r"^setup error \(privacy\): this node refuses to train") as err:
        floor.check(asked, TRAINING, num_examples=100, releases_this_round=7, spent=0)
    assert named in str(err.value)


def test_a_request_at_or_above_the_floor_is_accepted_until_the_node_has_spent_its_epsilon():
    # Prepare
    floor = PrivacyFloor(min_noise_multiplier=2.0, epsilon_max=50.0, label_epsilon_max=1.0)
    # Execute / Assert: within the plan; then a node whose past uploads already cost more
    floor.check(STRONG, TRAINING, num_examples=100, releases_this_round=7, spent=0)
    with pytest.raises(SetupError, match="below its dp-epsilon-max"):
        floor.check(STRONG, TRAINING, num_examples=100, releases_this_round=7, spent=100000)


def test_the_app_client_refuses_and_the_server_fails_the_run_naming_the_node_and_the_floor(tmp_path):
    # Prepare: an app node with a floor, asked for a warm-up batch without DP
    folder = tmp_path / "node"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "train.npz", x=rng.normal(size=(16, 1, 8, 8)).astype(np.float32), y=np.arange(16) % 10)
    node_config = {"partition-id": 1, "data-dir": str(folder), "dp-min-noise-multiplier": 1.0}
    context = Context(
        run_id=1, node_id=202, node_config=node_config, state=RecordDict(), run_config=app_config(tmp_path)
    )
    client, _ = build_client(context)
    strategy, split = two_node_fsl_sage()
    strategy.min_available_nodes = 1  # the one node of this exchange
    request = request_content(ArrayRecord(split.client.state_dict()), server_round=0, training=TRAINING, warmup=True)
    # Execute: the client's answer, and the server's warm-up exchange with that answer as the error reply
    with pytest.raises(SetupError) as refusal:
        client.fit(request["fitins.parameters"].to_numpy_ndarrays(), dict(request["fitins.config"]))
    reason = f"<class 'fsl_sage_flwr.core.setup_checks.SetupError'>:<'{refusal.value}'>"

    def respond(msg: Message) -> Message:
        metadata = reply_from(msg.metadata.dst_node_id, RecordDict(), "train").metadata
        return Message(error=Error(code=2, reason=reason), metadata=metadata)

    # Assert
    with pytest.raises(SetupDropError) as failed:
        strategy.warm_up(ScriptedGrid([202], respond), ArrayRecord(split.client.state_dict()))
    assert "node 202 [privacy]" in str(failed.value) and "dp-min-noise-multiplier" in str(failed.value)


def test_a_splitfed_node_with_a_floor_refuses_at_once(tmp_path):
    # Prepare
    folder = tmp_path / "node"
    folder.mkdir()
    np.savez(folder / "train.npz", x=np.zeros((8, 1, 8, 8), np.float32), y=np.arange(8) % 8)
    node_config = {"partition-id": 0, "data-dir": str(folder), "label-epsilon-max": 1.0}
    config = app_config(tmp_path, algorithm="splitfed-ms")
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=config)
    # Execute / Assert
    with pytest.raises(SetupError, match=r"privacy.*splitfed-ms uploads activations and labels without noise"):
        build_client(context)
