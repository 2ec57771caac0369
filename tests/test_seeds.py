"""Tests for fsl_sage_flwr.core.seeds: the one seed-derivation function and its two schemes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fsl_sage_flwr.core import training
from fsl_sage_flwr.core.seeds import derive_seed


@pytest.mark.parametrize("parts", [(0, "server-init"), (7, 3, 12, "batches"), (2**40, -1)])
def test_digest_scheme_is_the_first_63_bits_of_the_sha256_of_the_joined_parts(parts):
    # Prepare: the formula written out independently.
    text = "/".join(str(p) for p in parts).encode()
    expected = int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1

    # Execute
    seed = derive_seed(*parts)

    # Assert
    assert seed == expected
    assert 0 <= seed < 2**63


@pytest.mark.parametrize("parts", [(0, 1), (5, 19), (123456789, 2)])
def test_seed_sequence_scheme_is_numpys_first_state_word(parts):
    # Prepare
    expected = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])

    # Execute
    seed = derive_seed(*parts, scheme="seed-sequence")

    # Assert
    assert seed == expected
    assert 0 <= seed < 2**32


def test_training_uses_the_same_function():
    # Execute / Assert: one derivation for the whole package.
    assert training.derive_seed is derive_seed


def test_schemes_differ_and_parts_order_matters():
    # Execute / Assert
    assert derive_seed(3, 1) != derive_seed(3, 1, scheme="seed-sequence")
    assert derive_seed(3, 1) != derive_seed(1, 3)
    assert derive_seed(3, 1, scheme="seed-sequence") != derive_seed(1, 3, scheme="seed-sequence")


@pytest.mark.parametrize(
    ("parts", "scheme", "message"),
    [
        ((0, "align"), "seed-sequence", "non-negative ints"),
        ((-1, 2), "seed-sequence", "non-negative ints"),
        ((True, 2), "seed-sequence", "non-negative ints"),
        ((0, 1), "sha1", "unknown seed scheme.*digest, seed-sequence"),
    ],
)
def test_bad_parts_or_scheme_are_rejected(parts, scheme, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        derive_seed(*parts, scheme=scheme)
