"""The sync stage's QC figure (``sync_0.png``): probe SY bit and behaviour sync around three
matched edges, and the residuals of all matched edges after the fit (with the pauses of a
behaviour recording that paused shaded); with other probes or a NIDQ stream, their residuals
after their fits onto imec0.

docs/SYNC.md explains how to read it.
"""

from __future__ import annotations

from collections.abc import Mapping

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixbin.clock import NIDQ_STREAM, ClockMap, PiecewiseClockMap, StreamClock
from pixbin.fileio import atomic_path
from pixbin.spikeglx import SpikeGlxStream, read_sync_word
from pixbin.tdms import read_windows

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from pixbin.sync_edges import BehaviourEdges, ProbeEdges
    from pixbin.sync_match import EdgeMatch, SegmentedMatch

__all__ = ["draw_sync_figure"]


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


def _segment_at(bmap: ClockMap | PiecewiseClockMap, t_probe: float, n_samples: int,
                rate_hz: float) -> tuple[ClockMap, int, int]:
    """The linear map around probe time ``t_probe`` and the behaviour samples it holds (a
    piecewise map's segment nearest ``t_probe``; the whole recording for a linear one)."""
    if not isinstance(bmap, PiecewiseClockMap):
        return bmap, 0, n_samples
    ranges = bmap.probe_ranges_s
    j = min(range(len(ranges)), key=lambda k: max(ranges[k][0] - t_probe, t_probe - ranges[k][1]))
    lo, hi = bmap.segment_samples(rate_hz, n_samples)[j]
    return bmap.maps[j], lo, hi


def draw_sync_figure(path: Path, *, match: EdgeMatch | SegmentedMatch | None,
                     bmap: ClockMap | PiecewiseClockMap | None,
                     probe: ProbeEdges, lf: SpikeGlxStream | None, ap: SpikeGlxStream,
                     beh: BehaviourEdges, title: str, tolerance_s: float,
                     sync_bit: int = 6, other_matches: Mapping[str, EdgeMatch] | None = None,
                     ) -> None:
    """Draw the sync QC figure to ``path`` (PNG, written atomically).

    Top two rows: the probe SY bit (``sync_bit``) and the scaled behaviour sync trace around the
    first, middle and last matched rising edge, over ±1.5 s and ±1.5 ms (the zoom from the AP
    file when the probe edges were timed on it; a paused recording's traces from the segment of
    each edge). Next row: the residuals of the matched edges after the fit, with the
    ``tolerance_s`` lines, the probe edges missing in behaviour and the pauses shaded. With
    ``other_matches`` (the fits onto imec0 of the other probes, by name, and of the NIDQ,
    ``"nidq"``), a last row with their residuals.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = 4 if other_matches else 3
    fig = Figure(figsize=(13, 9 if rows == 3 else 11.5))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(rows, 3, height_ratios=[1, 1, 1.1, 1.1][:rows], left=0.06, right=0.98,
                          bottom=0.06, top=0.9, hspace=0.45, wspace=0.2)
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
    windows = [(col, label, t_edge, row, half_width)
               for col, (label, t_edge) in enumerate(zip(labels, picks))
               for row, half_width in ((0, 1.5), (1, 0.0015))]
    # behaviour sync of every window (from the edge's segment if it paused), the file opened once
    beh_ranges = []
    for _, _, t_edge, _, half_width in windows:
        smap, first, stop = _segment_at(bmap, t_edge, beh.info.n_samples, beh.info.rate_hz)
        b0 = int(math.floor(smap.from_probe(t_edge - half_width) * beh.info.rate_hz)) - 1
        b1 = int(math.ceil(smap.from_probe(t_edge + half_width) * beh.info.rate_hz)) + 2
        beh_ranges.append((smap, max(first, b0), min(stop, b1)))
    beh_traces = read_windows(beh.info.path, beh.info.group, beh.info.channel,
                              [(b0, b1) if b1 > b0 else (0, 0) for _, b0, b1 in beh_ranges])
    for (col, label, t_edge, row, half_width), (smap, b0c, b1c), x in zip(windows, beh_ranges,
                                                                          beh_traces):
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
            ax.step((StreamClock(src.rate_hz, pmap).to_probe(k) - t_edge) * sc, bit, where="mid",
                    color="C0", lw=1.2, label=f"probe SY bit ({src.kind.upper()})")
        if b1c > b0c:
            lo, hi = beh.low - (beh.high - beh.low) * 0.75, beh.high + (beh.high - beh.low) * 0.75
            y = (x - lo) / (hi - lo)
            tb = StreamClock(beh.info.rate_hz, smap).to_probe(np.arange(b0c, b1c)) - t_edge
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
    _draw_residuals(ax, match, tolerance_s)
    if isinstance(bmap, PiecewiseClockMap):
        ranges = bmap.probe_ranges_s
        for j in range(len(ranges) - 1):
            ax.axvspan(ranges[j][1], ranges[j + 1][0], color="0.85", zorder=0,
                       label="pause (segment boundary)" if j == 0 else None)
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    if other_matches:
        _draw_other_residuals(fig.add_subplot(gs[3, :]), other_matches, tolerance_s)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def _draw_residuals(ax: Axes, match: EdgeMatch | SegmentedMatch | None,
                    tolerance_s: float) -> None:
    """Bottom panel: residuals of the matched edges, the tolerance, edges missing in behaviour."""
    if match is not None and len(match.residuals_s):
        r_us = match.residuals_s * 1e6
        rise = match.pairs_rising
        ax.plot(match.pairs_probe_s[rise], r_us[rise], ".", ms=2, color="C0", label="rising")
        ax.plot(match.pairs_probe_s[~rise], r_us[~rise], ".", ms=2, color="C3", label="falling")
        for t in match.missing_in_stream_s:
            ax.axvline(t, color="0.5", lw=0.6, ls=":")
        _residual_limits(ax, max(np.abs(r_us).max() * 1.2, 1.0), tolerance_s)
    ax.set_xlabel("probe time (s)")
    ax.set_ylabel("residual (µs)")
    ax.set_title(f"residuals of matched edges after the fit (tolerance ±{tolerance_s * 1e6:.0f} µs; "
                 "dotted: probe edges missing in behaviour)", fontsize=9)


def _draw_other_residuals(ax: Axes, matches: Mapping[str, EdgeMatch], tolerance_s: float) -> None:
    """Last panel: residuals of each other probe's SY edges (and the NIDQ's sync edges) after
    its fit onto imec0."""
    lim = 1.0
    for k, (probe, m) in enumerate(sorted(matches.items())):
        r_us = m.residuals_s * 1e6
        ax.plot(m.pairs_probe_s, r_us, ".", ms=2, color=f"C{k + 4}",
                label=f"{probe}: {m.ppm:+.2f} ppm, offset {m.offset_s * 1e3:+.3f} ms, "
                      f"{m.n_matched} edges")
        if len(r_us):
            lim = max(lim, np.abs(r_us).max() * 1.2)
    _residual_limits(ax, lim, tolerance_s)
    ax.set_xlabel("probe (imec0) time (s)")
    ax.set_ylabel("residual (µs)")
    title = ("other streams → imec0: residuals of their sync edges (probes: SY; nidq: its sync "
             "line) after the fit" if NIDQ_STREAM in matches
             else "other probes → imec0: residuals of their SY edges after the fit")
    ax.set_title(title, fontsize=9)


def _residual_limits(ax: Axes, lim: float, tolerance_s: float) -> None:
    """A residual panel's ±``lim`` µs range, its tolerance lines (when in view) and legend."""
    if lim > tolerance_s * 1e6 * 0.5:
        ax.axhline(tolerance_s * 1e6, color="r", lw=0.8)
        ax.axhline(-tolerance_s * 1e6, color="r", lw=0.8)
    ax.set_ylim(-lim, lim)
    ax.legend(loc="upper right", fontsize=7, markerscale=4)
