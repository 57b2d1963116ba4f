"""Sync edges of each side: the probe's SY bit (LF, refined with AP windows) and the behaviour DAQ's
copy of the sync wave (TDMS, hysteresis thresholds, sub-sample interpolation).

:func:`probe_sync_edges` gives the probe edges in probe seconds, :func:`behaviour_sync_edges` the
behaviour edges in behaviour seconds; :func:`pixbin.sync_match.match_edges` pairs them.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixbin.clock import LF_STREAM, ClockMap, StreamClock, digital_edge_position
from pixbin.edges import EdgeDetector, Edges, ttl_detector
from pixbin.errors import SyncError, TdmsError
from pixbin.spikeglx import SpikeGlxStream, memmap_bin, stream_info, sync_edges
from pixbin.sync import SyncParams
from pixbin.tdms import ChannelInfo, iter_chunks, require_channels

__all__ = ["ProbeEdges", "BehaviourEdges", "probe_sync_edges", "behaviour_sync_edges"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- probe edges
@dataclass(frozen=True)
class ProbeEdges:
    """Probe sync edges in probe seconds, with the LF → probe map and how they were timed."""

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
            centre = np.rint(lf_to_ap[0] + lf_to_ap[1] * digital_edge_position(idx)).astype(np.int64)
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
) -> ProbeEdges:
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
        t = Edges(digital_edge_position(e.rising) / ap.rate_hz,
                  digital_edge_position(e.falling) / ap.rate_hz)
        return ProbeEdges(t, None, "ap", 1 / ap.rate_hz, 0, 0, None)

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
    lf_edges_s = Edges(StreamClock(lf.rate_hz, lf_map).to_probe(digital_edge_position(e.rising)),
                       StreamClock(lf.rate_hz, lf_map).to_probe(digital_edge_position(e.falling)))
    if not (have_ap and (params.refine_with_ap or not agree)):
        return ProbeEdges(lf_edges_s, lf_map, "lf", 1 / lf.rate_hz, 0, 0, e)

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
        return ProbeEdges(lf_edges_s, lf_map, "lf", 1 / lf.rate_hz, 0, len(e), e)
    if not agree:
        # fit LF seconds → AP seconds on the paired edges (AP first-sample times vs LF ones)
        # edge times as sample midpoints on both sides (unbiased for a transition between samples)
        lf_t = digital_edge_position(np.concatenate([e.rising, e.falling])) / lf.rate_hz
        ap_t = digital_edge_position(np.concatenate([ap_idx.rising, ap_idx.falling])) / ap.rate_hz
        ok = np.isfinite(ap_t)
        coef = np.polyfit(lf_t[ok] - lf_t[ok].mean(), ap_t[ok], 1)
        rate = float(coef[0])
        offset = float(coef[1] - rate * lf_t[ok].mean())
        lf_map = ClockMap(LF_STREAM, offset, rate)
        log.warning("%s vs %s: rates disagree (ratio %r); LF→AP fitted from %d edges: "
                    "offset %.6f s, %.3f ppm", lf_meta, ap_meta, ratio, int(ok.sum()), offset,
                    lf_map.ppm)
        lf_edges_s = Edges(StreamClock(lf.rate_hz, lf_map).to_probe(digital_edge_position(e.rising)),
                           StreamClock(lf.rate_hz, lf_map).to_probe(digital_edge_position(e.falling)))
    rising = np.where(np.isfinite(ap_idx.rising), digital_edge_position(ap_idx.rising) / ap.rate_hz, lf_edges_s.rising)
    falling = np.where(np.isfinite(ap_idx.falling), digital_edge_position(ap_idx.falling) / ap.rate_hz,
                       lf_edges_s.falling)
    if n_bad:
        log.warning("%s: %d LF sync edges had no clean AP transition nearby; kept at LF timing",
                    ap.bin_path, n_bad)
    return ProbeEdges(Edges(rising, falling), lf_map, "lf+ap", 1 / ap.rate_hz, n_ok, n_bad, e)


# ------------------------------------------------------------------------ behaviour edges
@dataclass(frozen=True)
class BehaviourEdges:
    """Behaviour sync edges in behaviour seconds, with the channel and the thresholds used."""

    edges_s: Edges  # behaviour seconds (sample * wf_increment)
    info: ChannelInfo
    low: float
    high: float
    key: str


def _behaviour_detector(path: Path, info: ChannelInfo, params: SyncParams) -> EdgeDetector:
    """The sync channel's detector (:func:`pixbin.edges.ttl_detector`): thresholds declared, or
    from 16 windows of 2.5 s spread across the file (0.5th / 99.5th percentiles), refusing a
    sample with more than 20 % of its values between them (noise, no pulses)."""
    declared = None if params.threshold_low is None else (params.threshold_low,
                                                          params.threshold_high)
    try:
        det, _ = ttl_detector(info, declared=declared, percentiles=(0.5, 99.5),
                              windows=(16, max(1, int(round(2.5 * info.rate_hz)))),
                              max_between=0.2, debounce_s=params.debounce_s, interpolate=True)
    except ValueError as exc:
        raise SyncError(f"{path} channel {info.group}/{info.channel}: no sync pulses ({exc})"
                        ) from None
    return det


def behaviour_sync_edges(
    behaviour_tdms: str | os.PathLike, params: SyncParams = SyncParams()
) -> BehaviourEdges:
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
    det = _behaviour_detector(path, info, params)
    group = key if "/" in key else info.group
    bad_first, bad_last, n_bad = -1, -1, 0
    for start, chunk in iter_chunks(path, [group], chunk_samples=params.behaviour_chunk_samples,
                                    channel=info.channel):
        bad = np.flatnonzero(~np.isfinite(chunk[group]))
        if bad.size:  # a NaN is neither high nor low: the pulses there cannot be read
            bad_first = start + int(bad[0]) if n_bad == 0 else bad_first
            bad_last, n_bad = start + int(bad[-1]), n_bad + int(bad.size)
            continue
        det.feed(chunk[group], start)
    if n_bad:
        raise SyncError(f"{path} channel {key}: {n_bad} non-finite sample(s) (NaN/Inf) in samples "
                        f"{bad_first}..{bad_last}; the sync line cannot be read there and edges "
                        "would be missed or invented. Check the rig file (a DAQ fault?)")
    e = det.result()
    inc = 1.0 / info.rate_hz
    log.info("%s %s: %d rising, %d falling sync edges (thresholds %.3g/%.3g)", path, key,
             len(e.rising), len(e.falling), det.low, det.high)
    return BehaviourEdges(Edges(e.rising * inc, e.falling * inc), info, det.low, det.high, key)
