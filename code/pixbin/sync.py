"""Clock maps between streams and the probe clock: edges, matching, linear fit, QC, outputs.

The probe clock is seconds on probe ``imec0``'s AP stream (AP sample / AP ``imSampRate``). Other
streams are mapped onto it by a :class:`ClockMap` (``t_probe = offset_s + rate * t_stream``):

- ``imec0.lf``: same device; ``t = lf_sample / imSampRate(LF)`` plus the ``firstSample`` offset
  between the two files, checked against the AP meta (or fitted from sync edges of both files).
- ``behaviour``: the LabVIEW DAQ's clock (``t = sample * wf_increment`` of the behaviour TDMS),
  fitted from the sync square wave that both systems record (SY bit 6 on the probe,
  ``NpxlSync_Signal`` on the DAQ). The camera frame TTL (``CamFrames``) is sampled by the same DAQ,
  so camera TTL times use the ``behaviour`` map.

:func:`run_sync` is the stage: it writes ``sync.json`` (the model and its QC), ``lag.json`` (the
lab's integer-ms overhangs) and ``sync_0.png`` (the QC figure) into the processed folder.
:meth:`ClockMap.load` is how every later stage gets a map. docs/SYNC.md explains the model, the
matching and how to read the figure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixbin import layout
from pixbin.clock import BEHAVIOUR_STREAM, LF_STREAM, PROBE_STREAM, ClockMap
from pixbin.edges import EdgeDetector, Edges, auto_thresholds
from pixbin.errors import ConfigError, MetaError, SyncError, TdmsError
from pixbin.fileio import atomic_path, provenance, write_json
from pixbin.params import params_from_dict
from pixbin.spikeglx import SpikeGlxStream, memmap_bin, read_sync_word, stream_info, sync_edges
from pixbin.tdms import ChannelInfo, iter_chunks, read_channel, read_windows, require_channels

__all__ = [
    "SyncParams",
    "EdgeMatch",
    "match_edges",
    "probe_sync_edges",
    "behaviour_sync_edges",
    "check_match",
    "run_sync",
]

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SyncParams:
    """Parameters of the sync stage (all times in seconds).

    Attributes
    ----------
    sync_bit : int
        Bit of the probe SY word carrying the sync square wave.
    behaviour_group, behaviour_channel : str
        TDMS group/channel of the behaviour DAQ's copy of the sync wave.
    tolerance_s : float
        Largest accepted residual of any matched edge after the fit.
    match_window_s : float
        Largest distance between a predicted and a found edge for them to pair while matching.
    min_matched : int
        Fewest matched edges (rising + falling) accepted.
    min_matched_fraction : float
        Fewest matched edges as a fraction of the probe edges expected in the overlap.
    min_margin_edges : int
        The second-best alignment must leave at least this many more expected edges missing than
        the best, else the match is ambiguous and refused. One edge that a shifted alignment
        cannot explain is proof when edges are clean (digital SY, debounced analog); raise it for
        glitchy lines.
    debounce_s : float
        Behaviour-side transition pairs closer than this are dropped as glitches.
    threshold_low, threshold_high : float or None
        Behaviour hysteresis thresholds in the channel's unit; None = from the signal.
    max_drift_ppm : float
        Largest accepted rate difference between the behaviour clock and the probe clock.
    max_extra_stream_edges : int
        Most behaviour edges accepted inside the overlap without a probe partner. The behaviour
        line copies the probe's pulser: it can lose pulses, not invent them, so extra edges mean
        a different signal (e.g. another session's file) or glitches.
    train_within_probe : bool
        Assume the sync pulser runs only while the probe file records (SpikeGLX run and
        recording started and stopped together, as the simulator does): then a behaviour edge
        mapped more than half a period outside the probe file counts against an alignment. Off
        by default, because SpikeGLX's pulser runs for the whole acquisition run (``firstSample``
        > 0 means it ran before the file began); without it a behaviour recording that spans the
        end (or start) of the probe's pulse train can be ambiguous by a whole period.
    first_sample_bounds_train : bool
        When the AP file's ``firstSample`` is 0 the file began with the acquisition run, so the
        pulser (started by the run) cannot have run before it: behaviour edges mapped more than
        ``match_window_s`` before the probe start count against an alignment.
    lf_ap_ratio_tolerance : float
        Relative tolerance on ``imSampRate(AP) / imSampRate(LF) == lf_ap_ratio``.
    lf_ap_ratio : float
        Expected AP/LF rate ratio (12 for NP1.0-type probes).
    refine_with_ap : bool
        When the AP ``.bin`` is available, read short AP windows around each LF edge to time the
        probe edges at AP resolution (12x finer than LF).
    probe_chunk_samples, behaviour_chunk_samples : int
        Streaming chunk sizes (samples) for the SpikeGLX and TDMS readers.
    figure : bool
        Write ``sync_0.png``.
    """

    sync_bit: int = 6
    behaviour_group: str = "NpxlSync_Signal"
    behaviour_channel: str = "0"
    tolerance_s: float = 1e-3
    match_window_s: float = 0.05
    min_matched: int = 10
    min_matched_fraction: float = 0.8
    min_margin_edges: int = 1
    debounce_s: float = 1e-3
    threshold_low: float | None = None
    threshold_high: float | None = None
    max_drift_ppm: float = 200.0
    max_extra_stream_edges: int = 0
    train_within_probe: bool = False
    first_sample_bounds_train: bool = True
    lf_ap_ratio: float = 12.0
    lf_ap_ratio_tolerance: float = 1e-9
    refine_with_ap: bool = True
    probe_chunk_samples: int = 65_536
    behaviour_chunk_samples: int = 1_000_000
    figure: bool = True

    def __post_init__(self) -> None:
        positive = ("tolerance_s", "match_window_s", "max_drift_ppm", "lf_ap_ratio",
                    "probe_chunk_samples", "behaviour_chunk_samples")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"sync parameter {name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.min_matched_fraction <= 1:
            raise ConfigError(
                f"sync parameter min_matched_fraction must be in [0, 1], got {self.min_matched_fraction}"
            )
        if (self.threshold_low is None) != (self.threshold_high is None):
            raise ConfigError("give both threshold_low and threshold_high, or neither")
        if self.threshold_low is not None and not self.threshold_low < self.threshold_high:
            raise ConfigError(
                f"threshold_low ({self.threshold_low}) must be below threshold_high ({self.threshold_high})"
            )
        if self.match_window_s < self.tolerance_s:
            raise ConfigError(
                f"match_window_s ({self.match_window_s}) must be >= tolerance_s ({self.tolerance_s})"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SyncParams:
        """Build from a mapping (e.g. a config section), refusing unknown keys."""
        return params_from_dict(cls, values, what="sync parameter")

    def to_dict(self) -> dict[str, Any]:
        """All parameters as a plain dict."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class EdgeMatch:
    """Result of matching a stream's sync edges to the probe's and fitting the linear map.

    Times are seconds: ``*_probe_s`` on the probe clock, ``*_stream_s`` on the stream's clock.
    ``n_missing`` = edges expected inside the overlap of both recordings but absent (probe edges
    the stream lacks + stream edges the probe lacks, rising and falling); ``margin`` = the
    second-best alignment's ``n_missing`` minus the best's.
    """

    offset_s: float
    rate: float
    falling_minus_rising_s: float
    pairs_stream_s: np.ndarray
    pairs_probe_s: np.ndarray
    pairs_rising: np.ndarray
    residuals_s: np.ndarray
    n_matched: int
    missing_in_stream_s: np.ndarray
    missing_in_probe_s: np.ndarray
    n_expected: int
    overlap_probe_s: tuple[float, float]
    n_missing: int
    second_missing: int | None
    second_offset_s: float | None
    n_candidates: int
    rate_prior: float

    @property
    def margin(self) -> float:
        """Second-best minus best missing-edge count (inf when there was no other candidate)."""
        return math.inf if self.second_missing is None else self.second_missing - self.n_missing

    @property
    def ppm(self) -> float:
        return (self.rate - 1.0) * 1e6

    def clock_map(self, stream: str) -> ClockMap:
        return ClockMap(stream, self.offset_s, self.rate)


def _regular_period(times: np.ndarray) -> float | None:
    """Mean inter-edge interval over the intervals within 2 % of the median, if they dominate."""
    if len(times) < 3:
        return None
    d = np.diff(times)
    med = float(np.median(d))
    if not med > 0:
        return None
    ok = np.abs(d - med) < 0.02 * med
    if ok.sum() < max(2, 0.5 * len(d)):
        return None
    return float(d[ok].sum() / ok.sum())


def _nearest(sorted_ref: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index in ``sorted_ref`` of the nearest element to each value, and the signed distance."""
    j = np.searchsorted(sorted_ref, values)
    j = np.clip(j, 1, len(sorted_ref) - 1) if len(sorted_ref) > 1 else np.zeros_like(j)
    left = sorted_ref[j - 1] if len(sorted_ref) > 1 else sorted_ref[j]
    right = sorted_ref[j]
    use_left = np.abs(values - left) <= np.abs(right - values)
    idx = np.where(use_left, j - 1, j) if len(sorted_ref) > 1 else j
    return idx, sorted_ref[idx] - values


@dataclass
class _Eval:
    offset: float
    rate: float
    delta: float
    score: float
    n_matched: int
    n_expected: int
    n_missing: int = 0
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    missing_stream: list[np.ndarray] = field(default_factory=list)
    missing_probe: list[np.ndarray] = field(default_factory=list)
    overlap: tuple[float, float] = (0.0, 0.0)


def _evaluate(
    offset: float,
    rate: float,
    delta: float,
    probe: dict[str, np.ndarray],
    stream: dict[str, np.ndarray],
    probe_span: tuple[float, float],
    stream_span: tuple[float, float],
    window: float,
    bound_start: float | None = None,
    bound_end: float | None = None,
) -> _Eval:
    """Pair edges under a model; count matched and expected-but-missing edges in the overlap.

    With ``bound_start``/``bound_end`` (the pulse train did not run before the probe's start /
    after its end), unmatched stream edges mapped more than that many seconds before the start /
    after the end also count as missing in the probe.
    """
    lo = max(probe_span[0], offset + rate * stream_span[0]) + window
    hi = min(probe_span[1], offset + rate * stream_span[1]) - window
    ev = _Eval(offset, rate, delta, 0.0, 0, 0, overlap=(lo, hi))
    score = 0.0
    for pol in ("rising", "falling"):
        p, s = probe[pol], stream[pol]
        shift = delta if pol == "falling" else 0.0
        pred = offset + rate * s + shift
        if len(p) and len(s):
            idx, dist = _nearest(p, pred)
            ok = np.abs(dist) < window
            # one-to-one: where several stream edges claim one probe edge keep the closest
            cand = np.flatnonzero(ok)
            order = cand[np.argsort(np.abs(dist[cand]), kind="stable")]
            _, first = np.unique(idx[order], return_index=True)
            keep = np.sort(order[first])
        else:
            keep = np.empty(0, np.int64)
            idx = np.empty(0, np.int64)
        si, pi = keep, idx[keep]
        ev.pairs[pol] = (si, pi)
        in_p = (p >= lo) & (p <= hi)
        in_s = (pred >= lo) & (pred <= hi)
        p_matched = np.zeros(len(p), bool)
        p_matched[pi] = True
        s_matched = np.zeros(len(s), bool)
        s_matched[si] = True
        miss_s = p[in_p & ~p_matched]  # probe edges the stream should have seen
        miss_p = pred[in_s & ~s_matched]  # stream edges the probe should have seen (probe time)
        if bound_start is not None or bound_end is not None:
            out = np.zeros(len(pred), bool)
            if bound_start is not None:
                out |= pred < probe_span[0] - bound_start
            if bound_end is not None:
                out |= pred > probe_span[1] + bound_end
            miss_p = np.sort(np.concatenate([miss_p, pred[out & ~s_matched]]))
        m = int(np.count_nonzero(in_s & s_matched))
        ev.n_matched += len(si)
        ev.n_expected += int(in_p.sum())
        ev.missing_stream.append(miss_s)
        ev.missing_probe.append(miss_p)
        score += m - len(miss_s) - len(miss_p)
        ev.n_missing += len(miss_s) + len(miss_p)
    ev.score = score
    return ev


def _fit(ev: _Eval, probe: dict[str, np.ndarray], stream: dict[str, np.ndarray],
         with_delta: bool) -> tuple[float, float, float]:
    """Least-squares ``t_p = a + r t_s (+ delta if falling)`` over the pairs of ``ev``."""
    ts, tp, fall = [], [], []
    for pol in ("rising", "falling"):
        si, pi = ev.pairs.get(pol, (np.empty(0, int), np.empty(0, int)))
        ts.append(stream[pol][si])
        tp.append(probe[pol][pi])
        fall.append(np.full(len(si), pol == "falling"))
    ts, tp, fall = np.concatenate(ts), np.concatenate(tp), np.concatenate(fall)
    if len(ts) < 2:
        return ev.offset, ev.rate, ev.delta
    use_delta = with_delta and fall.any() and (~fall).any()
    t0 = float(ts.mean())
    cols = [np.ones_like(ts), ts - t0] + ([fall.astype(float)] if use_delta else [])
    A = np.column_stack(cols)
    if len(ts) < A.shape[1] + 1 or np.ptp(ts) <= 0:
        # too few or all at one time: keep the rate, fit the offset only
        a = float(np.mean(tp - ev.rate * ts - np.where(fall, ev.delta, 0.0)))
        return a, ev.rate, ev.delta
    coef, *_ = np.linalg.lstsq(A, tp, rcond=None)
    rate = float(coef[1])
    offset = float(coef[0] - rate * t0)
    delta = float(coef[2]) if use_delta else 0.0
    return offset, rate, delta


def _xcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full cross-correlation ``c[k] = sum_n a[n + k] b[n]``, k = -(len(b)-1) .. len(a)-1, by FFT."""
    n = len(a) + len(b) - 1
    nfft = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(a, nfft) * np.conj(np.fft.rfft(b, nfft)), nfft)
    return np.concatenate([c[nfft - (len(b) - 1):], c[: len(a)]])


def _candidate_offsets(
    p: np.ndarray, s: np.ndarray, rate: float, probe_span: tuple[float, float],
    stream_span: tuple[float, float], window: float, n_best: int,
) -> np.ndarray:
    """Offsets where ``offset + rate * s`` lines up with ``p``, ranked by an overlap-aware score.

    Both edge trains are binned on a grid of ``window / 2`` and cross-correlated by FFT
    (O(M log M), M = session length / grid): for every offset on the grid this counts the edges
    that coincide; edges that fall in the overlap of both recordings without a partner count
    against it. The best ``n_best`` local maxima (at least one window apart) are returned.
    """
    g = window / 2.0
    c = rate * s
    p0, c0 = float(p.min()), float(c.min())
    pb = np.rint((p - p0) / g).astype(np.int64)
    cb = np.rint((c - c0) / g).astype(np.int64)
    P = np.bincount(pb).astype(np.float64)
    C = np.bincount(cb).astype(np.float64)
    Cs = C.copy()  # smear by one bin each side: a pair within ~1.5 bins registers
    Cs[1:] += C[:-1]
    Cs[:-1] += C[1:]
    corr = np.rint(_xcorr(P, Cs))
    lags = np.arange(len(corr)) - (len(Cs) - 1)
    offsets = p0 - c0 + lags * g
    # overlap of the two recordings for each offset, and the edges expected inside it
    lo = np.maximum(probe_span[0], offsets + rate * stream_span[0]) + window
    hi = np.minimum(probe_span[1], offsets + rate * stream_span[1]) - window
    n_p = np.clip(np.searchsorted(p, hi) - np.searchsorted(p, lo), 0, None)
    n_s = np.clip(np.searchsorted(c, hi - offsets) - np.searchsorted(c, lo - offsets), 0, None)
    matched = np.minimum(corr, np.minimum(n_p, n_s))
    score = 3 * matched - n_p - n_s
    score[hi <= lo] = -np.inf
    # local maxima at least one window apart (non-maximum suppression)
    order = np.argsort(-score, kind="stable")
    taken: list[float] = []
    for k in order:
        if not np.isfinite(score[k]) or len(taken) >= n_best:
            break
        a = offsets[k]
        if all(abs(a - t) > window for t in taken):
            taken.append(a)
    return np.asarray(taken)


def match_edges(
    probe: Edges,
    stream: Edges,
    *,
    probe_span_s: tuple[float, float],
    stream_span_s: tuple[float, float],
    params: SyncParams = SyncParams(),
    stream_name: str = BEHAVIOUR_STREAM,
    n_candidates: int = 12,
    train_starts_with_probe: bool = False,
) -> EdgeMatch:
    """Match a stream's sync edges to the probe's and fit ``t_probe = offset + rate * t_stream``.

    Parameters
    ----------
    probe : Edges
        Probe sync edges in probe seconds.
    stream : Edges
        The stream's sync edges in stream seconds.
    probe_span_s, stream_span_s : (float, float)
        The recorded spans (start, end) of each, on its own clock: an edge inside the overlap of
        both that has no partner counts against an alignment.
    params : SyncParams
        ``match_window_s``, ``min_margin_edges``, ``max_drift_ppm``, ``train_within_probe``.
    train_starts_with_probe : bool
        The pulse train cannot have run before the probe start (AP ``firstSample`` = 0).

    Returns
    -------
    EdgeMatch
        The best alignment; its checks against tolerances are the caller's (see :func:`run_sync`).

    Raises
    ------
    SyncError
        No edges, periods that disagree beyond ``max_drift_ppm``, or an ambiguous alignment.

    Notes
    -----
    1. Rate prior: the ratio of the two trains' regular periods (mean of the intervals within 2 %
       of the median, so missing pulses do not bias it); for irregular trains a grid of rates
       within ``±max_drift_ppm``.
    2. Candidate offsets from an FFT cross-correlation of rising edges binned at half the match
       window, scored with the overlap rule (O(M log M)).
    3. Each candidate is refined: pair rising edges, fit offset + rate by least squares, pair
       both polarities, fit offset + rate + falling delay, repeat until the pairs are stable.
    4. Among alignments that pair nearly as many edges as the best-paired one, the one with the
       fewest expected-but-missing edges (both sides, within the overlap, rising and falling)
       wins; the second must have at least ``min_margin_edges`` more.
    """
    window = params.match_window_s
    P = {"rising": np.sort(probe.rising), "falling": np.sort(probe.falling)}
    S = {"rising": np.sort(stream.rising), "falling": np.sort(stream.falling)}
    if len(P["rising"]) < 2:
        raise SyncError(f"probe sync: {len(P['rising'])} rising edge(s); need at least 2")
    if len(S["rising"]) < 2:
        raise SyncError(f"{stream_name} sync: {len(S['rising'])} rising edge(s); need at least 2")

    tp, ts = _regular_period(P["rising"]), _regular_period(S["rising"])
    max_dev = params.max_drift_ppm * 1e-6
    if tp is not None and ts is not None:
        prior = tp / ts
        if abs(prior - 1) > max_dev:
            raise SyncError(
                f"{stream_name} sync: its pulse period is {ts:.6f} s on its clock, the probe's "
                f"{tp:.6f} s: a rate difference of {(prior - 1) * 1e6:.0f} ppm, beyond "
                f"max_drift_ppm={params.max_drift_ppm}; not the same sync signal?"
            )
        rates = [prior]
    else:
        # irregular trains: a grid of rates fine enough that the error over the session < window/4
        span = max(np.ptp(S["rising"]), 1e-9)
        step = window / 4 / span
        n = int(math.ceil(max_dev / step))
        rates = list(1.0 + step * np.arange(-n, n + 1))
        prior = 1.0

    candidates: list[tuple[float, float]] = []
    for r in rates:
        for a in _candidate_offsets(P["rising"], S["rising"], r, probe_span_s, stream_span_s,
                                    window, n_candidates):
            candidates.append((float(a), float(r)))
    if not candidates:
        raise SyncError(
            f"{stream_name} sync: no alignment makes the recordings overlap "
            f"(probe span {probe_span_s}, {stream_name} span {stream_span_s})"
        )

    # a pulse that began before the probe stopped may end after it (up to half a period later);
    # nothing of the train precedes the probe start when the pulser starts with the file
    bound_end = (0.5 * tp if tp is not None else 0.0) + window if params.train_within_probe else None
    bound_start = window if (params.train_within_probe or train_starts_with_probe) else None
    refined: list[_Eval] = []
    for a, r in candidates:
        ev = _evaluate(a, r, 0.0, {"rising": P["rising"], "falling": np.empty(0)},
                       {"rising": S["rising"], "falling": np.empty(0)},
                       probe_span_s, stream_span_s, window)
        a, r, _ = _fit(ev, P, S, with_delta=False)
        delta = 0.0
        previous = None
        for _ in range(6):
            if abs(r - 1) > 2 * max_dev + 1e-3:  # a fit on a handful of pairs went astray
                break
            ev = _evaluate(a, r, delta, P, S, probe_span_s, stream_span_s, window,
                           bound_start, bound_end)
            key = tuple(len(v[0]) for v in ev.pairs.values()) + (round(a / window),)
            a, r, delta = _fit(ev, P, S, with_delta=True)
            if key == previous:
                break
            previous = key
        ev = _evaluate(a, r, delta, P, S, probe_span_s, stream_span_s, window,
                           bound_start, bound_end)
        refined.append(ev)

    # distinct alignments (candidates may converge to the same one)
    refined.sort(key=lambda e: (-e.n_matched, e.n_missing))
    distinct: list[_Eval] = []
    for ev in refined:
        if all(abs(ev.offset - d.offset) > window for d in distinct):
            distinct.append(ev)
    # Viable alignments pair nearly as many edges as the best-paired one (a tiny overlap has
    # few missing edges but proves nothing); among them the fewest missing edges wins. Matched
    # counts are not evidence between whole-period shifts of a periodic train (every shift pairs
    # everything in its overlap): only edges expected in the overlap but absent are.
    most = max(d.n_matched for d in distinct)
    floor = max(min(params.min_matched, most), params.min_matched_fraction * most)
    viable = [d for d in distinct if d.n_matched >= floor]
    viable.sort(key=lambda e: (e.n_missing, -e.n_matched))
    best = viable[0]
    second = viable[1] if len(viable) > 1 else None
    if second is not None and second.n_missing - best.n_missing < params.min_margin_edges:
        raise SyncError(
            f"{stream_name} sync is ambiguous: offset {best.offset:.6f} s leaves {best.n_missing} "
            f"expected edges missing and offset {second.offset:.6f} s {second.n_missing} "
            f"(margin {second.n_missing - best.n_missing} < min_margin_edges="
            f"{params.min_margin_edges}). A periodic pulse aligns equally well at shifts of whole "
            "periods unless the pulse train starts or stops, or pulses are missing, inside the "
            "overlap of both recordings (see train_within_probe in docs/SYNC.md)."
        )

    ts_all, tp_all, rising_all = [], [], []
    for pol in ("rising", "falling"):
        si, pi = best.pairs[pol]
        ts_all.append(S[pol][si])
        tp_all.append(P[pol][pi])
        rising_all.append(np.full(len(si), pol == "rising"))
    ts_all, tp_all, rising_all = map(np.concatenate, (ts_all, tp_all, rising_all))
    order = np.argsort(tp_all, kind="stable")
    ts_all, tp_all, rising_all = ts_all[order], tp_all[order], rising_all[order]
    model = best.offset + best.rate * ts_all + np.where(rising_all, 0.0, best.delta)
    residuals = tp_all - model
    # the map is centred between rising and falling edges (their delays split evenly)
    return EdgeMatch(
        offset_s=best.offset + best.delta / 2,
        rate=best.rate,
        falling_minus_rising_s=best.delta,
        pairs_stream_s=ts_all,
        pairs_probe_s=tp_all,
        pairs_rising=rising_all,
        residuals_s=residuals,
        n_matched=best.n_matched,
        missing_in_stream_s=np.sort(np.concatenate(best.missing_stream)),
        missing_in_probe_s=np.sort(np.concatenate(best.missing_probe)),
        n_expected=best.n_expected,
        overlap_probe_s=best.overlap,
        n_missing=best.n_missing,
        second_missing=None if second is None else second.n_missing,
        second_offset_s=None if second is None else second.offset,
        n_candidates=len(candidates),
        rate_prior=prior,
    )


def check_match(match: EdgeMatch, params: SyncParams = SyncParams()) -> list[str]:
    """Reasons to refuse a match (empty when it passes every check).

    Checks: matched edges >= ``min_matched`` and >= ``min_matched_fraction`` of the probe edges
    expected in the overlap; worst residual <= ``tolerance_s``; ``|ppm| <= max_drift_ppm``;
    stream edges without a probe partner <= ``max_extra_stream_edges``.
    """
    problems = []
    need = max(params.min_matched, int(math.ceil(params.min_matched_fraction * match.n_expected)))
    if match.n_matched < need:
        problems.append(f"{match.n_matched} edges matched, need {need} "
                        f"({params.min_matched} or {params.min_matched_fraction:.0%} of the "
                        f"{match.n_expected} probe edges in the overlap)")
    worst = float(np.abs(match.residuals_s).max()) if len(match.residuals_s) else math.inf
    if worst > params.tolerance_s:
        problems.append(f"worst residual {worst * 1e6:.1f} µs > tolerance "
                        f"{params.tolerance_s * 1e6:.1f} µs")
    if abs(match.ppm) > params.max_drift_ppm:
        problems.append(f"rate difference {match.ppm:.1f} ppm > max_drift_ppm {params.max_drift_ppm}")
    extra = len(match.missing_in_probe_s)
    if extra > params.max_extra_stream_edges:
        shown = ", ".join(f"{t:.3f}" for t in match.missing_in_probe_s[:5])
        problems.append(
            f"{extra} behaviour sync edges inside the overlap have no probe edge (at probe times "
            f"{shown}{' …' if extra > 5 else ''} s; max_extra_stream_edges="
            f"{params.max_extra_stream_edges}): the behaviour line should only lose pulses, so "
            "these are not the same sync signal (another session's file?) or it has glitches"
        )
    return problems


# --------------------------------------------------------------------------- probe edges
@dataclass(frozen=True)
class _ProbeEdges:
    edges_s: Edges  # probe seconds (edge = midpoint between last old-level and first new-level sample)
    lf_map: ClockMap | None
    source: str  # "lf", "lf+ap" (refined with AP windows) or "ap"
    resolution_s: float
    n_refined: int
    n_refine_failed: int
    lf_samples: Edges | None  # integer LF sample indices (first sample at new level)


def _lf_clock_map(ap: SpikeGlxStream, lf: SpikeGlxStream, params: SyncParams) -> tuple[ClockMap, bool]:
    """LF seconds → probe seconds from the metas; returns (map, rates agree)."""
    ratio = ap.rate_hz / lf.rate_hz
    agree = abs(ratio / params.lf_ap_ratio - 1) <= params.lf_ap_ratio_tolerance
    offset = lf.first_sample / lf.rate_hz - ap.first_sample / ap.rate_hz
    return ClockMap(LF_STREAM, offset, 1.0), agree


def _refine_with_ap(
    lf_idx: Edges, ap: SpikeGlxStream, lf_to_ap: tuple[float, float], bit: int, ratio: float
) -> tuple[Edges, int, int]:
    """AP sample index (first at the new level) of each LF edge, from short AP windows.

    ``lf_to_ap = (a, b)``: AP sample ≈ a + b * LF sample. A window of ±2 LF samples around the
    predicted AP position is read (memmap, only those rows). Edges whose window does not hold
    exactly one transition of the right polarity keep NaN.
    """
    mm = memmap_bin(ap.bin_path, ap)
    col = ap.sync_channel
    half = int(math.ceil(2 * ratio)) + 2
    out = {}
    n_ok = n_bad = 0
    for pol, want in (("rising", 1), ("falling", -1)):
        idx = getattr(lf_idx, pol)
        res = np.full(len(idx), np.nan)
        if len(idx):
            centre = np.rint(lf_to_ap[0] + lf_to_ap[1] * (idx - 0.5)).astype(np.int64)
            rows = centre[:, None] + np.arange(-half, half + 1)[None, :]
            valid = (rows[:, 0] >= 0) & (rows[:, -1] < ap.n_samples)
            for k0 in range(0, len(idx), 4096):  # bounded memory
                sl = slice(k0, min(k0 + 4096, len(idx)))
                v = valid[sl]
                if not v.any():
                    continue
                r = rows[sl][v]
                words = np.asarray(mm[r.ravel(), col]).reshape(r.shape).view(np.uint16)
                bits = ((words >> bit) & 1).astype(np.int8)
                d = np.diff(bits, axis=1)
                one = (np.count_nonzero(d, axis=1) == 1) & (np.count_nonzero(d == want, axis=1) == 1)
                pos = np.argmax(d == want, axis=1) + 1
                j = r[np.arange(len(r)), pos].astype(np.float64)
                j[~one] = np.nan
                tgt = np.flatnonzero(v) + k0
                res[tgt] = j
        n_ok += int(np.isfinite(res).sum())
        n_bad += int((~np.isfinite(res)).sum())
        out[pol] = res
    return Edges(out["rising"], out["falling"]), n_ok, n_bad


def probe_sync_edges(
    *,
    ap_meta: str | os.PathLike,
    lf_meta: str | os.PathLike | None,
    lf_bin: str | os.PathLike | None,
    ap_bin: str | os.PathLike | None = None,
    params: SyncParams = SyncParams(),
) -> _ProbeEdges:
    """Probe sync edges in probe seconds, from the LF SY word (refined with AP windows if possible).

    Edge times are the midpoint between the last sample at the old level and the first at the
    new one: ``(index - 0.5) / rate``, the unbiased estimate of a transition known only to lie
    between two samples.
    """
    ap = stream_info(ap_meta, ap_bin)
    if lf_meta is None or lf_bin is None:
        if ap.bin_path is None:
            raise SyncError(f"{ap_meta}: no LF file given and no AP .bin beside the meta; "
                            "cannot read probe sync edges")
        e = sync_edges(ap.bin_path, ap, params.sync_bit, chunk_samples=params.probe_chunk_samples)
        t = Edges((e.rising - 0.5) / ap.rate_hz, (e.falling - 0.5) / ap.rate_hz)
        return _ProbeEdges(t, None, "ap", 1 / ap.rate_hz, 0, 0, None)

    lf = stream_info(lf_meta, lf_bin)
    if lf.kind != "lf":
        raise SyncError(f"{lf_meta}: expected an LF stream, found kind {lf.kind!r}")
    lf_map, agree = _lf_clock_map(ap, lf, params)
    ratio = ap.rate_hz / lf.rate_hz
    have_ap = ap.bin_path is not None
    if not agree and not have_ap:
        raise SyncError(
            f"{lf_meta}: imSampRate {lf.rate_hz!r} Hz; {ap_meta}: imSampRate {ap.rate_hz!r} Hz: "
            f"ratio {ratio!r}, expected {params.lf_ap_ratio} within "
            f"{params.lf_ap_ratio_tolerance}; give the AP .bin (ap_bin) to fit LF→AP from edges"
        )
    e = sync_edges(lf.bin_path, lf, params.sync_bit, chunk_samples=params.probe_chunk_samples)
    log.info("%s: %d rising, %d falling sync edges (bit %d)", lf.bin_path, len(e.rising),
             len(e.falling), params.sync_bit)
    lf_edges_s = Edges(lf_map.samples_to_probe(e.rising - 0.5, lf.rate_hz),
                       lf_map.samples_to_probe(e.falling - 0.5, lf.rate_hz))
    if not (have_ap and (params.refine_with_ap or not agree)):
        return _ProbeEdges(lf_edges_s, lf_map, "lf", 1 / lf.rate_hz, 0, 0, e)

    # AP sample of LF sample k: (k + lf_first/ratio... ) = ratio * k + (ratio * lf_first - ap_first)
    a0 = ratio * lf.first_sample - ap.first_sample
    ap_idx, n_ok, n_bad = _refine_with_ap(e, ap, (a0, ratio), params.sync_bit, ratio)
    if n_ok < 2:
        if not agree:
            raise SyncError(
                f"{ap.bin_path}: found {n_ok} of {len(e)} LF sync edges in the AP file; cannot fit "
                "LF→AP (are these files from the same recording?)"
            )
        log.warning("%s: AP windows held %d of %d LF edges; keeping LF timing", ap.bin_path, n_ok,
                    len(e))
        return _ProbeEdges(lf_edges_s, lf_map, "lf", 1 / lf.rate_hz, 0, len(e), e)
    if not agree:
        # fit LF seconds → AP seconds on the paired edges (AP first-sample times vs LF ones)
        # edge times as sample midpoints on both sides (unbiased for a transition between samples)
        lf_t = (np.concatenate([e.rising, e.falling]) - 0.5) / lf.rate_hz
        ap_t = (np.concatenate([ap_idx.rising, ap_idx.falling]) - 0.5) / ap.rate_hz
        ok = np.isfinite(ap_t)
        coef = np.polyfit(lf_t[ok] - lf_t[ok].mean(), ap_t[ok], 1)
        rate = float(coef[0])
        offset = float(coef[1] - rate * lf_t[ok].mean())
        lf_map = ClockMap(LF_STREAM, offset, rate)
        log.warning("%s vs %s: rates disagree (ratio %r); LF→AP fitted from %d edges: "
                    "offset %.6f s, %.3f ppm", lf_meta, ap_meta, ratio, int(ok.sum()), offset,
                    lf_map.ppm)
        lf_edges_s = Edges(lf_map.samples_to_probe(e.rising - 0.5, lf.rate_hz),
                           lf_map.samples_to_probe(e.falling - 0.5, lf.rate_hz))
    rising = np.where(np.isfinite(ap_idx.rising), (ap_idx.rising - 0.5) / ap.rate_hz, lf_edges_s.rising)
    falling = np.where(np.isfinite(ap_idx.falling), (ap_idx.falling - 0.5) / ap.rate_hz,
                       lf_edges_s.falling)
    if n_bad:
        log.warning("%s: %d LF sync edges had no clean AP transition nearby; kept at LF timing",
                    ap.bin_path, n_bad)
    return _ProbeEdges(Edges(rising, falling), lf_map, "lf+ap", 1 / ap.rate_hz, n_ok, n_bad, e)


# ------------------------------------------------------------------------ behaviour edges
@dataclass(frozen=True)
class _BehaviourEdges:
    edges_s: Edges  # behaviour seconds (sample * wf_increment)
    info: ChannelInfo
    low: float
    high: float
    key: str


def _behaviour_thresholds(path: Path, info: ChannelInfo, params: SyncParams) -> tuple[float, float]:
    if params.threshold_low is not None:
        return float(params.threshold_low), float(params.threshold_high)
    # robust extremes from 16 windows of 2.5 s spread across the file
    n = info.n_samples
    w = max(1, int(round(2.5 * info.rate_hz)))
    starts = np.unique(np.linspace(0, max(0, n - w), 16).astype(np.int64))
    sample = np.concatenate(read_windows(path, info.group, info.channel,
                                         [(int(s), int(s) + w) for s in starts]))
    where = f"{path} channel {info.group}/{info.channel}"
    try:
        low, high = auto_thresholds(sample, percentiles=(0.5, 99.5))
    except ValueError as exc:
        raise SyncError(f"{where}: no sync pulses ({exc})") from None
    between = float(np.mean((sample > low) & (sample < high)))
    if between > 0.2:
        raise SyncError(
            f"{where}: does not look like a TTL signal: {between:.0%} of samples lie between "
            f"the thresholds {low:.3g} and {high:.3g} (expected < 20 %); noise only, no pulses?"
        )
    return low, high


def behaviour_sync_edges(
    behaviour_tdms: str | os.PathLike, params: SyncParams = SyncParams()
) -> _BehaviourEdges:
    """Sync edges of the behaviour TDMS, streamed, with sub-sample interpolation (behaviour s)."""
    path = Path(behaviour_tdms)
    key = params.behaviour_group if params.behaviour_channel == "0" else (
        f"{params.behaviour_group}/{params.behaviour_channel}")
    try:
        info = require_channels(path, [key], same_length=False)[key]
    except TdmsError:
        # the group may hold several channels (key "group/channel")
        alt = f"{params.behaviour_group}/{params.behaviour_channel}"
        info = require_channels(path, [alt], same_length=False)[alt]
        key = alt
    if info.n_samples < 2:
        raise SyncError(f"{path} channel {key}: {info.n_samples} samples; no sync to read")
    low, high = _behaviour_thresholds(path, info, params)
    det = EdgeDetector(low=low, high=high,
                       min_interval_samples=params.debounce_s * info.rate_hz, interpolate=True)
    group = key if "/" in key else info.group
    for start, chunk in iter_chunks(path, [group], chunk_samples=params.behaviour_chunk_samples,
                                    channel=info.channel):
        det.feed(chunk[group], start)
    e = det.result()
    inc = 1.0 / info.rate_hz
    log.info("%s %s: %d rising, %d falling sync edges (thresholds %.3g/%.3g)", path, key,
             len(e.rising), len(e.falling), low, high)
    return _BehaviourEdges(Edges(e.rising * inc, e.falling * inc), info, low, high, key)


# ---------------------------------------------------------------------------------- figure
def _envelope(t: np.ndarray, y: np.ndarray, n_bins: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Min/max per bin of a long trace (what a plot at screen resolution shows), for speed."""
    m = len(y) // n_bins
    if m < 4:
        return t, y
    k = m * n_bins
    yb = y[:k].reshape(n_bins, m)
    tb = t[:k].reshape(n_bins, m)
    tt = np.repeat(tb[:, 0], 2)
    yy = np.column_stack([yb.min(axis=1), yb.max(axis=1)]).ravel()
    return tt, yy


def _figure(path: Path, *, match: EdgeMatch | None, bmap: ClockMap | None, probe: _ProbeEdges,
            lf: SpikeGlxStream | None, ap: SpikeGlxStream, beh: _BehaviourEdges,
            title: str, tolerance_s: float, sync_bit: int = 6) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(3, 3, height_ratios=[1, 1, 1.1], left=0.06, right=0.98, bottom=0.06,
                          top=0.9, hspace=0.45, wspace=0.2)
    fig.suptitle(title, fontsize=10, wrap=True)
    if match is not None and bmap is not None and len(match.pairs_probe_s):
        tp = match.pairs_probe_s
        rising_t = tp[match.pairs_rising]
        picks = [rising_t[0], rising_t[len(rising_t) // 2], rising_t[-1]] if len(rising_t) else []
    else:
        picks = []
    labels = ("start", "middle", "end")
    coarse = lf if (lf is not None and lf.bin_path is not None) else ap
    fine = ap if (probe.source in ("lf+ap", "ap") and ap.bin_path is not None) else coarse
    for col, (label, t_edge) in enumerate(zip(labels, picks)):
        for row, half_width in ((0, 1.5), (1, 0.0015)):
            ax = fig.add_subplot(gs[row, col])
            t0, t1 = t_edge - half_width, t_edge + half_width
            # probe SY bit over the window (the zoom from the AP file when edges were timed on it)
            src = coarse if row == 0 else fine
            sc = 1.0 if row == 0 else 1000.0  # s or ms on the x axis
            pmap = probe.lf_map if (src is lf and probe.lf_map is not None) else ClockMap.identity()
            s0 = int(math.floor(pmap.from_probe(t0) * src.rate_hz)) - 1
            s1 = int(math.ceil(pmap.from_probe(t1) * src.rate_hz)) + 2
            words = read_sync_word(src.bin_path, src, s0, s1)
            if len(words):
                k = np.arange(max(0, s0), max(0, s0) + len(words))
                bit = (words.view(np.uint16) >> sync_bit) & 1
                ax.step((pmap.samples_to_probe(k, src.rate_hz) - t_edge) * sc, bit, where="mid",
                        color="C0", lw=1.2, label=f"probe SY bit ({src.kind.upper()})")
            # behaviour sync over the window
            b0 = int(math.floor(bmap.from_probe(t0) * beh.info.rate_hz)) - 1
            b1 = int(math.ceil(bmap.from_probe(t1) * beh.info.rate_hz)) + 2
            b0c, b1c = max(0, b0), min(beh.info.n_samples, b1)
            if b1c > b0c:
                x = read_channel(beh.info.path, beh.info.group, beh.info.channel, b0c, b1c)
                lo, hi = beh.low - (beh.high - beh.low) * 0.75, beh.high + (beh.high - beh.low) * 0.75
                y = (x - lo) / (hi - lo)
                tb = bmap.samples_to_probe(np.arange(b0c, b1c), beh.info.rate_hz) - t_edge
                tb, y = _envelope(tb * sc, y)
                ax.plot(tb, y, color="C1", lw=0.8, marker="." if row else None, ms=2,
                        label="behaviour sync (scaled)")
            ax.set_xlim(-half_width * sc, half_width * sc)
            ax.set_ylim(-0.25, 1.25)
            if row == 0:
                ax.set_title(f"{label}: rising edge at {t_edge:.3f} s (probe)", fontsize=9)
                ax.set_xlabel("s from edge")
            else:
                ax.set_xlabel(f"ms from edge (probe bit from the {src.kind.upper()} file)")
            if col == 0 and row == 0:
                ax.legend(loc="upper right", fontsize=7)
    ax = fig.add_subplot(gs[2, :])
    if match is not None and len(match.residuals_s):
        r_us = match.residuals_s * 1e6
        rise = match.pairs_rising
        ax.plot(match.pairs_probe_s[rise], r_us[rise], ".", ms=2, color="C0", label="rising")
        ax.plot(match.pairs_probe_s[~rise], r_us[~rise], ".", ms=2, color="C3", label="falling")
        for t in match.missing_in_stream_s:
            ax.axvline(t, color="0.5", lw=0.6, ls=":")
        lim = max(np.abs(r_us).max() * 1.2, 1.0)
        if lim > tolerance_s * 1e6 * 0.5:
            ax.axhline(tolerance_s * 1e6, color="r", lw=0.8)
            ax.axhline(-tolerance_s * 1e6, color="r", lw=0.8)
        ax.set_ylim(-lim, lim)
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    ax.set_xlabel("probe time (s)")
    ax.set_ylabel("residual (µs)")
    ax.set_title(f"residuals of matched edges after the fit (tolerance ±{tolerance_s * 1e6:.0f} µs; "
                 "dotted: probe edges missing in behaviour)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


# ---------------------------------------------------------------------------------- stage
def _stats_us(x: np.ndarray) -> dict[str, float | None]:
    if not len(x):
        return {"median": None, "max": None, "rms": None}
    a = np.abs(x) * 1e6
    return {"median": float(np.median(a)), "max": float(a.max()), "rms": float(np.sqrt(np.mean(a**2)))}


def run_sync(
    *,
    ap_meta: str | os.PathLike,
    lf_meta: str | os.PathLike | None,
    lf_bin: str | os.PathLike | None,
    behaviour_tdms: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: SyncParams = SyncParams(),
    ap_bin: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Sync stage: fit the behaviour → probe clock map and write ``sync.json``, ``lag.json``,
    ``sync_0.png`` into ``out_dir``.

    Parameters
    ----------
    ap_meta : path-like
        imec0 AP ``.meta`` (defines the probe clock and its duration).
    lf_meta, lf_bin : path-like or None
        imec0 LF files; the sync edges are read from the LF SY word. With both None, from the
        AP ``.bin`` (12× more I/O).
    behaviour_tdms : path-like
        Behaviour TDMS holding ``params.behaviour_group``.
    out_dir : path-like
        The session's processed folder.
    params : SyncParams
    ap_bin : path-like, optional
        AP ``.bin``; default the one beside ``ap_meta`` if present. Used for the sample count and
        to time probe edges at AP resolution (short windows only).

    Returns
    -------
    dict
        The summary written to ``sync.json``.

    Raises
    ------
    SyncError
        When the edges cannot be matched unambiguously or the fit is outside tolerance; then
        ``sync.json`` says ``"pass": false`` with the reason, and no ``lag.json`` is left.
    MetaError, TdmsError
        When an input file is missing or malformed (the same record is written first, except
        for an unreadable AP meta, which defines the probe clock itself).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = layout.Processed(out_dir)
    sync_path, lag_path, fig_path = files.sync_json, files.lag_json, files.sync_figure(0)
    ap = stream_info(ap_meta, ap_bin)
    probe_duration = ap.duration_s
    summary: dict[str, Any] = {
        "pass": False,
        "reason": None,
        "clock": f"{PROBE_STREAM}: seconds, AP sample / imSampRate ({ap.rate_hz!r} Hz), sample 0 = 0 s",
        "probe": {
            "ap_meta": str(ap.meta_path), "ap_bin": None if ap.bin_path is None else str(ap.bin_path),
            "ap_rate_hz": ap.rate_hz, "ap_n_samples": ap.n_samples,
            "ap_n_samples_from": ap.n_samples_from, "duration_s": probe_duration,
            "lf_meta": None if lf_meta is None else str(lf_meta),
            "lf_bin": None if lf_bin is None else str(lf_bin),
        },
        "inputs": {"behaviour_tdms": str(behaviour_tdms)},
        "streams": {PROBE_STREAM: {**ClockMap.identity().to_dict(), "pass": True}},
        "camera": "camera frame TTLs (CamFrames) are sampled by the behaviour DAQ: map them with "
                  "the 'behaviour' clock map",
        "parameters": params.to_dict(),
        "provenance": provenance(params.to_dict()),
    }
    match: EdgeMatch | None = None
    bmap: ClockMap | None = None
    probe = beh = lf = None
    try:
        probe = probe_sync_edges(ap_meta=ap_meta, lf_meta=lf_meta, lf_bin=lf_bin,
                                 ap_bin=ap.bin_path, params=params)
        lf = stream_info(lf_meta, lf_bin) if (lf_meta is not None and lf_bin is not None) else None
        summary["probe"].update({
            "edge_source": probe.source, "edge_resolution_s": probe.resolution_s,
            "n_rising": int(len(probe.edges_s.rising)), "n_falling": int(len(probe.edges_s.falling)),
            "n_refined_with_ap": probe.n_refined, "n_refine_failed": probe.n_refine_failed,
        })
        if probe.lf_map is not None and lf is not None:
            summary["streams"][LF_STREAM] = {
                **probe.lf_map.to_dict(), "pass": True, "lf_rate_hz": lf.rate_hz,
                "lf_n_samples": lf.n_samples, "ap_lf_rate_ratio": ap.rate_hz / lf.rate_hz,
                "source": "meta" if probe.lf_map.rate == 1.0 else "edges",
                "first_sample": {"ap": ap.first_sample, "lf": lf.first_sample},
            }
        beh = behaviour_sync_edges(behaviour_tdms, params)
        beh_duration = beh.info.n_samples / beh.info.rate_hz
        entry: dict[str, Any] = {
            "file": str(behaviour_tdms), "channel": beh.key,
            "rate_hz_nominal": beh.info.rate_hz, "n_samples": beh.info.n_samples,
            "thresholds": [beh.low, beh.high],
            "n_edges": {"probe": {"rising": int(len(probe.edges_s.rising)),
                                  "falling": int(len(probe.edges_s.falling))},
                        "behaviour": {"rising": int(len(beh.edges_s.rising)),
                                      "falling": int(len(beh.edges_s.falling))}},
            "tolerance_us": params.tolerance_s * 1e6,
            "pass": False,
        }
        summary["streams"][BEHAVIOUR_STREAM] = entry
        if len(beh.edges_s.rising) < 2:
            raise SyncError(f"{behaviour_tdms} channel {beh.key}: {len(beh.edges_s.rising)} rising "
                            "sync edge(s); no sync pulses recorded")
        if len(probe.edges_s.rising) < 2:
            raise SyncError(f"{lf_bin or ap.bin_path}: {len(probe.edges_s.rising)} rising sync edge(s) "
                            f"on bit {params.sync_bit}; no sync pulses recorded")
        starts_with_probe = params.first_sample_bounds_train and ap.first_sample == 0
        summary["probe"]["train_starts_with_probe"] = starts_with_probe
        match = match_edges(probe.edges_s, beh.edges_s, probe_span_s=(0.0, probe_duration),
                            stream_span_s=(0.0, beh_duration), params=params,
                            train_starts_with_probe=starts_with_probe)
        bmap = match.clock_map(BEHAVIOUR_STREAM)
        res = _stats_us(match.residuals_s)
        need = max(params.min_matched, int(math.ceil(params.min_matched_fraction * match.n_expected)))
        entry.update({
            **bmap.to_dict(),
            "rate_hz_measured": beh.info.rate_hz / bmap.rate,
            "falling_minus_rising_us": match.falling_minus_rising_s * 1e6,
            "matched": match.n_matched, "expected_in_overlap": match.n_expected,
            "min_matched_required": need,
            "missing": {"in_behaviour": int(len(match.missing_in_stream_s)),
                        "in_probe": int(len(match.missing_in_probe_s)),
                        "in_behaviour_probe_s": match.missing_in_stream_s,
                        "in_probe_probe_s": match.missing_in_probe_s},
            "overlap_probe_s": list(match.overlap_probe_s),
            "residual_us": res,
            "n_missing": match.n_missing, "second_missing": match.second_missing,
            "second_offset_s": match.second_offset_s, "margin": match.margin,
            "rate_prior": match.rate_prior, "n_candidates": match.n_candidates,
            "pairs": {"behaviour_s": match.pairs_stream_s, "probe_s": match.pairs_probe_s,
                      "rising": match.pairs_rising.astype(int)},
        })
        problems = check_match(match, params)
        if problems:
            raise SyncError(f"{behaviour_tdms} vs {lf_bin or ap.bin_path}: " + "; ".join(problems))
        entry["pass"] = True
        # lag.json: the lab's integer-ms overhangs of the behaviour recording
        start_probe = float(bmap.to_probe(0.0))
        end_probe = float(bmap.to_probe(beh.info.n_samples / beh.info.rate_hz))
        lag = {"lag_start": int(round(-start_probe * 1000)),
               "lag_end": int(round((end_probe - probe_duration) * 1000))}
        summary["lag"] = lag
        summary["behaviour_span_probe_s"] = [start_probe, end_probe]
        summary["pass"] = True
    except (SyncError, MetaError, TdmsError) as exc:
        summary["reason"] = str(exc)
        summary["duration_s"] = time.perf_counter() - t_start
        if lag_path.exists():
            lag_path.unlink()  # a stale lag.json must not pass for this run's result
        write_json(sync_path, summary)
        if params.figure and match is not None and probe is not None and beh is not None:
            try:
                _figure(fig_path, match=match, bmap=bmap, probe=probe, lf=lf, ap=ap, beh=beh,
                        title=f"SYNC FAILED: {exc}"[:300], tolerance_s=params.tolerance_s,
                        sync_bit=params.sync_bit)
            except Exception:  # the figure must not hide the real error
                log.exception("could not draw %s", fig_path)
        log.error("sync failed: %s", exc)
        raise

    bentry = summary["streams"][BEHAVIOUR_STREAM]
    if params.figure:
        title = (f"PASS  behaviour → probe: offset {bmap.offset_s:+.6f} s, {bmap.ppm:+.3f} ppm; "
                 f"lag_start {summary['lag']['lag_start']} ms, lag_end {summary['lag']['lag_end']} ms\n"
                 f"{match.n_matched} edges matched, {len(match.missing_in_stream_s)} missing in "
                 f"behaviour, {len(match.missing_in_probe_s)} in probe; residual median "
                 f"{bentry['residual_us']['median']:.1f} µs, max {bentry['residual_us']['max']:.1f} µs "
                 f"(probe edges from {probe.source.upper()})")
        _figure(fig_path, match=match, bmap=bmap, probe=probe, lf=lf, ap=ap, beh=beh, title=title,
                tolerance_s=params.tolerance_s, sync_bit=params.sync_bit)
    summary["duration_s"] = time.perf_counter() - t_start
    write_json(lag_path, [summary["lag"]])
    write_json(sync_path, summary)
    log.info("sync: offset %.6f s, %.3f ppm, %d matched, residual max %.1f µs -> %s",
             bmap.offset_s, bmap.ppm, match.n_matched, bentry["residual_us"]["max"], out_dir)
    return summary
