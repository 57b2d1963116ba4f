"""Behaviour tasks: small declared classes, found by name.

A task says which TDMS channels it reads, which edge of which channel is which event, its
``enum.IntFlag`` events and actions (one bit each), the dtype of its labels, which events each
action can be aligned to, and the rules that turn the events table into trials. Everything else
(reading, thresholds, edges, clocks, files) is done by :mod:`pixbin.behaviour`.

A lab adds a task without editing pixbin: subclass :class:`Task`, decorate it with
:func:`register_task`, and expose it through the ``pixbin.tasks`` entry-point group of its own
package (``[project.entry-points."pixbin.tasks"] mytask = "mylab.tasks:MyTask"``).
:func:`get_task` finds built-in tasks, registered tasks and entry points.

Examples
--------
>>> from pixbin.tasks import get_task
>>> task = get_task("leverpush")
>>> task.Actions.rewarded_push, task.default_align("rewarded_push")
(<Actions.rewarded_push: 1>, 'back_sensor_open')
"""

from __future__ import annotations

import enum
import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pixbin.errors import BehaviourError

__all__ = [
    "Channel",
    "ActionSpec",
    "Task",
    "check_flags",
    "register_task",
    "get_task",
    "available_tasks",
    "ENTRY_POINT_GROUP",
]

log = logging.getLogger(__name__)

#: Entry-point group searched by :func:`get_task` for tasks defined outside pixbin.
ENTRY_POINT_GROUP = "pixbin.tasks"

#: Modules of the tasks shipped with pixbin (imported on first look-up).
_BUILTIN_MODULES = ("pixbin.tasks.leverpush",)

_REGISTRY: dict[str, type[Task]] = {}
_LOADED = {"builtins": False, "entry_points": False}


@dataclass(frozen=True)
class Channel:
    """One TDMS channel a task reads.

    Attributes
    ----------
    group : str
        TDMS group name (rig files: the signal name; the data is channel ``"0"``).
    rising, falling : str or None
        Event names given to the rising and falling edges (``None``: that edge is no event).
    required : bool
        A file without it is refused; optional channels add their events when present.
    thresholds_v : (float, float) or None
        Hysteresis thresholds (low, high) in the channel's unit; ``None``: from the data.
    merge_gap_s : float
        Pulses whose onset follows the previous onset by at most this much are one train: one
        rising event at the first onset, one falling event at the last offset (0: no merging).
    """

    group: str
    rising: str | None = None
    falling: str | None = None
    required: bool = True
    thresholds_v: tuple[float, float] | None = None
    merge_gap_s: float = 0.0


@dataclass(frozen=True)
class ActionSpec:
    """What an action is aligned to and what its outcome is called.

    Attributes
    ----------
    align : tuple of str
        Events a trial of this action may be aligned to; the first is the default.
    outcome : str
        The ``outcome`` column of its trials (``rewarded``, ``missed``, ``uncued``, ...).
    """

    align: tuple[str, ...]
    outcome: str


def check_flags(flags: type[enum.IntFlag], *, where: str = "") -> type[enum.IntFlag]:
    """Refuse an ``IntFlag`` whose members are not distinct single bits; return it unchanged.

    Usable as a class decorator. Aliases count: ``b = 1 << 0`` after ``a = 1 << 0`` is refused,
    and so is a combination such as ``ab = a | b`` (put aggregates in a plain mapping).

    Raises
    ------
    BehaviourError
        Naming the flag class, the offending members and their values.
    """
    label = where or flags.__qualname__
    if not (isinstance(flags, type) and issubclass(flags, enum.IntFlag)):
        raise BehaviourError(f"{label}: expected an enum.IntFlag class, found {flags!r}")
    seen: dict[int, str] = {}
    for name, member in flags.__members__.items():
        value = int(member)
        if value <= 0 or value & (value - 1):
            raise BehaviourError(
                f"{label}.{name} = {value:#x}: expected a single bit (a power of two); "
                "aggregates of several flags belong in a separate mapping"
            )
        if value in seen:
            raise BehaviourError(
                f"{label}: {name} and {seen[value]} share the value {value:#x}; "
                "expected every flag to have its own bit"
            )
        seen[value] = name
    return flags


class Task:
    """Base class of a declared task; subclasses set the class attributes below.

    Attributes
    ----------
    name : str
        Registry name (``"leverpush"``).
    channels : tuple of Channel
        Channels read, with the events of their edges.
    Events, Actions : enum.IntFlag
        One bit per event / action (checked by :func:`check_flags` at class creation).
    actions : mapping of str to ActionSpec
        Alignment events and outcome of every member of ``Actions``.
    labels_dtype : numpy dtype
        Unsigned integer dtype of ``action_labels`` (uint32 unless declared).
    scan_window_s : float
        How far after a trial start its alignment events are looked for.
    """

    name: ClassVar[str]
    channels: ClassVar[tuple[Channel, ...]]
    Events: ClassVar[type[enum.IntFlag]]
    Actions: ClassVar[type[enum.IntFlag]]
    actions: ClassVar[Mapping[str, ActionSpec]]
    labels_dtype: ClassVar[np.dtype] = np.dtype(np.uint32)
    scan_window_s: ClassVar[float] = 10.0
    _abstract: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_abstract", False):  # an intermediate base that declares nothing
            return
        cls._validate()

    # ------------------------------------------------------------------ declaration checks
    @classmethod
    def _validate(cls) -> None:
        label = f"task class {cls.__qualname__}"
        for attr in ("name", "channels", "Events", "Actions", "actions"):
            if not hasattr(cls, attr):
                raise BehaviourError(f"{label}: missing class attribute {attr!r}")
        if not isinstance(cls.name, str) or not cls.name.isidentifier():
            raise BehaviourError(f"{label}: name must be an identifier, found {cls.name!r}")
        check_flags(cls.Events, where=f"{cls.__qualname__}.Events")
        check_flags(cls.Actions, where=f"{cls.__qualname__}.Actions")
        events = set(cls.Events.__members__)
        groups = [c.group for c in cls.channels]
        if len(set(groups)) != len(groups):
            raise BehaviourError(f"{label}: channel groups repeat: {groups}")
        named: list[str] = []
        for ch in cls.channels:
            for ev in (ch.rising, ch.falling):
                if ev is not None:
                    if ev not in events:
                        raise BehaviourError(
                            f"{label}: channel {ch.group!r} names event {ev!r}, which is not a "
                            f"member of Events {sorted(events)}"
                        )
                    named.append(ev)
            if ch.thresholds_v is not None and not (
                len(ch.thresholds_v) == 2 and float(ch.thresholds_v[0]) < float(ch.thresholds_v[1])
            ):
                raise BehaviourError(
                    f"{label}: channel {ch.group!r} thresholds_v must be (low, high) with "
                    f"low < high, found {ch.thresholds_v!r}"
                )
            if ch.merge_gap_s < 0:
                raise BehaviourError(f"{label}: channel {ch.group!r} merge_gap_s must be >= 0")
        if len(set(named)) != len(named):
            raise BehaviourError(f"{label}: an event is produced by two channel edges: {named}")
        action_names = set(cls.Actions.__members__)
        if set(cls.actions) != action_names:
            raise BehaviourError(
                f"{label}: actions declares {sorted(cls.actions)}, expected exactly the members "
                f"of Actions {sorted(action_names)}"
            )
        for action, spec in cls.actions.items():
            if not spec.align:
                raise BehaviourError(f"{label}: action {action!r} declares no alignment event")
            unknown = [e for e in spec.align if e not in events]
            if unknown:
                raise BehaviourError(
                    f"{label}: action {action!r} aligns to {unknown}, not members of Events"
                )
        dtype = np.dtype(cls.labels_dtype)
        if dtype.kind != "u":
            raise BehaviourError(f"{label}: labels_dtype must be unsigned, found {dtype}")
        bits = dtype.itemsize * 8
        for flags in (cls.Events, cls.Actions):
            top = max(int(m) for m in flags.__members__.values())
            if top.bit_length() > bits:
                raise BehaviourError(
                    f"{label}: {flags.__name__} needs {top.bit_length()} bits; labels_dtype "
                    f"{dtype} has {bits}"
                )
        if not cls.scan_window_s > 0:
            raise BehaviourError(f"{label}: scan_window_s must be > 0, found {cls.scan_window_s}")

    # ------------------------------------------------------------------ declared facts
    @classmethod
    def required_channels(cls) -> tuple[str, ...]:
        """TDMS groups a file must have."""
        return tuple(c.group for c in cls.channels if c.required)

    @classmethod
    def optional_channels(cls) -> tuple[str, ...]:
        """TDMS groups used when present."""
        return tuple(c.group for c in cls.channels if not c.required)

    @classmethod
    def channel(cls, group: str) -> Channel:
        """The declaration of one channel."""
        for c in cls.channels:
            if c.group == group:
                return c
        raise KeyError(group)

    @classmethod
    def default_align(cls, action: str) -> str:
        """The default alignment event of ``action``."""
        return cls.actions[action].align[0]

    @classmethod
    def alignment_events(cls) -> tuple[str, ...]:
        """Every event some action may be aligned to, in flag order (one trials column each)."""
        used = {e for spec in cls.actions.values() for e in spec.align}
        return tuple(name for name in cls.Events.__members__ if name in used)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The declaration as plain data (recorded beside every output)."""
        return {
            "name": cls.name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "channels": [
                {"group": c.group, "rising": c.rising, "falling": c.falling,
                 "required": c.required,
                 "thresholds_v": list(c.thresholds_v) if c.thresholds_v else None,
                 "merge_gap_s": c.merge_gap_s}
                for c in cls.channels
            ],
            "events": {k: int(v) for k, v in cls.Events.__members__.items()},
            "actions": {k: int(v) for k, v in cls.Actions.__members__.items()},
            "alignment": {k: list(v.align) for k, v in cls.actions.items()},
            "outcomes": {k: v.outcome for k, v in cls.actions.items()},
            "labels_dtype": np.dtype(cls.labels_dtype).name,
            "scan_window_s": cls.scan_window_s,
            "rules": cls.rule_parameters(),
        }

    @classmethod
    def rule_parameters(cls) -> dict[str, Any]:
        """Numbers the rules use (windows, gaps), recorded with the outputs; none by default."""
        return {}

    # ------------------------------------------------------------------ rules
    def trials(self, events: pd.DataFrame) -> pd.DataFrame:
        """Events table → one row per trial: ``action``, ``start_s``, ``outcome``.

        Parameters
        ----------
        events : DataFrame
            ``time_s`` (probe clock), ``event``, ``channel``, sorted by time; every event of the
            behaviour recording, also those outside the probe recording.

        Returns
        -------
        DataFrame
            Columns ``action`` (a member name of ``Actions``), ``start_s`` and ``outcome``;
            ``attrs["unlabelled"]`` may list events the rules could not resolve
            (dicts with ``time_s``, ``event`` and ``reason``).
        """
        raise NotImplementedError(f"task {self.name!r} does not define trials()")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task to the registry under ``cls.name``.

    Raises
    ------
    BehaviourError
        If ``cls`` is not a :class:`Task`, or another class is registered under the same name.
    """
    if not (isinstance(cls, type) and issubclass(cls, Task)) or cls is Task:
        raise BehaviourError(f"register_task: expected a subclass of pixbin.tasks.Task, found {cls!r}")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise BehaviourError(
            f"task name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}; "
            f"cannot register {cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    if _LOADED["builtins"]:
        return
    _LOADED["builtins"] = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _load_entry_points() -> None:
    if _LOADED["entry_points"]:
        return
    _LOADED["entry_points"] = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party task must not hide the others
            log.warning("entry point %s = %s (group %s) failed to load: %s: %s",
                        ep.name, ep.value, ENTRY_POINT_GROUP, type(exc).__name__, exc)
            continue
        if isinstance(obj, type) and issubclass(obj, Task):
            if obj.name != ep.name:
                log.warning("entry point %r loads task %r; registered under %r",
                            ep.name, obj.__qualname__, obj.name)
            register_task(obj)


def available_tasks() -> list[str]:
    """Names of every task pixbin can find (built in, registered, entry points)."""
    _load_builtins()
    _load_entry_points()
    return sorted(_REGISTRY)


def get_task(name: str | type[Task]) -> type[Task]:
    """The task class registered as ``name`` (a Task subclass is returned as is).

    Raises
    ------
    BehaviourError
        If no task of that name is known; the message lists the known ones.
    """
    if isinstance(name, type) and issubclass(name, Task):
        return name
    _load_builtins()
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BehaviourError(
            f"unknown task {name!r}; known tasks: {sorted(_REGISTRY)} (a lab's own task is "
            f"found once registered with @register_task or via the {ENTRY_POINT_GROUP!r} "
            "entry-point group)"
        ) from None
