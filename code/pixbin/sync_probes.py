"""Every probe on the one clock: maps from probe ``imecN``'s AP and LF streams to imec0's AP clock.

Each probe of a SpikeGLX run records the same sync square wave in its SY word, each on its own
sample clock (separate base stations or headstages drift by ppm against each other). The map
``imecN.ap`` → probe clock is fitted from the two probes' SY edges with the same matching, fit
and checks as the behaviour stream (:func:`pixbin.sync_match.match_edges`); ``imecN.lf`` is that
map composed with the probe's own LF → AP relation (``firstSample`` of both metas).

Whole-period shifts: both probes see the whole pulse train of the run (it starts before and
stops after both files), so the edges alone cannot tell an alignment from its shift by one period.
What decides is that the probes of one run start together: sample ``firstSample`` of each file
is counted from the same acquisition start, so ``firstSample_N / rate_N - firstSample_0 / rate_0``
predicts the offset to within the drift accumulated since acquisition start
(``max_drift_ppm × firstSample / rate``) plus ``probe_start_skew_s``. Only alignments inside
that window are considered; when the window is wider than half a period the stage refuses rather
than guesses. docs/SYNC.md ("Several probes") explains it.

The NIDQ board of the run (:func:`fit_nidq_clock`) is fitted the same way: its sync line (the
digital bit or analog channel its meta declares, :func:`pixbin.spikeglx.nidq_sync_edges`) against
imec0's SY edges, its ``firstSample / niSampRate`` bounding the offset as a probe's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixbin.clock import NIDQ_STREAM, ClockMap, StreamClock, ap_stream, lf_stream
from pixbin.edges import Edges
from pixbin.errors import MetaError, SyncError
from pixbin.spikeglx import SpikeGlxStream, nidq_sync_edges, nidq_sync_line, stream_info
from pixbin.sync import SyncParams
from pixbin.sync_edges import ProbeEdges, probe_sync_edges
from pixbin.sync_match import EdgeMatch, check_match, match_edges

__all__ = ["ProbeFiles", "ProbeClockFit", "fit_probe_clock", "offset_window", "probe_entry",
           "failed_entry", "NidqFiles", "NidqClockFit", "fit_nidq_clock", "nidq_entry",
           "failed_nidq_entry"]


@dataclass(frozen=True)
class ProbeFiles:
    """The SpikeGLX files of one probe (LF None for single-band probes such as NP2.0)."""

    ap_meta: Path
    ap_bin: Path | None = None
    lf_meta: Path | None = None
    lf_bin: Path | None = None


@dataclass(frozen=True)
class ProbeClockFit:
    """The fitted maps of one probe and what decided them."""

    probe: str
    ap_map: ClockMap
    lf_map: ClockMap | None
    match: EdgeMatch
    edges: ProbeEdges
    window_s: tuple[float, float]


def offset_window(ref: SpikeGlxStream, other: SpikeGlxStream, params: SyncParams) -> tuple[float, float]:
    """The range of ``imecN → imec0`` offsets that probes of one run can have (s).

    Centre ``firstSample_N / rate_N - firstSample_0 / rate_0`` (both counted from the run's
    acquisition start); half-width the drift that can accumulate since then at
    ``max_drift_ppm`` plus ``probe_start_skew_s``.
    """
    since_start = max(ref.first_sample / ref.rate_hz, other.first_sample / other.rate_hz)
    centre = other.first_sample / other.rate_hz - ref.first_sample / ref.rate_hz
    half = params.max_drift_ppm * 1e-6 * since_start + params.probe_start_skew_s
    return centre - half, centre + half


def fit_probe_clock(
    probe: str, files: ProbeFiles, *, ref: SpikeGlxStream, ref_edges: ProbeEdges,
    params: SyncParams,
) -> ProbeClockFit:
    """Fit ``probe``'s AP (and LF) clock onto imec0's AP clock from the SY edges of both.

    Raises
    ------
    SyncError
        Too few edges, an offset window wider than half a sync period (cannot be decided), an
        ambiguous alignment inside it, or a fit outside tolerance; the message names the files.
    MetaError
        An unreadable meta.
    """
    other = stream_info(files.ap_meta, files.ap_bin)
    if other.kind != "ap":
        raise MetaError(f"{files.ap_meta}: expected an AP stream, found kind {other.kind!r}")
    edges = probe_sync_edges(ap_meta=files.ap_meta, lf_meta=files.lf_meta, lf_bin=files.lf_bin,
                             ap_bin=other.bin_path, params=params)
    source = files.lf_bin if edges.source.startswith("lf") else other.bin_path
    where = f"{source} ({probe}) vs {ref.meta_path.name} (imec0)"
    match, window = _fit_onto_imec0(ap_stream(probe), other, edges.edges_s, where=where,
                                    line=f"bit {params.sync_bit}", ref=ref, ref_edges=ref_edges,
                                    params=params)
    ap_map = match.clock_map(ap_stream(probe))
    lf_map = None
    if edges.lf_map is not None:  # LF seconds → this probe's AP seconds → imec0 AP seconds
        lf_map = ClockMap(lf_stream(probe), float(ap_map.to_probe(edges.lf_map.offset_s)),
                          ap_map.rate * edges.lf_map.rate)
    return ProbeClockFit(probe, ap_map, lf_map, match, edges, window)


def _fit_onto_imec0(
    name: str, stream: SpikeGlxStream, edges_s: Edges, *, where: str, line: str,
    ref: SpikeGlxStream, ref_edges: ProbeEdges, params: SyncParams,
) -> tuple[EdgeMatch, tuple[float, float]]:
    """Match a stream of the run (its sync edges in its own seconds) to imec0's SY edges inside
    the ``firstSample`` offset window and check the fit; the match and the window."""
    if len(edges_s.rising) < 2:
        raise SyncError(f"{where}: {len(edges_s.rising)} rising sync edge(s) on {line}; "
                        "no sync pulses recorded")
    lo, hi = offset_window(ref, stream, params)
    period = _period(ref_edges.edges_s.rising)
    if period is not None and hi - lo >= period - 2 * params.match_window_s:
        raise SyncError(
            f"{where}: the probes' start offset is known only to within [{lo:.3f}, {hi:.3f}] s "
            f"(firstSample {stream.first_sample} vs {ref.first_sample}, max_drift_ppm="
            f"{params.max_drift_ppm}, probe_start_skew_s={params.probe_start_skew_s}), wider than "
            f"the sync period ({period:.3f} s): alignments one period apart cannot be told apart. "
            "Lower max_drift_ppm to the probes' real drift, or sync them by another signal."
        )
    match = match_edges(ref_edges.edges_s, edges_s, probe_span_s=(0.0, ref.duration_s),
                        stream_span_s=(0.0, stream.duration_s), params=params,
                        stream_name=name, offset_range_s=(lo, hi))
    problems = check_match(match, params)
    if problems:
        raise SyncError(f"{where}: " + "; ".join(problems))
    return match, (lo, hi)


def _period(rising: np.ndarray) -> float | None:
    d = np.diff(np.sort(rising))
    return float(np.median(d)) if len(d) else None


def probe_entry(fit: ProbeClockFit, files: ProbeFiles, out_dir: Path,
                recorded: Any) -> dict[str, dict[str, Any]]:
    """The ``sync.json`` stream entries (``imecN.ap`` and, with an LF band, ``imecN.lf``)."""
    entry = {**fit.ap_map.to_dict(), "pass": True, "ap_meta": recorded(files.ap_meta, out_dir),
             **_match_fields(fit.match, fit.edges.source, fit.window_s)}
    out = {ap_stream(fit.probe): entry}
    if fit.lf_map is not None:
        out[lf_stream(fit.probe)] = {**fit.lf_map.to_dict(), "pass": True,
                                    "source": f"{ap_stream(fit.probe)} map and the LF/AP firstSample"}
    return out


def _match_fields(m: EdgeMatch, edge_source: str, window_s: tuple[float, float]) -> dict[str, Any]:
    """What a stream entry of the run records of its fit: edges, window, counts, residuals."""
    res = np.abs(m.residuals_s) * 1e6
    return {
        "edge_source": edge_source,
        "offset_window_s": list(window_s),
        "decided_by": "firstSample offset window (probes of one run start together)",
        "matched": m.n_matched, "expected_in_overlap": m.n_expected,
        "missing": {"in_stream": int(len(m.missing_in_stream_s)),
                    "in_probe": int(len(m.missing_in_probe_s))},
        "residual_us": {"median": float(np.median(res)) if len(res) else None,
                        "max": float(res.max()) if len(res) else None},
        "falling_minus_rising_us": m.falling_minus_rising_s * 1e6,
    }


def failed_entry(probe: str, files: ProbeFiles, exc: Exception, out_dir: Path,
                 recorded: Any) -> dict[str, dict[str, Any]]:
    """The stream entries of a probe whose map could not be fitted (``pass: false``)."""
    entry = {"pass": False, "reason": str(exc), "ap_meta": recorded(files.ap_meta, out_dir)}
    out = {ap_stream(probe): entry}
    if files.lf_meta is not None:
        out[lf_stream(probe)] = dict(entry)
    return out


# ------------------------------------------------------------------------------------ NIDQ
@dataclass(frozen=True)
class NidqFiles:
    """The NIDQ files of the run (``.bin`` None when only the ``.meta`` is there)."""

    meta: Path
    bin: Path | None = None


@dataclass(frozen=True)
class NidqClockFit:
    """The fitted ``nidq`` map and what decided it."""

    clock_map: ClockMap
    match: EdgeMatch
    edge_source: str
    window_s: tuple[float, float]


def fit_nidq_clock(files: NidqFiles, *, ref: SpikeGlxStream, ref_edges: ProbeEdges,
                   params: SyncParams) -> NidqClockFit:
    """Fit the NIDQ clock (samples / ``niSampRate``) onto imec0's AP clock from the sync line its
    meta declares and imec0's SY edges, as another probe is (:func:`fit_probe_clock`).

    Raises
    ------
    SyncError
        No ``.bin``, too few edges, an offset window wider than half a sync period, an ambiguous
        alignment or a fit outside tolerance; the message names the files.
    MetaError
        An unreadable meta, or a sync line it does not declare (:func:`pixbin.spikeglx.nidq_sync_line`).
    """
    nidq = stream_info(files.meta, files.bin)
    line = nidq_sync_line(nidq)
    if nidq.bin_path is None:
        raise SyncError(f"{files.meta}: no NIDQ .bin beside the meta; cannot read its sync edges")
    edges = nidq_sync_edges(nidq.bin_path, nidq, chunk_samples=params.probe_chunk_samples,
                            debounce_samples=params.debounce_s * nidq.rate_hz)
    clock = StreamClock(nidq.rate_hz, ClockMap.identity(NIDQ_STREAM))
    edges_s = Edges(clock.to_probe(edges.rising), clock.to_probe(edges.falling))
    where = f"{nidq.bin_path} (nidq, {line.description}) vs {ref.meta_path.name} (imec0)"
    match, window = _fit_onto_imec0(NIDQ_STREAM, nidq, edges_s, where=where,
                                    line=line.description, ref=ref, ref_edges=ref_edges,
                                    params=params)
    return NidqClockFit(match.clock_map(NIDQ_STREAM), match, f"nidq {line.description}", window)


def nidq_entry(fit: NidqClockFit, files: NidqFiles, out_dir: Path,
               recorded: Any) -> dict[str, dict[str, Any]]:
    """The ``sync.json`` stream entry ``nidq`` (the fields of a probe's entry)."""
    return {NIDQ_STREAM: {**fit.clock_map.to_dict(), "pass": True,
                          "nidq_meta": recorded(files.meta, out_dir),
                          **_match_fields(fit.match, fit.edge_source, fit.window_s)}}


def failed_nidq_entry(files: NidqFiles, exc: Exception, out_dir: Path,
                      recorded: Any) -> dict[str, dict[str, Any]]:
    """The ``nidq`` entry when its map could not be fitted (``pass: false``)."""
    return {NIDQ_STREAM: {"pass": False, "reason": str(exc),
                          "nidq_meta": recorded(files.meta, out_dir)}}
