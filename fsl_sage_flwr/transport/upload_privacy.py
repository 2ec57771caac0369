"""The privacy settings of uploads, sent in each train config when on: DP on activations, RR on labels."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fsl_sage_flwr.core.dp_accounting import (
    epsilon_spent,
    noise_multiplier_for,
    releases_per_round,
    upload_sample_rate,
)
from fsl_sage_flwr.core.settings import (
    check_types,
    key_of,
    record_config,
    record_from_config,
    require,
    require_at_least,
    require_choice,
    require_non_negative,
    setting,
)
from fsl_sage_flwr.transport.local_training import LocalTraining

#: The server's losses on randomized labels.
LABEL_CORRECTIONS = ("forward", "none")
# A node's FSL-SAGE warm-up uploads one batch before its first round; every plan counts it.
_WARM_UP_RELEASES = 1


@dataclass(frozen=True)
class UploadPrivacy:
    """How clients privatise the activations and labels they upload (FSL-SAGE and CSE-FSL).

    With ``dp_clip`` > 0 each uploaded sample's activation is clipped to L2 norm
    C and Gaussian noise N(0, (sigma C)^2) is added on the client
    (:func:`~fsl_sage_flwr.core.activation_noise.clip_and_noise`); sigma is
    ``dp_noise_multiplier``, or, given ``dp_epsilon``, the smallest one that keeps
    each node within that epsilon over ``dp_rounds`` rounds (each node solves it
    for its own sample count). With ``label_epsilon`` > 0 uploaded labels pass
    through K-ary randomized response (:mod:`fsl_sage_flwr.core.label_privacy`).
    Off by default; a strategy sends these keys only when some privacy is on,
    so a run without it exchanges exactly what it did before.

    Attributes
    ----------
    dp_clip : float
        C, the per-sample L2 bound; 0 turns differential privacy off.
    dp_noise_multiplier : float
        sigma, when the run sets the noise; 0 when it sets ``dp_epsilon``.
    dp_epsilon : float
        Target epsilon per node over ``dp_rounds`` rounds; 0 when sigma is set.
    dp_delta : float
        The delta of every reported epsilon.
    dp_rounds : int
        Rounds the plan covers (the app fills in ``num-server-rounds`` for 0).
    label_epsilon : float
        Randomized-response epsilon of uploaded labels; 0 uploads true labels.
    label_correction : str
        The server's loss on randomized labels: ``forward`` (corrected for the
        known flip probability) or ``none`` (plain cross-entropy, for comparison).
    """

    dp_clip: float = setting("dp-clip", 0.0, "C: per-sample L2 bound of uploaded activations; 0 = no DP noise")
    dp_noise_multiplier: float = setting(
        "dp-noise-multiplier", 0.0, "sigma: upload noise N(0, (sigma C)^2); 0 when dp-epsilon is set"
    )
    dp_epsilon: float = setting(
        "dp-epsilon", 0.0, "target epsilon per node over dp-rounds rounds, instead of dp-noise-multiplier; 0 = unused"
    )
    dp_delta: float = setting("dp-delta", 1e-5, "delta of the epsilon the accountant reports")
    dp_rounds: int = setting("dp-rounds", 0, "rounds a dp-epsilon or a node's epsilon floor covers; 0 = all rounds")
    label_epsilon: float = setting(
        "label-epsilon", 0.0, "randomized response on uploaded labels with this epsilon; 0 = true labels"
    )
    label_correction: str = setting(
        "label-correction", "forward", "server loss on randomized labels: forward (corrected) or none (plain)"
    )

    def __post_init__(self) -> None:
        check_types(self)
        require_non_negative(self, "dp_clip", "dp_noise_multiplier", "dp_epsilon", "label_epsilon")
        require_at_least(self, 0, "dp_rounds")
        require(0 < self.dp_delta < 1, self, "dp_delta", "in (0, 1)")
        require_choice(self, "label_correction", LABEL_CORRECTIONS)
        if self.dp_clip == 0:
            for name in ("dp_noise_multiplier", "dp_epsilon"):
                require(getattr(self, name) == 0, self, name, "0 while 'dp-clip' is 0 (differential privacy off)")
            return
        require(
            (self.dp_noise_multiplier > 0) != (self.dp_epsilon > 0),
            self,
            "dp_noise_multiplier",
            "> 0 with 'dp-epsilon' 0, or 0 with 'dp-epsilon' > 0 (one of the two sets the noise)",
        )
        require(self.dp_epsilon == 0 or self.dp_rounds >= 1, self, "dp_rounds", ">= 1 when 'dp-epsilon' is set")

    @property
    def dp_on(self) -> bool:
        """Uploaded activations are clipped and noised."""
        return self.dp_clip > 0

    @property
    def enabled(self) -> bool:
        """Any privacy at all: noise on activations or randomized labels."""
        return self.dp_on or self.label_epsilon > 0

    def to_config(self) -> dict[str, Any]:
        """The train-config entries: none when privacy is off."""
        return record_config(self) if self.enabled else {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UploadPrivacy:
        """Read what a strategy sent: off when it sent none of the keys; raise ValueError on a partial set."""
        if not any(key_of(f) in config for f in dataclasses.fields(cls)):
            return cls()
        return record_from_config(cls, config, origin="train config")

    def planned_releases(self, num_examples: int, training: LocalTraining) -> int:
        """Uploads a node of ``num_examples`` makes in ``dp_rounds`` rounds, its warm-up batch included."""
        per_round = releases_per_round(
            num_examples, training.batch_size, training.local_epochs, training.upload_interval
        )
        return self.dp_rounds * per_round + _WARM_UP_RELEASES

    def noise_multiplier(self, num_examples: int, training: LocalTraining) -> float:
        """sigma for a node of ``num_examples``: the set one, or the one reaching ``dp_epsilon`` at the plan's end."""
        if not self.dp_on or self.dp_noise_multiplier > 0:
            return self.dp_noise_multiplier
        rate = upload_sample_rate(num_examples, training.batch_size)
        return noise_multiplier_for(self.dp_epsilon, self.dp_delta, rate, self.planned_releases(num_examples, training))

    def epsilon(self, num_examples: int, training: LocalTraining, releases: int) -> float:
        """Epsilon (at ``dp_delta``) a node of ``num_examples`` has spent after ``releases`` uploads; inf without DP."""
        if not self.dp_on:
            return math.inf if releases else 0.0
        rate = upload_sample_rate(num_examples, training.batch_size)
        return epsilon_spent(self.noise_multiplier(num_examples, training), rate, releases, self.dp_delta)
