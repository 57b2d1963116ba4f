"""The figures of the session report (:mod:`pixbin.report`): each function draws one PNG from
arrays already read, with matplotlib's Agg canvas (no display), written atomically.

docs/REPORT.md says what each figure shows and how to read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixbin.fileio import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "new_figure",
    "save_png",
    "drift_map",
    "metric_histograms",
    "units_by_depth",
    "unit_waveforms",
    "behaviour_summary",
    "raster_psth",
    "lfp_spectrum",
    "frame_intervals",
    "pose_frame",
]

DPI = 80
MAX_DRIFT_POINTS = 200_000


def new_figure(width_in: float = 11.0, height_in: float = 4.0) -> Figure:
    """A matplotlib Figure on an Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return Path(path)


def _area_colours(areas: Sequence[str]) -> dict[str, tuple]:
    """One tab10 colour per area name, in sorted order (the same in every figure)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {a: cmap(i % 10) for i, a in enumerate(sorted(set(areas)))}


def drift_map(
    path: Path, probe: str, times_s: np.ndarray, depths_um: np.ndarray, *,
    motion_times_s: np.ndarray | None = None, motion_depths_um: np.ndarray | None = None,
    displacement_um: np.ndarray | None = None, what: str = "spikes",
) -> Path:
    """Spike depth against time: one dot per spike (subsampled evenly above
    :data:`MAX_DRIFT_POINTS`), with a histogram of spike counts over depth beside it. With a motion
    estimate (``displacement_um`` of shape (time bins, depth blocks) at ``motion_times_s`` and
    block centres ``motion_depths_um``), each block's centre plus its displacement is drawn over
    the dots in red: where the tissue at that depth was at each time."""
    fig = new_figure(11, 4.5)
    ax, side = fig.subplots(1, 2, width_ratios=[5, 1], sharey=True)
    step = max(1, math.ceil(len(times_s) / MAX_DRIFT_POINTS))
    size = 0.5 if len(times_s) > 50_000 else 2.0
    ax.scatter(times_s[::step], depths_um[::step], s=size, c="k", alpha=0.3, linewidths=0, rasterized=True)
    title = f"{probe}: {len(times_s)} {what}" + (f" (every {step}th shown)" if step > 1 else "")
    if displacement_um is not None:
        for k, centre in enumerate(np.asarray(motion_depths_um, dtype=float)):
            ax.plot(motion_times_s, centre + displacement_um[:, k], color="C3", lw=1.0,
                    label="motion estimate" if k == 0 else None)
        ax.legend(loc="upper right", fontsize=8)
        title += (f"; estimated displacement {np.nanmin(displacement_um):.1f} to "
                  f"{np.nanmax(displacement_um):.1f} µm in {len(motion_depths_um)} depth block(s)")
    ax.set_xlabel("probe time (s)")
    ax.set_ylabel("depth (µm from tip)")
    ax.set_title(title, fontsize=10)
    bins = np.arange(np.floor(depths_um.min() / 20) * 20, depths_um.max() + 40, 20.0)
    side.hist(depths_um, bins=bins, orientation="horizontal", color="0.4")
    side.set_xlabel(what)
    return save_png(fig, path)


def _panel_grid(n: int, row_height_in: float) -> tuple[Figure, np.ndarray]:
    """A figure of ``n`` panels, up to 4 per row (flat array of axes; spare ones hidden)."""
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = new_figure(11, row_height_in * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def metric_histograms(path: Path, units: pd.DataFrame, columns: Sequence[str]) -> Path:
    """One histogram per quality metric column (finite values), units of every probe."""
    fig, axes = _panel_grid(len(columns), 2.4)
    for ax, name in zip(axes, columns):
        values = units[name].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="C0")
        ax.set_title(f"{name} (n={len(values)})", fontsize=9)
        ax.tick_params(labelsize=8)
    return save_png(fig, path)


def units_by_depth(path: Path, units: pd.DataFrame, rate_column: str | None) -> Path:
    """Each unit at its depth, per probe: x = firing rate (log) or the unit's rank, colour = area,
    open marker = label ``noise``."""
    probes = sorted(units["probe"].unique())
    colours = _area_colours(units["area"].astype(str))
    fig = new_figure(min(11, 3.2 * len(probes) + 2.5), 5)
    axes = np.atleast_1d(fig.subplots(1, len(probes), sharey=True)).ravel()
    for ax, probe in zip(axes, probes):
        u = units[units["probe"] == probe]
        x = u[rate_column].to_numpy(float) if rate_column else np.arange(len(u), dtype=float)
        for area, group in u.groupby(u["area"].astype(str)):
            xs = x[(u["area"].astype(str) == area).to_numpy()]
            noise = (group["label"] == "noise").to_numpy() if "label" in group else np.zeros(len(group), bool)
            ax.scatter(xs[~noise], group["depth_um"].to_numpy()[~noise], color=colours[area],
                       label=area, s=18)
            ax.scatter(xs[noise], group["depth_um"].to_numpy()[noise], facecolors="none",
                       edgecolors=colours[area], s=18)
        if rate_column:
            ax.set_xscale("log")
        ax.set_xlabel(f"{rate_column} (log)" if rate_column else "unit (order in units.parquet)")
        ax.set_title(probe, fontsize=10)
    axes[0].set_ylabel("depth (µm from tip)")
    axes[-1].legend(fontsize=8, loc="best", title="area", title_fontsize=8)
    return save_png(fig, path)


def unit_waveforms(path: Path, waveforms: Sequence[Mapping]) -> Path:
    """Mean waveforms (templates) of the best units: each panel the peak channel (black) and its
    neighbours (grey), ``{title, time_ms, peak (n_t,), neighbours (n_t, k)}`` per unit."""
    fig, axes = _panel_grid(len(waveforms), 2.6)
    for ax, w in zip(axes, waveforms):
        if w["neighbours"].size:
            ax.plot(w["time_ms"], w["neighbours"], color="0.7", lw=0.8)
        ax.plot(w["time_ms"], w["peak"], color="k", lw=1.2)
        ax.set_title(w["title"], fontsize=9)
        ax.set_xlabel("ms from extremum", fontsize=8)
        ax.tick_params(labelsize=8)
    return save_png(fig, path)


def behaviour_summary(path: Path, trials: pd.DataFrame, reaction_s: np.ndarray | None,
                      reaction_label: str) -> Path:
    """Left: every trial at its start time, one row per action, colour = outcome, x = invalid.
    Right: the reaction-time histogram (when derivable) or nothing."""
    fig = new_figure(11, 3.6)
    ax, rt = fig.subplots(1, 2, width_ratios=[3, 1])
    actions = sorted(trials["action"].astype(str).unique())
    outcomes = sorted(trials["outcome"].astype(str).unique())
    row = {a: i for i, a in enumerate(actions)}
    for k, outcome in enumerate(outcomes):
        t = trials[trials["outcome"].astype(str) == outcome]
        y = t["action"].astype(str).map(row).to_numpy(float)
        valid = t["valid"].to_numpy(bool) if "valid" in t else np.ones(len(t), bool)
        ax.scatter(t["start_s"].to_numpy()[valid], y[valid], color=f"C{k}", marker="|", s=300,
                   label=f"{outcome} ({len(t)})")
        ax.scatter(t["start_s"].to_numpy()[~valid], y[~valid], color=f"C{k}", marker="x", s=40)
    ax.set_yticks(range(len(actions)), actions, fontsize=8)
    ax.set_ylim(-0.6, len(actions) - 0.4)
    ax.set_xlabel("trial start (probe time, s)")
    ax.set_title(f"{len(trials)} trials (x: not valid)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right", title="outcome", title_fontsize=8)
    if reaction_s is not None and len(reaction_s):
        rt.hist(reaction_s * 1000, bins=min(30, max(5, len(reaction_s))), color="C0")
        rt.set_xlabel("ms")
        rt.set_title(f"{reaction_label}\n(n={len(reaction_s)}, median {np.median(reaction_s) * 1000:.0f} ms)",
                     fontsize=9)
    else:
        rt.set_axis_off()
    return save_png(fig, path)


def raster_psth(path: Path, action: str, window_s: tuple[float, float],
                areas: Mapping[str, list[list[np.ndarray]]], bin_s: float = 0.02) -> Path:
    """Per area (columns): a raster (each trial a row; its units spread inside the row) and the
    PSTH (mean rate per unit, ``bin_s`` bins) around the alignment. ``areas[area][trial][unit]``
    holds spike times relative to the alignment."""
    names = list(areas)
    fig = new_figure(min(11, 2.9 * len(names) + 1), 5.2)
    axes = np.atleast_2d(fig.subplots(2, len(names), sharex=True, height_ratios=[2, 1], squeeze=False))
    edges = np.arange(window_s[0], window_s[1] + bin_s / 2, bin_s)
    for col, area in enumerate(names):
        per_trial = areas[area]
        n_trials, n_units = len(per_trial), len(per_trial[0]) if per_trial else 0
        xs, ys = [], []
        for i, units in enumerate(per_trial):
            for j, t in enumerate(units):
                xs.append(t)
                ys.append(np.full(len(t), i + j / max(n_units, 1)))
        x = np.concatenate(xs) if xs else np.empty(0)
        y = np.concatenate(ys) if ys else np.empty(0)
        ax = axes[0, col]
        ax.scatter(x, y, s=0.6, c="k", linewidths=0, rasterized=True)
        ax.axvline(0, color="r", lw=0.8)
        ax.set_ylim(0, max(n_trials, 1))
        ax.set_title(f"{area}: {n_units} units × {n_trials} trials", fontsize=9)
        if col == 0:
            ax.set_ylabel("trial")
        counts, _ = np.histogram(x, bins=edges)
        rate = counts / max(n_trials * n_units, 1) / bin_s
        axes[1, col].step(edges[:-1], rate, where="post", color="C0")
        axes[1, col].axvline(0, color="r", lw=0.8)
        axes[1, col].set_xlabel(f"s from {action} alignment")
        if col == 0:
            axes[1, col].set_ylabel("Hz per unit")
    return save_png(fig, path)


def lfp_spectrum(path: Path, probe: str, freqs_hz: np.ndarray, depths_um: np.ndarray,
                 power: np.ndarray, span_s: tuple[float, float]) -> Path:
    """Left: power by depth and frequency, in dB relative to the median over depth at each
    frequency (so depth structure shows at every frequency); right: the absolute spectrum
    (dB re 1 µV²/Hz), median over depth. Frequencies 1 Hz to 80 % of Nyquist."""
    fig = new_figure(11, 4.5)
    ax, mean = fig.subplots(1, 2, width_ratios=[3, 1.3])
    nyquist = freqs_hz.max()
    keep = (freqs_hz >= 1.0) & (freqs_hz <= 0.8 * nyquist)
    db = 10 * np.log10(np.maximum(power[:, keep], 1e-12))
    median = np.median(db, axis=0)
    rel = db - median
    lim = max(float(np.percentile(np.abs(rel), 99)), 0.5)
    im = ax.pcolormesh(freqs_hz[keep], depths_um, rel, shading="nearest", vmin=-lim, vmax=lim,
                       cmap="RdBu_r", rasterized=True)
    ax.set_xscale("log")
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("depth (µm from tip)")
    ax.set_title(f"{probe}: LFP power by depth, {span_s[0]:.0f}–{span_s[1]:.0f} s", fontsize=10)
    fig.colorbar(im, ax=ax, label="dB re median over depth")
    mean.plot(freqs_hz[keep], median, color="k")
    mean.set_xscale("log")
    mean.set_xlabel("frequency (Hz)")
    mean.set_ylabel("dB re 1 µV²/Hz (median over depth)")
    return save_png(fig, path)


def frame_intervals(path: Path, camera: str, frame_times_s: np.ndarray, period_s: float | None
                    ) -> Path:
    """Interval between consecutive saved frames against time; ≥ 1.5 periods (a dropped frame)
    in red, the nominal period dashed."""
    fig = new_figure(11, 3.2)
    ax = fig.subplots()
    dt_ms = np.diff(frame_times_s) * 1000
    t = frame_times_s[1:]
    ax.plot(t, dt_ms, ".", ms=2, color="C0", label="saved frame")
    if period_s:
        long = dt_ms > 1.5 * period_s * 1000
        ax.plot(t[long], dt_ms[long], "o", ms=5, color="C3", label=f"gap ≥ 1.5 periods ({long.sum()})")
        ax.axhline(period_s * 1000, color="0.5", ls="--", lw=0.8, label=f"period {period_s * 1000:.2f} ms")
    ax.set_xlabel("probe time (s)")
    ax.set_ylabel("frame interval (ms)")
    ax.set_title(f"{camera}: {len(frame_times_s)} saved frames", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return save_png(fig, path)


def pose_frame(path: Path, camera: str, image: np.ndarray, points: Mapping[str, tuple[float, float]],
               title: str) -> Path:
    """One video frame (grey) with each keypoint of the pose at that frame's time overlaid."""
    h, w = image.shape[:2]
    fig = new_figure(6, 6 * h / w + 0.6)
    ax = fig.subplots()
    ax.imshow(image, cmap="gray", interpolation="nearest")
    for k, (name, (x, y)) in enumerate(points.items()):
        ax.plot(x, y, "+", ms=14, mew=2, color=f"C{k % 10}", label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    if points:
        ax.legend(fontsize=8, loc="upper right")
    return save_png(fig, path)
