"""Behaviour stage: TDMS channels → events → actions → trials, and the channels at 1 kHz.

One pass over the behaviour TDMS (:func:`pixbin.tdms.iter_chunks`) does everything that needs the
samples: TTL edges at the file's own rate (hysteresis, debounce, sub-sample crossing; never
resampled first) and every analog channel low-passed and resampled onto the probe clock's 1 kHz
grid. Edge times are mapped to the probe clock by the sync stage's clock map; the task
(:mod:`pixbin.tasks`) turns the events table into trials. Outputs (docs/PIPELINE.md,
docs/BEHAVIOUR.md), each written atomically into ``out_dir``:

- ``action_labels_<rec>.npy``: (N, 2) task dtype at 1 kHz; column 0 action flags on the trial
  start sample, column 1 event flags on each event sample; sample = ``floor(time_s * 1000)``;
  with ``action_labels_<rec>.json`` describing the flags;
- ``events.parquet``, ``trials.parquet``;
- ``<tdms stem>_processed.h5``: one float32 variable per channel on ``time = k / 1000`` s.

Rates come from the file (``wf_increment``); nothing assumes 25 kHz.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pixbin.edges import EdgeDetector, Edges, auto_thresholds
from pixbin.errors import BehaviourError, ConfigError, TdmsError
from pixbin.fileio import atomic_path, provenance, write_json, write_npy, write_parquet
from pixbin.params import params_from_dict
from pixbin.clock import ClockMapLike
from pixbin.tasks import Task, get_task
from pixbin.tdms import ChannelInfo, iter_chunks, list_channels, read_channel

__all__ = [
    "BehaviourParams",
    "Resampler1kHz",
    "run_behaviour",
    "label_sample",
    "merge_trains",
    "read_action_labels",
]

log = logging.getLogger(__name__)

LABEL_RATE_HZ = 1000.0
_AUTO = "auto"


@dataclass(frozen=True)
class BehaviourParams:
    """Parameters of the behaviour stage (recorded beside its outputs).

    Attributes
    ----------
    chunk_samples : int
        Samples per channel read at a time (memory ≈ chunk × channels × 8 B × ~4).
    thresholds_v : mapping
        Per TDMS group, ``(low, high)`` in the channel's unit or ``"auto"`` (from the data),
        overriding the task's declaration.
    debounce_s : float
        Transition pairs closer than this are dropped (contact bounce, glitches).
    lowpass_hz : float
        −6 dB point of the anti-alias filter applied before sampling at 1 kHz (< 500 Hz).
    scan_window_s : float or None
        How far after a trial start alignment events are looked for; None: the task's (10 s).
    rec : int or None
        Recording index in ``action_labels_<rec>.npy``; None: from the TDMS stem's ``(N)``.
    write_channels : bool
        Write the 1 kHz channels file.
    """

    chunk_samples: int = 1_000_000
    thresholds_v: Mapping[str, Any] = field(default_factory=dict)
    debounce_s: float = 0.001
    lowpass_hz: float = 400.0
    scan_window_s: float | None = None
    rec: int | None = None
    write_channels: bool = True

    def __post_init__(self) -> None:
        if int(self.chunk_samples) < 1024:
            raise ConfigError(f"chunk_samples must be >= 1024, got {self.chunk_samples}")
        if not self.debounce_s >= 0:
            raise ConfigError(f"debounce_s must be >= 0, got {self.debounce_s}")
        if not 0 < self.lowpass_hz < LABEL_RATE_HZ / 2:
            raise ConfigError(f"lowpass_hz must be in (0, 500) Hz, got {self.lowpass_hz}")
        if self.scan_window_s is not None and not self.scan_window_s > 0:
            raise ConfigError(f"scan_window_s must be > 0 or None, got {self.scan_window_s}")
        if not isinstance(self.thresholds_v, Mapping):
            raise ConfigError(f"thresholds_v must be a mapping, got {self.thresholds_v!r}")
        for group, value in self.thresholds_v.items():
            if value == _AUTO:
                continue
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"thresholds_v[{group!r}] must be 'auto' or (low, high), got {value!r}"
                ) from None
            if not low < high:
                raise ConfigError(f"thresholds_v[{group!r}]: expected low < high, got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> BehaviourParams:
        """Build from a mapping (e.g. the config file), refusing unknown keys."""
        return params_from_dict(cls, values or {}, what="behaviour parameter")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (for records and file metadata)."""
        d = dataclasses.asdict(self)
        d["thresholds_v"] = {k: (v if v == _AUTO else [float(x) for x in v])
                             for k, v in self.thresholds_v.items()}
        return d


# =============================================================================== edges
def merge_trains(edges: Edges, gap_samples: float) -> Edges:
    """Merge pulse trains: a pulse whose onset follows the previous onset by at most
    ``gap_samples`` joins its train; a train has one rising edge (its first onset) and one
    falling edge (the last offset before the next train). Falling edges before the first onset
    are kept as they are."""
    rising, falling = edges.rising, edges.falling
    if gap_samples <= 0 or rising.size == 0:
        return edges
    starts = rising[np.r_[True, np.diff(rising) > gap_samples]]
    bounds = np.r_[starts, np.inf]
    head = falling[falling < starts[0]]
    offs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        inside = falling[(falling > a) & (falling < b)]
        if inside.size:
            offs.append(inside[-1])
    return Edges(starts, np.concatenate([head, np.asarray(offs, np.float64)]))


# =============================================================================== 1 kHz
def _kaiser_taps(atten_db: float, width_hz: float, fs_hz: float) -> tuple[int, float]:
    """Taps and beta of a Kaiser-window FIR (the formulas of ``scipy.signal.kaiserord`` /
    ``kaiser_beta``; written out to spare the stage scipy.signal's import time)."""
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
    """

    ATTEN_DB = 60.0
    KEEP_HZ = LABEL_RATE_HZ / 2  # band kept free of aliases
    TARGET_HZ = 2500.0  # intermediate rate (at least)

    def __init__(self, *, rate_hz: float, n_in: int, positions: np.ndarray, n_channels: int,
                 lowpass_hz: float = 400.0) -> None:
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
        self.out = np.full((self.n_channels, positions.size), np.nan, np.float32)
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


# =============================================================================== clocks
def _behaviour_times(clock_map: ClockMapLike, probe_s: np.ndarray, span_s: tuple[float, float]
                     ) -> np.ndarray:
    """Behaviour-clock times of probe times: ``clock_map.from_probe`` if it has one, else the
    inverse of ``to_probe`` by interpolation on a 0.1 s grid over ``span_s`` (extended), and
    linear extrapolation from its ends beyond it."""
    from_probe = getattr(clock_map, "from_probe", None)
    if callable(from_probe):
        return np.asarray(from_probe(probe_s), np.float64)
    lo, hi = span_s
    pad = 0.1 * (hi - lo) + 10.0
    grid = np.linspace(lo - pad, hi + pad, int((hi - lo + 2 * pad) / 0.1) + 2)
    mapped = np.asarray(clock_map.to_probe(grid), np.float64)
    if not (np.isfinite(mapped).all() and (np.diff(mapped) > 0).all()):
        raise BehaviourError("clock map to_probe() is not finite and increasing; cannot invert it")
    out = np.interp(probe_s, mapped, grid)
    before, after = probe_s < mapped[0], probe_s > mapped[-1]
    out[before] = grid[0] + (probe_s[before] - mapped[0]) * (grid[1] - grid[0]) / (
        mapped[1] - mapped[0])
    out[after] = grid[-1] + (probe_s[after] - mapped[-1]) * (grid[-1] - grid[-2]) / (
        mapped[-1] - mapped[-2])
    return out


# =============================================================================== helpers
def label_sample(times_s: np.ndarray | float) -> np.ndarray:
    """1 kHz sample of a probe-clock time: ``floor(time_s * 1000)`` (the millisecond
    ``[k, k + 1)`` that contains it)."""
    return np.floor(np.asarray(times_s, np.float64) * LABEL_RATE_HZ).astype(np.int64)


def _rec_index(stem: str) -> int:
    found = re.search(r"\((\d+)\)\s*$", stem)
    return int(found.group(1)) if found else 0


def _resolve_keys(task: type[Task], channels: dict[str, ChannelInfo], path: Path
                  ) -> dict[str, str]:
    """TDMS key of every task channel present; BehaviourError for missing required ones."""
    keys: dict[str, str] = {}
    for ch in task.channels:
        for key in (ch.group, f"{ch.group}/0"):
            if key in channels:
                keys[ch.group] = key
                break
    missing = [g for g in task.required_channels() if g not in keys]
    if missing:
        raise BehaviourError(
            f"{path}: task {task.name!r} needs TDMS channel(s) {missing} (group, channel '0'), "
            f"which the file lacks; expected all of {list(task.required_channels())}, "
            f"found {sorted(channels)}"
        )
    return keys


def _check_shapes(path: Path, task_keys: dict[str, str], channels: dict[str, ChannelInfo]
                  ) -> tuple[int, float]:
    ref_group = next(iter(task_keys))
    ref = channels[task_keys[ref_group]]
    for group, key in task_keys.items():
        info = channels[key]
        if not math.isfinite(info.rate_hz):
            raise TdmsError(
                f"{path}: channel {key!r} has no valid 'wf_increment' property; expected seconds "
                "per sample, cannot tell its rate"
            )
        if info.n_samples != ref.n_samples:
            raise TdmsError(
                f"{path}: channel {key!r} holds {info.n_samples} samples; expected "
                f"{ref.n_samples} like {task_keys[ref_group]!r} (every task channel is sampled "
                "together)"
            )
        if info.rate_hz != ref.rate_hz:
            raise TdmsError(
                f"{path}: channel {key!r} is sampled at {info.rate_hz!r} Hz; expected "
                f"{ref.rate_hz!r} Hz like {task_keys[ref_group]!r}"
            )
    if ref.n_samples < 2:
        raise TdmsError(f"{path}: channel {task_keys[ref_group]!r} holds {ref.n_samples} samples")
    return ref.n_samples, ref.rate_hz


def _thresholds(path: Path, key: str, declared, n: int) -> tuple[float, float, str]:
    if declared is not None and declared != _AUTO:
        low, high = (float(v) for v in declared)
        return low, high, "declared"
    # From the data: a strided sample of the channel (64 windows spread over the file).
    win = min(n, 4096)
    starts = np.unique(np.linspace(0, n - win, 64).astype(np.int64))
    sample = np.concatenate([read_channel(path, *_split(key), start=int(s), stop=int(s) + win)
                             for s in starts])
    try:
        low, high = auto_thresholds(sample)
    except ValueError as exc:
        raise BehaviourError(
            f"{path}: cannot set thresholds for channel {key!r} from the data ({exc}); "
            "declare them (BehaviourParams.thresholds_v or the task's Channel.thresholds_v)"
        ) from None
    return low, high, "auto"


def _split(key: str) -> tuple[str, str]:
    return (key, "0") if "/" not in key else tuple(key.split("/", 1))  # type: ignore[return-value]


# =============================================================================== stage
def run_behaviour(
    *,
    behaviour_tdms: str | os.PathLike,
    clock_map: ClockMapLike,
    probe_duration_s: float,
    out_dir: str | os.PathLike,
    task: str | type[Task] = "leverpush",
    params: BehaviourParams | None = None,
) -> dict[str, Any]:
    """Label one behaviour recording: events, trials, 1 kHz labels and channels.

    Parameters
    ----------
    behaviour_tdms : path-like
        The behaviour TDMS (``NeuropixelBehaviour(0).tdms``), uncompressed.
    clock_map : ClockMapLike
        Behaviour clock → probe clock (``pixbin.clock.ClockMap.load(processed, "behaviour")``);
        ``from_probe`` is used when present, else ``to_probe`` is inverted.
    probe_duration_s : float
        AP samples / imSampRate; the 1 kHz arrays have ``floor(probe_duration_s * 1000)`` rows.
    out_dir : path-like
        ``processed/<session>/``.
    task : str or Task subclass
        Registered task name (see :func:`pixbin.tasks.get_task`).
    params : BehaviourParams
        Stage parameters.

    Returns
    -------
    dict
        Summary: counts of events, actions and trials (valid/invalid with reasons), events
        outside the probe recording, unlabelled events, thresholds, outputs, timings.

    Raises
    ------
    BehaviourError
        A required channel is missing, thresholds cannot be set, the clock map is unusable.
    TdmsError
        The file is unreadable, or a task channel has another length or rate than the others.
    """
    t_start = time.perf_counter()
    params = params or BehaviourParams()
    path = Path(behaviour_tdms)
    out_dir = Path(out_dir)
    task_cls = get_task(task)
    scan_s = float(params.scan_window_s or task_cls.scan_window_s)
    unknown = sorted(set(params.thresholds_v) - {c.group for c in task_cls.channels})
    if unknown:
        raise ConfigError(
            f"thresholds_v names channel(s) {unknown} that task {task_cls.name!r} does not read; "
            f"its channels: {[c.group for c in task_cls.channels]}"
        )
    if not (math.isfinite(probe_duration_s) and probe_duration_s > 0):
        raise BehaviourError(f"probe_duration_s must be a positive number, got {probe_duration_s}")

    channels = list_channels(path)
    task_keys = _resolve_keys(task_cls, channels, path)
    n_in, rate_hz = _check_shapes(path, task_keys, channels)
    extra = [k for k, info in channels.items()
             if k not in task_keys.values() and info.n_samples == n_in and info.rate_hz == rate_hz]
    skipped = {k: f"{info.n_samples} samples at {info.rate_hz} Hz; the task channels have "
                  f"{n_in} at {rate_hz} Hz"
               for k, info in channels.items()
               if k not in task_keys.values() and k not in extra}
    for k, why in skipped.items():
        log.info("%s: channel %r not resampled (%s)", path, k, why)
    resample_keys = list(task_keys.values()) + extra if params.write_channels else []

    # thresholds and detectors for every channel with events
    detectors: dict[str, EdgeDetector] = {}
    thresholds: dict[str, dict[str, Any]] = {}
    for ch in task_cls.channels:
        if ch.group not in task_keys or (ch.rising is None and ch.falling is None):
            continue
        key = task_keys[ch.group]
        declared = params.thresholds_v.get(ch.group, ch.thresholds_v)
        low, high, source = _thresholds(path, key, declared, n_in)
        thresholds[ch.group] = {"low": low, "high": high, "source": source}
        # analog (float) channels: sub-sample crossing; digital (integer) ones: first sample
        detectors[ch.group] = EdgeDetector(
            low=low, high=high, min_interval_samples=params.debounce_s * rate_hz,
            interpolate="auto")

    # 1 kHz grid on the probe clock and its positions in behaviour samples
    n_out = int(math.floor(probe_duration_s * LABEL_RATE_HZ))
    probe_t = np.arange(n_out) / LABEL_RATE_HZ
    positions = _behaviour_times(clock_map, probe_t, (0.0, n_in / rate_hz)) * rate_hz
    if n_out and not (np.isfinite(positions).all() and (np.diff(positions) > 0).all()):
        raise BehaviourError(
            f"{path}: the clock map does not give increasing behaviour times for the probe's "
            "1 kHz grid; check sync.json"
        )
    resampler = None
    if resample_keys:
        resampler = Resampler1kHz(rate_hz=rate_hz, n_in=n_in, positions=positions,
                                  n_channels=len(resample_keys), lowpass_hz=params.lowpass_hz)
    del positions

    # the one pass
    read_keys = list(dict.fromkeys([task_keys[g] for g in detectors] + resample_keys))
    t_read = time.perf_counter()
    if read_keys:
        for start, chunk in iter_chunks(path, read_keys, chunk_samples=int(params.chunk_samples)):
            for group, det in detectors.items():
                det.feed(chunk[task_keys[group]], start)
            if resampler is not None:
                resampler.feed([chunk[k] for k in resample_keys])
    channels_1k = resampler.finish() if resampler is not None else None
    t_pass = time.perf_counter() - t_read

    # events on the probe clock
    frames = []
    raw_counts: dict[str, int] = {}
    for ch in task_cls.channels:
        if ch.group not in detectors:
            continue
        edges = detectors[ch.group].result()
        raw_counts[ch.group] = int(edges.rising.size)
        if ch.merge_gap_s > 0:
            edges = merge_trains(edges, ch.merge_gap_s * rate_hz)
        for name, pos in ((ch.rising, edges.rising), (ch.falling, edges.falling)):
            if name is None or pos.size == 0:
                continue
            t_probe = np.asarray(clock_map.to_probe(pos / rate_hz), np.float64)
            frames.append(pd.DataFrame({"time_s": t_probe, "event": name, "channel": ch.group}))
    events = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame({"time_s": np.empty(0), "event": [], "channel": []}))
    events = events.astype({"time_s": np.float64, "event": str, "channel": str})
    events = events.sort_values(["time_s", "event"], kind="stable").reset_index(drop=True)
    ev_sample = label_sample(events["time_s"].to_numpy())
    events["in_recording"] = (ev_sample >= 0) & (ev_sample < n_out)

    # trials
    task_obj = task_cls()
    raw_trials = task_obj.trials(events[["time_s", "event", "channel"]].copy())
    unlabelled = list(raw_trials.attrs.get("unlabelled", []))
    for item in unlabelled:
        log.warning("%s: %s at %.4f s not labelled: %s", path, item.get("event"),
                    item.get("time_s", float("nan")), item.get("reason"))
    trials = _complete_trials(raw_trials, events, task_cls, scan_s, n_out)

    # action labels
    dtype = np.dtype(task_cls.labels_dtype)
    labels = np.zeros((n_out, 2), dtype=dtype)
    in_rec = events["in_recording"].to_numpy()
    ev_flags = np.array([int(task_cls.Events[e]) for e in events["event"]], dtype=np.uint64)
    np.bitwise_or.at(labels[:, 1], ev_sample[in_rec], ev_flags[in_rec].astype(dtype))
    tr_sample = label_sample(trials["start_s"].to_numpy())
    tr_in = (tr_sample >= 0) & (tr_sample < n_out)
    tr_flags = np.array([int(task_cls.Actions[a]) for a in trials["action"]], dtype=np.uint64)
    np.bitwise_or.at(labels[:, 0], tr_sample[tr_in], tr_flags[tr_in].astype(dtype))

    t_rules = time.perf_counter()

    # outputs
    rec = params.rec if params.rec is not None else _rec_index(path.stem)
    record = {
        "task": task_cls.name,
        "task_declaration": task_cls.describe(),
        "parameters": params.to_dict(),
        "source": {"file": path.name, "rate_hz": rate_hz, "n_samples": n_in,
                   "channels": task_keys},
        "thresholds": thresholds,
        "clock": "imec0 AP, seconds",
    }
    meta = {**record, **provenance(params.to_dict())}
    outputs: dict[str, str] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_path = out_dir / f"action_labels_{rec}.npy"
    write_npy(labels_path, labels)
    write_json(out_dir / f"action_labels_{rec}.json", {
        **meta,
        "shape": list(labels.shape), "dtype": dtype.name,
        "columns": ["actions (bit flags on the trial-start sample)",
                    "events (bit flags on each event sample)"],
        "sample": "floor(time_s * 1000): the millisecond [k, k+1) on the probe clock",
        "actions": {k: int(v) for k, v in task_cls.Actions.__members__.items()},
        "events": {k: int(v) for k, v in task_cls.Events.__members__.items()},
    })
    outputs["action_labels"] = labels_path.name
    write_parquet(out_dir / "events.parquet", events, metadata=meta)
    outputs["events"] = "events.parquet"
    write_parquet(out_dir / "trials.parquet", trials, metadata={**meta, "scan_window_s": scan_s})
    outputs["trials"] = "trials.parquet"
    if channels_1k is not None:
        h5 = out_dir / f"{path.stem}_processed.h5"
        _write_channels(h5, channels_1k, resample_keys, channels, probe_t, resampler, meta)
        outputs["channels"] = h5.name

    invalid = trials.loc[~trials["valid"], "reason"].value_counts().to_dict()
    summary = {
        "task": task_cls.name,
        "source": path.name,
        "rate_hz": rate_hz,
        "n_samples": n_in,
        "behaviour_span_probe_s": [float(v) for v in clock_map.to_probe(
            np.array([0.0, (n_in - 1) / rate_hz]))],
        "n_samples_1khz": n_out,
        "events": {k: int(v) for k, v in events["event"].value_counts().sort_index().items()},
        "events_outside_recording": int((~events["in_recording"]).sum()),
        "raw_pulses": raw_counts,
        "actions": {k: int(v) for k, v in trials["action"].value_counts().sort_index().items()},
        "trials": int(len(trials)),
        "trials_valid": int(trials["valid"].sum()),
        "trials_invalid": {str(k): int(v) for k, v in invalid.items()},
        "unlabelled": unlabelled,
        "thresholds": thresholds,
        "channels_1khz": resample_keys,
        "channels_skipped": skipped,
        "outputs": outputs,
        "seconds": {"setup": round(t_read - t_start, 3), "pass": round(t_pass, 3),
                    "rules": round(t_rules - t_read - t_pass, 3),
                    "write": round(time.perf_counter() - t_rules, 3),
                    "total": round(time.perf_counter() - t_start, 3)},
    }
    log.info("%s: %d events, %d trials (%d valid) in %.1f s", path.name, len(events),
             len(trials), summary["trials_valid"], summary["seconds"]["total"])
    return summary


def _complete_trials(raw: pd.DataFrame, events: pd.DataFrame, task: type[Task], scan_s: float,
                     n_out: int) -> pd.DataFrame:
    """Add trial ids, alignment columns, validity and reasons to the task's trials."""
    for col in ("action", "start_s", "outcome"):
        if col not in raw.columns:
            raise BehaviourError(
                f"task {task.name!r}: trials() must return column {col!r}; got {list(raw.columns)}"
            )
    unknown = sorted(set(raw["action"]) - set(task.Actions.__members__))
    if unknown:
        raise BehaviourError(f"task {task.name!r}: trials() returned unknown actions {unknown}")
    order = np.lexsort((raw["action"].map(lambda a: int(task.Actions[a])).to_numpy(np.int64),
                        raw["start_s"].to_numpy(np.float64)))
    raw = raw.iloc[order].reset_index(drop=True)
    n = len(raw)
    start = raw["start_s"].to_numpy(np.float64)
    out = pd.DataFrame({
        "trial_id": np.arange(n, dtype=np.int64),
        "action": raw["action"].astype(str).to_numpy(),
        "start_s": start,
        "align_event": [task.default_align(a) for a in raw["action"]],
    })
    align_cols: dict[str, np.ndarray] = {}
    for ev in task.alignment_events():
        times = np.sort(events.loc[events["event"] == ev, "time_s"].to_numpy(np.float64))
        i = np.searchsorted(times, start, side="left")
        found = np.full(n, np.nan)
        ok = i < times.size
        found[ok] = times[i[ok]]
        found[~(found < start + scan_s)] = np.nan
        declared = np.array([ev in task.actions[a].align for a in out["action"]], dtype=bool)
        found[~declared] = np.nan
        align_cols[ev] = found
    default = out["align_event"].to_numpy()
    align_time = np.array([align_cols[e][k] for k, e in enumerate(default)], dtype=np.float64)
    out["align_time_s"] = align_time
    for ev, values in align_cols.items():
        out[f"{ev}_s"] = values
    out["outcome"] = raw["outcome"].astype(str).to_numpy()
    end_s = n_out / LABEL_RATE_HZ
    reasons = []
    for s, a, e in zip(start, align_time, default):
        if not (0 <= s < end_s):
            reasons.append(f"start {s:.3f} s is outside the probe recording [0, {end_s:.3f}) s")
        elif not np.isfinite(a):
            reasons.append(f"no {e} within {scan_s:g} s")
        elif not (0 <= a < end_s):
            reasons.append(f"{e} at {a:.3f} s is outside the probe recording")
        else:
            reasons.append("")
    out["valid"] = np.array([r == "" for r in reasons], dtype=bool)
    out["reason"] = reasons
    return out


def _write_channels(path: Path, data: np.ndarray, keys: list[str],
                    channels: dict[str, ChannelInfo], probe_t: np.ndarray,
                    resampler: Resampler1kHz, meta: dict[str, Any]) -> None:
    import json

    import xarray as xr

    variables = {}
    for row, key in zip(data, keys):
        info = channels[key]
        variables[key.replace("/", "_")] = xr.Variable(
            ("time",), row,
            attrs={"units": info.unit or "", "source_rate_hz": float(info.rate_hz),
                   "tdms_group": info.group, "tdms_channel": info.channel},
        )
    ds = xr.Dataset(variables, coords={"time": ("time", probe_t,
                                                {"units": "s", "clock": "imec0 AP"})})
    ds.attrs.update({
        "task": meta["task"],
        "source_file": meta["source"]["file"],
        "sampling": "1 kHz on the probe clock, t = k / 1000 s; NaN where the behaviour "
                    "recording does not cover t",
        "filter": json.dumps(resampler.describe()),
        "pixbin": json.dumps(meta, default=str),
    })
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


def read_action_labels(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Load ``action_labels_<rec>.npy`` and its ``.json`` description (flag names → values)."""
    import json

    path = Path(path)
    labels = np.load(path)
    sidecar = path.with_suffix(".json")
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return labels, info

