"""Generated hostile client-model arrays: finite, well-shaped, and far from any honest reply."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import strategies as st

MODEL_ATTACKS = ["huge", "scaled", "boosted", "sign-flipped", "swapped"]


def swappable_pairs(sent: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """Pairs of floating-point arrays of equal shape whose exchange moves one of them by over a fifth of its norm.

    Exchanging two nearly equal arrays (BatchNorm weights still at one, say)
    moves the model less than an honest update does: no bound can tell it apart.
    """
    floats = sorted(k for k, v in sent.items() if v.dtype.kind == "f")
    pairs = []
    for i, a in enumerate(floats):
        for b in floats[i + 1 :]:
            if sent[a].shape != sent[b].shape:
                continue
            gap = np.linalg.norm(sent[a].astype(np.float64) - sent[b])
            if gap > 0.2 * min(np.linalg.norm(sent[a]), np.linalg.norm(sent[b])) and gap > 0:
                pairs.append((a, b))
    return pairs


@st.composite
def hostile_model_arrays(
    draw, honest: dict[str, np.ndarray], sent: dict[str, np.ndarray], figures: Counter | None = None
) -> dict[str, np.ndarray]:
    """Arrays that would pull the average far off ``sent``: one value up to 3e38, the whole model scaled
    by 100, the update boosted or sign-flipped, or two arrays of equal shape exchanged."""
    kind = draw(st.sampled_from(MODEL_ATTACKS if swappable_pairs(sent) else MODEL_ATTACKS[:-1]))
    if figures is not None:
        figures[f"kind model-{kind}"] += 1
    floats = sorted(k for k, v in honest.items() if v.dtype.kind == "f")
    arrays = dict(honest)
    if kind == "huge":
        name = draw(st.sampled_from(floats))
        broken = arrays[name].copy()
        broken.flat[draw(st.integers(0, broken.size - 1))] = draw(st.sampled_from([1e30, -1e30, 3e38, -3e38]))
        arrays[name] = broken
    elif kind == "scaled":
        arrays.update({k: arrays[k] * np.float32(draw(st.sampled_from([100.0, -100.0]))) for k in floats})
    elif kind in ("boosted", "sign-flipped"):
        boost = np.float32(draw(st.sampled_from([20.0, 100.0, 1000.0])) * (1 if kind == "boosted" else -1))
        arrays.update({k: sent[k] + boost * (arrays[k] - sent[k]) for k in floats})
    else:
        a, b = draw(st.sampled_from(swappable_pairs(sent)))
        arrays[a], arrays[b] = arrays[b], arrays[a]
    return arrays
