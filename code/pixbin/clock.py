"""The one clock: maps from each stream's own clock to the probe clock, and sample ↔ time.

The probe clock is seconds on probe ``imec0``'s AP stream (AP sample / AP ``imSampRate``,
sample 0 = 0 s). Every other stream (``imec0.lf``, the other probes' ``imecN.ap`` and
``imecN.lf``, ``behaviour``, the NIDQ board's ``nidq``, ...) reaches it through a
:class:`ClockMap` (``t_probe = offset_s + rate * t_stream``) that the sync stage fits and stores in
``sync.json``; :meth:`ClockMap.load` is how every later stage gets one. A recording that paused
and restarted (the behaviour DAQ) has a :class:`PiecewiseClockMap` instead: one linear piece
per stretch recorded without a pause, no probe time for the stream times between them where the
pause lies, no stream time for the probe times inside a pause. :class:`StreamClock` adds the
stream's sample rate, so sample positions map to probe seconds and back.

Sample convention: a time ``t`` on a stream sampled at ``rate_hz`` is at sample position
``t * rate_hz`` (sample ``k`` is at ``k / rate_hz``); edge positions are such positions: analog
edges from :mod:`pixbin.edges` are interpolated, digital ones (SY word bits) are
:func:`digital_edge_position` (``i - 0.5`` for a change between samples ``i - 1`` and ``i``).

This module is small on purpose: stages import it, not the sync stage.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pixbin import layout
from pixbin.errors import SyncError
from pixbin.fileio import read_json, write_json

__all__ = [
    "ClockMap",
    "ClockMapLike",
    "InvertibleClockMapLike",
    "PiecewiseClockMap",
    "StreamClock",
    "digital_edge_position",
    "fit_clock_map",
    "PROBE_STREAM",
    "LF_STREAM",
    "BEHAVIOUR_STREAM",
    "CAMERA_STREAM",
    "NIDQ_STREAM",
    "ap_stream",
    "lf_stream",
]

PROBE_STREAM = "imec0.ap"
LF_STREAM = "imec0.lf"
BEHAVIOUR_STREAM = "behaviour"
CAMERA_STREAM = "camera"  # IMAQdx timestamps (s); fitted by the pose stage from the frame TTLs
NIDQ_STREAM = "nidq"  # the NI board's samples / niSampRate; fitted by the sync stage from its sync line


def ap_stream(probe: str) -> str:
    """The clock-map name of a probe's AP stream (``imec1`` → ``"imec1.ap"``; imec0's is the
    probe clock itself)."""
    return f"{probe}.ap"


def lf_stream(probe: str) -> str:
    """The clock-map name of a probe's LF stream (``imec1`` → ``"imec1.lf"``)."""
    return f"{probe}.lf"


class ClockMapLike(Protocol):
    """What a stage needs from a clock map (:class:`ClockMap`, or e.g. a test's true clock):
    stream seconds → probe seconds."""

    def to_probe(self, times_s: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        """Stream-clock seconds → probe-clock seconds (increasing)."""
        ...


class InvertibleClockMapLike(ClockMapLike, Protocol):
    """A :class:`ClockMapLike` that also maps probe times back (behaviour, LFP and pose resample
    streams at probe-clock times, so they need both directions)."""

    def from_probe(self, times_s: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        """Probe-clock seconds → stream-clock seconds."""
        ...


@dataclass(frozen=True)
class ClockMap:
    """Linear map from a stream's clock to the probe clock: ``t_probe = offset_s + rate * t``.

    Attributes
    ----------
    stream : str
        ``"imec0.ap"`` (identity), ``"imec0.lf"``, ``"behaviour"``, ``"nidq"``, ...
    offset_s : float
        Probe time of the stream's t = 0 (its first sample).
    rate : float
        Probe seconds per stream second (1 + ppm·1e-6).

    Examples
    --------
    >>> m = ClockMap("behaviour", offset_s=-2.5, rate=1 + 20e-6)
    >>> float(m.to_probe(100.0)), float(m.from_probe(m.to_probe(100.0)))
    (97.502, 100.0)
    """

    stream: str
    offset_s: float
    rate: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset_s) and math.isfinite(self.rate) and self.rate > 0):
            raise SyncError(
                f"clock map for {self.stream!r}: offset_s={self.offset_s}, rate={self.rate}; "
                "expected finite values and rate > 0"
            )

    @property
    def ppm(self) -> float:
        """Rate difference in parts per million (positive: the stream's clock runs slow)."""
        return (self.rate - 1.0) * 1e6

    def to_probe(self, times_s: np.ndarray | float) -> np.ndarray:
        """Stream times (s) → probe times (s)."""
        t = np.asarray(times_s, dtype=np.float64)
        return self.offset_s + t + (self.rate - 1.0) * t

    def from_probe(self, times_s: np.ndarray | float) -> np.ndarray:
        """Probe times (s) → stream times (s)."""
        return (np.asarray(times_s, dtype=np.float64) - self.offset_s) / self.rate

    @classmethod
    def identity(cls, stream: str = PROBE_STREAM) -> ClockMap:
        """The probe clock itself."""
        return cls(stream, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """The model as stored in ``sync.json``."""
        return {"offset_s": self.offset_s, "rate": self.rate, "ppm": self.ppm}

    @classmethod
    def load(cls, processed_dir: str | os.PathLike, stream: str) -> ClockMap | PiecewiseClockMap:
        """The map of ``stream`` from ``processed_dir/sync.json``: a :class:`ClockMap`, or a
        :class:`PiecewiseClockMap` when the stream's entry has ``segments`` (it paused).

        Raises
        ------
        SyncError
            If the file is missing, failed its QC (``"pass": false``) or lacks the stream.
        """
        path = layout.Processed(Path(processed_dir)).sync_json
        if not path.is_file():
            raise SyncError(f"{path}: not found; run the sync stage first")
        doc = read_json(path)
        streams = doc.get("streams", {})
        if not doc.get("pass", False):
            raise SyncError(f"{path}: sync failed its checks ({doc.get('reason')}); no valid clock map")
        if stream not in streams:
            if stream == PROBE_STREAM:
                return cls.identity()
            raise SyncError(f"{path}: no clock map for stream {stream!r}; has {sorted(streams)}")
        entry = streams[stream]
        if not entry.get("pass", True):
            raise SyncError(f"{path}: the {stream!r} map failed its checks ({entry.get('reason')})")
        if "segments" in entry:
            return PiecewiseClockMap.from_dict(stream, entry)
        return cls(stream, float(entry["offset_s"]), float(entry["rate"]))

    def save(self, processed_dir: str | os.PathLike, **extra: Any) -> Path:
        """Add or replace this stream's model in ``processed_dir/sync.json`` (atomically).

        ``extra`` keys are stored beside the model (QC numbers). A new file is marked passing.
        """
        path = layout.Processed(Path(processed_dir)).sync_json
        doc = read_json(path) if path.is_file() else {"pass": True, "reason": None, "streams": {}}
        doc.setdefault("streams", {})[self.stream] = {**extra, **self.to_dict()}
        return write_json(path, doc)


@dataclass(frozen=True)
class PiecewiseClockMap:
    """Map of a stream that paused and restarted: one :class:`ClockMap` per segment.

    Segment ``j`` holds the stream times ``stream_ranges_s[j] = (start, end)`` (stream seconds;
    its sample count goes on through a pause as if no time passed, so the segments follow each
    other on the stream clock) and maps them with ``maps[j]``. Between two segments lies the
    stream interval that holds the pause (after the last sync edge of one, before the first of
    the next): it cannot be placed, so :meth:`to_probe` gives NaN there. Probe times inside a
    pause (or mapping into such an interval) have no stream time: :meth:`from_probe` gives NaN.
    Times before the first segment / after the last one extend its line, as a
    :class:`ClockMap` does.

    Examples
    --------
    >>> m = PiecewiseClockMap("behaviour", (ClockMap("behaviour", -2.0), ClockMap("behaviour", 1.3)),
    ...                       ((0.0, 10.0), (10.5, 20.0)))
    >>> m.to_probe([5.0, 10.2, 15.0]).tolist(), m.from_probe([7.5, 9.0, 17.0]).tolist()
    ([3.0, nan, 16.3], [9.5, nan, 15.7])
    """

    stream: str
    maps: tuple[ClockMap, ...]
    stream_ranges_s: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        ranges = self.stream_ranges_s
        if len(self.maps) != len(ranges) or len(ranges) < 2:
            raise SyncError(f"piecewise clock map for {self.stream!r}: {len(self.maps)} maps for "
                            f"{len(ranges)} segments; expected two or more, one map each")
        flat = [t for r in ranges for t in r]
        if not all(math.isfinite(t) for t in flat) or any(b < a for a, b in zip(flat, flat[1:])):
            raise SyncError(f"piecewise clock map for {self.stream!r}: segment ranges {ranges} "
                            "are not finite and in order")
        for j in range(1, len(ranges)):
            end = float(self.maps[j - 1].to_probe(ranges[j - 1][1]))
            if float(self.maps[j].to_probe(ranges[j][0])) < end:
                raise SyncError(f"piecewise clock map for {self.stream!r}: segment {j + 1} starts "
                                f"on the probe clock before segment {j} ends (a pause cannot be "
                                "negative)")

    @property
    def probe_ranges_s(self) -> tuple[tuple[float, float], ...]:
        """Each segment's (start, end) on the probe clock."""
        return tuple((float(m.to_probe(a)), float(m.to_probe(b)))
                     for m, (a, b) in zip(self.maps, self.stream_ranges_s))

    def segment_samples(self, rate_hz: float, n_samples: int) -> list[tuple[int, int]]:
        """Each segment's ``[first, stop)`` samples of a stream of ``n_samples`` at ``rate_hz``:
        the first from sample 0, the last to the end, the samples between two segments (where the
        pause lies) in none; a segment starts where the previous one stops, at the earliest (a
        segment may be empty)."""
        last = len(self.stream_ranges_s) - 1
        segments: list[tuple[int, int]] = []
        for j, (a, b) in enumerate(self.stream_ranges_s):
            first = 0 if j == 0 else min(max(int(math.ceil(a * rate_hz)), 0), n_samples)
            stop = n_samples if j == last else min(max(int(math.floor(b * rate_hz)) + 1, 0), n_samples)
            if segments:
                first = max(first, segments[-1][1])
            segments.append((first, stop))
        return segments

    def to_probe(self, times_s: np.ndarray | float) -> np.ndarray:
        """Stream times (s) → probe times (s); NaN between segments (where the pause lies)."""
        return self._apply(np.asarray(times_s, dtype=np.float64), self.stream_ranges_s,
                           [m.to_probe for m in self.maps])

    def from_probe(self, times_s: np.ndarray | float) -> np.ndarray:
        """Probe times (s) → stream times (s); NaN inside a pause."""
        return self._apply(np.asarray(times_s, dtype=np.float64), self.probe_ranges_s,
                           [m.from_probe for m in self.maps])

    @staticmethod
    def _apply(t: np.ndarray, ranges: tuple[tuple[float, float], ...], fns: list) -> np.ndarray:
        """``fns[j](t)`` where ``t`` lies in ``ranges[j]`` (the first/last open-ended), else NaN."""
        out = np.full(t.shape, np.nan)
        last = len(ranges) - 1
        for j, ((a, b), fn) in enumerate(zip(ranges, fns)):
            inside = ((t >= a) | (j == 0)) & ((t <= b) | (j == last))
            out[inside] = fn(t[inside])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The model as stored in ``sync.json`` (the first segment's map at the top level: the
        stream's t = 0)."""
        return {**self.maps[0].to_dict(), "clock_model": "piecewise",
                "segments": [{**m.to_dict(), "stream_s": list(r), "probe_s": list(p)}
                             for m, r, p in zip(self.maps, self.stream_ranges_s,
                                                self.probe_ranges_s)]}

    @classmethod
    def from_dict(cls, stream: str, entry: dict[str, Any]) -> PiecewiseClockMap:
        """The map from a ``sync.json`` stream entry with ``segments``."""
        segments = entry["segments"]
        return cls(stream, tuple(ClockMap(stream, float(s["offset_s"]), float(s["rate"]))
                                 for s in segments),
                   tuple((float(s["stream_s"][0]), float(s["stream_s"][1])) for s in segments))


def digital_edge_position(index: np.ndarray | float) -> np.ndarray:
    """Sample position of a digital transition first seen at sample ``index``: ``index - 0.5``,
    the unbiased estimate of a change known only to lie between samples ``index - 1`` and
    ``index`` (analog edges from :mod:`pixbin.edges` are interpolated positions already)."""
    return np.asarray(index, dtype=np.float64) - 0.5


@dataclass(frozen=True)
class StreamClock:
    """A stream's sample rate and its map to the probe clock: sample positions ↔ probe seconds.

    Examples
    --------
    >>> c = StreamClock(2500.0, ClockMap("imec0.lf", 0.0, 1.0))
    >>> float(c.to_probe(2500)), float(c.to_samples(2.0))
    (1.0, 5000.0)
    """

    rate_hz: float
    clock_map: InvertibleClockMapLike

    def to_probe(self, samples: np.ndarray | float) -> np.ndarray:
        """Sample positions of this stream → probe seconds."""
        return np.asarray(self.clock_map.to_probe(np.asarray(samples, np.float64) / self.rate_hz),
                          np.float64)

    def to_samples(self, probe_s: np.ndarray | float) -> np.ndarray:
        """Probe seconds → (fractional) sample positions of this stream."""
        return np.asarray(self.clock_map.from_probe(np.asarray(probe_s, np.float64)),
                          np.float64) * self.rate_hz


def fit_clock_map(stream: str, stream_s: np.ndarray, probe_s: np.ndarray
                  ) -> tuple[ClockMap, np.ndarray]:
    """The least-squares line ``probe_s ≈ offset_s + rate * stream_s`` as a :class:`ClockMap`,
    and the absolute residual of each point (s). For streams timed by matched events (camera
    frames against their exposure TTL); the sync stage's edge fit is in :mod:`pixbin.sync_match`.
    """
    rate, offset = np.polyfit(np.asarray(stream_s, np.float64), np.asarray(probe_s, np.float64), 1)
    clock_map = ClockMap(stream, float(offset), float(rate))
    return clock_map, np.abs(clock_map.to_probe(stream_s) - probe_s)
