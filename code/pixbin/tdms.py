"""Behaviour and camera TDMS reading with nptdms, streamed (``TdmsFile.open``), rates from properties.

LabVIEW rig files store each signal in a group of its own name with one channel ``"0"``
(``/'Back_Sensor'/'0'``). Channels are addressed by group name; a group holding several channels
is addressed as ``"group/channel"``. Nothing here reads a whole file into memory: metadata is read
once and channel data is read by sample range (nptdms seeks through its segment index).

Rates come from each channel's ``wf_increment`` property (``rate_hz = 1 / wf_increment``, never
rounded); a channel without it is refused wherever a rate is needed. A file that is not TDMS or
whose last segment is cut short (an unfinished copy) is refused before nptdms reads it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nptdms import TdmsFile

from pixbin.errors import TdmsError

__all__ = [
    "ChannelInfo",
    "list_channels",
    "require_channels",
    "read_channel",
    "read_windows",
    "iter_chunks",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelInfo:
    """What a TDMS channel holds, read from its metadata only.

    Attributes
    ----------
    group, channel : str
        TDMS group and channel names (rig files: group = signal name, channel = ``"0"``).
    n_samples : int
        Number of values stored.
    rate_hz : float
        ``1 / wf_increment`` exactly (NaN when the channel has no ``wf_increment``).
    start_time : datetime or None
        ``wf_start_time`` as a timezone-aware UTC datetime, if present.
    unit : str
        ``unit_string`` or ``""``.
    path : Path
        The TDMS file.
    """

    group: str
    channel: str
    n_samples: int
    rate_hz: float
    start_time: _dt.datetime | None
    unit: str
    path: Path

    @property
    def wf_increment(self) -> float:
        """Seconds per sample (``1 / rate_hz``)."""
        return 1.0 / self.rate_hz

    @property
    def duration_s(self) -> float:
        """``n_samples / rate_hz`` on the file's own clock."""
        return self.n_samples / self.rate_hz


_LEAD_IN_BYTES = 28  # "TDSm", ToC mask, version, next segment offset, raw data offset
_SEGMENT_INCOMPLETE = 0xFFFFFFFFFFFFFFFF
_TOC_BIG_ENDIAN = 1 << 6


@functools.lru_cache(maxsize=64)
def _check_segments(path: Path, size: int, mtime_ns: int) -> None:
    """Refuse a file that is not TDMS or whose last segment is cut short.

    nptdms reads a truncated file up to where it ends (with a log warning only), which would
    make a copy that did not finish look like a shorter recording. Each segment's lead-in says
    where the next one starts; the last must end exactly at the end of the file.
    """
    import struct

    with open(path, "rb") as f:
        position = 0
        while position < size:
            f.seek(position)
            lead_in = f.read(_LEAD_IN_BYTES)
            if lead_in[:4] != b"TDSm" or len(lead_in) < _LEAD_IN_BYTES:
                what = ("not a TDMS file" if position == 0 else
                        f"no TDMS segment at byte {position} of {size}")
                raise TdmsError(f"{path}: cannot read as TDMS ({what}; starts with "
                                f"{lead_in[:16]!r})")
            toc = struct.unpack("<i", lead_in[4:8])[0]
            endian = ">" if toc & _TOC_BIG_ENDIAN else "<"
            next_offset = struct.unpack(endian + "Q", lead_in[12:20])[0]
            if next_offset == _SEGMENT_INCOMPLETE:
                raise TdmsError(f"{path}: the TDMS segment at byte {position} was never "
                                "finished (LabVIEW stopped while writing it); the file is "
                                "truncated")
            position += _LEAD_IN_BYTES + next_offset
        if position != size:
            raise TdmsError(f"{path}: truncated TDMS file: its last segment ends at byte "
                            f"{position} but the file has {size} bytes (a copy that did not "
                            "finish?); copy it again from the rig")


def _open(path: Path) -> TdmsFile:
    if not path.is_file():
        raise TdmsError(f"{path}: TDMS file not found")
    stat = path.stat()
    _check_segments(path, stat.st_size, stat.st_mtime_ns)
    try:
        return TdmsFile.open(path)
    except TdmsError:
        raise
    except Exception as exc:  # nptdms raises ValueError/struct.error/... on corrupt files
        raise TdmsError(f"{path}: cannot read as TDMS ({type(exc).__name__}: {exc})") from exc


def _to_datetime(value) -> _dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, np.datetime64):
        us = value.astype("datetime64[us]").astype(np.int64)
        return _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=int(us))
    return None


def _rate(increment) -> float:
    try:
        inc = float(increment)
    except (TypeError, ValueError):
        return math.nan
    if not math.isfinite(inc) or inc <= 0:
        return math.nan
    return 1.0 / inc


def list_channels(path: str | os.PathLike) -> dict[str, ChannelInfo]:
    """All channels of a TDMS file, from metadata only.

    Parameters
    ----------
    path : path-like
        TDMS file.

    Returns
    -------
    dict
        Keyed by group name for a group with a single channel, ``"group/channel"`` for groups with
        several channels, in file order.
    """
    path = Path(path)
    with _open(path) as f:
        out: dict[str, ChannelInfo] = {}
        for group in f.groups():
            channels = group.channels()
            for ch in channels:
                props = ch.properties
                info = ChannelInfo(
                    group=group.name,
                    channel=ch.name,
                    n_samples=int(len(ch)),
                    rate_hz=_rate(props.get("wf_increment")),
                    start_time=_to_datetime(props.get("wf_start_time")),
                    unit=str(props.get("unit_string", "") or ""),
                    path=path,
                )
                key = group.name if len(channels) == 1 else f"{group.name}/{ch.name}"
                out[key] = info
    return out


def require_channels(
    path: str | os.PathLike, groups: Sequence[str], *, same_length: bool = True
) -> dict[str, ChannelInfo]:
    """Check that ``groups`` exist with a rate (and, by default, the same length); return their info.

    Parameters
    ----------
    path : path-like
        TDMS file.
    groups : sequence of str
        Keys as :func:`list_channels` names them (group name, or ``"group/channel"``).
    same_length : bool
        Refuse channels whose sample counts differ.

    Raises
    ------
    TdmsError
        Naming the file, the missing channel(s) and what the file holds; or a missing or invalid
        ``wf_increment``; or mismatched lengths.
    """
    path = Path(path)
    available = list_channels(path)
    missing = [g for g in groups if g not in available]
    if missing:
        raise TdmsError(
            f"{path}: missing channel(s) {missing}; the file holds {sorted(available)}"
        )
    chosen = {g: available[g] for g in groups}
    no_rate = [g for g, info in chosen.items() if not math.isfinite(info.rate_hz)]
    if no_rate:
        raise TdmsError(
            f"{path}: channel(s) {no_rate} have no valid 'wf_increment' property "
            "(expected a positive number of seconds per sample); cannot tell their rate"
        )
    if same_length and len({info.n_samples for info in chosen.values()}) > 1:
        lengths = {g: info.n_samples for g, info in chosen.items()}
        raise TdmsError(f"{path}: channels have different lengths (expected equal): {lengths}")
    return chosen


def _channel_obj(f: TdmsFile, path: Path, group: str, channel: str):
    try:
        return f[group][channel]
    except KeyError:
        names = [f"{g.name}/{c.name}" for g in f.groups() for c in g.channels()]
        raise TdmsError(
            f"{path}: no channel {group!r}/{channel!r}; the file holds {names}"
        ) from None


def read_channel(
    path: str | os.PathLike,
    group: str,
    channel: str = "0",
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Read samples ``[start, stop)`` of one channel (streamed; only that range is read).

    Parameters
    ----------
    path : path-like
        TDMS file.
    group, channel : str
        Group and channel names.
    start, stop : int
        Sample range; ``stop=None`` reads to the end.
    """
    path = Path(path)
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"invalid sample range [{start}, {stop}) for {path} {group}/{channel}")
    with _open(path) as f:
        ch = _channel_obj(f, path, group, channel)
        n = len(ch)
        stop = n if stop is None else min(stop, n)
        if start >= stop:
            return np.empty(0, dtype=ch.dtype)
        return ch.read_data(offset=start, length=stop - start)


def read_windows(
    path: str | os.PathLike,
    group: str,
    channel: str = "0",
    windows: Sequence[tuple[int, int]] = (),
) -> list[np.ndarray]:
    """Read several ``[start, stop)`` sample ranges of one channel, opening the file once."""
    path = Path(path)
    out = []
    with _open(path) as f:
        ch = _channel_obj(f, path, group, channel)
        n = len(ch)
        for start, stop in windows:
            if start < 0 or stop < start:
                raise ValueError(f"invalid sample range [{start}, {stop}) for {path} {group}/{channel}")
            stop = min(stop, n)
            out.append(ch.read_data(offset=start, length=stop - start) if stop > start
                       else np.empty(0, dtype=ch.dtype))
    return out


def _split_key(f: TdmsFile, key: str, channel: str) -> tuple[str, str]:
    """Caller keys are group names (channel given separately) or ``"group/channel"``; a group
    whose own name contains ``/`` (LabVIEW writes dates such as ``07/09/2012``) wins."""
    names = {g.name for g in f.groups()}
    if key in names or "/" not in key:
        return key, channel
    group, _, name = key.rpartition("/")
    return group, name


def iter_chunks(
    path: str | os.PathLike,
    groups: Sequence[str],
    *,
    chunk_samples: int = 1_000_000,
    channel: str = "0",
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Stream several equal-length channels in aligned chunks.

    Parameters
    ----------
    path : path-like
        TDMS file.
    groups : sequence of str
        Group names (channel ``channel`` of each) or ``"group/channel"`` keys.
    chunk_samples : int
        Samples per chunk (the last chunk may be shorter).
    channel : str
        Channel name inside each group when a key has no ``/``.
    start, stop : int
        Optional sample range to stream.

    Yields
    ------
    (int, dict)
        First sample index of the chunk and ``{key: samples}``, all of the same length.
    """
    path = Path(path)
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
    keys = list(groups)
    with _open(path) as f:
        objs = {k: _channel_obj(f, path, *_split_key(f, k, channel)) for k in keys}
        lengths = {k: len(o) for k, o in objs.items()}
        if len(set(lengths.values())) > 1:
            raise TdmsError(f"{path}: channels have different lengths (expected equal): {lengths}")
        n = next(iter(lengths.values()), 0)
        stop = n if stop is None else min(stop, n)
        for s in range(start, stop, chunk_samples):
            m = min(chunk_samples, stop - s)
            chunk = {k: o.read_data(offset=s, length=m) for k, o in objs.items()}
            got = {k: len(v) for k, v in chunk.items() if len(v) != m}
            if got:
                raise TdmsError(
                    f"{path}: short read at sample {s}: expected {m} samples, got {got}"
                )
            yield s, chunk
