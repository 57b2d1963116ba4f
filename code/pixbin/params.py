"""Parameters from plain mappings (config files): typed, frozen, and refused when wrong.

Every stage keeps its parameters in one frozen dataclass with typed fields, built from a config
section by :func:`params_from_dict`. A misspelt key is never dropped silently, and a value of the
wrong type is refused naming the key, the type expected and where the mapping came from (the
config file and section). Values are normalised on the way in (an int where a float is expected
becomes a float, a YAML list becomes a tuple for a tuple field), so equal parameters compare and
hash equal (:func:`params_hash`).

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``None``, unions (``float | None``),
``Literal[...]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[K, V]`` / ``Mapping``,
``Any`` and nested parameter dataclasses.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class P:
...     rate_hz: float = 1.0
>>> params_from_dict(P, {"rate_hz": 2}, what="example parameter")
P(rate_hz=2.0)
>>> params_from_dict(P, {"rate": 2.0}, what="example parameter")
Traceback (most recent call last):
...
pixbin.errors.ConfigError: unknown example parameter(s) ['rate']; valid example parameters: ['rate_hz']
>>> params_from_dict(P, {"rate_hz": "fast"}, what="example parameter", where="cfg.yaml [ex]")
Traceback (most recent call last):
...
pixbin.errors.ConfigError: cfg.yaml [ex]: rate_hz: expected a finite number (float); found 'fast' (str)
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

from pixbin.errors import ConfigError

__all__ = ["check_keys", "field_names", "params_from_dict", "params_to_dict", "params_hash"]

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


def params_from_dict(cls: type[T], values: Mapping[str, Any] | None, *, what: str,
                     where: str | None = None) -> T:
    """``cls(**values)`` for a parameter dataclass, with every key and value checked.

    Parameters
    ----------
    cls : dataclass type
        The parameter class; its field annotations are the types enforced.
    values : mapping or None
        Keyword values, e.g. a config section (``None``: the defaults).
    what : str
        Singular noun for one key in messages, e.g. ``"lfp parameter"``.
    where : str, optional
        Where the values came from (``"pipeline.yaml [sync]"``), put in front of messages.

    Raises
    ------
    ConfigError
        On a non-mapping, an unknown key (the message lists the valid keys, sorted), a missing
        required key, or a value of the wrong type (naming the key and the type expected).
    """
    values = {} if values is None else values
    check_keys(values, sorted(field_names(cls)), what=what, where=where)
    prefix = f"{where}: " if where is not None else ""
    hints = typing.get_type_hints(cls)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in values]
    if missing:
        raise ConfigError(f"{prefix}missing {what}(s) {missing}")
    converted = {key: _convert(value, hints[key], f"{prefix}{key}", what)
                 for key, value in values.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix}{e}") from e
    except ConfigError as e:  # a range check of the class: say where the value came from
        if not prefix or str(e).startswith(prefix):
            raise
        raise ConfigError(f"{prefix}{e}") from e


def params_to_dict(params: Any) -> dict[str, Any]:
    """A parameter dataclass as plain JSON-ready values (tuples become lists)."""
    from pixbin.fileio import to_json

    return json.loads(to_json(dataclasses.asdict(params)))


def params_hash(params: Any) -> str:
    """Short sha256 of the normalised parameters (the pipeline's cache key)."""
    text = json.dumps(params_to_dict(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ conversion
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is float:
        return "a finite number (float)"
    if tp is int:
        return "an integer (int)"
    if tp is bool:
        return "true or false (bool)"
    if tp is str:
        return "a string (str)"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values [{', '.join(_describe(a) for a in args)}]"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {field_names(tp)}"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _convert(value: Any, tp: Any, where: str, what: str) -> Any:
    try:
        return _coerce(value, tp, where, what)
    except _Mismatch:
        raise ConfigError(
            f"{where}: expected {_describe(tp)}; found {value!r} ({type(value).__name__})"
        ) from None


def _coerce(value: Any, tp: Any, where: str, what: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for member in typing.get_args(tp):
            try:
                return _coerce(value, member, where, what)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_convert(v, args[0] if args else Any, f"{where}[{i}]", what)
                     for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise _Mismatch
            items = [_convert(v, a, f"{where}[{i}]", what)
                     for i, (v, a) in enumerate(zip(value, args))]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        args = typing.get_args(tp) or (Any, Any)
        return {_convert(k, args[0], f"{where}", what): _convert(v, args[1], f"{where}.{k}", what)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return params_from_dict(tp, value, what=what, where=where)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    raise ConfigError(f"{where}: parameter type {tp!r} is not supported by pixbin.params")
