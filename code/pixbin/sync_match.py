"""Matching a stream's sync edges to the probe's: alignment search, linear fit and QC checks.

:func:`match_edges` finds the alignment of two sync pulse trains (rate prior, FFT candidate
offsets, refinement, refusal of ambiguous alignments) and fits ``t_probe = offset + rate *
t_stream``; :func:`check_match` lists the reasons to refuse its result. docs/SYNC.md explains the
matching, and why alignments whole periods apart that differ only in which pulses the stream lost
cannot be told apart (§3, "Decision").

A stream that paused and restarted (its sample count going on as if no time passed) pairs in
runs under different offsets: :func:`match_segments` splits its edges into such segments, places
each with :func:`match_edges` (a segment that cannot be placed unambiguously is refused) and fits
one shared rate with an offset per segment (docs/SYNC.md §4, "Pauses").
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pixbin.clock import BEHAVIOUR_STREAM, ClockMap, PiecewiseClockMap
from pixbin.edges import Edges
from pixbin.errors import SyncError
from pixbin.sync import SyncParams

__all__ = ["EdgeMatch", "SegmentedMatch", "match_edges", "match_segments", "check_match",
           "check_segments"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeMatch:
    """Result of matching a stream's sync edges to the probe's and fitting the linear map.

    Times are seconds: ``*_probe_s`` on the probe clock, ``*_stream_s`` on the stream's clock.
    ``n_missing`` = edges expected inside the overlap of both recordings but absent (probe edges
    the stream lacks + stream edges the probe lacks, rising and falling); ``margin`` = the
    second-best alignment's ``n_missing`` minus the best's.

    Of ``n_missing``: ``n_missing_at_ends`` lie in a run of missing edges that reaches an end of
    the overlap (before its first matched edge or after its last: a lost first/last pulse, a
    recording starting or stopping a little earlier or later); ``n_outside_train`` are stream
    edges mapped where the train cannot be (before the probe start / after its end, when the
    train is known to start / stop with the probe); the rest, :attr:`n_missing_interior`, lie between matched
    edges.

    ``decided_by`` says what singled the alignment out: ``"only candidate"`` (no other viable
    alignment), ``"proof"`` (every other viable alignment maps at least ``min_margin_edges``
    more stream edges where the probe has none or where the train cannot be), ``"fewest
    missing"`` (some other alignment, listed in ``unproven_offsets_s``, differs only in which
    pulses the stream must have lost: chosen because it needs fewer lost, which is wrong when the
    stream really lost them, e.g. its first pulse) or ``"shift_periods"`` (chosen by the caller).
    ``period_s`` is the probe's sync period (None for an irregular train).
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
    n_missing_at_ends: int = 0
    n_outside_train: int = 0
    decided_by: str = "fewest missing"
    unproven_offsets_s: tuple[float, ...] = ()
    period_s: float | None = None

    @property
    def n_missing_interior(self) -> int:
        """Missing edges between matched edges of the overlap (neither at its ends nor outside
        the train)."""
        return self.n_missing - self.n_missing_at_ends - self.n_outside_train

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
    n_missing_probe: int = 0  # stream edges the probe lacks (inside the overlap or the bounds)
    n_at_ends: int = 0  # missing edges before the first / after the last matched one
    n_outside: int = 0  # stream edges mapped where the train cannot be
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
    after the end also count as missing in the probe. Missing edges before the first or after the
    last matched edge of the overlap (both polarities) are counted in ``n_at_ends``.
    """
    lo = max(probe_span[0], offset + rate * stream_span[0]) + window
    hi = min(probe_span[1], offset + rate * stream_span[1]) - window
    ev = _Eval(offset, rate, delta, 0.0, 0, 0, overlap=(lo, hi))
    score = 0.0
    matched_t: list[np.ndarray] = []  # times of matched probe edges inside the overlap
    missing_t: list[np.ndarray] = []  # times of missing edges inside the overlap
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
        matched_t.append(p[in_p & p_matched])
        missing_t += [miss_s, miss_p]
        if bound_start is not None or bound_end is not None:
            out = np.zeros(len(pred), bool)
            if bound_start is not None:
                out |= pred < probe_span[0] - bound_start
            if bound_end is not None:
                out |= pred > probe_span[1] + bound_end
            ev.n_outside += int(np.count_nonzero(out & ~s_matched))
            miss_p = np.sort(np.concatenate([miss_p, pred[out & ~s_matched]]))
        m = int(np.count_nonzero(in_s & s_matched))
        ev.n_matched += len(si)
        ev.n_expected += int(in_p.sum())
        ev.missing_stream.append(miss_s)
        ev.missing_probe.append(miss_p)
        score += m - len(miss_s) - len(miss_p)
        ev.n_missing += len(miss_s) + len(miss_p)
        ev.n_missing_probe += len(miss_p)
    ev.score = score
    ok, miss = np.concatenate(matched_t), np.concatenate(missing_t)
    ev.n_at_ends = (int(np.count_nonzero((miss < ok.min()) | (miss > ok.max()))) if len(ok)
                    else len(miss))
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
    stream_span: tuple[float, float], window: float, n_best: int, by_matched: bool = False,
    within: tuple[float, float] | None = None,
) -> np.ndarray:
    """Offsets where ``offset + rate * s`` lines up with ``p``, ranked by an overlap-aware score
    (``by_matched``: by the coinciding edges alone), only inside ``within`` if given.

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
    score = matched if by_matched else 3 * matched - n_p - n_s
    score[hi <= lo] = -np.inf
    if within is not None:
        score[(offsets < within[0]) | (offsets > within[1])] = -np.inf
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
    offset_range_s: tuple[float, float] | None = None,
    require_proof: bool = False,
    shift_periods: int | None = None,
    ways_out: str | None = None,
    search_in_range: bool = False,
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
    offset_range_s : (float, float), optional
        Only alignments whose offset lies in this range are considered (known a priori, e.g.
        two probes of one run: :mod:`pixbin.sync_probes`); its centre is always a candidate.
    require_proof : bool
        Refuse (SyncError, "ambiguous") unless every other viable alignment is ruled out by proof:
        at least ``min_margin_edges`` more stream edges where the probe has none or where the
        train cannot be. Default False: an alignment that only needs fewer lost stream pulses
        wins (``decided_by="fewest missing"``), which is wrong when the stream really lost them
        (e.g. its first pulse, docs/SYNC.md §3).
    shift_periods : int, optional
        Take the alignment this many probe sync periods from the one with the fewest missing
        edges (+1: stream times map one period later on the probe clock, ``lag_start`` one
        period smaller), whatever the ambiguity; the ambiguity refusal lists each candidate's
        ``shift_periods``. Periodic trains only.
    ways_out : str, optional
        The ways out an ambiguity refusal lists (default: the config keys of a whole recording).
    search_in_range : bool
        Look for candidate offsets only inside ``offset_range_s`` (a range of many periods: a
        segment of a paused recording), not just keep those that fall in it.

    Returns
    -------
    EdgeMatch
        The best alignment; its checks against tolerances are the caller's (see
        :func:`pixbin.sync.run_sync`).

    Raises
    ------
    SyncError
        No edges, periods that disagree beyond ``max_drift_ppm``, or an ambiguous alignment (the
        message names the competing offsets and the ways out).

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
       wins; the second must have at least ``min_margin_edges`` more. Whether the others are
       ruled out by proof or only by needing more lost stream pulses is ``decided_by``.
    """
    window = params.match_window_s
    P = {"rising": np.sort(probe.rising), "falling": np.sort(probe.falling)}
    S = {"rising": np.sort(stream.rising), "falling": np.sort(stream.falling)}
    if len(P["rising"]) < 2:
        raise SyncError(f"probe sync: {len(P['rising'])} rising edge(s); need at least 2")
    if len(S["rising"]) < 2:
        raise SyncError(f"{stream_name} sync: {len(S['rising'])} rising edge(s); need at least 2")

    max_dev = params.max_drift_ppm * 1e-6
    tp, prior, rates = _rate_prior(P["rising"], S["rising"], window, max_dev, params, stream_name)
    candidates = _candidates(P["rising"], S["rising"], rates, probe_span_s, stream_span_s,
                             window, n_candidates, stream_name,
                             within=offset_range_s if search_in_range else None)
    if offset_range_s is not None:
        lo, hi = offset_range_s
        candidates = [((lo + hi) / 2, r) for r in rates] + [c for c in candidates if lo <= c[0] <= hi]

    # a pulse that began before the probe stopped may end after it (up to half a period later);
    # nothing of the train precedes the probe start when the pulser starts with the file
    bound_end = (0.5 * tp if tp is not None else 0.0) + window if params.train_within_probe else None
    bound_start = window if (params.train_within_probe or train_starts_with_probe) else None
    refined = [_refine(a, r, P, S, probe_span_s, stream_span_s, window, max_dev,
                       bound_start, bound_end) for a, r in candidates]
    if offset_range_s is not None:
        refined = [e for e in refined if offset_range_s[0] <= e.offset <= offset_range_s[1]]
        if not refined:
            raise SyncError(f"{stream_name} sync: no alignment with an offset in "
                            f"[{offset_range_s[0]:.3f}, {offset_range_s[1]:.3f}] s pairs the edges")

    def refine_at(a: float, r: float) -> _Eval:
        return _refine(a, r, P, S, probe_span_s, stream_span_s, window, max_dev, bound_start,
                       bound_end)

    best, second, decided_by, unproven = _best_alignment(
        refined, window, params, stream_name, period=tp, require_proof=require_proof,
        shift_periods=shift_periods, refine_at=refine_at, ways_out=ways_out or _ways_out())
    return _edge_match(best, second, P, S, n_candidates=len(candidates), rate_prior=prior,
                       decided_by=decided_by, unproven=unproven, period=tp)


def _rate_prior(
    probe_rising: np.ndarray, stream_rising: np.ndarray, window: float, max_dev: float,
    params: SyncParams, stream_name: str,
) -> tuple[float | None, float, list[float]]:
    """(probe period or None, rate prior, rates to try): the ratio of the regular periods, or
    for irregular trains a grid of rates within ``±max_dev``."""
    tp, ts = _regular_period(probe_rising), _regular_period(stream_rising)
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
        span = max(np.ptp(stream_rising), 1e-9)
        step = window / 4 / span
        n = int(math.ceil(max_dev / step))
        rates = list(1.0 + step * np.arange(-n, n + 1))
        prior = 1.0
    return tp, prior, rates


def _candidates(
    probe_rising: np.ndarray, stream_rising: np.ndarray, rates: list[float],
    probe_span_s: tuple[float, float], stream_span_s: tuple[float, float], window: float,
    n_candidates: int, stream_name: str, by_matched: bool = False,
    within: tuple[float, float] | None = None,
) -> list[tuple[float, float]]:
    """Candidate (offset, rate) pairs: the best offsets for each rate to try."""
    candidates: list[tuple[float, float]] = []
    for r in rates:
        for a in _candidate_offsets(probe_rising, stream_rising, r, probe_span_s, stream_span_s,
                                    window, n_candidates, by_matched, within):
            candidates.append((float(a), float(r)))
    if not candidates:
        raise SyncError(
            f"{stream_name} sync: no alignment makes the recordings overlap "
            f"(probe span {probe_span_s}, {stream_name} span {stream_span_s})"
        )
    return candidates


def _refine(
    a: float, r: float, P: dict[str, np.ndarray], S: dict[str, np.ndarray],
    probe_span_s: tuple[float, float], stream_span_s: tuple[float, float], window: float,
    max_dev: float, bound_start: float | None, bound_end: float | None,
) -> _Eval:
    """Refine one candidate: pair rising edges and fit offset + rate, then pair both polarities
    and fit offset + rate + falling delay until the pairs are stable; the final evaluation."""
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
    return _evaluate(a, r, delta, P, S, probe_span_s, stream_span_s, window,
                     bound_start, bound_end)


def _best_alignment(
    refined: list[_Eval], window: float, params: SyncParams, stream_name: str, *,
    period: float | None = None, require_proof: bool = False, shift_periods: int | None = None,
    refine_at: Callable[[float, float], _Eval] | None = None, ways_out: str = "",
) -> tuple[_Eval, _Eval | None, str, list[_Eval]]:
    """The chosen and the second-best distinct viable alignments, what decided (``decided_by``
    of :class:`EdgeMatch`) and the viable alignments not ruled out by proof; refuses an
    ambiguous match."""
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
    if shift_periods is not None:
        chosen = _shifted(best, distinct, shift_periods, period, stream_name, refine_at)
        if chosen is not best:
            second = best
        return chosen, second, "shift_periods", []
    if second is not None and second.n_missing - best.n_missing < params.min_margin_edges:
        raise SyncError(
            f"{stream_name} sync is ambiguous: {_listing([best, second], best, period)} "
            f"(margin {second.n_missing - best.n_missing} < min_margin_edges="
            f"{params.min_margin_edges}). A periodic pulse aligns equally well at shifts of whole "
            "periods unless the pulse train starts or stops, or pulses are missing, inside the "
            "overlap of both recordings (see train_within_probe in docs/SYNC.md). "
            + ways_out
        )
    # Proof against an alignment: stream edges mapped where the probe has none (it loses no
    # pulse) or where the train cannot be. Probe edges the stream lacks are not proof: the stream
    # line loses pulses, its first and last ones included, so alignments whole periods apart that
    # differ only there (which pulses the stream lost) cannot be told apart by the data.
    unproven = [v for v in viable[1:]
                if v.n_missing_probe - best.n_missing_probe < params.min_margin_edges]
    if not unproven:
        return best, second, "proof" if second is not None else "only candidate", []
    if require_proof:
        raise SyncError(
            f"{stream_name} sync is ambiguous: {_listing([best, *unproven], best, period)} all "
            f"fit. They differ only in which pulses the {stream_name} must have lost (missing "
            "edges at the ends of an overlap are a lost first/last pulse or a recording starting "
            f"or stopping a little earlier or later); none maps {stream_name} edges where the "
            "probe has none or where the train cannot be, so the data cannot tell them apart. "
            + ways_out + " Or, if you know the " + stream_name + " line loses no pulse at the "
            "ends of the overlap, `require_proof: false` takes the one needing the fewest lost "
            "pulses (shift_periods=+0; recorded as decided_by: fewest missing, with a warning)."
        )
    log.info("%s sync: offset %.6f s chosen for needing the fewest lost pulses; %s differ only in "
             "which pulses the %s lost (no proof against them, docs/SYNC.md section 3)",
             stream_name, best.offset + best.delta / 2,
             ", ".join(f"{v.offset + v.delta / 2:.6f} s" for v in unproven),
             stream_name)
    return best, second, "fewest missing", unproven


def _listing(evs: list[_Eval], ref: _Eval, period: float | None) -> str:
    """``offset X s (shift_periods=N: M missing, K at the ends, J where the probe has none)``…"""
    parts = []
    for ev in evs[:4]:
        n = "" if period is None else f"shift_periods={round((ev.offset - ref.offset) / period):+d}: "
        parts.append(f"offset {ev.offset + ev.delta / 2:.6f} s ({n}{ev.n_missing} edges missing, "
                     f"{ev.n_at_ends} of them at the ends of its overlap, {ev.n_missing_probe} "
                     "where the probe has none or the train cannot be)")
    more = f" and {len(evs) - 4} more (shifts of more periods)" if len(evs) > 4 else ""
    return "; ".join(parts) + more


def _ways_out() -> str:
    return (
        "Ways out: if you know which is right, choose it with the config `sync: {shift_periods: "
        "N}` (N as listed); if the pulser starts and stops with the probe file, "
        "`train_within_probe: true` lets the train's ends decide; the files' start times "
        "(TDMS wf_start_time vs the meta's fileCreateTime) separate whole "
        "periods only if both PCs' clocks agree to well under a second (docs/SYNC.md section 3)."
    )


def _shifted(
    best: _Eval, distinct: list[_Eval], shift_periods: int, period: float | None,
    stream_name: str, refine_at: Callable[[float, float], _Eval] | None,
) -> _Eval:
    """The alignment ``shift_periods`` probe periods from ``best`` (refined anew if no candidate
    converged there)."""
    if period is None:
        raise SyncError(f"{stream_name} sync: shift_periods={shift_periods} needs a periodic sync "
                        "train; this one is irregular")
    target = best.offset + shift_periods * period
    tol = 0.25 * period
    near = [d for d in distinct if abs(d.offset - target) < tol]
    if near:
        return min(near, key=lambda d: abs(d.offset - target))
    ev = refine_at(target, best.rate) if refine_at is not None else None
    if ev is None or abs(ev.offset - target) >= tol or not ev.n_matched:
        raise SyncError(f"{stream_name} sync: no alignment pairs the edges at shift_periods="
                        f"{shift_periods} (offset {target:.6f} s)")
    return ev


def _edge_match(
    best: _Eval, second: _Eval | None, P: dict[str, np.ndarray], S: dict[str, np.ndarray], *,
    n_candidates: int, rate_prior: float, decided_by: str = "fewest missing",
    unproven: list[_Eval] = (), period: float | None = None,
) -> EdgeMatch:
    """The :class:`EdgeMatch` of the best alignment: its pairs in probe-time order, residuals."""
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
        n_candidates=n_candidates,
        rate_prior=rate_prior,
        n_missing_at_ends=best.n_at_ends,
        n_outside_train=best.n_outside,
        decided_by=decided_by,
        unproven_offsets_s=tuple(float(v.offset + v.delta / 2) for v in unproven),
        period_s=period,
    )


def check_match(match: EdgeMatch, params: SyncParams = SyncParams(), *,
                files_agree: bool = False) -> list[str]:
    """Reasons to refuse a match (empty when it passes every check).

    Checks: matched edges >= ``min_matched`` and >= ``min_matched_fraction`` of the probe edges
    expected in the overlap; worst residual <= ``tolerance_s``; ``|ppm| <= max_drift_ppm``;
    stream edges without a probe partner <= ``max_extra_stream_edges``, or, when the files'
    wall-clock starts agree with the fit (``files_agree``: the other evidence that both files are
    of one session), <= ``max_probe_drop_fraction`` of the edges expected (pulses the probe side
    dropped).
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
    allowed = params.max_extra_stream_edges
    if files_agree:
        allowed = max(allowed, int(params.max_probe_drop_fraction * match.n_expected))
    if extra > allowed:
        shown = ", ".join(f"{t:.3f}" for t in match.missing_in_probe_s[:5])
        problems.append(
            f"{extra} behaviour sync edges inside the overlap have no probe edge (at probe times "
            f"{shown}{' …' if extra > 5 else ''} s; {allowed} allowed: max_extra_stream_edges="
            f"{params.max_extra_stream_edges}, or max_probe_drop_fraction="
            f"{params.max_probe_drop_fraction} of {match.n_expected} when the file times agree"
            f"{'' if files_agree else ' (they do not, or are unknown)'}): the behaviour line "
            "should only lose pulses, so these are not the same sync signal (another session's "
            "file?), glitches, or pulses the probe dropped"
        )
    return problems


# ------------------------------------------------------------------- pauses: piecewise matching
@dataclass(frozen=True)
class SegmentedMatch:
    """The match of a stream that paused: one :class:`EdgeMatch` per segment, a shared rate.

    ``segments[j]`` is segment ``j``'s match (its own ``offset_s``, the shared ``rate`` and
    falling-edge delay of the joint fit, residuals against it); ``stream_ranges_s[j]`` the stream
    times it holds: from its first sync edge to its last (from the recording's start for the
    first, to its end for the last). Between two segments lies the stream interval that holds the
    pause: no edge tells where in it the stream stopped, so nothing in it is placed.
    ``boundary_edges_s``: stream edges between two segments that pair with no probe edge (the
    level jumping where the recording restarted), reported, not used.
    """

    segments: tuple[EdgeMatch, ...]
    stream_ranges_s: tuple[tuple[float, float], ...]
    boundary_edges_s: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        return self.segments[0].rate

    @property
    def ppm(self) -> float:
        return (self.rate - 1.0) * 1e6

    @property
    def offset_s(self) -> float:
        """The first segment's offset (the probe time of the stream's t = 0)."""
        return self.segments[0].offset_s

    @property
    def n_matched(self) -> int:
        return sum(m.n_matched for m in self.segments)

    @property
    def decided_by(self) -> str:
        """``"fewest missing"`` when any segment was placed so (else each segment's, joined)."""
        kinds = [m.decided_by for m in self.segments]
        return "fewest missing" if "fewest missing" in kinds else ", ".join(kinds)

    @property
    def pairs_probe_s(self) -> np.ndarray:
        return np.concatenate([m.pairs_probe_s for m in self.segments])

    @property
    def pairs_stream_s(self) -> np.ndarray:
        return np.concatenate([m.pairs_stream_s for m in self.segments])

    @property
    def pairs_rising(self) -> np.ndarray:
        return np.concatenate([m.pairs_rising for m in self.segments])

    @property
    def pairs_segment(self) -> np.ndarray:
        """The segment index of each pair (in the order of :attr:`pairs_probe_s`)."""
        return np.concatenate([np.full(len(m.pairs_probe_s), j)
                               for j, m in enumerate(self.segments)])

    @property
    def residuals_s(self) -> np.ndarray:
        return np.concatenate([m.residuals_s for m in self.segments])

    @property
    def missing_in_stream_s(self) -> np.ndarray:
        return np.concatenate([m.missing_in_stream_s for m in self.segments])

    @property
    def missing_in_probe_s(self) -> np.ndarray:
        return np.concatenate([m.missing_in_probe_s for m in self.segments])

    def clock_map(self, stream: str) -> PiecewiseClockMap:
        return PiecewiseClockMap(stream, tuple(m.clock_map(stream) for m in self.segments),
                                 self.stream_ranges_s)


def _edge_times(S: dict[str, np.ndarray]) -> np.ndarray:
    """Both polarities' edge times, sorted."""
    return np.sort(np.concatenate([S["rising"], S["falling"]]))


def _most_paired(P: dict[str, np.ndarray], S: dict[str, np.ndarray],
                 probe_span_s: tuple[float, float], stream_span_s: tuple[float, float],
                 params: SyncParams, stream_name: str) -> _Eval:
    """The refined alignment that pairs the most stream edges (no ambiguity decision: every
    whole-period shift of a periodic train pairs the same stream edges)."""
    window, max_dev = params.match_window_s, params.max_drift_ppm * 1e-6
    _, _, rates = _rate_prior(P["rising"], S["rising"], window, max_dev, params, stream_name)
    candidates = _candidates(P["rising"], S["rising"], rates, probe_span_s, stream_span_s,
                             window, 4, stream_name, by_matched=True)
    refined = [_refine(a, r, P, S, probe_span_s, stream_span_s, window, max_dev, None, None)
               for a, r in candidates]
    return max(refined, key=lambda e: e.n_matched)


def _paired_runs(P: dict[str, np.ndarray], S: dict[str, np.ndarray], lo: float, hi: float,
                 probe_span_s: tuple[float, float], stream_end_s: float, params: SyncParams,
                 stream_name: str) -> list[tuple[bool, float, float, int]]:
    """Split the stream edges strictly between ``lo`` and ``hi`` into runs that pair under one
    alignment: ``(placed, first edge s, last edge s, n edges)`` in stream order. The alignment
    pairing the most edges claims its longest run of consecutive edges paired (or mapped outside
    the probe recording, where none can pair); the edges before
    and after it are split the same way; a part too small to place (fewer than ``min_matched``
    edges or two rising ones), or pairing nothing, is a run with ``placed`` False."""
    sub = {pol: S[pol][(S[pol] > lo) & (S[pol] < hi)] for pol in ("rising", "falling")}
    times = _edge_times(sub)
    if not len(times):
        return []
    if len(sub["rising"]) < 2 or len(times) < params.min_matched:
        return [(False, float(times[0]), float(times[-1]), len(times))]
    span = (max(lo, 0.0), min(hi, stream_end_s))
    ev = _most_paired(P, sub, probe_span_s, span, params, stream_name)
    paired = _pairs_within(times, P, *_trimmed_fit(ev, P, sub, params),
                           np.isin(times, sub["falling"]), probe_span_s, params)
    # the longest run of consecutive paired edges
    padded = np.concatenate([[0], paired.astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(padded) == 1), np.flatnonzero(np.diff(padded) == -1)
    if not len(starts):
        return [(False, float(times[0]), float(times[-1]), len(times))]
    k = int(np.argmax(ends - starts))
    a, b = float(times[starts[k]]), float(times[ends[k] - 1])
    return (_paired_runs(P, S, lo, a, probe_span_s, stream_end_s, params, stream_name)
            + [(True, a, b, int(ends[k] - starts[k]))]
            + _paired_runs(P, S, b, hi, probe_span_s, stream_end_s, params, stream_name))


def _trimmed_fit(ev: _Eval, P: dict[str, np.ndarray], S: dict[str, np.ndarray],
                 params: SyncParams) -> tuple[float, float, float]:
    """``(offset, rate, delta)`` refitted to the pairs of ``ev`` within a shrinking residual
    bound (from ``match_window_s`` down to ``tolerance_s``): edges of another segment that pair
    within the match window by coincidence must not bend the line."""
    ts = np.concatenate([S[pol][ev.pairs[pol][0]] for pol in ("rising", "falling")])
    tp = np.concatenate([P[pol][ev.pairs[pol][1]] for pol in ("rising", "falling")])
    fall = np.concatenate([np.full(len(ev.pairs[pol][0]), pol == "falling")
                           for pol in ("rising", "falling")])
    a, r, d = ev.offset, ev.rate, ev.delta
    bound = params.match_window_s
    while bound > params.tolerance_s:
        bound = max(bound / 4, params.tolerance_s)
        keep = np.abs(tp - (a + r * ts + np.where(fall, d, 0.0))) <= bound
        if keep.sum() < 3 or np.ptp(ts[keep]) <= 0:
            break
        t0 = float(ts[keep].mean())
        use_delta = fall[keep].any() and (~fall[keep]).any()
        cols = [np.ones(int(keep.sum())), ts[keep] - t0] + ([fall[keep].astype(float)]
                                                             if use_delta else [])
        coef, *_ = np.linalg.lstsq(np.column_stack(cols), tp[keep], rcond=None)
        r, d = float(coef[1]), float(coef[2]) if use_delta else 0.0
        a = float(coef[0] - r * t0)
    return a, r, d


def _pairs_within(times: np.ndarray, P: dict[str, np.ndarray], offset: float, rate: float,
                  delta: float, falling: np.ndarray, probe_span_s: tuple[float, float],
                  params: SyncParams) -> np.ndarray:
    """Whether each stream edge has a probe edge of its polarity within ``tolerance_s`` under
    ``t_p = offset + rate * t (+ delta if falling)``, or maps where the probe did not record
    (within ``match_window_s`` of its ends or outside: no partner expected)."""
    pred = offset + rate * times + np.where(falling, delta, 0.0)
    window = params.match_window_s
    ok = (pred < probe_span_s[0] + window) | (pred > probe_span_s[1] - window)
    for pol, mask in (("rising", ~falling), ("falling", falling)):
        if len(P[pol]) and mask.any():
            _, dist = _nearest(P[pol], pred[mask])
            ok[mask] |= np.abs(dist) <= params.tolerance_s
    return ok


def _cut(times: np.ndarray, falling: np.ndarray, before: EdgeMatch, after: EdgeMatch,
         P: dict[str, np.ndarray], probe_span_s: tuple[float, float], params: SyncParams,
         name: str) -> tuple[float, float]:
    """Where the pause between two segments lies: ``(last edge surely before, first edge surely
    after)``, from the edges near the boundary (``times``, stream order). A cut is possible
    where every edge before it pairs under ``before`` and every one after under ``after``, with
    at most one edge at the cut pairing under neither (the level jumping at the restart). Edges
    that some possible cut puts on either side lie in the returned interval: unplaced."""
    def ok(m: EdgeMatch) -> np.ndarray:
        return _pairs_within(times, P, m.offset_s - m.falling_minus_rising_s / 2, m.rate,
                             m.falling_minus_rising_s, falling, probe_span_s, params)
    ok_a, ok_b = ok(before), ok(after)
    n = len(times)
    cuts = [(c, c2) for c in range(n + 1) for c2 in (c, c + 1)
            if c2 <= n and ok_a[:c].all() and ok_b[c2:].all()
            and (c2 == c or not (ok_a[c] or ok_b[c]))]
    if not cuts:
        raise SyncError(f"{name}: the edges at {times[0]:.3f}–{times[-1]:.3f} s around its pause "
                        "pair under neither segment's map; refused, not guessed")
    first, last = min(c for c, _ in cuts), max(c2 for _, c2 in cuts)
    if first == 0 or last == n:
        raise SyncError(f"{name}: the segments' maps both pair the edges at {times[0]:.3f}–"
                        f"{times[-1]:.3f} s, so where the pause lies cannot be told; refused, "
                        "not guessed")
    return float(times[first - 1]), float(times[last])


def _segment_ways_out(n: int) -> str:
    return (
        f"Ways out: if you know where each segment lies, choose it with the config `sync: "
        f"{{shift_periods: [N1, ..., N{n}]}}` (one entry per segment, in recording order; null: "
        "decided by the data; N as listed for the refused segment, counted from its "
        "fewest-missing alignment); `train_within_probe: true` if the pulser starts and stops "
        "with the probe file (the train's end can then place the last segment); or record with a "
        "pseudo-random sync code, which places every segment (docs/SYNC.md section 4, Pauses)."
    )


def match_segments(
    probe: Edges,
    stream: Edges,
    *,
    probe_span_s: tuple[float, float],
    stream_span_s: tuple[float, float],
    params: SyncParams = SyncParams(),
    stream_name: str = BEHAVIOUR_STREAM,
    train_starts_with_probe: bool = False,
    require_proof: bool = False,
    shift_periods: tuple[int | None, ...] | None = None,
) -> SegmentedMatch | None:
    """Match a stream that paused and restarted: a segment per run of edges that pair under one
    offset, each placed by :func:`match_edges`, then one least-squares fit with a shared rate and
    falling-edge delay and an offset per segment.

    Returns None when the edges form a single run (no pause to model: the caller keeps the
    linear match and its verdict). ``shift_periods`` chooses each segment's alignment as
    ``match_edges``' does (one entry per segment, None: decided by the data).

    Segments are placed in recording order; each later one must start on the probe clock after
    the one before ended (a pause cannot be negative), which is all a restart tells: its
    segment's start is no evidence, so a periodic train places it only when its end can (the
    train stopping inside it, ``train_within_probe``).

    Raises
    ------
    SyncError
        Edges between the segments that pair with nothing (the refusal names their times), a
        ``shift_periods`` list of the wrong length, or a segment that cannot be placed: no
        alignment after the previous segment, or an ambiguous one (the message names the
        segment, its time range, the candidate offsets and the ways out).
    """
    S = {"rising": np.sort(stream.rising), "falling": np.sort(stream.falling)}
    P = {"rising": np.sort(probe.rising), "falling": np.sort(probe.falling)}
    if len(P["rising"]) < 2 or len(S["rising"]) < 2:
        return None
    runs = _paired_runs(P, S, -math.inf, math.inf, probe_span_s, stream_span_s[1], params,
                        stream_name)
    blocks = [(i, a, b) for i, (placed, a, b, _) in enumerate(runs) if placed]
    if len(blocks) < 2:
        return None
    boundary: list[float] = []
    for i, (placed, a, b, n) in enumerate(runs):
        if placed:
            continue
        if n == 1 and blocks[0][0] < i < blocks[-1][0]:
            boundary.append(a)  # the level jumped where the recording restarted
            continue
        raise SyncError(
            f"{stream_name} sync: the recording pauses ({len(blocks)} runs of edges pair under "
            f"different offsets), but its {n} edge(s) at {a:.3f}–{b:.3f} s ({stream_name} clock) "
            f"pair with no probe edge under any alignment, or are too few to place "
            f"(min_matched={params.min_matched}); refused, not guessed")
    n_seg = len(blocks)
    if shift_periods is not None and len(shift_periods) != n_seg:
        raise SyncError(f"{stream_name} sync: shift_periods lists {len(shift_periods)} entries; "
                        f"the recording has {n_seg} segments (one entry each, null: decided by "
                        "the data)")
    window = params.match_window_s
    matches: list[EdgeMatch] = []
    ranges: list[tuple[float, float]] = []
    for j, (_, a, b) in enumerate(blocks):
        rng = (stream_span_s[0] if j == 0 else a, stream_span_s[1] if j == n_seg - 1 else b)
        seg = Edges(rising=S["rising"][(S["rising"] >= a) & (S["rising"] <= b)],
                    falling=S["falling"][(S["falling"] >= a) & (S["falling"] <= b)])
        name = (f"{stream_name} segment {j + 1} of {n_seg} ({stream_name} {rng[0]:.3f}–"
                f"{rng[1]:.3f} s)")
        # overlapping the probe recording, and after the previous segment on the probe clock
        lo = probe_span_s[0] - rng[1] - 1.0
        hi = probe_span_s[1] - rng[0] + 1.0
        if matches:
            lo = max(lo, matches[-1].offset_s + window / 2)
        if not lo < hi:
            raise SyncError(f"{name}: no room on the probe clock after the previous segment")
        matches.append(match_edges(
            probe, seg, probe_span_s=probe_span_s, stream_span_s=rng, params=params,
            stream_name=name, train_starts_with_probe=train_starts_with_probe,
            offset_range_s=(lo, hi), require_proof=require_proof,
            shift_periods=None if shift_periods is None else shift_periods[j],
            ways_out=_segment_ways_out(n_seg), search_in_range=True))
        ranges.append(rng)
    # where each pause lies: from the edges near each boundary
    times = _edge_times(S)
    falling = np.isin(times, S["falling"])
    near = 8  # edges each side
    for j in range(n_seg - 1):
        i0 = max(0, int(np.searchsorted(times, blocks[j][2], "right")) - near)
        i1 = int(np.searchsorted(times, blocks[j + 1][1])) + near
        end, start = _cut(times[i0:i1], falling[i0:i1], matches[j], matches[j + 1], P,
                          probe_span_s, params, f"{stream_name} segments {j + 1} and {j + 2}")
        ranges[j], ranges[j + 1] = (ranges[j][0], end), (start, ranges[j + 1][1])
    matches = [_within(m, r) for m, r in zip(matches, ranges)]
    return SegmentedMatch(_joint_fit(matches), tuple(ranges), tuple(boundary))


def _within(m: EdgeMatch, stream_range: tuple[float, float]) -> EdgeMatch:
    """``m`` keeping only the pairs whose stream edge lies in ``stream_range``."""
    keep = (m.pairs_stream_s >= stream_range[0]) & (m.pairs_stream_s <= stream_range[1])
    if keep.all():
        return m
    return dataclasses.replace(m, pairs_stream_s=m.pairs_stream_s[keep],
                               pairs_probe_s=m.pairs_probe_s[keep],
                               pairs_rising=m.pairs_rising[keep],
                               residuals_s=m.residuals_s[keep], n_matched=int(keep.sum()))


def _joint_fit(matches: list[EdgeMatch]) -> tuple[EdgeMatch, ...]:
    """Refit every segment's pairs together: ``t_p = a_j + rate * t_s (+ delta if falling)``,
    one rate and falling delay (the stream's one clock), an offset per segment; each match
    with its new map and residuals (offsets centred between the polarities, as in
    :func:`match_edges`)."""
    ts = np.concatenate([m.pairs_stream_s for m in matches])
    tp = np.concatenate([m.pairs_probe_s for m in matches])
    fall = ~np.concatenate([m.pairs_rising for m in matches])
    seg = np.concatenate([np.full(len(m.pairs_stream_s), j) for j, m in enumerate(matches)])
    t0 = float(ts.mean())
    cols = [(seg == j).astype(float) for j in range(len(matches))] + [ts - t0]
    use_delta = fall.any() and (~fall).any()
    if use_delta:
        cols.append(fall.astype(float))
    coef, *_ = np.linalg.lstsq(np.column_stack(cols), tp, rcond=None)
    rate = float(coef[len(matches)])
    delta = float(coef[-1]) if use_delta else 0.0
    out = []
    for j, m in enumerate(matches):
        a = float(coef[j] - rate * t0)
        model = a + rate * m.pairs_stream_s + np.where(m.pairs_rising, 0.0, delta)
        out.append(dataclasses.replace(m, offset_s=a + delta / 2, rate=rate,
                                       falling_minus_rising_s=delta,
                                       residuals_s=m.pairs_probe_s - model))
    return tuple(out)


def check_segments(match: SegmentedMatch, params: SyncParams = SyncParams(), *,
                   files_agree: bool = False) -> list[str]:
    """Reasons to refuse a segmented match: :func:`check_match` of every segment, each reason
    naming its segment."""
    problems = []
    for j, (m, rng) in enumerate(zip(match.segments, match.stream_ranges_s)):
        problems += [f"segment {j + 1} ({rng[0]:.3f}–{rng[1]:.3f} s): {p}"
                     for p in check_match(m, params, files_agree=files_agree)]
    return problems
