"""Settings records that check themselves: each field names its run-config key, meaning and rule."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def setting(key: str, default: Any, help: str) -> Any:
    """A dataclass field carrying its run-config ``key`` and a one-line ``help``.

    Records built from such fields check themselves in ``__post_init__`` with
    :func:`check_types` and the rules below, so a bad value fails where it is
    given, naming the key, not rounds later inside a strategy.
    """
    return dataclasses.field(default=default, metadata={"key": key, "help": help})


def check_types(record: Any) -> None:
    """Refuse a keyed field whose value is not of its declared type, naming the key.

    An ``int`` is taken where a ``float`` is declared (and stored as a float,
    as ``torch.optim`` takes ``lr=1``); a ``bool`` is never taken for a number.

    Raises
    ------
    ValueError
        Naming the key, the expected type and the value given.
    """
    for f in dataclasses.fields(record):
        if "key" not in f.metadata:
            continue  # a nested record, which checks itself
        name = f.type if isinstance(f.type, str) else f.type.__name__
        value = getattr(record, f.name)
        if name == "float" and isinstance(value, int) and not isinstance(value, bool):
            # Frozen records: the conversion happens once, while the record is built.
            object.__setattr__(record, f.name, float(value))
            continue
        expected = _TYPES[name]
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise ValueError(_refusal(record, f.name, name))


def key_of(f: dataclasses.Field) -> str:
    """The run-config key of a field made by :func:`setting` (its name otherwise)."""
    return f.metadata.get("key", f.name)


def _refusal(record: Any, name: str, rule: str) -> str:
    """The error naming a field by key and attribute: ``'align-lr' must be ... (AlignmentSettings.lr)``."""
    f = next(f for f in dataclasses.fields(record) if f.name == name)
    return f"'{key_of(f)}' must be {rule}, got {getattr(record, name)!r} ({type(record).__name__}.{name})"


def require(condition: bool, record: Any, name: str, rule: str) -> None:
    """Raise ``ValueError`` naming the field, its rule and its value unless ``condition`` holds."""
    if not condition:
        raise ValueError(_refusal(record, name, rule))


def require_argument(condition: bool, name: str, value: Any, rule: str) -> None:
    """The same refusal for a keyword argument (a strategy's ``fraction_train``), naming it."""
    if not condition:
        raise ValueError(f"'{name}' must be {rule}, got {value!r}")


def require_at_least(record: Any, minimum: int, *names: str) -> None:
    """Integer fields of at least ``minimum``."""
    for name in names:
        require(getattr(record, name) >= minimum, record, name, f">= {minimum}")


def require_positive(record: Any, *names: str) -> None:
    """Finite real fields above zero (learning rates, timeouts)."""
    for name in names:
        value = getattr(record, name)
        require(math.isfinite(value) and value > 0, record, name, "a finite number > 0")


def require_non_negative(record: Any, *names: str) -> None:
    """Finite real fields of zero or more (a weight decay)."""
    for name in names:
        value = getattr(record, name)
        require(math.isfinite(value) and value >= 0, record, name, "a finite number >= 0")


def require_choice(record: Any, name: str, allowed: tuple[str, ...]) -> None:
    """A string field from a fixed list."""
    require(getattr(record, name) in allowed, record, name, f"one of {', '.join(allowed)}")


def record_config(record: Any) -> dict[str, Any]:
    """The record as a flat mapping of its run-config keys."""
    return {key_of(f): getattr(record, f.name) for f in dataclasses.fields(record)}


def record_from_config(cls: type, config: Mapping[str, Any], *, origin: str, hint: str = "") -> Any:
    """Build ``cls`` from the run-config keys its fields name.

    Parameters
    ----------
    cls : type
        A dataclass whose fields were made by :func:`setting`.
    config : Mapping[str, Any]
        Flat run-config or train-config entries; keys of other records are ignored.
    origin : str
        What the mapping is, for the error ("run config", "train config").
    hint : str
        Appended to the error of a missing key: where the key should come from.

    Raises
    ------
    ValueError
        Naming the key, when one is missing or its value is refused by ``cls``.
    """
    values = {}
    for f in dataclasses.fields(cls):
        key = key_of(f)
        if key not in config:
            raise ValueError(f"{origin} lacks '{key}'{hint}")
        values[f.name] = config[key]
    return cls(**values)
