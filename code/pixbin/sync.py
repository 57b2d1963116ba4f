"""The sync stage: clock maps between streams and the probe clock, their QC and outputs.

The probe clock is seconds on probe ``imec0``'s AP stream (AP sample / AP ``imSampRate``). Other
streams are mapped onto it by a :class:`~pixbin.clock.ClockMap` (``t_probe = offset_s + rate *
t_stream``):

- ``imec0.lf``: same device; ``t = lf_sample / imSampRate(LF)`` plus the ``firstSample`` offset
  between the two files, checked against the AP meta (or fitted from sync edges of both files).
- ``behaviour``: the LabVIEW DAQ's clock (``t = sample * wf_increment`` of the behaviour TDMS),
  fitted from the sync square wave that both systems record (SY bit 6 on the probe,
  ``NpxlSync_Signal`` on the DAQ). The camera frame TTL (``CamFrames``) is sampled by the same DAQ,
  so camera TTL times use the ``behaviour`` map.
- ``imecN.ap``/``imecN.lf`` of the other probes and ``nidq`` of the run's NI board: fitted from
  their sync edges against imec0's (:mod:`pixbin.sync_probes`).

:func:`run_sync` is the stage: it writes ``sync.json`` (the model and its QC), ``lag.json`` (the
lab's integer-ms overhangs) and ``sync_0.png`` (the QC figure) into the processed folder.
:class:`SyncParams` holds its parameters. The work is done by :mod:`pixbin.sync_edges` (edges of
each side), :mod:`pixbin.sync_match` (matching, fit, checks) and :mod:`pixbin.sync_figure` (the
QC figure). :meth:`ClockMap.load` is how every later stage gets a map. docs/SYNC.md explains the
model, the matching and how to read the figure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixbin import layout
from pixbin.clock import (BEHAVIOUR_STREAM, LF_STREAM, NIDQ_STREAM, PROBE_STREAM, ClockMap,
                          PiecewiseClockMap)
from pixbin.errors import ConfigError, MetaError, SyncError, TdmsError
from pixbin.fileio import provenance, write_json
from pixbin.params import params_from_dict
from pixbin.spikeglx import SpikeGlxStream, stream_info
from pixbin.sync_figure import draw_sync_figure

if TYPE_CHECKING:
    from pixbin.sync_edges import BehaviourEdges, ProbeEdges
    from pixbin.sync_match import EdgeMatch, SegmentedMatch
    from pixbin.sync_probes import NidqClockFit, NidqFiles, ProbeClockFit, ProbeFiles

__all__ = ["SyncParams", "run_sync"]

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
        a different signal (e.g. another session's file), glitches, or pulses the probe dropped.
    max_probe_drop_fraction : float
        When the files' wall-clock starts agree with the fit (``file_times`` pass: independent
        evidence that both files are of this session), up to this fraction of the expected edges
        may be behaviour edges without a probe partner (pulses dropped on the probe side),
        reported in ``missing.in_probe`` like the behaviour's.
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
    file_time_tolerance_s : float
        Largest accepted disagreement (s) between the files' wall-clock starts (TDMS
        ``wf_start_time``, meta ``fileCreateTime``) and the fitted offset, beyond a whole
        time-zone offset (:mod:`pixbin.sync_filetimes`); catches a behaviour file of another
        session.
    file_times_utc_offset_h : float or None
        The probe PC's UTC offset (h) if known; None: the nearest whole time zone is assumed.
    ignore_file_times : bool
        Accept a file-time disagreement (recorded as a warning in ``sync.json``).
    require_proof : bool
        Refuse an alignment that wins only by needing fewer lost behaviour pulses at the ends of
        the overlap than its shifts by whole periods (the data cannot tell a lost first pulse from
        a shift: docs/SYNC.md section 3), listing the candidates and the ways out. On by default
        (the data cannot decide, so pixbin does not guess); ``False`` takes the alignment needing
        the fewest lost pulses, with ``decided_by: "fewest missing"`` and a warning in
        ``sync.json`` naming the rivals.
    shift_periods : int, tuple of (int or None), or None
        Choose the alignment this many sync periods from the one with the fewest missing edges
        (+1: behaviour times map one period later on the probe clock, ``lag_start`` one period
        smaller). Skips the ambiguity refusal, not the residual or matched-edge checks; the
        refusal message lists each candidate's N. Only when the right alignment is known from
        outside the sync data. For a behaviour recording that paused (docs/SYNC.md section 4,
        Pauses): a list with one entry per segment, in recording order (None: decided by the
        data).
    probe_start_skew_s : float
        Largest start difference between two probes of one SpikeGLX run beyond what their
        ``firstSample`` says; bounds the ``imecN → imec0`` offsets considered
        (:mod:`pixbin.sync_probes`).
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
    max_probe_drop_fraction: float = 0.02
    train_within_probe: bool = False
    first_sample_bounds_train: bool = True
    lf_ap_ratio: float = 12.0
    lf_ap_ratio_tolerance: float = 1e-9
    refine_with_ap: bool = True
    probe_chunk_samples: int = 65_536
    behaviour_chunk_samples: int = 1_000_000
    figure: bool = True
    file_time_tolerance_s: float = 120.0
    file_times_utc_offset_h: float | None = None
    ignore_file_times: bool = False
    require_proof: bool = True
    shift_periods: int | tuple[int | None, ...] | None = None
    probe_start_skew_s: float = 0.1

    def __post_init__(self) -> None:
        positive = ("tolerance_s", "match_window_s", "max_drift_ppm", "lf_ap_ratio",
                    "probe_chunk_samples", "behaviour_chunk_samples", "file_time_tolerance_s",
                    "probe_start_skew_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"sync parameter {name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.max_probe_drop_fraction <= 0.5:
            raise ConfigError("sync parameter max_probe_drop_fraction must be in [0, 0.5], got "
                              f"{self.max_probe_drop_fraction}")
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


# ---------------------------------------------------------------------------------- stage
@dataclass
class _Progress:
    """What the stage has found so far (the failure path draws the figure from it)."""

    probe: ProbeEdges | None = None
    lf: SpikeGlxStream | None = None
    beh: BehaviourEdges | None = None
    match: EdgeMatch | SegmentedMatch | None = None
    bmap: ClockMap | PiecewiseClockMap | None = None
    probes: dict[str, ProbeClockFit] = dataclasses.field(default_factory=dict)
    nidq: NidqClockFit | None = None


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
    other_probes: Mapping[str, ProbeFiles] | None = None,
    nidq: NidqFiles | None = None,
) -> dict[str, Any]:
    """Sync stage: fit the behaviour → probe clock map (and each other probe's), write
    ``sync.json``, ``lag.json``, ``sync_0.png`` into ``out_dir``.

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
    other_probes : mapping probe name -> ProbeFiles, optional
        The session's other probes (``imec1``, ...): each gets ``imecN.ap`` (and ``imecN.lf``)
        maps onto the imec0 clock from its SY edges (:mod:`pixbin.sync_probes`). A probe whose map
        cannot be fitted gets ``"pass": false`` with the reason (later stages refuse that probe)
        and a warning; the behaviour map still passes.
    nidq : NidqFiles, optional
        The run's NIDQ files: the ``nidq`` map onto the imec0 clock from the sync line its meta
        declares, fitted and checked as another probe's (a failure is that entry's, the same way).

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
    ap = stream_info(ap_meta, ap_bin)
    summary = _summary_skeleton(ap, lf_meta=lf_meta, lf_bin=lf_bin, behaviour_tdms=behaviour_tdms,
                                params=params, out_dir=out_dir)
    got = _Progress()
    try:
        _fit_behaviour(got, summary, ap=ap, ap_meta=ap_meta, lf_meta=lf_meta, lf_bin=lf_bin,
                       behaviour_tdms=behaviour_tdms, params=params, out_dir=out_dir)
    except (SyncError, MetaError, TdmsError) as exc:
        _record_failure(exc, summary, got, ap=ap, files=files, params=params, t_start=t_start)
        raise
    _fit_other_probes(summary, got, ap=ap, other_probes=other_probes or {}, params=params,
                      out_dir=out_dir)
    if nidq is not None:
        _fit_nidq(summary, got, ap=ap, nidq=nidq, params=params, out_dir=out_dir)
    _record_success(summary, got, ap=ap, files=files, params=params, t_start=t_start)
    return summary


def _summary_skeleton(
    ap: SpikeGlxStream, *, lf_meta: str | os.PathLike | None, lf_bin: str | os.PathLike | None,
    behaviour_tdms: str | os.PathLike, params: SyncParams, out_dir: Path,
) -> dict[str, Any]:
    """The ``sync.json`` record before any edge is read: failed, inputs, probe clock, parameters
    (input paths relative to ``out_dir``)."""
    probe_duration = ap.duration_s
    summary: dict[str, Any] = {
        "pass": False,
        "reason": None,
        "clock": f"{PROBE_STREAM}: seconds, AP sample / imSampRate ({ap.rate_hz!r} Hz), sample 0 = 0 s",
        "probe": {
            "ap_meta": layout.recorded_path(ap.meta_path, out_dir), "ap_bin": layout.recorded_path(ap.bin_path, out_dir),
            "ap_rate_hz": ap.rate_hz, "ap_n_samples": ap.n_samples,
            "ap_n_samples_from": ap.n_samples_from, "duration_s": probe_duration,
            "lf_meta": layout.recorded_path(lf_meta, out_dir),
            "lf_bin": layout.recorded_path(lf_bin, out_dir),
        },
        "inputs": {"behaviour_tdms": layout.recorded_path(behaviour_tdms, out_dir)},
        "streams": {PROBE_STREAM: {**ClockMap.identity().to_dict(), "pass": True}},
        "camera": "camera frame TTLs (CamFrames) are sampled by the behaviour DAQ: map them with "
                  "the 'behaviour' clock map",
        "parameters": params.to_dict(),
        "provenance": provenance(params.to_dict()),
    }
    return summary


def _fit_behaviour(
    got: _Progress, summary: dict[str, Any], *, ap: SpikeGlxStream, ap_meta: str | os.PathLike,
    lf_meta: str | os.PathLike | None, lf_bin: str | os.PathLike | None,
    behaviour_tdms: str | os.PathLike, params: SyncParams, out_dir: Path,
) -> None:
    """Read both sides' edges, match them and fit the behaviour map; fill ``summary`` and ``got``
    as it goes. Raises SyncError (MetaError, TdmsError) where the stage fails."""
    # imported here: these modules import SyncParams from this one
    from pixbin.sync_edges import behaviour_sync_edges, probe_sync_edges
    from pixbin.sync_filetimes import check_file_times
    from pixbin.sync_match import check_match, match_edges

    probe_duration = ap.duration_s
    probe = got.probe = probe_sync_edges(ap_meta=ap_meta, lf_meta=lf_meta, lf_bin=lf_bin,
                                         ap_bin=ap.bin_path, params=params)
    have_lf = lf_meta is not None and lf_bin is not None
    lf = got.lf = stream_info(lf_meta, lf_bin) if have_lf else None
    _record_probe(summary, probe, lf, ap)
    beh = got.beh = behaviour_sync_edges(behaviour_tdms, params)
    beh_duration = beh.info.n_samples / beh.info.rate_hz
    entry = _behaviour_entry(beh, probe, layout.recorded_path(behaviour_tdms, out_dir), params)
    summary["streams"][BEHAVIOUR_STREAM] = entry
    if len(beh.edges_s.rising) < 2:
        raise SyncError(f"{behaviour_tdms} channel {beh.key}: {len(beh.edges_s.rising)} rising "
                        "sync edge(s); no sync pulses recorded")
    if len(probe.edges_s.rising) < 2:
        raise SyncError(f"{lf_bin or ap.bin_path}: {len(probe.edges_s.rising)} rising sync edge(s) "
                        f"on bit {params.sync_bit}; no sync pulses recorded")
    starts_with_probe = params.first_sample_bounds_train and ap.first_sample == 0
    summary["probe"]["train_starts_with_probe"] = starts_with_probe
    spans = dict(probe_span_s=(0.0, probe_duration), stream_span_s=(0.0, beh_duration))
    where = f"{behaviour_tdms} vs {lf_bin or ap.bin_path}"

    def paused() -> bool:
        """Fit the recording as segments if it paused (False: it did not)."""
        return _fit_segments(got, summary, entry, ap=ap, beh=beh, spans=spans, where=where,
                             starts_with_probe=starts_with_probe, params=params)

    if isinstance(params.shift_periods, tuple):  # one shift per segment: a paused recording
        if not paused():
            raise SyncError(f"{where}: shift_periods lists one entry per segment, but the "
                            "behaviour recording does not pause (its edges pair under one "
                            "offset); give one number")
        return
    try:
        match = got.match = match_edges(probe.edges_s, beh.edges_s, **spans, params=params,
                                        train_starts_with_probe=starts_with_probe,
                                        require_proof=params.require_proof,
                                        shift_periods=params.shift_periods)
    except SyncError:
        if paused():
            return
        raise
    bmap = got.bmap = match.clock_map(BEHAVIOUR_STREAM)
    entry.update(_match_record(match, bmap, beh, params))
    _warn_unproven(summary, match)
    times = summary["file_times"] = check_file_times(ap, beh.info, bmap, params)
    problems = check_match(match, params, files_agree=times.get("pass") is True)
    if problems:
        failure = SyncError(f"{where}: " + "; ".join(problems))
        if paused():
            return
        raise failure
    if times.get("pass") is False and not params.ignore_file_times:
        raise SyncError(times["reason"])
    entry["pass"] = True
    _record_lag(summary, bmap, beh, probe_duration)


def _fit_segments(got: _Progress, summary: dict[str, Any], entry: dict[str, Any], *,
                  ap: SpikeGlxStream, beh: BehaviourEdges, spans: dict[str, tuple[float, float]],
                  where: str, starts_with_probe: bool, params: SyncParams) -> bool:
    """Fit a behaviour recording that paused and restarted (docs/SYNC.md section 4, Pauses):
    a map per segment, checked like the linear one. False when its edges pair under one offset
    (no pause: the caller keeps the linear fit's verdict); raises SyncError where a segment
    cannot be placed or fails its checks."""
    from pixbin.sync_filetimes import check_file_times
    from pixbin.sync_match import check_segments, match_segments

    shifts = params.shift_periods if isinstance(params.shift_periods, tuple) else None
    segmented = match_segments(got.probe.edges_s, beh.edges_s, **spans, params=params,
                               train_starts_with_probe=starts_with_probe,
                               require_proof=params.require_proof, shift_periods=shifts)
    if segmented is None:
        return False
    got.match = segmented
    bmap = got.bmap = segmented.clock_map(BEHAVIOUR_STREAM)
    for key in [k for k in entry if k not in _behaviour_entry_keys()]:
        del entry[key]  # what the linear fit left
    entry.update(_segments_record(segmented, bmap, beh, params))
    summary.pop("warnings", None)  # the linear fit's, about an alignment now replaced
    summary.setdefault("warnings", []).append(
        f"behaviour: the recording paused {len(segmented.segments) - 1} time(s): "
        + "; ".join(f"{p['length_s']:.6f} s after behaviour {p['stream_s'][0]:.3f} s"
                    for p in entry["pauses"])
        + " (segments in sync.json; behaviour times between the segments and probe times inside "
          "a pause have no counterpart)")
    for j, m in enumerate(segmented.segments):
        _warn_unproven(summary, m, what=f"behaviour segment {j + 1}")
    times = summary["file_times"] = check_file_times(ap, beh.info, bmap.maps[0], params)
    problems = check_segments(segmented, params, files_agree=times.get("pass") is True)
    if problems:
        raise SyncError(f"{where}: " + "; ".join(problems))
    if times.get("pass") is False and not params.ignore_file_times:
        raise SyncError(times["reason"])
    entry["pass"] = True
    _record_lag(summary, bmap, beh, ap.duration_s)
    return True


def _warn_unproven(summary: dict[str, Any], match: EdgeMatch, what: str = "behaviour") -> None:
    """Record in ``sync.json`` an alignment chosen only for needing the fewest lost pulses."""
    if match.decided_by != "fewest missing":
        return
    period = match.period_s or 1.0
    others = ", ".join(f"{t:.6f} s (shift_periods={round((t - match.offset_s) / period):+d})"
                       for t in match.unproven_offsets_s)
    summary.setdefault("warnings", []).append(
        f"{what}: offset {match.offset_s:.6f} s was chosen for needing the fewest lost pulses; "
        f"{others} fit equally if the behaviour line lost its first or last pulse(s) "
        "(no proof either way: docs/SYNC.md section 3; accepted because of `sync: "
        "{require_proof: false}`; `shift_periods: N` chooses)")


def _fit_other_probes(summary: dict[str, Any], got: _Progress, *, ap: SpikeGlxStream,
                      other_probes: Mapping[str, ProbeFiles], params: SyncParams,
                      out_dir: Path) -> None:
    """Fit each other probe onto the imec0 clock; a failure is that probe's entry, not the stage's."""
    from pixbin.sync_probes import failed_entry, fit_probe_clock, probe_entry

    for probe in sorted(other_probes, key=lambda p: int(p[4:])):
        files = other_probes[probe]
        try:
            fit = fit_probe_clock(probe, files, ref=ap, ref_edges=got.probe, params=params)
        except (SyncError, MetaError) as exc:
            summary["streams"].update(failed_entry(probe, files, exc, out_dir, layout.recorded_path))
            summary.setdefault("warnings", []).append(f"{probe}: no clock map: {exc}")
            log.warning("sync: %s has no clock map: %s", probe, exc)
            continue
        got.probes[probe] = fit
        summary["streams"].update(probe_entry(fit, files, out_dir, layout.recorded_path))
        log.info("sync: %s -> imec0: offset %.6f s, %.3f ppm, %d edges matched", probe,
                 fit.ap_map.offset_s, fit.ap_map.ppm, fit.match.n_matched)


def _fit_nidq(summary: dict[str, Any], got: _Progress, *, ap: SpikeGlxStream, nidq: NidqFiles,
              params: SyncParams, out_dir: Path) -> None:
    """Fit the NIDQ stream onto the imec0 clock; a failure is its entry's, not the stage's."""
    from pixbin.sync_probes import failed_nidq_entry, fit_nidq_clock, nidq_entry

    try:
        fit = fit_nidq_clock(nidq, ref=ap, ref_edges=got.probe, params=params)
    except (SyncError, MetaError) as exc:
        summary["streams"].update(failed_nidq_entry(nidq, exc, out_dir, layout.recorded_path))
        summary.setdefault("warnings", []).append(f"nidq: no clock map: {exc}")
        log.warning("sync: nidq has no clock map: %s", exc)
        return
    got.nidq = fit
    summary["streams"].update(nidq_entry(fit, nidq, out_dir, layout.recorded_path))
    log.info("sync: nidq -> imec0: offset %.6f s, %.3f ppm, %d edges matched",
             fit.clock_map.offset_s, fit.clock_map.ppm, fit.match.n_matched)


def _record_probe(summary: dict[str, Any], probe: ProbeEdges, lf: SpikeGlxStream | None,
                  ap: SpikeGlxStream) -> None:
    """Add the probe edges' counts and source, and the LF stream's map, to ``summary``."""
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


def _behaviour_entry(beh: BehaviourEdges, probe: ProbeEdges, behaviour_tdms: str | None,
                     params: SyncParams) -> dict[str, Any]:
    """The behaviour stream's ``sync.json`` entry before matching (not passed yet)."""
    entry: dict[str, Any] = {
        "file": behaviour_tdms, "channel": beh.key,
        "rate_hz_nominal": beh.info.rate_hz, "n_samples": beh.info.n_samples,
        "thresholds": [beh.low, beh.high],
        "n_edges": {"probe": {"rising": int(len(probe.edges_s.rising)),
                              "falling": int(len(probe.edges_s.falling))},
                    "behaviour": {"rising": int(len(beh.edges_s.rising)),
                                  "falling": int(len(beh.edges_s.falling))}},
        "tolerance_us": params.tolerance_s * 1e6,
        "pass": False,
    }
    return entry


def _match_record(match: EdgeMatch, bmap: ClockMap, beh: BehaviourEdges,
                  params: SyncParams) -> dict[str, Any]:
    """What the behaviour entry gains from the match: the map, counts, residuals, pairs."""
    res = _stats_us(match.residuals_s)
    need = max(params.min_matched, int(math.ceil(params.min_matched_fraction * match.n_expected)))
    return {
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
        "decided_by": match.decided_by, "unproven_offsets_s": list(match.unproven_offsets_s),
        "n_missing_at_ends": match.n_missing_at_ends, "n_missing_interior": match.n_missing_interior,
        "pairs": {"behaviour_s": match.pairs_stream_s, "probe_s": match.pairs_probe_s,
                  "rising": match.pairs_rising.astype(int)},
    }


def _behaviour_entry_keys() -> set[str]:
    """The keys of the behaviour entry before matching (:func:`_behaviour_entry`)."""
    return {"file", "channel", "rate_hz_nominal", "n_samples", "thresholds", "n_edges",
            "tolerance_us", "pass"}


def _segments_record(segmented: SegmentedMatch, bmap: PiecewiseClockMap, beh: BehaviourEdges,
                     params: SyncParams) -> dict[str, Any]:
    """What the behaviour entry gains from a segmented match: the piecewise map (the first
    segment's at the top level), each segment's range, map and QC, the pauses, all pairs."""
    record = bmap.to_dict()
    for seg, m in zip(record["segments"], segmented.segments):
        seg.update({
            "matched": m.n_matched, "expected_in_overlap": m.n_expected,
            "missing": {"in_behaviour": int(len(m.missing_in_stream_s)),
                        "in_probe": int(len(m.missing_in_probe_s)),
                        "in_behaviour_probe_s": m.missing_in_stream_s,
                        "in_probe_probe_s": m.missing_in_probe_s},
            "residual_us": _stats_us(m.residuals_s), "decided_by": m.decided_by,
            "unproven_offsets_s": list(m.unproven_offsets_s), "n_missing": m.n_missing,
            "second_offset_s": m.second_offset_s, "margin": m.margin,
        })
    ranges, probe_ranges = bmap.stream_ranges_s, bmap.probe_ranges_s
    pauses = [{"after_segment": j + 1, "stream_s": [ranges[j][1], ranges[j + 1][0]],
               "probe_s": [probe_ranges[j][1], probe_ranges[j + 1][0]],
               "length_s": bmap.maps[j + 1].offset_s - bmap.maps[j].offset_s}
              for j in range(len(ranges) - 1)]
    return {
        **record, "drift": "shared",
        "rate_hz_measured": beh.info.rate_hz / segmented.rate,
        "falling_minus_rising_us": segmented.segments[0].falling_minus_rising_s * 1e6,
        "matched": segmented.n_matched,
        "missing": {"in_behaviour": int(len(segmented.missing_in_stream_s)),
                    "in_probe": int(len(segmented.missing_in_probe_s))},
        "residual_us": _stats_us(segmented.residuals_s),
        "pauses": pauses, "boundary_edges_s": list(segmented.boundary_edges_s),
        "pairs": {"behaviour_s": segmented.pairs_stream_s, "probe_s": segmented.pairs_probe_s,
                  "rising": segmented.pairs_rising.astype(int),
                  "segment": segmented.pairs_segment},
    }


def _record_lag(summary: dict[str, Any], bmap: ClockMap | PiecewiseClockMap, beh: BehaviourEdges,
                probe_duration: float) -> None:
    """lag.json: the lab's integer-ms overhangs of the behaviour recording; marks the pass."""
    start_probe = float(bmap.to_probe(0.0))
    end_probe = float(bmap.to_probe(beh.info.n_samples / beh.info.rate_hz))
    lag = {"lag_start": int(round(-start_probe * 1000)),
           "lag_end": int(round((end_probe - probe_duration) * 1000))}
    summary["lag"] = lag
    summary["behaviour_span_probe_s"] = [start_probe, end_probe]
    summary["pass"] = True


def _record_failure(exc: Exception, summary: dict[str, Any], got: _Progress, *, ap: SpikeGlxStream,
                    files: layout.Processed, params: SyncParams, t_start: float) -> None:
    """Write the failed ``sync.json`` (and the figure when a match was found); drop a stale
    ``lag.json``."""
    sync_path, lag_path, fig_path = files.sync_json, files.lag_json, files.sync_figure(0)
    summary["reason"] = str(exc)
    summary["duration_s"] = time.perf_counter() - t_start
    if lag_path.exists():
        lag_path.unlink()  # a stale lag.json must not pass for this run's result
    write_json(sync_path, summary)
    if params.figure and got.match is not None and got.probe is not None and got.beh is not None:
        try:
            draw_sync_figure(fig_path, match=got.match, bmap=got.bmap, probe=got.probe, lf=got.lf,
                             ap=ap, beh=got.beh, title=f"SYNC FAILED: {exc}"[:300],
                             tolerance_s=params.tolerance_s, sync_bit=params.sync_bit)
        except Exception:  # the figure must not hide the real error
            log.exception("could not draw %s", fig_path)
    log.error("sync failed: %s", exc)


def _other_matches(got: _Progress) -> dict[str, EdgeMatch]:
    """The fits onto imec0 of the other probes and the NIDQ (the figure's last row)."""
    matches = {p: fit.match for p, fit in got.probes.items()}
    if got.nidq is not None:
        matches[NIDQ_STREAM] = got.nidq.match
    return matches


def _record_success(summary: dict[str, Any], got: _Progress, *, ap: SpikeGlxStream,
                    files: layout.Processed, params: SyncParams, t_start: float) -> None:
    """Draw the figure, then write ``lag.json`` and the passed ``sync.json``."""
    sync_path, lag_path, fig_path = files.sync_json, files.lag_json, files.sync_figure(0)
    match, bmap, probe = got.match, got.bmap, got.probe
    bentry = summary["streams"][BEHAVIOUR_STREAM]
    if params.figure:
        paused = (f"; PAUSED: {len(match.segments)} segments, offsets "
                  + ", ".join(f"{m.offset_s:+.6f}" for m in match.segments) + " s (drift shared)"
                  if isinstance(bmap, PiecewiseClockMap) else "")
        title = (f"PASS  behaviour → probe: offset {match.offset_s:+.6f} s, {match.ppm:+.3f} ppm"
                 f"{paused}; "
                 f"lag_start {summary['lag']['lag_start']} ms, lag_end {summary['lag']['lag_end']} ms\n"
                 f"{match.n_matched} edges matched, {len(match.missing_in_stream_s)} missing in "
                 f"behaviour, {len(match.missing_in_probe_s)} in probe; residual median "
                 f"{bentry['residual_us']['median']:.1f} µs, max {bentry['residual_us']['max']:.1f} µs "
                 f"(probe edges from {probe.source.upper()})"
                 + ("\nUNPROVEN: chosen for needing the fewest lost pulses; whole-period shifts "
                    "fit if the behaviour lost its first/last pulse (sync.json warnings)"
                    if match.decided_by == "fewest missing" else ""))
        draw_sync_figure(fig_path, match=match, bmap=bmap, probe=probe, lf=got.lf, ap=ap,
                         beh=got.beh, title=title, tolerance_s=params.tolerance_s,
                         sync_bit=params.sync_bit,
                         other_matches=_other_matches(got))
    summary["duration_s"] = time.perf_counter() - t_start
    write_json(lag_path, [summary["lag"]])
    write_json(sync_path, summary)
    log.info("sync: offset %.6f s, %.3f ppm, %d matched, residual max %.1f µs -> %s",
             match.offset_s, match.ppm, match.n_matched, bentry["residual_us"]["max"], files.dir)
