"""Parameters from plain mappings (config files): unknown keys are refused, naming the valid ones.

Every stage keeps its parameters in one frozen dataclass built from a config section; a misspelt
key must not be dropped silently, so each ``from_dict`` goes through :func:`params_from_dict`
(or :func:`check_keys` where the values need converting first).

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class P:
...     rate_hz: float = 1.0
>>> params_from_dict(P, {"rate_hz": 2.0}, what="example parameter")
P(rate_hz=2.0)
>>> params_from_dict(P, {"rate": 2.0}, what="example parameter")
Traceback (most recent call last):
...
pixbin.errors.ConfigError: unknown example parameter(s) ['rate']; valid example parameters: ['rate_hz']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pixbin.errors import ConfigError

__all__ = ["check_keys", "field_names", "params_from_dict"]

T = TypeVar("T")


def field_names(cls: type) -> list[str]:
    """The field names of a dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def check_keys(given: Any, valid: Iterable[str], *, what: str, where: str | None = None) -> None:
    """Refuse a non-mapping or keys outside ``valid``.

    Parameters
    ----------
    given : mapping
        The values read (e.g. a config section).
    valid : iterable of str
        The keys allowed, listed in the message in this order.
    what : str
        Singular noun for a key, e.g. ``"sync parameter"`` or ``"key"``.
    where : str or None
        Where the mapping came from (a file, a section), put in front of the message.

    Raises
    ------
    ConfigError
        ``"<where>: unknown <what>(s) [...]; valid <what>s: [...]"``.
    """
    valid = list(valid)
    prefix = f"{where}: " if where is not None else ""
    if not isinstance(given, Mapping):
        raise ConfigError(f"{prefix}expected a mapping with {what}s {valid}; found {given!r}")
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(f"{prefix}unknown {what}(s) {unknown}; valid {what}s: {valid}")


def params_from_dict(cls: type[T], values: Mapping[str, Any] | None, *, what: str) -> T:
    """``cls(**values)`` for a dataclass ``cls``, refusing unknown keys (``None``: defaults).

    Parameters
    ----------
    cls : dataclass type
        The parameter class.
    values : mapping or None
        Keyword values, e.g. a config section.
    what : str
        Singular noun for one key in messages, e.g. ``"lfp parameter"``.

    Raises
    ------
    ConfigError
        On a non-mapping or an unknown key; the message lists the valid keys (sorted).
    """
    values = {} if values is None else values
    check_keys(values, sorted(field_names(cls)), what=what)
    return cls(**dict(values))
