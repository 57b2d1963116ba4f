"""TTL edges on analog or digital signals, at the signal's native rate, in one pass or streamed.

Conventions (see docs/SYNC.md):

- **Hysteresis.** The level goes high at the first sample with ``x >= high`` after having been low,
  and low at the first sample with ``x <= low`` after having been high. Before the first sample
  that is clearly low or high the level is unknown, so a signal that starts high has no rising
  edge at sample 0.
- **Positions** are float64 sample indices. With ``interpolate=False`` (digital inputs) a position
  is the integer index of the first sample at the new level. With ``interpolate=True`` (analog
  inputs) it is the sub-sample position where the signal crossed the mid level
  ``(low + high) / 2`` on its way to the new level, by linear interpolation between the two
  samples around the last crossing before the trigger sample: for a clean step between samples
  ``i-1`` and ``i`` this is ``i - 0.5``, and rising and falling edges are treated symmetrically.
- **Debounce.** A pair of consecutive transitions closer than ``min_interval_samples`` (a glitch,
  either a short high or a short low) is removed, in order, so rising and falling edges keep
  alternating.

Written by hand because no library does hysteresis with sub-sample interpolation on a stream;
:class:`EdgeDetector` fed in chunks gives exactly what :func:`find_edges` gives on the whole array.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Edges",
    "find_edges",
    "EdgeDetector",
    "auto_thresholds",
    "digital_edges",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edges:
    """Rising and falling edge positions, in samples of the signal they came from (float64)."""

    rising: np.ndarray
    falling: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "rising", np.asarray(self.rising, dtype=np.float64))
        object.__setattr__(self, "falling", np.asarray(self.falling, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.rising) + len(self.falling)

    def shifted(self, offset: float) -> Edges:
        """The same edges with ``offset`` samples added."""
        return Edges(self.rising + offset, self.falling + offset)

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """All edges sorted by position, and their polarity (+1 rising, -1 falling)."""
        pos = np.concatenate([self.rising, self.falling])
        pol = np.concatenate(
            [np.ones(len(self.rising), np.int8), -np.ones(len(self.falling), np.int8)]
        )
        order = np.argsort(pos, kind="stable")
        return pos[order], pol[order]


class EdgeDetector:
    """Stateful hysteresis edge detector: feed chunks in order, then call :meth:`result`.

    Parameters
    ----------
    low, high : float
        Hysteresis thresholds, ``low < high``.
    min_interval_samples : float
        Transition pairs closer than this are dropped (debounce); 0 keeps everything.
    interpolate : bool
        Sub-sample mid-level crossing (analog) or first-sample index (digital).

    Examples
    --------
    >>> det = EdgeDetector(low=1.0, high=4.0)
    >>> for start, chunk in [(0, np.r_[0., 0, 5, 5]), (4, np.r_[5., 0, 0])]:
    ...     det.feed(chunk, start)
    >>> det.result().rising, det.result().falling
    (array([1.5]), array([4.5]))
    """

    def __init__(
        self,
        *,
        low: float,
        high: float,
        min_interval_samples: float = 0,
        interpolate: bool = True,
    ) -> None:
        low = float(low)
        high = float(high)
        if not (np.isfinite(low) and np.isfinite(high)) or not low < high:
            raise ValueError(f"thresholds must be finite with low < high, got low={low}, high={high}")
        if min_interval_samples < 0:
            raise ValueError(f"min_interval_samples must be >= 0, got {min_interval_samples}")
        self.low = low
        self.high = high
        self.mid = 0.5 * (low + high)
        self.min_interval_samples = float(min_interval_samples)
        self.interpolate = bool(interpolate)
        self._state = 0  # 0 unknown, +1 high, -1 low
        self._last_hi = False  # class of the previous chunk's last sample
        self._last_lo = False
        self._next_index = None  # expected start index of the next chunk
        # last sample of the previous chunk (index, value), for interpolation across chunks
        self._last: tuple[int, float] | None = None
        # last (index, value, next value) with x < mid (for rising) and x > mid (for falling)
        # among samples whose successor has been seen
        self._below: tuple[int, float, float] | None = None
        self._above: tuple[int, float, float] | None = None
        self._rising: list[np.ndarray] = []
        self._falling: list[np.ndarray] = []

    def feed(self, chunk: np.ndarray, start_index: int) -> None:
        """Process the next chunk, whose first sample has index ``start_index``."""
        x = np.asarray(chunk)
        if x.ndim != 1:
            raise ValueError(f"chunk must be 1-D, got shape {x.shape}")
        start_index = int(start_index)
        if self._next_index is not None and start_index != self._next_index:
            raise ValueError(
                f"chunks must be contiguous: expected start index {self._next_index}, got {start_index}"
            )
        if len(x) == 0:
            return
        self._next_index = start_index + len(x)
        if x.dtype.kind == "b":
            x = x.astype(np.int8)

        # starts of runs of clearly-high / clearly-low samples (sparse); the level changes at a
        # run start whose class differs from the previous run start's
        hi = x >= self.high
        lo = x <= self.low
        hs = np.flatnonzero(hi[1:] > hi[:-1]) + 1
        ls = np.flatnonzero(lo[1:] > lo[:-1]) + 1
        if hi[0] and not self._last_hi:
            hs = np.concatenate([[0], hs])
        if lo[0] and not self._last_lo:
            ls = np.concatenate([[0], ls])
        self._last_hi, self._last_lo = bool(hi[-1]), bool(lo[-1])
        if len(hs) or len(ls):
            pos = np.concatenate([hs, ls])
            typ = np.concatenate([np.ones(len(hs), np.int8), -np.ones(len(ls), np.int8)])
            order = np.argsort(pos, kind="stable")
            pos, typ = pos[order], typ[order]
            prev = np.empty_like(typ)
            prev[0] = self._state
            prev[1:] = typ[:-1]
            change = (typ != prev) & (prev != 0)
            trig = pos[change]
            is_rise = typ[change] > 0
            self._state = int(typ[-1])
            if len(trig):
                if self.interpolate:
                    where = self._interpolate(x, start_index, trig, is_rise)
                else:
                    where = (trig + start_index).astype(np.float64)
                self._rising.append(where[is_rise])
                self._falling.append(where[~is_rise])

        if self.interpolate:
            self._update_carry(x, start_index)

    _WINDOW = 32  # samples searched back from a trigger for the mid-level crossing

    def _interpolate(
        self, x: np.ndarray, start: int, trig: np.ndarray, is_rise: np.ndarray
    ) -> np.ndarray:
        mid = self.mid
        out = np.empty(len(trig), np.float64)
        back = np.arange(1, self._WINDOW + 1)
        for rising, mask in ((True, is_rise), (False, ~is_rise)):
            if not mask.any():
                continue
            t = trig[mask]
            # last sample before the trigger on the old side of mid (x < mid for a rise):
            # first look in a short window, then (rarely) further back, then in earlier chunks
            idx = t[:, None] - back[None, :]
            vals = x[np.clip(idx, 0, None)]
            old = (vals < mid) if rising else (vals > mid)
            old &= idx >= 0
            found = old.any(axis=1)
            j = np.where(found, t - 1 - np.argmax(old, axis=1), -1)
            for k in np.flatnonzero(~found):
                seg = x[: max(0, t[k] - self._WINDOW)]
                hit = np.flatnonzero(seg < mid if rising else seg > mid)
                j[k] = hit[-1] if len(hit) else -1
            res = np.empty(len(t), np.float64)
            inside = j >= 0
            if inside.any():
                jj = j[inside]
                x0 = x[jj].astype(np.float64)
                x1 = x[jj + 1].astype(np.float64)
                res[inside] = start + jj + (mid - x0) / (x1 - x0)
            if (~inside).any():
                # the crossing lies before this chunk: between the previous chunk's last sample
                # and x[0], or earlier (carried)
                res[~inside] = self._cross_before(x, start, rising)
            out[mask] = res
        return out

    def _cross_before(self, x: np.ndarray, start: int, rising: bool) -> float:
        mid = self.mid
        if self._last is not None:
            li, lv = self._last
            if (lv < mid) if rising else (lv > mid):
                x1 = float(x[0])
                return li + (mid - lv) / (x1 - lv)
        carried = self._below if rising else self._above
        if carried is None:  # cannot happen after a low/high state, kept for safety
            return float(start)
        j, x0, x1 = carried
        return j + (mid - x0) / (x1 - x0)

    def _update_carry(self, x: np.ndarray, start: int) -> None:
        mid = self.mid
        # the previous chunk's last sample now has a successor (x[0])
        if self._last is not None:
            li, lv = self._last
            if lv < mid:
                self._below = (li, lv, float(x[0]))
            elif lv > mid:
                self._above = (li, lv, float(x[0]))
        body = x[:-1]
        if len(body):
            for attr, side in (("_below", body < mid), ("_above", body > mid)):
                rev = side[::-1]
                k = int(np.argmax(rev))
                if rev[k]:
                    j = len(body) - 1 - k
                    setattr(self, attr, (start + j, float(x[j]), float(x[j + 1])))
        self._last = (start + len(x) - 1, float(x[-1]))

    def result(self) -> Edges:
        """Edges found so far, debounced."""
        rising = np.concatenate(self._rising) if self._rising else np.empty(0)
        falling = np.concatenate(self._falling) if self._falling else np.empty(0)
        if self.min_interval_samples > 0 and len(rising) + len(falling) > 1:
            rising, falling = _debounce(rising, falling, self.min_interval_samples)
        return Edges(rising, falling)


def _debounce(
    rising: np.ndarray, falling: np.ndarray, min_interval: float
) -> tuple[np.ndarray, np.ndarray]:
    pos = np.concatenate([rising, falling])
    pol = np.concatenate([np.ones(len(rising), bool), np.zeros(len(falling), bool)])
    order = np.argsort(pos, kind="stable")
    pos, pol = pos[order], pol[order]
    short = np.diff(pos) < min_interval
    if not short.any():
        return rising, falling
    keep_pos: list[float] = []
    keep_pol: list[bool] = []
    for p, r in zip(pos.tolist(), pol.tolist()):
        if keep_pos and p - keep_pos[-1] < min_interval:
            keep_pos.pop()
            keep_pol.pop()
        else:
            keep_pos.append(p)
            keep_pol.append(r)
    kp = np.asarray(keep_pos, np.float64)
    kr = np.asarray(keep_pol, bool)
    return kp[kr], kp[~kr]


def find_edges(
    x: np.ndarray,
    *,
    low: float,
    high: float,
    min_interval_samples: float = 0,
    interpolate: bool = True,
) -> Edges:
    """Rising and falling edges of ``x`` with hysteresis (see the module docstring).

    Parameters
    ----------
    x : array, 1-D
        Signal (analog volts, or 0/1 bits).
    low, high : float
        Hysteresis thresholds, ``low < high``.
    min_interval_samples : float
        Debounce: drop transition pairs closer than this many samples.
    interpolate : bool
        Sub-sample mid-level crossing positions (analog) or integer first-sample positions (digital).

    Returns
    -------
    Edges
        Positions in samples of ``x``.

    Examples
    --------
    >>> find_edges(np.r_[0., 0, 5, 5, 0], low=1, high=4).rising
    array([1.5])
    >>> find_edges(np.r_[0, 0, 1, 1, 0], low=0, high=1, interpolate=False).falling
    array([4.])
    """
    det = EdgeDetector(
        low=low, high=high, min_interval_samples=min_interval_samples, interpolate=interpolate
    )
    det.feed(np.asarray(x), 0)
    return det.result()


def auto_thresholds(x_sample: np.ndarray, *, percentiles: tuple[float, float] = (1.0, 99.0)
                    ) -> tuple[float, float]:
    """Hysteresis thresholds from a representative sample of a TTL signal.

    ``lo``/``hi`` are robust extremes (the given percentiles); ``low = lo + 0.3 (hi - lo)``,
    ``high = lo + 0.7 (hi - lo)``.

    Raises
    ------
    ValueError
        If the sample is empty, not finite, or flat (``hi == lo``).
    """
    x = np.asarray(x_sample, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("cannot set thresholds from an empty (or all-NaN) sample")
    lo, hi = np.percentile(x, percentiles)
    if not hi > lo:
        raise ValueError(f"signal is flat (robust min = max = {lo}); no TTL edges to find")
    span = hi - lo
    return float(lo + 0.3 * span), float(lo + 0.7 * span)


def digital_edges(words: np.ndarray, bit: int, *, start_index: int = 0,
                  previous: int | None = None) -> Edges:
    """Edges of one bit of integer words (e.g. the SpikeGLX SY word).

    Parameters
    ----------
    words : integer array
        Digital words (int16 SY values are read as unsigned bit patterns).
    bit : int
        Bit number (0 = least significant).
    start_index : int
        Sample index of ``words[0]`` (for chunked use).
    previous : int or None
        The bit's value on the sample before ``words[0]`` (chunked use); ``None`` = unknown, so
        the first sample cannot be an edge.

    Returns
    -------
    Edges
        Integer positions (as float64) of the first sample at the new level.
    """
    w = np.asarray(words)
    if w.dtype.kind not in "iub":
        raise ValueError(f"digital words must be integers, got dtype {w.dtype}")
    nbits = w.dtype.itemsize * 8
    if not 0 <= bit < nbits:
        raise ValueError(f"bit must be in [0, {nbits}), got {bit}")
    if w.dtype.kind == "i":
        w = w.view(w.dtype.str.replace("i", "u"))
    b = ((w >> np.array(bit, dtype=w.dtype)) & 1).astype(np.int8)
    if previous is not None:
        b = np.concatenate([np.array([previous & 1], np.int8), b])
        offset = start_index - 1
    else:
        offset = start_index
    d = np.diff(b)
    rising = np.flatnonzero(d == 1) + 1 + offset
    falling = np.flatnonzero(d == -1) + 1 + offset
    return Edges(rising.astype(np.float64), falling.astype(np.float64))
