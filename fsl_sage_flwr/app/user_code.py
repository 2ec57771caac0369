"""User code named in the run config as ``"module:function"``: found, called and checked, naming the key."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any


class UserCodeError(ValueError):
    """A run-config reference to user code that cannot be used, with the key that named it."""


def import_reference(reference: str, key: str) -> Callable[..., Any]:
    """Return the function ``reference`` (``"package.module:function"``) names.

    Parameters
    ----------
    reference : str
        ``"module:attribute"``; the attribute may be dotted (``"module:Class.method"``).
    key : str
        The run-config key that holds it, for the error messages.

    Raises
    ------
    UserCodeError
        Naming ``key``, when the reference is malformed, its module cannot be
        imported, the attribute is missing, or it is not callable.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise UserCodeError(f"run config '{key}': {reference!r} is not 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise UserCodeError(
            f"run config '{key}': cannot import module {module_name!r} ({err}); is it installed or on PYTHONPATH?"
        ) from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserCodeError(f"run config '{key}': module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserCodeError(f"run config '{key}': {reference!r} is a {type(target).__name__}, not a function")
    return target


def call_reference(reference: str, key: str, context: Any) -> Any:
    """Call the function ``reference`` names: with ``context`` if it has a required parameter, else with none.

    Raises
    ------
    UserCodeError
        As :func:`import_reference`.
    """
    function = import_reference(reference, key)
    return function(context) if _requires_an_argument(function) else function()


def _requires_an_argument(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some callables have no signature to read
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional and p.default is inspect.Parameter.empty for p in parameters)
