"""A node's own privacy floor: the weakest upload privacy it agrees to, from its node config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fsl_sage_flwr.core.setup_checks import SetupError
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.upload_privacy import UploadPrivacy

#: Node-config keys of the floor (``flower-supernode --node-config "dp-min-noise-multiplier=1.0"``).
MIN_NOISE_KEY = "dp-min-noise-multiplier"
EPSILON_MAX_KEY = "dp-epsilon-max"
LABEL_EPSILON_MAX_KEY = "label-epsilon-max"


@dataclass(frozen=True)
class PrivacyFloor:
    """The weakest upload privacy a node takes part with; the server's request cannot lower it.

    The node refuses to train, with a ``SetupError`` of kind ``privacy`` naming
    the setting, when the request asks for less: no DP or a smaller noise
    multiplier than ``min_noise_multiplier``; an epsilon over ``epsilon_max``,
    either planned for the run or spent by this node once this round's uploads
    are counted; true labels or a label epsilon over ``label_epsilon_max``.

    Attributes
    ----------
    min_noise_multiplier : float
        Smallest sigma accepted; 0 = no floor.
    epsilon_max : float
        Largest DP epsilon (at the run's delta) accepted; inf = no floor.
    label_epsilon_max : float
        Largest label epsilon accepted; inf = no floor.
    """

    min_noise_multiplier: float = 0.0
    epsilon_max: float = math.inf
    label_epsilon_max: float = math.inf

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> PrivacyFloor:
        """Read the floor's keys (all optional); raise SetupError (privacy) for a value that is no number > 0."""
        values = {}
        for key, name in (
            (MIN_NOISE_KEY, "min_noise_multiplier"),
            (EPSILON_MAX_KEY, "epsilon_max"),
            (LABEL_EPSILON_MAX_KEY, "label_epsilon_max"),
        ):
            if key not in node_config:
                continue
            try:
                value = float(node_config[key])
            except (TypeError, ValueError):
                value = math.nan
            if not (math.isfinite(value) and value > 0) or isinstance(node_config[key], bool):
                raise SetupError("privacy", f"node config '{key}' must be a number > 0, got {node_config[key]!r}")
            values[name] = value
        return cls(**values)

    @property
    def demands_dp(self) -> bool:
        """The node uploads activations only with DP noise."""
        return self.min_noise_multiplier > 0 or math.isfinite(self.epsilon_max)

    @property
    def demands_label_privacy(self) -> bool:
        """The node uploads labels only through randomized response."""
        return math.isfinite(self.label_epsilon_max)

    def refuse_unsupported(self, algorithm: str) -> None:
        """Raise SetupError (privacy) if this floor asks for anything: ``algorithm`` uploads without privacy."""
        if self.demands_dp or self.demands_label_privacy:
            key = MIN_NOISE_KEY if self.demands_dp else LABEL_EPSILON_MAX_KEY
            self._refuse(key, f"{algorithm} uploads activations and labels without noise")

    def check(
        self, privacy: UploadPrivacy, training: LocalTraining, num_examples: int, releases_this_round: int, spent: int
    ) -> None:
        """Raise SetupError (privacy), naming the setting, unless ``privacy`` meets the floor.

        Parameters
        ----------
        privacy, training : UploadPrivacy, LocalTraining
            What the request asks for.
        num_examples : int
            The node's sample count.
        releases_this_round : int
            Uploads this request would make.
        spent : int
            Uploads this node made before in the run.
        """
        if self.demands_dp:
            self._check_dp(privacy, training, num_examples, spent + releases_this_round)
        if self.demands_label_privacy:
            asked = privacy.label_epsilon
            if asked == 0:
                self._refuse(LABEL_EPSILON_MAX_KEY, "the server asks for true labels (label-epsilon 0)")
            if asked > self.label_epsilon_max:
                self._refuse(LABEL_EPSILON_MAX_KEY, f"the server asks for label-epsilon {asked:g}")

    def _check_dp(self, privacy: UploadPrivacy, training: LocalTraining, num_examples: int, releases: int) -> None:
        if not privacy.dp_on:
            self._refuse(MIN_NOISE_KEY, "the server asks for uploads without differential privacy (dp-clip 0)")
        sigma = privacy.noise_multiplier(num_examples, training)
        if sigma < self.min_noise_multiplier:
            self._refuse(MIN_NOISE_KEY, f"the server asks for dp noise multiplier {sigma:.4g}")
        if math.isinf(self.epsilon_max):
            return
        if privacy.dp_rounds == 0:
            self._refuse(EPSILON_MAX_KEY, "the request plans no 'dp-rounds', so the epsilon cannot be bounded")
        planned = privacy.epsilon(num_examples, training, privacy.planned_releases(num_examples, training))
        after = privacy.epsilon(num_examples, training, releases)
        worst = max(planned, after)
        if worst > self.epsilon_max:
            self._refuse(EPSILON_MAX_KEY, f"the server's settings reach dp epsilon {worst:.3g} on this node")

    def _refuse(self, key: str, reason: str) -> None:
        # The floor's key first: a run's failure message may cut a long reason short.
        floor = (
            f"(floor: {MIN_NOISE_KEY}={self.min_noise_multiplier:g}, {EPSILON_MAX_KEY}={self.epsilon_max:g}, "
            f"{LABEL_EPSILON_MAX_KEY}={self.label_epsilon_max:g})"
        )
        raise SetupError("privacy", f"this node refuses to train below its {key}: {reason} {floor}")
