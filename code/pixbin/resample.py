"""Resampling onto the probe clock's output grid: the two anti-alias resamplers and their filters.

- :class:`Resampler1kHz` (behaviour stage): equal-rate TDMS channels, streamed, decimated by an
  integer factor with a Kaiser FIR, then a Kaiser-windowed sinc evaluated at each output's exact
  position (docs/BEHAVIOUR.md); :class:`PiecewiseResampler1kHz` runs one per segment of a
  recording that paused.
- :func:`kernel_design` and its kernel table (LFP stage): one windowed-sinc low-pass with a
  pedestal-free Kaiser window, evaluated at exact positions by :func:`pixbin.lfp.run_lfp`
  (docs/LFP_POSE.md); :func:`resample_positions` gives those positions.

Both take the length and β of their Kaiser windows from :func:`_kaiser_taps` (Kaiser's formulas:
the numbers of :func:`scipy.signal.kaiserord`). The windows themselves differ: the behaviour
resampler uses the standard Kaiser window (``np.i0``; its ends keep the pedestal ``1 / I0(β)``,
and each output's weights are normalised to unit DC gain), the LFP kernel a Kaiser window with
the pedestal removed (``scipy.special.i0``; gain ``2 fc / fs``, not renormalised).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pixbin.clock import InvertibleClockMapLike, StreamClock
from pixbin.errors import BehaviourError

if TYPE_CHECKING:
    from pixbin.lfp import LfpParams

__all__ = [
    "PiecewiseResampler1kHz",
    "Resampler1kHz",
    "kernel_design",
    "resample_positions",
]

log = logging.getLogger(__name__)


# =============================================================================== Kaiser design
def _kaiser_taps(atten_db: float, width_hz: float, fs_hz: float) -> tuple[int, float]:
    """Taps and beta of a Kaiser-window FIR for ``atten_db`` over a ``width_hz`` transition
    (the formulas of ``scipy.signal.kaiserord`` / ``kaiser_beta``, same numbers; written out to
    spare the behaviour stage scipy.signal's import time). Used by both resamplers."""
    if atten_db > 50:
        beta = 0.1102 * (atten_db - 8.7)
    elif atten_db > 21:
        beta = 0.5842 * (atten_db - 21) ** 0.4 + 0.07886 * (atten_db - 21)
    else:
        beta = 0.0
    width = width_hz / (0.5 * fs_hz)  # fraction of Nyquist
    numtaps = int(math.ceil((atten_db - 7.95) / 2.285 / (math.pi * width) + 1))
    return numtaps, beta


def _lowpass(numtaps: int, cutoff_hz: float, fs_hz: float, beta: float) -> np.ndarray:
    """Kaiser-windowed sinc low-pass with unit DC gain (``scipy.signal.firwin`` with
    ``window=("kaiser", beta)``)."""
    n = np.arange(numtaps) - (numtaps - 1) / 2
    h = np.sinc(2 * cutoff_hz / fs_hz * n) * np.kaiser(numtaps, beta)
    return h / h.sum()


# =============================================================================== behaviour, 1 kHz
class Resampler1kHz:
    """Streamed anti-alias low-pass + resampling of equal-rate channels onto given positions.

    Stage 1 decimates by an integer ``D`` (to ≥ 2.5 kHz) with a Kaiser FIR that keeps 0–500 Hz
    free of aliases (a compiled loop over the output windows); stage 2 evaluates a Kaiser-
    windowed sinc low-pass (−6 dB at ``lowpass_hz``, ≥ 60 dB above 500 Hz) at each output's
    exact, fractional position, weights normalised to unit DC gain. Chunks carry their filter
    history, so the result does not depend on the chunking. The recording is extended by its
    first/last value at the ends; outputs whose position is outside ``[0, n_in - 1]`` are NaN.

    Parameters
    ----------
    rate_hz : float
        Input rate (from the file).
    n_in : int
        Samples per channel in the input.
    positions : array
        Increasing input-sample positions (float) of the outputs.
    n_channels : int
        Channels fed together.
    lowpass_hz : float
        −6 dB frequency of the final low-pass.
    out : array, optional
        float32 array of shape (channels, positions) to write the outputs into (a view of a
        larger array, as :class:`PiecewiseResampler1kHz` passes); a new one by default.
    """

    ATTEN_DB = 60.0
    KEEP_HZ = 1000.0 / 2  # band kept free of aliases (the 1 kHz outputs' Nyquist band)
    TARGET_HZ = 2500.0  # intermediate rate (at least)

    def __init__(self, *, rate_hz: float, n_in: int, positions: np.ndarray, n_channels: int,
                 lowpass_hz: float = 400.0, out: np.ndarray | None = None) -> None:
        self.rate_hz = float(rate_hz)
        self.n_in = int(n_in)
        positions = np.asarray(positions, np.float64)
        if positions.size > 1 and not (np.diff(positions) > 0).all():
            raise BehaviourError("resampling positions must be strictly increasing")
        self.n_channels = int(n_channels)
        D = max(1, int(self.rate_hz // self.TARGET_HZ))
        self.D = D
        self.fs_mid = self.rate_hz / D
        if D > 1:
            width = self.fs_mid - 2 * self.KEEP_HZ
            numtaps, beta = _kaiser_taps(self.ATTEN_DB, width, self.rate_hz)
            m = -(-numtaps // D)
            L = m * D
            h = _lowpass(L, self.fs_mid / 2, self.rate_hz, beta)
        else:
            m, L, h = 1, 1, np.ones(1)
        self.L, self.m = L, m
        self.h = h
        cutoff = min(float(lowpass_hz), 0.45 * self.fs_mid)
        width2 = 2 * max(self.KEEP_HZ - cutoff, 0.05 * cutoff)
        numtaps2, beta2 = _kaiser_taps(self.ATTEN_DB, width2, self.fs_mid)
        self.half = max(2, numtaps2 // 2 + 1)  # kernel half-width, intermediate samples
        self.cutoff_hz = cutoff
        # polyphase table: row p holds the taps for u - ceil(u - half) = half - p/res (tap t at
        # distance u - (ceil(u - half) + t)); any output blends two contiguous rows linearly
        self._res = 1024
        tau = (self.half - np.arange(self._res + 1)[:, None] / self._res
               - np.arange(2 * self.half + 1)[None, :])
        inside = np.abs(tau) <= self.half
        table = np.zeros_like(tau)
        table[inside] = np.sinc(2 * cutoff / self.fs_mid * tau[inside]) * np.i0(
            beta2 * np.sqrt(1 - (tau[inside] / self.half) ** 2)) / np.i0(beta2)
        self._table = np.ascontiguousarray(table)
        # padding by the edge values, in whole blocks of D
        self.pad_left = D * -(-((L - 1) / 2 + (self.half + 2) * D) // D)
        self.pad_left = int(self.pad_left)
        self.pad_right = self.pad_left + L + 2 * D
        # fractional intermediate index of each output
        self.u = (positions + self.pad_left - (L - 1) / 2) / D
        covered = (positions >= 0) & (positions <= self.n_in - 1)
        idx = np.flatnonzero(covered)
        self.k_first = int(idx[0]) if idx.size else 0
        self.k_stop = int(idx[-1]) + 1 if idx.size else 0
        if out is None:
            out = np.full((self.n_channels, positions.size), np.nan, np.float32)
        elif out.shape != (self.n_channels, positions.size) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 of shape {(self.n_channels, positions.size)}, "
                             f"got {out.dtype} {out.shape}")
        else:
            out[...] = np.nan
        self.out = out
        self._k = self.k_first
        self._tail: list[np.ndarray] | None = None  # per channel, stage-1 input not yet used
        self._mid = np.empty((self.n_channels, 0))  # stage-1 output buffer
        self._mid_base = 0  # absolute intermediate index of _mid[:, 0]
        self._mid_count = 0  # intermediate samples produced so far
        self._fed = 0
        self._last_values: list[float] = []
        self._done = False

    def feed(self, chunks: list[np.ndarray]) -> None:
        """Next samples of every channel (same length, in channel order)."""
        if self._done:
            raise BehaviourError("Resampler1kHz: feed() after finish()")
        if len(chunks) != self.n_channels:
            raise ValueError(f"expected {self.n_channels} channels, got {len(chunks)}")
        n = len(chunks[0])
        if any(len(c) != n for c in chunks):
            raise ValueError("channel chunks differ in length")
        if n == 0:
            return
        if self._tail is None:
            self._tail = [np.full(self.pad_left, float(c[0])) for c in chunks]
        self._fed += n
        self._last_values = [float(c[-1]) for c in chunks]
        self._stage1([np.asarray(c, np.float64) for c in chunks])

    def finish(self) -> np.ndarray:
        """Flush the end and return the outputs, shape (channels, outputs), float32."""
        if not self._done:
            if self._tail is None or self._fed != self.n_in:
                raise BehaviourError(
                    f"Resampler1kHz: fed {self._fed} samples per channel, expected {self.n_in}"
                )
            ends = [np.full(self.pad_right, v) for v in self._last_values]
            self._stage1(ends, final=True)
            self._done = True
        return self.out

    def _stage1(self, chunks: list[np.ndarray], final: bool = False) -> None:
        D, m, L = self.D, self.m, self.L
        produced = None
        for c, x in enumerate(chunks):
            tail = self._tail[c]
            T = tail.size
            n_out = (T + x.size) // D - m + 1
            if n_out <= 0:
                self._tail[c] = np.concatenate([tail, x])
                continue
            y = np.empty(n_out)
            # y[k] = sum_j h[j] v[k*D + j] over v = tail ++ x, without copying x: the few windows
            # that start in the tail come from a short joined head, the rest straight from x
            k_head = min(n_out, -(-T // D))
            if k_head:
                head = np.concatenate([tail, x[: k_head * D + L]])
                _decimate(head, self.h, D, 0, k_head, y, 0)
            if n_out > k_head:
                _decimate(x, self.h, D, k_head * D - T, n_out - k_head, y, k_head)
            used = n_out * D - T  # samples of x consumed (windows advance by D)
            self._tail[c] = np.concatenate([tail[n_out * D :], x[max(used, 0) :]])
            if produced is None:
                produced = np.empty((self.n_channels, n_out))
            produced[c] = y
        if produced is None:
            return
        self._mid = np.concatenate([self._mid, produced], axis=1) if self._mid.size else produced
        self._mid_count += produced.shape[1]
        self._stage2(final)

    def _stage2(self, final: bool) -> None:
        # taps ceil(u - half) .. ceil(u - half) + 2*half must exist: u < count - half - 1
        limit = self._mid_count - self.half - 1
        k_end = int(np.searchsorted(self.u, limit, side="left"))
        k_end = min(k_end, self.k_stop)
        if final:
            k_end = self.k_stop
        k0 = self._k
        if k_end > k0:
            first = math.ceil(self.u[k0] - self.half) - self._mid_base
            last = math.ceil(self.u[k_end - 1] - self.half) + 2 * self.half - self._mid_base
            if first < 0 or last >= self._mid.shape[1]:  # the compiled loop does not check
                raise BehaviourError(
                    f"Resampler1kHz: outputs {k0}..{k_end} need intermediate samples "
                    f"{first}..{last} of a buffer of {self._mid.shape[1]} (internal error)"
                )
            _interp(self._mid, self._mid_base, self.u, k0, k_end, self._table,
                    float(self._res), self.half, self.out)
            self._k = k_end
        # drop intermediate samples no pending output needs
        if self._k < self.u.size:
            keep_from = int(math.floor(self.u[self._k] - self.half)) - 1
        else:
            keep_from = self._mid_count
        drop = min(keep_from - self._mid_base, self._mid.shape[1])
        if drop > 0:
            self._mid = self._mid[:, drop:]
            self._mid_base += drop

    def describe(self) -> dict[str, Any]:
        """The filter design, recorded in the output's attributes."""
        return {
            "method": "polyphase FIR decimation then windowed-sinc evaluation at probe-clock times",
            "stage1_decimation": self.D, "stage1_taps": self.L,
            "intermediate_rate_hz": self.fs_mid,
            "stage2_halfwidth_samples": self.half, "lowpass_hz": self.cutoff_hz,
            "stopband_attenuation_db": self.ATTEN_DB, "alias_free_band_hz": self.KEEP_HZ,
        }


class PiecewiseResampler1kHz:
    """:class:`Resampler1kHz` per segment of a recording that paused and restarted.

    Segment ``j`` is the input samples ``[first_j, stop_j)``; its samples feed only the outputs
    whose position lies in ``[first_j, stop_j - 1]``, through a resampler of their own (extended
    by the segment's first/last value at its ends, as a whole recording is), so the filter never
    reaches across a pause. Samples outside every segment (the stretch where the pause lies)
    feed nothing; outputs in no segment are NaN. Same interface as :class:`Resampler1kHz`.

    Parameters
    ----------
    rate_hz, n_in, n_channels, lowpass_hz
        As :class:`Resampler1kHz`.
    positions : array
        Input-sample positions of the outputs: increasing where finite (NaN: no input time).
    segments : sequence of (int, int)
        ``(first, stop)`` input samples of each segment (not empty), in order and disjoint.
    """

    def __init__(self, *, rate_hz: float, n_in: int, positions: np.ndarray, n_channels: int,
                 segments: list[tuple[int, int]], lowpass_hz: float = 400.0) -> None:
        positions = np.asarray(positions, np.float64)
        self.n_in = int(n_in)
        self.segments = [(int(a), int(b)) for a, b in segments]
        flat = [v for seg in self.segments for v in seg]
        if (not self.segments or flat[0] < 0 or flat[-1] > self.n_in
                or any(b < a for a, b in zip(flat, flat[1:]))
                or any(b <= a for a, b in self.segments)):
            raise BehaviourError(f"resampling segments {self.segments} are not in order within "
                                 f"the {self.n_in} input samples")
        self.out = np.full((int(n_channels), positions.size), np.nan, np.float32)
        self._parts: list[tuple[int, int, Resampler1kHz]] = []
        for first, stop in self.segments:
            inside = np.flatnonzero((positions >= first) & (positions <= stop - 1))
            k0 = int(inside[0]) if inside.size else 0
            k1 = int(inside[-1]) + 1 if inside.size else 0
            if k1 - k0 != inside.size:
                raise BehaviourError(f"resampling positions of segment [{first}, {stop}) are not "
                                     "one run of outputs")
            part = Resampler1kHz(rate_hz=rate_hz, n_in=stop - first,
                                 positions=positions[k0:k1] - first, n_channels=n_channels,
                                 lowpass_hz=lowpass_hz, out=self.out[:, k0:k1])
            self._parts.append((first, stop, part))
        self._fed = 0

    def feed(self, chunks: list[np.ndarray]) -> None:
        """Next samples of every channel (same length, in channel order)."""
        n = len(chunks[0])
        start, end = self._fed, self._fed + n
        for first, stop, part in self._parts:
            a, b = max(start, first), min(end, stop)
            if a < b:
                part.feed([c[a - start:b - start] for c in chunks])
        self._fed = end

    def finish(self) -> np.ndarray:
        """Flush every segment and return the outputs, shape (channels, outputs), float32."""
        if self._fed != self.n_in:
            raise BehaviourError(
                f"PiecewiseResampler1kHz: fed {self._fed} samples per channel, expected {self.n_in}"
            )
        for _, _, part in self._parts:
            part.finish()
        return self.out

    def describe(self) -> dict[str, Any]:
        """The filter design (every segment's) and the segments, for the output's attributes."""
        return {**self._parts[0][2].describe(),
                "segments_samples": [list(seg) for seg in self.segments]}


def _decimate_numpy(x, h, D, s0, n, out, o0):
    L = h.size
    for j in range(L):
        seg = x[s0 + j : s0 + j + (n - 1) * D + 1 : D]
        if j == 0:
            out[o0 : o0 + n] = h[0] * seg
        else:
            out[o0 : o0 + n] += h[j] * seg


def _interp_numpy(mid, base, u, k0, k1, table, res, half, out):
    uk = u[k0:k1]
    lo = np.ceil(uk - half).astype(np.int64)
    pf = (lo + half - uk) * res
    p = np.minimum(np.floor(pf).astype(np.int64), int(res) - 1)
    f = (pf - p)[:, None]
    w = table[p] * (1 - f) + table[p + 1] * f  # (outputs, taps)
    acc = np.zeros((mid.shape[0], uk.size))
    for t in range(2 * half + 1):
        acc += mid[:, lo + t - base] * w[:, t]
    out[:, k0:k1] = acc / w.sum(axis=1)


_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """numba versions of the two resampling loops (compiled once, cached on disk); the numpy
    versions above give the same numbers and are used when numba is missing."""
    if _KERNELS:
        return _KERNELS
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        log.warning("numba cannot be imported; 1 kHz resampling uses the slower numpy path")
        _KERNELS.update(decimate=_decimate_numpy, interp=_interp_numpy)
        return _KERNELS

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def decimate(x, h, D, s0, n, out, o0):  # pragma: no cover - compiled
        L = h.size
        for k in range(n):
            seg = x[s0 + k * D : s0 + k * D + L]  # a view: the loop below vectorises
            acc = 0.0
            for j in range(L):
                acc += h[j] * seg[j]
            out[o0 + k] = acc

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def interp(mid, base, u, k0, k1, table, res, half, out):  # pragma: no cover
        n_ch = mid.shape[0]
        n_taps = 2 * half + 1
        top = int(res) - 1
        w = np.empty(n_taps)
        for k in range(k0, k1):
            uk = u[k]
            lo = int(math.ceil(uk - half))
            pf = (lo + half - uk) * res
            p = min(int(math.floor(pf)), top)
            f = pf - p
            wsum = 0.0
            t0, t1 = table[p], table[p + 1]
            for t in range(n_taps):
                wt = t0[t] * (1.0 - f) + t1[t] * f
                w[t] = wt
                wsum += wt
            col = lo - base
            for c in range(n_ch):
                seg = mid[c, col : col + n_taps]
                acc = 0.0
                for t in range(n_taps):
                    acc += w[t] * seg[t]
                out[c, k] = acc / wsum

    _KERNELS.update(decimate=decimate, interp=interp)
    return _KERNELS


def _decimate(x, h, D, s0, n, out, o0) -> None:
    """``out[o0 + k] = sum_j h[j] * x[s0 + k*D + j]`` for ``k < n``."""
    _kernels()["decimate"](x, h, D, s0, n, out, o0)


def _interp(mid, base, u, k0, k1, table, res, half, out) -> None:
    """Windowed-sinc value of the intermediate samples at each ``u[k0:k1]``."""
    _kernels()["interp"](mid, base, u, k0, k1, table, res, half, out)


# =============================================================================== LFP kernel
def kernel_design(source_rate_hz: float, params: LfpParams) -> dict[str, Any]:
    """The anti-alias kernel: cutoff, Kaiser β and half-width (in LF samples), and its measured
    response.

    The window is a Kaiser window with its pedestal removed, ``(I0(β√(1-r²)) - 1) / (I0(β) - 1)``,
    so the kernel falls continuously to 0 at its ends (a kernel evaluated at drifting positions
    must not jump). Its length and β come from Kaiser's formulas (:func:`_kaiser_taps`, the
    numbers of :func:`scipy.signal.kaiserord`), asked for more attenuation until the measured
    worst case over sub-sample phases meets ``attenuation_db``.

    Returns
    -------
    dict
        ``cutoff_hz``, ``cutoff_norm`` (cutoff / source rate), ``beta``, ``half_width_samples``
        (the kernel is zero beyond it), ``n_taps`` (source samples read per output),
        ``stopband_attenuation_db`` and ``passband_ripple`` (measured, worst phase).
    """
    params.validate(source_rate_hz)
    return dict(_design(float(source_rate_hz), params.passband_hz, params.stopband_hz,
                        params.attenuation_db))


@functools.lru_cache(maxsize=16)
def _design(source_rate_hz: float, passband_hz: float, stopband_hz: float,
            attenuation_db: float) -> dict[str, Any]:
    from scipy import signal

    cutoff_norm = 0.5 * (passband_hz + stopband_hz) / source_rate_hz
    freqs = np.linspace(0.0, source_rate_hz / 2, 1024)
    passband, stopband = freqs <= passband_hz, freqs >= stopband_hz
    for extra_db in np.arange(0.0, 30.0, 1.0):
        numtaps, beta = _kaiser_taps(attenuation_db + extra_db, stopband_hz - passband_hz,
                                     source_rate_hz)
        half = numtaps / 2.0
        radius = math.ceil(half)
        ripple, stop = 0.0, 0.0
        for phase in np.linspace(0.0, 0.5, 9):  # the response is symmetric in the phase
            taps = _kernel(phase - np.arange(-radius - 1, radius + 2), cutoff_norm, beta, half)
            _, resp = signal.freqz(taps, worN=freqs, fs=source_rate_hz)
            mag = np.abs(resp)
            ripple = max(ripple, float(np.abs(mag[passband] - 1.0).max()))
            stop = max(stop, float(mag[stopband].max()))
        stop_db = -20.0 * math.log10(max(stop, 1e-300))
        if stop_db >= attenuation_db:
            break
    return {
        "cutoff_hz": cutoff_norm * source_rate_hz,
        "cutoff_norm": cutoff_norm,
        "beta": float(beta),
        "half_width_samples": float(half),
        "n_taps": int(2 * radius + 1),
        "stopband_attenuation_db": stop_db,
        "passband_ripple": ripple,
    }


def _kernel(tau: np.ndarray, cutoff_norm: float, beta: float, half: float) -> np.ndarray:
    """Windowed sinc at ``tau`` LF samples (``cutoff_norm`` = fc / fs; window: pedestal-free
    Kaiser of half-width ``half``), zero for ``|tau| >= half``."""
    from scipy.special import i0

    tau = np.asarray(tau, dtype=np.float64)
    out = 2.0 * cutoff_norm * np.sinc(2.0 * cutoff_norm * tau)
    r = tau / half
    inside = np.abs(r) < 1.0
    win = np.zeros_like(tau)
    win[inside] = (i0(beta * np.sqrt(1.0 - r[inside] ** 2)) - 1.0) / (i0(beta) - 1.0)
    return out * win


def resample_positions(
    k: np.ndarray, rate_hz: float, source_rate_hz: float,
    clock_map: InvertibleClockMapLike | None = None,
) -> np.ndarray:
    """Positions in source samples of the output samples ``k`` (``t_k = k / rate_hz``)."""
    t = np.asarray(k, dtype=np.float64) / rate_hz
    if clock_map is None:
        return t * source_rate_hz
    return StreamClock(source_rate_hz, clock_map).to_samples(t)


_TABLE_STEPS = 1024  # kernel table points per LF sample (linear-interpolation error < 1e-7)


def _kernel_table(design: dict) -> np.ndarray:
    """The kernel every ``1 / _TABLE_STEPS`` samples over ``[-(radius + 1), radius + 1]``."""
    radius = (design["n_taps"] - 1) // 2 + 1
    tau = np.arange(-radius * _TABLE_STEPS, radius * _TABLE_STEPS + 2) / _TABLE_STEPS
    return _kernel(tau, design["cutoff_norm"], design["beta"], design["half_width_samples"])
