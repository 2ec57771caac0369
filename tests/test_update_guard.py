"""The client-model update guard and the robust averages: what they refuse, what they compute, what they keep."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fsl_sage_flwr.strategies.averaging import weighted_average
from fsl_sage_flwr.strategies.robust_average import aggregate, coordinate_median, coordinate_trimmed_mean, krum_index
from fsl_sage_flwr.transport.arrays import ArraySpec, to_array
from fsl_sage_flwr.transport.update_guard import UpdateGuard, UpdateLimits

GLOBAL = {
    "w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4),
    "b": np.zeros(4, np.float32),
    "count": np.array(7, np.int64),
}


def _honest(seed: int, step: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    moved = {
        name: (v + step * rng.normal(size=v.shape)).astype(v.dtype) for name, v in GLOBAL.items() if v.dtype.kind == "f"
    }
    return {**moved, "count": np.array(9, np.int64)}


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"factor": -1.0}, "factor"),
        ({"factor": 0.5}, "factor"),
        ({"factor": float("inf")}, "factor"),
        ({"array_factor": 0.0}, "array_factor"),
        ({"min_norm": float("nan")}, "min_norm"),
        ({"window": 0}, "window"),
        ({"min_round_replies": True}, "min_round_replies"),
    ],
)
def test_update_limits_refuse_a_bad_field_by_name(changes, field):
    # Execute / Assert
    with pytest.raises(ValueError, match=f"UpdateLimits.{field}"):
        UpdateLimits(**changes)


@pytest.mark.parametrize("value", [1e30, 3e38, -3e38])
def test_a_huge_array_is_refused_against_the_rounds_median(value):
    # Prepare: four honest replies and one whose weights hold a huge finite value
    bad = _honest(9)
    bad["w"] = bad["w"].copy()
    bad["w"].flat[5] = value
    replies = [_honest(1), _honest(2), bad, _honest(3), _honest(4)]
    # Execute
    screening = UpdateGuard(UpdateLimits()).screen(GLOBAL, replies)
    # Assert: only the huge one, with its norm and the reference named
    assert screening.kept == [0, 1, 3, 4]
    assert screening.reasons[2].startswith(f"client-model update norm {abs(value):.3g} exceeds 10 x the round's median")


@pytest.mark.parametrize("kind", ["scaled", "sign-flipped", "swapped"])
def test_scaled_flipped_and_swapped_arrays_are_refused(kind):
    # Prepare: the attacker's arrays are honest ones changed
    bad = _honest(9)
    if kind == "scaled":
        bad = {k: (v * 100 if v.dtype.kind == "f" else v) for k, v in bad.items()}
    elif kind == "sign-flipped":
        bad = {k: (GLOBAL[k] - 50 * (v - GLOBAL[k]) - GLOBAL[k] if v.dtype.kind == "f" else v) for k, v in bad.items()}
    else:
        bad = {**bad, "w": bad["w"][::-1].copy()}
    # Execute: one attacker against one honest reply (the lower median is the honest one)
    screening = UpdateGuard(UpdateLimits()).screen(GLOBAL, [_honest(1), bad])
    # Assert
    assert screening.kept == [0]
    assert "client-model" in screening.reasons[1]


def test_one_array_far_beyond_its_global_scale_is_refused_even_with_a_loose_norm_factor():
    # Prepare: a factor that lets any total pass; the bias moves by 1e4 (its floor of scale is 2)
    bad = {**_honest(9), "b": np.full(4, 5e3, np.float32)}
    guard = UpdateGuard(UpdateLimits(factor=1e30, array_factor=1000.0))
    # Execute
    screening = guard.screen(GLOBAL, [_honest(1), _honest(2), bad])
    # Assert
    assert screening.kept == [0, 1]
    assert screening.reasons[2].startswith("client-model array 'b' moves by 1e+04")


def test_a_round_with_one_reply_is_checked_against_the_running_median():
    # Prepare: two accepted rounds of honest replies
    guard = UpdateGuard(UpdateLimits())
    for seed in (1, 2):
        guard.accept(guard.screen(GLOBAL, [_honest(seed), _honest(seed + 10), _honest(seed + 20)]))
    huge = {**_honest(3), "w": GLOBAL["w"] * 1000}
    # Execute
    alone = guard.screen(GLOBAL, [huge])
    honest_alone = guard.screen(GLOBAL, [_honest(4)])
    # Assert
    assert alone.kept == [] and "the running median" in alone.reasons[0]
    assert honest_alone.kept == [0]


def test_factor_zero_turns_the_check_off():
    # Prepare
    bad = {**_honest(9), "w": np.full((3, 4), 3e38, np.float32)}
    # Execute
    screening = UpdateGuard(UpdateLimits(factor=0.0)).screen(GLOBAL, [_honest(1), bad])
    # Assert
    assert screening.kept == [0, 1]


def test_screening_changes_nothing_and_accepting_folds_the_lower_median():
    # Prepare
    guard = UpdateGuard(UpdateLimits(window=2))
    replies = [_honest(1), _honest(2, step=0.02), _honest(3, step=0.04)]
    # Execute
    screening = guard.screen(GLOBAL, replies)
    before = guard.snapshot()
    for _ in range(3):
        guard.accept(screening)
    # Assert: the window holds the last two rounds' references
    assert before == ()
    assert guard.snapshot() == (screening.norms[1],) * 2


def test_guard_state_round_trips_and_refuses_a_state_that_does_not_fit():
    # Prepare
    guard = UpdateGuard(UpdateLimits(window=3))
    guard.accept(guard.screen(GLOBAL, [_honest(1), _honest(2), _honest(3)]))
    state = guard.state_dict()
    restored = UpdateGuard(UpdateLimits(window=3))
    # Execute
    restored.load_state_dict(state)
    # Assert
    assert restored.snapshot() == guard.snapshot()
    with pytest.raises(ValueError, match="saved with limits"):
        UpdateGuard(UpdateLimits(window=4)).load_state_dict(state)
    with pytest.raises(ValueError, match="more than the window"):
        restored.load_state_dict({**state, "recent": [1.0] * 4})
    with pytest.raises(ValueError, match="finite numbers"):
        restored.load_state_dict({**state, "recent": [float("inf")]})
    with pytest.raises(ValueError, match="exactly the keys"):
        restored.load_state_dict({"recent": []})
    assert restored.snapshot() == guard.snapshot()


# ----------------------------------------------------------------- robust averages


def test_coordinate_median_and_trimmed_mean_ignore_one_outlier():
    # Prepare: five values per coordinate, one of them huge
    arrays = [np.array([1.0, -2.0]), np.array([2.0, -1.0]), np.array([3.0, 0.0]), np.array([4.0, 1.0])]
    arrays.append(np.array([1e30, -1e30]))
    # Execute
    median = coordinate_median(arrays)
    trimmed = coordinate_trimmed_mean(arrays, 0.2)
    # Assert: the median of each column; the mean after cutting one value at each end
    np.testing.assert_array_equal(median, [3.0, -1.0])
    np.testing.assert_allclose(trimmed, [3.0, -1.0])  # [-2, -1, 0] once -1e30 and 1 are cut


def _record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({name: to_array(values) for name, values in arrays.items()})


def test_aggregate_keeps_dtypes_rounds_counters_and_refuses_unknown_methods():
    # Prepare
    spec = {"w": ArraySpec((2,), "float32"), "n": ArraySpec((1,), "int64")}
    states = [
        (_record(w=np.array([0.0, 1.0], np.float32), n=np.array([3], np.int64)), 10),
        (_record(w=np.array([2.0, 5.0], np.float32), n=np.array([4], np.int64)), 30),
    ]
    # Execute
    median = aggregate(states, spec, "median")
    mean = aggregate(states, spec, "mean")
    # Assert: the median ignores the weights; the mean is the one weighted average
    assert median["w"].numpy().dtype == np.float32 and median["n"].numpy().dtype == np.int64
    np.testing.assert_array_equal(median["w"].numpy(), [1.0, 3.0])
    assert median["n"].numpy().tolist() == [4]  # 3.5 rounded to even
    np.testing.assert_array_equal(mean["w"].numpy(), weighted_average(states, spec)["w"].numpy())
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(states, spec, "geometric-median")


def test_krum_selects_a_reply_from_the_honest_cluster_and_keeps_it_whole():
    # Prepare: five honest replies near each other, one far away (scaled by 100), in the middle
    spec = {"w": ArraySpec((2,), "float32"), "n": ArraySpec((1,), "int64")}
    values = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.2], [1.05, 1.0], [100.0, 100.0], [0.95, 0.95]]
    states = [(_record(w=np.array(v, np.float32), n=np.array([i], np.int64)), 10) for i, v in enumerate(values)]
    # Execute
    chosen = krum_index([{"w": np.array(v, np.float32)} for v in values])
    krum = aggregate(states, spec, "krum")
    # Assert: the most central honest reply, arrays and counters taken as they were
    assert chosen == 3
    np.testing.assert_array_equal(krum["w"].numpy(), np.array(values[3], np.float32))
    assert krum["n"].numpy().tolist() == [3]


def test_a_swap_within_the_whole_update_bound_is_refused_by_its_arrays_median():
    # Prepare: a large array that dominates the whole norm, and two small arrays of equal shape
    rng = np.random.default_rng(0)
    sent = {
        "big": rng.normal(size=(20, 20)).astype(np.float32),
        "g": np.ones(4, np.float32),
        "h": np.zeros(4, np.float32),
    }

    def honest(seed: int) -> dict[str, np.ndarray]:
        noise = np.random.default_rng(seed)
        return {k: (v + 0.05 * noise.normal(size=v.shape)).astype(np.float32) for k, v in sent.items()}

    swapped = honest(9)
    swapped["g"], swapped["h"] = swapped["h"], swapped["g"]
    replies = [honest(1), honest(2), swapped, honest(3)]
    guard = UpdateGuard(UpdateLimits())
    # Execute
    screening = guard.screen(sent, replies)
    # Assert: the whole update stays within 10 x the median norm; the swapped arrays do not
    assert screening.norms[2] <= 10 * sorted(screening.norms)[1]
    assert screening.kept == [0, 1, 3]
    assert "the round's median move of that array" in screening.reasons[2]
