"""Bounds on client-model updates: how far one reply may move the averaged model.

A reply's arrays can be finite and well-shaped and still ruin every node: one
array of 1e30, or an update scaled a hundred times, enters the average sent to
all. Each reply's *update* (its arrays minus the global arrays sent this round)
is measured here, before anything changes, against a robust reference: the
round's median update norm, or, in rounds with few replies, the running median
of earlier rounds.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class UpdateLimits:
    """How far a reply's client-model arrays may lie from the global ones.

    A reply is refused when the norm of its update exceeds ``factor`` times
    the reference (never taken below ``min_norm``), or when one array's update
    exceeds ``array_factor`` times that array's global norm (never taken below
    the square root of its size, an RMS of one). The reference is the lower
    median of the round's update norms; in a round with fewer than
    ``min_round_replies`` replies it is the smaller of that and the median of
    the last ``window`` accepted rounds' references.

    Each array is also measured on its own: its update may not exceed
    ``factor`` times the lower median of that array's update norms in the
    round (scaled down with the whole reference when the running one stands
    in; never taken below that array's size share of the whole reference). A swap of two
    arrays of equal shape moves each of them far more than any honest reply
    moves it, while the whole update can stay within bounds.

    Attributes
    ----------
    factor : float
        How many times the reference an update's norm may reach; 0 turns every
        check here off.
    array_factor : float
        How many times its global norm one array's update may reach.
    window : int
        Accepted rounds the running reference is the median of.
    min_norm : float
        Floor of the reference.
    min_round_replies : int
        Rounds with fewer replies also consult the running reference.
    """

    factor: float = 10.0
    array_factor: float = 1000.0
    window: int = 16
    min_norm: float = 1e-3
    min_round_replies: int = 3

    def __post_init__(self) -> None:
        if not _is_number(self.factor) or not (math.isfinite(self.factor) and self.factor >= 0):
            raise ValueError(f"UpdateLimits.factor must be a finite number >= 0 (0 = off), got {self.factor!r}")
        if self.factor and self.factor < 1:
            raise ValueError(f"UpdateLimits.factor must be 0 (off) or >= 1, got {self.factor!r}")
        for name in ("array_factor", "min_norm"):
            value = getattr(self, name)
            if not _is_number(value) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"UpdateLimits.{name} must be a finite number > 0, got {value!r}")
        for name in ("window", "min_round_replies"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UpdateLimits.{name} must be an int >= 1, got {value!r}")

    @property
    def enabled(self) -> bool:
        """Whether updates are checked at all."""
        return self.factor > 0


@dataclass(frozen=True)
class Screening:
    """What :meth:`UpdateGuard.screen` found in one round's replies.

    Attributes
    ----------
    norms : tuple[float, ...]
        Each reply's update norm, in the order given.
    reference : float
        The norm the bound is a multiple of (before the ``min_norm`` floor).
    reasons : tuple[str | None, ...]
        Per reply, why it is refused, or None when it passes.
    """

    norms: tuple[float, ...]
    reference: float
    reasons: tuple[str | None, ...]

    @property
    def kept(self) -> list[int]:
        """Indices of the replies that pass."""
        return [i for i, reason in enumerate(self.reasons) if reason is None]


class UpdateGuard:
    """The update-norm check, and the running reference of accepted rounds.

    Parameters
    ----------
    limits : UpdateLimits
        Factors, window and floor.
    """

    def __init__(self, limits: UpdateLimits) -> None:
        self.limits = limits
        self._recent: deque[float] = deque(maxlen=limits.window)

    @property
    def running_reference(self) -> float | None:
        """The median of the recent accepted rounds' references; None before the first."""
        return statistics.median(self._recent) if self._recent else None

    def screen(self, sent: Mapping[str, np.ndarray], replies: Sequence[Mapping[str, np.ndarray]]) -> Screening:
        """Measure each reply's update against ``sent``; change nothing.

        Only floating-point arrays count: integer ones (BatchNorm counters) do
        not scale what a model computes.

        Parameters
        ----------
        sent : Mapping[str, np.ndarray]
            The global arrays sent this round.
        replies : Sequence[Mapping[str, np.ndarray]]
            Each reply's arrays, with the same names and sizes as ``sent``.
        """
        names = [name for name, values in sent.items() if np.asarray(values).dtype.kind == "f"]
        base = {name: np.asarray(sent[name], dtype=np.float64) for name in names}
        per_array = [
            {
                name: _norm(np.asarray(reply[name], dtype=np.float64).reshape(base[name].shape) - base[name])
                for name in names
            }
            for reply in replies
        ]
        norms = tuple(math.sqrt(sum(n * n for n in arrays.values())) for arrays in per_array)
        if not self.limits.enabled or not replies:
            return Screening(norms, 0.0, (None,) * len(replies))
        reference, source = self._reference(norms)
        bound = self.limits.factor * max(reference, self.limits.min_norm)
        array_references = self._array_references(per_array, names, base, reference, norms)
        reasons = []
        for norm, arrays in zip(norms, per_array):
            reason = None
            if not norm <= bound:  # also catches NaN
                reason = (
                    f"client-model update norm {norm:.3g} exceeds {self.limits.factor:g} x {source} "
                    f"{max(reference, self.limits.min_norm):.3g}"
                )
            reasons.append(
                reason or self._array_reason(arrays, base) or self._array_median_reason(arrays, array_references)
            )
        return Screening(norms, reference, tuple(reasons))

    def accept(self, screening: Screening) -> None:
        """Fold a round whose kept replies were accepted into the running reference."""
        kept = [screening.norms[i] for i in screening.kept]
        if self.limits.enabled and kept and all(math.isfinite(n) for n in kept):
            self._recent.append(statistics.median_low(kept))

    def snapshot(self) -> tuple[float, ...]:
        """The references the running one is the median of, oldest first (for comparisons)."""
        return tuple(self._recent)

    def state_dict(self) -> dict[str, Any]:
        """The guard's state as plain numbers, for a checkpoint.

        Returns
        -------
        dict[str, Any]
            ``"limits"``: the :class:`UpdateLimits` fields by name; ``"recent"``:
            the accepted rounds' references, oldest first.
        """
        return {"limits": asdict(self.limits), "recent": list(self._recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, after checking all of it.

        Raises
        ------
        ValueError
            When keys or types are wrong, a value is negative or not finite,
            the limits differ from this guard's, or more values than the window
            holds are given. Nothing changes then.
        """
        if not isinstance(state, dict) or set(state) != {"limits", "recent"}:
            raise ValueError("UpdateGuard state must be a dict with exactly the keys 'limits' and 'recent'")
        if state["limits"] != asdict(self.limits):
            raise ValueError(
                f"UpdateGuard state was saved with limits {state['limits']}, this guard has {asdict(self.limits)}"
            )
        recent = state["recent"]
        if not isinstance(recent, list) or not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in recent):
            raise ValueError("UpdateGuard state 'recent' must be a list of finite numbers >= 0")
        if len(recent) > self.limits.window:
            raise ValueError(
                f"UpdateGuard state holds {len(recent)} values, more than the window of {self.limits.window}"
            )
        self._recent = deque((float(v) for v in recent), maxlen=self.limits.window)

    def _reference(self, norms: Sequence[float]) -> tuple[float, str]:
        # The lower median: with two replies, the smaller one, so that a single
        # attacker among two cannot lift the bound it is checked against.
        finite = [n for n in norms if math.isfinite(n)]
        reference = statistics.median_low(finite) if finite else 0.0
        running = self.running_reference
        if len(norms) < self.limits.min_round_replies and running is not None and running < reference:
            return running, "the running median"
        return reference, "the round's median"

    def _array_references(
        self,
        per_array: Sequence[Mapping[str, float]],
        names: Sequence[str],
        base: Mapping[str, np.ndarray],
        reference: float,
        norms: Sequence[float],
    ) -> dict[str, float]:
        # Each array's lower median over the round, shrunk as the whole reference
        # was when the running median stood in for a round of few replies.
        finite = [n for n in norms if math.isfinite(n)]
        round_median = statistics.median_low(finite) if finite else 0.0
        shrink = min(1.0, reference / round_median) if round_median > 0 else 1.0
        total = sum(base[name].size for name in names) or 1
        references = {}
        for name in names:
            values = [arrays[name] for arrays in per_array if math.isfinite(arrays[name])]
            median = statistics.median_low(values) if values else 0.0
            # An array that honest replies leave unmoved (a median of 0) still gets its size's
            # share of the whole reference, or any honest change to it would be refused.
            floor = max(self.limits.min_norm, reference) * math.sqrt(base[name].size / total)
            references[name] = max(median * shrink, floor)
        return references

    def _array_median_reason(self, arrays: Mapping[str, float], references: Mapping[str, float]) -> str | None:
        for name, norm in arrays.items():
            if not norm <= self.limits.factor * references[name]:
                return (
                    f"client-model array '{name}' moves by {norm:.3g}, beyond {self.limits.factor:g} x "
                    f"the round's median move of that array {references[name]:.3g}"
                )
        return None

    def _array_reason(self, arrays: Mapping[str, float], base: Mapping[str, np.ndarray]) -> str | None:
        for name, norm in arrays.items():
            scale = max(_norm(base[name]), math.sqrt(base[name].size))
            if not norm <= self.limits.array_factor * scale:
                return (
                    f"client-model array '{name}' moves by {norm:.3g}, beyond "
                    f"{self.limits.array_factor:g} x its global scale {scale:.3g}"
                )
        return None


def _norm(values: np.ndarray) -> float:
    """The Euclidean norm of ``values`` in float64 (3e38 squared overflows float32)."""
    return float(np.linalg.norm(values.ravel()))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
