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

- **TDMS TTL channels.** :func:`ttl_detector` is the one policy the sync, behaviour and pose
  stages use to build a detector for a TDMS channel (declared or automatic thresholds, which
  samples they come from, the checks on them, debounce); each stage passes its own numbers.

Written by hand because no library does hysteresis with sub-sample interpolation on a stream;
:class:`EdgeDetector` fed in chunks gives exactly what :func:`find_edges` gives on the whole array.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pixbin.tdms import ChannelInfo, iter_chunks, read_windows

__all__ = [
    "Edges",
    "find_edges",
    "EdgeDetector",
    "auto_thresholds",
    "ttl_detector",
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

    The level changes are found in one compiled pass (numba; without numba, vectorised from the
    starts of runs above ``high`` / below ``low``) and only they are interpolated, so the cost is
    about 1 ns per sample; the carried state makes the result independent of the chunking.

    Parameters
    ----------
    low, high : float
        Hysteresis thresholds, ``low < high``.
    min_interval_samples : float
        Transition pairs closer than this are dropped (debounce); 0 keeps everything.
    interpolate : bool or "auto"
        Sub-sample mid-level crossing (analog) or first-sample index (digital); ``"auto"``
        decides from the first chunk's dtype: floats interpolate, integers and booleans do not.

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
        interpolate: bool | Literal["auto"] = True,
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
        # None until the first chunk when "auto"
        self.interpolate: bool | None = None if interpolate == "auto" else bool(interpolate)
        self._state = 0  # 0 unknown, +1 high, -1 low
        self._next_index: int | None = None  # expected start index of the next chunk
        self._last_hi = False  # class of the previous chunk's last sample (numpy path)
        self._last_lo = False
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
        start = int(start_index)
        if self._next_index is not None and start != self._next_index:
            raise ValueError(
                f"chunks must be contiguous: expected start index {self._next_index}, got {start}"
            )
        if x.size == 0:
            return
        if x.dtype.kind == "b":
            x = x.view(np.int8)
        if self.interpolate is None:
            self.interpolate = x.dtype.kind == "f"
        self._next_index = start + x.size

        kernel = _trigger_kernel()
        trig, rising = self._triggers_numba(x, kernel) if kernel else self._triggers_numpy(x)
        if trig.size:
            if self.interpolate:
                where = self._crossings(x, start, trig, rising)
            else:
                where = (trig + start).astype(np.float64)
            self._rising.append(where[rising])
            self._falling.append(where[~rising])
        if self.interpolate:
            self._carry(x, start)

    def _triggers_numba(self, x: np.ndarray, kernel) -> tuple[np.ndarray, np.ndarray]:
        """Samples where the level changes (one compiled pass), and whether it rose."""
        parts_i, parts_l = [], []
        pos = 0
        while True:
            cap = 4096
            idx = np.empty(cap, np.int64)
            lev = np.empty(cap, np.int8)
            n, self._state, pos = kernel(x, pos, self.low, self.high, self._state, idx, lev)
            parts_i.append(idx[:n])
            parts_l.append(lev[:n])
            if pos >= x.size:
                break
        t = np.concatenate(parts_i) if len(parts_i) > 1 else parts_i[0]
        lev = np.concatenate(parts_l) if len(parts_l) > 1 else parts_l[0]
        self._last_hi, self._last_lo = bool(x[-1] >= self.high), bool(x[-1] <= self.low)
        return t, lev > 0

    def _triggers_numpy(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same from the starts of runs above ``high`` / below ``low`` (vectorised): the
        level changes at a run start whose class differs from the previous run start's."""
        hi = x >= self.high
        lo = x <= self.low
        hs = np.flatnonzero(hi[1:] > hi[:-1]) + 1
        ls = np.flatnonzero(lo[1:] > lo[:-1]) + 1
        if hi[0] and not self._last_hi:
            hs = np.concatenate([[0], hs])
        if lo[0] and not self._last_lo:
            ls = np.concatenate([[0], ls])
        self._last_hi, self._last_lo = bool(hi[-1]), bool(lo[-1])
        if not (hs.size or ls.size):
            return np.empty(0, np.int64), np.empty(0, bool)
        pos = np.concatenate([hs, ls])
        typ = np.concatenate([np.ones(hs.size, np.int8), -np.ones(ls.size, np.int8)])
        order = np.argsort(pos, kind="stable")
        pos, typ = pos[order], typ[order]
        prev = np.empty_like(typ)
        prev[0] = self._state
        prev[1:] = typ[:-1]
        change = (typ != prev) & (prev != 0)
        self._state = int(typ[-1])
        return pos[change], typ[change] > 0

    def _crossings(self, x: np.ndarray, start: int, trig: np.ndarray,
                   rising: np.ndarray) -> np.ndarray:
        """Mid-level crossing before each trigger; usually between the trigger and the sample
        before it, else searched further back."""
        mid = self.mid
        out = np.empty(trig.size, np.float64)
        before = np.maximum(trig - 1, 0)
        xb = x[before].astype(np.float64)
        fast = (trig >= 1) & np.where(rising, xb < mid, xb > mid)
        j = before[fast]
        x0, x1 = xb[fast], x[j + 1].astype(np.float64)
        out[fast] = start + j + (mid - x0) / (x1 - x0)
        for k in np.flatnonzero(~fast):
            out[k] = self._search_back(x, start, int(trig[k]), bool(rising[k]))
        return out

    def _search_back(self, x: np.ndarray, start: int, i: int, rising: bool) -> float:
        """Crossing before trigger ``i``: the last sample before it on the old side of mid, in
        this chunk, or else between the previous chunk's last sample and ``x[0]``, or earlier
        (carried)."""
        mid = self.mid
        j = _last_index(x[:i], mid, below=rising)
        if j >= 0:
            x0, x1 = float(x[j]), float(x[j + 1])
            return start + j + (mid - x0) / (x1 - x0)
        if self._last is not None:
            li, lv = self._last
            if (lv < mid) if rising else (lv > mid):
                return li + (mid - lv) / (float(x[0]) - lv)
        carried = self._below if rising else self._above
        if carried is None:  # cannot happen after a low/high state, kept for safety
            return float(start)
        j0, x0, x1 = carried
        return j0 + (mid - x0) / (x1 - x0)

    def _carry(self, x: np.ndarray, start: int) -> None:
        # Carried for crossings that lie before the next chunk: the last sample below (above)
        # mid with its successor. Only the side a later transition can need is updated: after
        # a low state the next edge is rising and needs the last sample below mid, after a
        # high state the last one above it; the search from the chunk's end is then short.
        mid = self.mid
        for side, below in ((-1, True), (1, False)):
            if self._state != side:
                continue
            cand = None
            if self._last is not None:
                li, lv = self._last
                if (lv < mid) if below else (lv > mid):
                    cand = (li, lv, float(x[0]))
            j = _last_index(x[:-1], mid, below=below)
            if j >= 0:
                cand = (start + j, float(x[j]), float(x[j + 1]))
            if cand is not None:
                if below:
                    self._below = cand
                else:
                    self._above = cand
        self._last = (start + x.size - 1, float(x[-1]))

    def result(self) -> Edges:
        """Edges found so far, debounced."""
        rising = np.concatenate(self._rising) if self._rising else np.empty(0)
        falling = np.concatenate(self._falling) if self._falling else np.empty(0)
        if self.min_interval_samples > 0 and len(rising) + len(falling) > 1:
            rising, falling = _debounce(rising, falling, self.min_interval_samples)
        return Edges(rising, falling)


def _last_index(x: np.ndarray, mid: float, *, below: bool) -> int:
    """Index of the last sample of ``x`` below (or above) ``mid``; -1 if none. Searches back
    from the end in growing windows, so the usual case (close to the end) is cheap."""
    n = x.size
    w = 256
    hi = n
    while hi > 0:
        lo = max(0, hi - w)
        seg = x[lo:hi]
        idx = np.flatnonzero(seg < mid if below else seg > mid)
        if idx.size:
            return lo + int(idx[-1])
        hi = lo
        w *= 16
    return -1


_KERNELS: dict[str, Any] = {}


def _trigger_kernel() -> Any | None:
    """The compiled level-change pass (numba, compiled once and cached on disk), or None when
    numba is missing (the vectorised numpy path gives the same edges)."""
    if "triggers" in _KERNELS:
        return _KERNELS["triggers"]
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        log.warning("numba cannot be imported; edge detection uses the slower numpy path")
        _KERNELS["triggers"] = None
        return None

    @numba.njit(cache=True, nogil=True)
    def triggers(x, i, low, high, state, idx, lev):  # pragma: no cover - compiled
        # from sample i: record (index, new level) of each level change after a known level
        # into idx/lev until they are full; return (count, state, where to resume)
        n = 0
        cap = idx.size
        size = x.size
        while i < size:
            v = x[i]
            if v >= high:
                level = 1
            elif v <= low:
                level = -1
            else:
                i += 1
                continue
            if level != state:
                if state != 0:
                    if n == cap:
                        return n, state, i  # buffer full: resume at i
                    idx[n] = i
                    lev[n] = level
                    n += 1
                state = level
            i += 1
        return n, state, size

    _KERNELS["triggers"] = triggers
    return triggers


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
    interpolate: bool | Literal["auto"] = True,
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
    interpolate : bool or "auto"
        Sub-sample mid-level crossing positions (analog) or integer first-sample positions
        (digital); ``"auto"``: from the dtype of ``x`` (floats interpolate).

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


def auto_thresholds(x_sample: np.ndarray, *, percentiles: tuple[float, float] = (1.0, 99.0),
                    min_swing: float = 0.0, max_between: float = 1.0) -> tuple[float, float]:
    """Hysteresis thresholds from a representative sample of a TTL signal.

    ``lo``/``hi`` are robust extremes (the given percentiles); ``low = lo + 0.3 (hi - lo)``,
    ``high = lo + 0.7 (hi - lo)``.

    Parameters
    ----------
    x_sample : array
        The sample (non-finite values are left out).
    percentiles : (float, float)
        Percentiles giving ``lo`` and ``hi``.
    min_swing : float
        Smallest robust range ``hi - lo`` accepted (the signal's unit).
    max_between : float
        Largest fraction of the sample strictly between ``low`` and ``high`` accepted; a TTL
        spends little time there, noise a lot.

    Raises
    ------
    ValueError
        If the sample is empty, not finite, flat (``hi == lo``), swings by less than
        ``min_swing``, or has more than ``max_between`` of its values between the thresholds.
    """
    x = np.asarray(x_sample, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("cannot set thresholds from an empty (or all-NaN) sample")
    lo, hi = np.percentile(x, percentiles)
    if not hi > lo:
        raise ValueError(f"signal is flat (robust min = max = {lo}); no TTL edges to find")
    span = hi - lo
    if span < min_swing:
        raise ValueError(f"signal swings by {span:.3g} (robust range), less than {min_swing}")
    low, high = float(lo + 0.3 * span), float(lo + 0.7 * span)
    between = float(np.mean((x > low) & (x < high)))
    if between > max_between:
        raise ValueError(
            f"does not look like a TTL signal: {between:.0%} of samples lie between the "
            f"thresholds {low:.3g} and {high:.3g} (expected at most {max_between:.0%})"
        )
    return low, high


def ttl_detector(
    info: ChannelInfo,
    *,
    declared: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    windows: tuple[int, int] = (64, 4096),
    scan_samples: int | None = None,
    min_swing: float = 0.0,
    max_between: float = 1.0,
    debounce_s: float = 0.0,
    interpolate: bool | Literal["auto"] = True,
) -> tuple[EdgeDetector, int]:
    """The edge detector of one TDMS TTL channel: thresholds, debounce and interpolation.

    The policy of the sync, behaviour and pose stages, each passing its own numbers:

    - thresholds ``declared`` as ``(low, high)`` are used as given; otherwise they come from a
      sample of the channel through :func:`auto_thresholds` (``percentiles``, ``min_swing``,
      ``max_between``). The sample is ``windows = (count, samples)``: ``count`` windows of
      ``samples`` samples spread evenly over the channel (one window of all of it when it is
      shorter); or, with ``scan_samples``, the first of the channel's consecutive chunks of that
      many samples that passes the checks (the chunks before it are not to be fed: they do not
      swing, and any pulse in them is ignored);
    - transition pairs closer than ``debounce_s`` seconds at the channel's rate are dropped;
    - ``interpolate`` as for :class:`EdgeDetector`.

    Parameters
    ----------
    info : ChannelInfo
        The channel (:func:`pixbin.tdms.list_channels`); its file is ``info.path``.

    Returns
    -------
    (EdgeDetector, int)
        The detector, and the first sample to feed it: 0, or with ``scan_samples`` (and
        automatic thresholds) the start of the chunk the thresholds came from.

    Raises
    ------
    ValueError
        When no sample passes the checks (or declared thresholds are invalid); the message gives
        the reason only, callers name the file and channel.
    """
    checks = dict(percentiles=percentiles, min_swing=min_swing, max_between=max_between)
    start = 0
    if declared is not None:
        low, high = declared
    elif scan_samples is None:
        n = info.n_samples
        width = min(n, windows[1])
        starts = np.unique(np.linspace(0, n - width, windows[0]).astype(np.int64))
        sample = np.concatenate(read_windows(info.path, info.group, info.channel,
                                             [(int(s), int(s) + width) for s in starts]))
        low, high = auto_thresholds(sample, **checks)
    else:
        for start, chunk in iter_chunks(info.path, [info.group], chunk_samples=scan_samples,
                                        channel=info.channel):
            try:
                low, high = auto_thresholds(chunk[info.group], **checks)
            except ValueError:
                continue  # no pulses yet
            break
        else:
            unit = f" {info.unit}" if info.unit else ""
            raise ValueError(f"never swings by {min_swing}{unit}")
    if declared is None:
        log.info("%s channel %s/%s: TTL thresholds %.3g / %.3g from the data", info.path,
                 info.group, info.channel, low, high)
    detector = EdgeDetector(low=low, high=high, min_interval_samples=debounce_s * info.rate_hz,
                            interpolate=interpolate)
    return detector, start


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
