"""The tensor kernel: spikes -> (trial, time, unit) counts; continuous signals -> trial windows.

Bin ``k`` of trial ``j`` covers ``[a_j + e_k, a_j + e_{k+1})`` on the probe clock, where ``e`` is
:func:`bin_edges` and the absolute edges are computed as ``align_times_s[j] + e`` in float64.
Both engines reproduce this definition bit for bit, comparing spike times only with those absolute
edges: the numba engine walks the sorted spikes of a trial and advances the bin while
``t >= a_j + e_{k+1}``; the numpy engine corrects a first guess ``floor((t - a_j - e_0) / bin)``
against the edges. Floating point rounding never moves a spike to a neighbouring bin.

Written by hand because no library does this in memory proportional to the output: the survey in
``peers-survey.md`` §4 measured a numba loop over trials ~40x faster than per-unit
``searchsorted`` (AllenSDK) and ~34x faster than pynapple's ``build_tensor``, whose float64
output is 8x larger than the uint8 counts kept here.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from pixbin.errors import ConfigError, DatasetError

__all__ = [
    "BinnedSpikes",
    "bin_edges",
    "bin_spikes",
    "values_at_bin_centres",
    "signal_windows",
]

logger = logging.getLogger(__name__)

Engine = Literal["numba", "numpy"]
_ENGINES = ("numba", "numpy")
_COUNT_MAX = 255
# A dense unit-id -> column table is used while it stays this small (entries); beyond it, a
# sorted-unique mapping with binary search.
_DENSE_LOOKUP_MAX = 1 << 20
# numpy engine: trials are binned in chunks of about this many output cells (bounds the int64
# bincount buffer to 8 MiB).
_NUMPY_CHUNK_CELLS = 1 << 20
_SORT_CHECK_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class BinnedSpikes:
    """Spike counts of one set of units in trial-aligned bins.

    Parameters
    ----------
    counts
        (trial, time, unit) uint8 spike counts, saturating at 255.
    time_s
        (time,) float64 bin centres relative to the alignment time, s.
    unit_ids
        (unit,) int64 unit ids, in the order requested.
    n_saturated
        Number of (trial, bin, unit) cells holding 255, i.e. whose true count is >= 255.
    n_spikes
        (unit,) int64 true number of spikes of each unit inside the trial windows (a spike in
        two overlapping windows counts twice). May be omitted only when ``n_saturated == 0``;
        it is then summed from ``counts``.
    """

    counts: np.ndarray
    time_s: np.ndarray
    unit_ids: np.ndarray
    n_saturated: int
    n_spikes: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        counts = self.counts
        if counts.ndim != 3 or counts.dtype != np.uint8:
            raise DatasetError(
                f"BinnedSpikes.counts must be a (trial, time, unit) uint8 array; "
                f"got shape {counts.shape}, dtype {counts.dtype}"
            )
        if self.time_s.shape != (counts.shape[1],) or self.unit_ids.shape != (counts.shape[2],):
            raise DatasetError(
                f"BinnedSpikes coords do not match counts {counts.shape}: time_s "
                f"{self.time_s.shape}, unit_ids {self.unit_ids.shape}"
            )
        if self.n_spikes is None:
            if self.n_saturated:
                raise DatasetError(
                    f"BinnedSpikes: {self.n_saturated} cells are saturated at 255, so the true "
                    "spike counts cannot be recovered from counts; pass n_spikes"
                )
            object.__setattr__(self, "n_spikes", counts.sum(axis=(0, 1), dtype=np.int64))
        elif self.n_spikes.shape != (counts.shape[2],):
            raise DatasetError(
                f"BinnedSpikes.n_spikes has shape {self.n_spikes.shape}; "
                f"expected ({counts.shape[2]},), one per unit"
            )

    @property
    def spike_data(self) -> np.ndarray:
        """(trial, time, unit) bool: ``counts > 0``."""
        return self.counts > 0

    def binarize_loss(self) -> np.ndarray:
        """Fraction of each unit's windowed spikes merged away by binarization.

        Returns
        -------
        np.ndarray
            (unit,) float64 ``1 - n_nonzero_cells / n_spikes`` from the true (unsaturated) spike
            counts; 0 for a unit without spikes.
        """
        nonzero = np.count_nonzero(self.counts, axis=(0, 1)).astype(np.float64)
        n_spikes = self.n_spikes.astype(np.float64)
        loss = np.zeros(n_spikes.shape, dtype=np.float64)
        has = n_spikes > 0
        loss[has] = 1.0 - nonzero[has] / n_spikes[has]
        return loss


def bin_edges(window_s: tuple[float, float], bin_size_s: float) -> np.ndarray:
    """Bin edges relative to the alignment time.

    Parameters
    ----------
    window_s
        (pre, post) in s relative to the alignment time, ``pre < post``.
    bin_size_s
        Bin width in s; ``(post - pre) / bin_size_s`` must be an integer (within 1e-9 relative).

    Returns
    -------
    np.ndarray
        (n_bins + 1,) float64 ``pre + arange(n_bins + 1) * bin_size_s``.

    Examples
    --------
    >>> bin_edges((-1.0, 1.0), 0.5)
    array([-1. , -0.5,  0. ,  0.5,  1. ])
    """
    pre, post = _window(window_s)
    bin_size_s = float(bin_size_s)
    if not (math.isfinite(bin_size_s) and bin_size_s > 0):
        raise DatasetError(f"bin_size_s must be a finite number > 0; got {bin_size_s!r}")
    n_bins = _whole_number(
        (post - pre) / bin_size_s, f"window_s {window_s!r} / bin_size_s {bin_size_s!r}"
    )
    return pre + np.arange(n_bins + 1, dtype=np.float64) * bin_size_s


def bin_spikes(
    spike_times_s: np.ndarray,
    spike_unit_ids: np.ndarray,
    unit_ids: np.ndarray,
    align_times_s: np.ndarray,
    window_s: tuple[float, float],
    bin_size_s: float,
    *,
    engine: Engine = "numba",
) -> BinnedSpikes:
    """Count spikes in trial-aligned bins.

    Parameters
    ----------
    spike_times_s
        (spike,) float64 spike times on the probe clock, s, sorted ascending.
    spike_unit_ids
        (spike,) integer unit id of each spike. Spikes of units not in ``unit_ids`` are ignored.
    unit_ids
        (unit,) unique integer ids of the units to output, in output order; a unit without
        spikes gives zeros.
    align_times_s
        (trial,) finite alignment times on the probe clock, s. Windows may overlap: each trial
        gets its own spikes.
    window_s
        (pre, post) window relative to the alignment time, s.
    bin_size_s
        Bin width, s; see :func:`bin_edges`.
    engine
        ``"numba"`` (a compiled loop over trials; falls back to ``"numpy"`` with a warning when
        numba cannot be imported) or ``"numpy"``. Both give identical results.

    Returns
    -------
    BinnedSpikes
        Counts in bins ``[a_j + e_k, a_j + e_{k+1})`` with ``e = bin_edges(window_s, bin_size_s)``.

    Examples
    --------
    >>> b = bin_spikes(np.array([0.1, 0.6, 0.7]), np.array([3, 3, 3]), np.array([3]),
    ...                np.array([1.0]), (-1.0, 0.0), 0.5)
    >>> b.counts[:, :, 0]
    array([[1, 2]], dtype=uint8)
    """
    if engine not in _ENGINES:
        raise ConfigError(f"bin_spikes: unknown engine {engine!r}; valid engines: {_ENGINES}")
    edges = bin_edges(window_s, bin_size_s)
    numba_engine = _numba_engine() if engine == "numba" else None
    if engine == "numba" and numba_engine is None:
        logger.warning("numba cannot be imported; bin_spikes falls back to the numpy engine")
    times = np.asarray(spike_times_s, dtype=np.float64)
    units = np.asarray(spike_unit_ids)
    _check_spikes(times, units, None if numba_engine is None else numba_engine.n_unsorted)
    if not units.dtype.isnative:  # e.g. big-endian from a file; numba needs native order
        units = units.astype(units.dtype.newbyteorder("="))
    wanted = np.asarray(unit_ids)
    _check_1d_integer(wanted, "unit_ids")
    wanted = wanted.astype(np.int64, copy=False)
    lookup = _UnitLookup.build(wanted)
    align = _align_times(align_times_s)

    n_bins = edges.size - 1
    counts = np.zeros((align.size, n_bins, wanted.size), dtype=np.uint8)
    if numba_engine is not None:
        n_saturated_arr = np.zeros(1, dtype=np.int64)
        n_spikes = np.zeros(wanted.size, dtype=np.int64)
        numba_engine.bin(
            times, units, align, edges, lookup.dense, lookup.offset, lookup.sorted_ids,
            lookup.sorted_cols, counts, n_spikes, n_saturated_arr,
        )
        n_saturated = int(n_saturated_arr[0])
    else:
        n_saturated, n_spikes = _bin_numpy(
            times, units, align, edges, float(bin_size_s), lookup, counts
        )
    return BinnedSpikes(
        counts=counts,
        time_s=(edges[:-1] + edges[1:]) / 2.0,
        unit_ids=wanted.copy(),
        n_saturated=n_saturated,
        n_spikes=n_spikes,
    )


def values_at_bin_centres(
    signal: np.ndarray,
    rate_hz: float,
    align_times_s: np.ndarray,
    time_s: np.ndarray,
    *,
    t0_s: float = 0.0,
) -> np.ndarray:
    """Sample a regularly sampled signal at trial-aligned times by linear interpolation.

    Parameters
    ----------
    signal
        (sample, ...) values at times ``t0_s + k / rate_hz`` on the probe clock.
    rate_hz
        Sampling rate, Hz.
    align_times_s
        (trial,) alignment times on the probe clock, s.
    time_s
        (time,) times relative to the alignment time, s (e.g. ``BinnedSpikes.time_s``).
    t0_s
        Time of sample 0, s.

    Returns
    -------
    np.ndarray
        (trial, time, ...) float32 values at ``align + time_s``, interpolated between the two
        neighbouring samples (a time on a sample takes that sample); NaN where the time lies
        outside ``[t0_s, t0_s + (n_samples - 1) / rate_hz]`` or a neighbour used is NaN.
    """
    values = np.asarray(signal)
    if values.ndim < 1:
        raise DatasetError("signal must be an array with a sample axis first; got a scalar")
    rate_hz = _positive_rate(rate_hz)
    align = _align_times(align_times_s)
    rel = np.asarray(time_s, dtype=np.float64)
    if rel.ndim != 1:
        raise DatasetError(f"time_s must be 1-D; got shape {rel.shape}")
    n = values.shape[0]
    pos = ((align[:, None] + rel[None, :]) - float(t0_s)) * rate_hz
    inside = (pos >= 0) & (pos <= n - 1)  # False for NaN
    pos = np.where(inside, pos, 0.0)
    i0 = np.floor(pos).astype(np.intp)
    frac = pos - i0
    i1 = np.where(frac > 0, i0 + 1, i0)
    extra = (1,) * (values.ndim - 1)
    frac = frac.reshape(frac.shape + extra)
    lower = values[i0].astype(np.float64)
    upper = values[i1].astype(np.float64)
    out = lower + frac * (upper - lower)
    out[~inside] = np.nan
    return out.astype(np.float32)


def signal_windows(
    signal: np.ndarray,
    rate_hz: float,
    align_times_s: np.ndarray,
    window_s: tuple[float, float],
    *,
    t0_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut raw trial windows out of a regularly sampled signal (e.g. 1 kHz LFP).

    Parameters
    ----------
    signal
        (sample, ...) values at times ``t0_s + k / rate_hz``; anything sliceable along axis 0
        (numpy array, memmap, h5py dataset). Only the windows are read.
    rate_hz
        Sampling rate, Hz; ``(post - pre) * rate_hz`` must be an integer (within 1e-9 relative).
    align_times_s
        (trial,) alignment times on the probe clock, s.
    window_s
        (pre, post) relative to the alignment time, s.
    t0_s
        Time of sample 0, s.

    Returns
    -------
    windows : np.ndarray
        (trial, lfp_time, ...) float32: samples ``s_j .. s_j + n - 1`` with
        ``s_j = round((align_j + pre - t0_s) * rate_hz)`` (the sample nearest the window start,
        ties up) and ``n = (post - pre) * rate_hz``; NaN where a sample lies outside the signal.
    lfp_time_s : np.ndarray
        (lfp_time,) float64 ``pre + arange(n) / rate_hz``, relative to the alignment time; each
        sample lies within half a sample period of ``align + lfp_time_s``.
    """
    pre, post = _window(window_s)
    rate_hz = _positive_rate(rate_hz)
    align = _align_times(align_times_s)
    shape = getattr(signal, "shape", None)
    if not shape:
        raise DatasetError("signal must be an array with a sample axis first")
    n = _whole_number((post - pre) * rate_hz, f"window {window_s!r} x rate_hz {rate_hz!r}")
    n_samples = shape[0]
    starts = np.floor((align + pre - float(t0_s)) * rate_hz + 0.5).astype(np.int64)
    windows = np.full((align.size, n, *shape[1:]), np.nan, dtype=np.float32)
    for j, start in enumerate(starts.tolist()):
        lo, hi = max(start, 0), min(start + n, n_samples)
        if lo < hi:
            windows[j, lo - start : hi - start] = np.asarray(signal[lo:hi], dtype=np.float32)
    return windows, pre + np.arange(n, dtype=np.float64) / rate_hz


# --------------------------------------------------------------------------------------------
# validation helpers


def _window(window_s: tuple[float, float]) -> tuple[float, float]:
    try:
        pre, post = (float(v) for v in window_s)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"window_s must be (pre, post) in s; got {window_s!r}") from exc
    if not (math.isfinite(pre) and math.isfinite(post) and post > pre):
        raise DatasetError(f"window_s must be finite with pre < post; got {window_s!r}")
    return pre, post


def _whole_number(ratio: float, what: str) -> int:
    n = round(ratio)
    if n < 1 or abs(ratio - n) > 1e-9 * ratio:
        raise DatasetError(f"{what} = {ratio!r} is not a whole number >= 1 of samples/bins")
    return int(n)


def _align_times(align_times_s: np.ndarray) -> np.ndarray:
    align = np.asarray(align_times_s, dtype=np.float64)
    if align.ndim != 1:
        raise DatasetError(f"align_times_s must be 1-D (trial,); got shape {align.shape}")
    bad = np.flatnonzero(~np.isfinite(align))
    if bad.size:
        raise DatasetError(
            f"align_times_s must be finite; trials {bad[:10].tolist()} are not. Leave trials "
            "without an alignment event out before binning"
        )
    return align


def _positive_rate(rate_hz: float) -> float:
    rate_hz = float(rate_hz)
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise DatasetError(f"rate_hz must be a finite number > 0; got {rate_hz!r}")
    return rate_hz


def _check_1d_integer(values: np.ndarray, name: str) -> None:
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise DatasetError(
            f"{name} must be a 1-D integer array; got shape {values.shape}, dtype {values.dtype}"
        )


def _check_spikes(
    times: np.ndarray,
    units: np.ndarray,
    n_unsorted: Callable[[np.ndarray], int] | None = None,
) -> None:
    """Refuse spike arrays that are not 1-D, of unequal length, non-finite or unsorted (O(n)).

    ``n_unsorted`` (the numba engine's vectorised count of out-of-order neighbours) is a fast
    path for the common, valid case; on any count the numpy scan below locates the first one.
    """
    if times.ndim != 1:
        raise DatasetError(f"spike_times_s must be 1-D; got shape {times.shape}")
    _check_1d_integer(units, "spike_unit_ids")
    if units.size != times.size:
        raise DatasetError(
            f"spike_unit_ids has {units.size} entries but spike_times_s has {times.size}"
        )
    if times.size == 0:
        return
    if not (math.isfinite(times[0]) and math.isfinite(times[-1])):
        raise DatasetError("spike_times_s must be finite; the first or last spike time is not")
    # ``not (next >= prev)`` also catches NaN, so sorted + finite ends => all finite.
    if n_unsorted is not None and n_unsorted(times) == 0:
        return
    for start in range(0, times.size - 1, _SORT_CHECK_CHUNK):
        stop = min(start + _SORT_CHECK_CHUNK, times.size - 1)
        bad = np.flatnonzero(~(times[start + 1 : stop + 1] >= times[start:stop]))
        if bad.size:
            i = start + int(bad[0])
            raise DatasetError(
                f"spike_times_s must be sorted ascending and finite; spike {i + 1} "
                f"({times[i + 1]!r} s) follows spike {i} ({times[i]!r} s). Sort spikes by time "
                "(with their unit ids) before binning"
            )


@dataclass(frozen=True)
class _UnitLookup:
    """Unit id -> output column: a dense table over the requested id range when it is small,
    else a sorted-unique mapping (binary search). Unknown ids map to -1."""

    dense: np.ndarray  # (span,) int64 column or -1; empty when sparse
    offset: int  # smallest requested id (dense table index 0)
    sorted_ids: np.ndarray  # (unit,) int64 sorted requested ids; empty when dense
    sorted_cols: np.ndarray  # (unit,) int64 output column of each sorted id

    @classmethod
    def build(cls, wanted: np.ndarray) -> _UnitLookup:
        order = np.argsort(wanted, kind="stable")
        sorted_ids = wanted[order]
        duplicated = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        if duplicated.size:
            raise DatasetError(
                f"unit_ids must be unique; repeated: {np.unique(duplicated)[:10].tolist()}"
            )
        empty = np.zeros(0, dtype=np.int64)
        if wanted.size == 0:
            return cls(empty, 0, empty, empty)
        lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
        if hi - lo < max(_DENSE_LOOKUP_MAX, 8 * wanted.size):
            dense = np.full(hi - lo + 1, -1, dtype=np.int64)
            dense[wanted - lo] = np.arange(wanted.size)
            return cls(dense, lo, empty, empty)
        return cls(empty, 0, sorted_ids, order.astype(np.int64))

    def columns(self, ids: np.ndarray) -> np.ndarray:
        """Output column of each id, -1 for ids not requested."""
        ids = ids.astype(np.int64, copy=False)
        if self.dense.size:
            rel = ids - self.offset
            ok = (rel >= 0) & (rel < self.dense.size)
            return np.where(ok, self.dense[np.where(ok, rel, 0)], -1)
        if self.sorted_ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_ids, ids), self.sorted_ids.size - 1)
        return np.where(self.sorted_ids[pos] == ids, self.sorted_cols[pos], -1)


# --------------------------------------------------------------------------------------------
# engines


def _bin_numpy(
    times: np.ndarray,
    units: np.ndarray,
    align: np.ndarray,
    edges: np.ndarray,
    bin_size_s: float,
    lookup: _UnitLookup,
    counts: np.ndarray,
) -> tuple[int, np.ndarray]:
    """Fill ``counts`` in chunks of trials with one flat ``bincount`` each; return
    (n_saturated, n_spikes per unit)."""
    n_trials, n_bins, n_units = counts.shape
    n_spikes = np.zeros(n_units, dtype=np.int64)
    n_saturated = 0
    if n_trials == 0 or n_units == 0:
        return n_saturated, n_spikes
    step = max(1, _NUMPY_CHUNK_CELLS // (n_bins * n_units))
    for j0 in range(0, n_trials, step):
        abs_edges = align[j0 : j0 + step, None] + edges[None, :]  # the definition's edges
        m = abs_edges.shape[0]
        lo = np.searchsorted(times, abs_edges[:, 0], side="left")
        hi = np.searchsorted(times, abs_edges[:, -1], side="left")
        lengths = hi - lo
        trial = np.repeat(np.arange(m), lengths)
        idx = np.arange(trial.size) + np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
        col = lookup.columns(units[idx])
        keep = col >= 0
        trial, col, t = trial[keep], col[keep], times[idx[keep]]
        flat_edges = abs_edges.ravel()
        first = trial * (n_bins + 1)  # index of each spike's trial's first edge in flat_edges
        k = np.floor((t - flat_edges[first]) / bin_size_s).astype(np.intp)
        np.clip(k, 0, n_bins - 1, out=k)
        while True:  # correct the estimate against the exact edges; at most a step or two
            down = t < flat_edges[first + k]
            up = t >= flat_edges[first + k + 1]
            if not (down.any() or up.any()):
                break
            k += up
            k -= down
        chunk = np.bincount((trial * n_bins + k) * n_units + col, minlength=m * n_bins * n_units)
        np.minimum(chunk, _COUNT_MAX, out=chunk)
        counts[j0 : j0 + m] = chunk.reshape(m, n_bins, n_units)
        n_saturated += int(np.count_nonzero(counts[j0 : j0 + m] == _COUNT_MAX))
        n_spikes += np.bincount(col, minlength=n_units)
    return n_saturated, n_spikes


class _NumbaEngine(NamedTuple):
    bin: Callable[..., None]
    n_unsorted: Callable[[np.ndarray], int]


@functools.cache
def _numba_engine() -> _NumbaEngine | None:
    """Compile (lazily, once) the numba functions; None when numba cannot be imported.

    ``bin`` makes one pass over trials. Within a trial the spikes are sorted, so the bin index
    only moves forward: it is advanced while ``t >= a + edges[k + 1]``, which is the definition
    itself (no division, no rounding to correct). Single-threaded: ``prange`` over trials
    measured slower on the shared 2-core machine (docs/PERFORMANCE.md).
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def n_unsorted(times):  # no early exit, so LLVM vectorises it
        count = 0
        for i in range(times.size - 1):
            count += not (times[i + 1] >= times[i])
        return count

    @numba.njit(cache=True, nogil=True)
    def kernel(times, units, align, edges, dense, offset, sorted_ids, sorted_cols,
               counts, n_spikes, n_saturated):  # fmt: skip
        n_trials, n_bins, _ = counts.shape
        n_dense = dense.size
        n_sorted = sorted_ids.size
        for j in range(n_trials):
            a = align[j]
            lo = np.searchsorted(times, a + edges[0], side="left")
            hi = np.searchsorted(times, a + edges[n_bins], side="left")
            out = counts[j]
            k = 0
            upper = a + edges[1]
            for i in range(lo, hi):
                t = times[i]
                while t >= upper:  # stops at k <= n_bins - 1 because t < a + edges[n_bins]
                    k += 1
                    upper = a + edges[k + 1]
                u = np.int64(units[i])
                if n_dense:
                    r = u - offset
                    if r < 0 or r >= n_dense:
                        continue
                    c = dense[r]
                    if c < 0:
                        continue
                else:
                    p = np.searchsorted(sorted_ids, u)
                    if p >= n_sorted or sorted_ids[p] != u:
                        continue
                    c = sorted_cols[p]
                v = out[k, c]
                if v < 255:
                    out[k, c] = v + 1
                    if v == 254:
                        n_saturated[0] += 1
                n_spikes[c] += 1

    return _NumbaEngine(bin=kernel, n_unsorted=n_unsorted)
