"""A self-contained HTML report per processed session, and one page linking them.

``write_report(data_root)`` writes ``data/processed/<session>/report/index.html`` with its figures
as PNG files beside it (referenced relatively: the folder can be copied, mailed or opened from
disk; no server, no JavaScript needed), and ``data/processed/report.html`` linking every session
that has a report. Sections: sync QC, drift map, unit quality, behaviour, raster + PSTH, LFP,
camera, stage records. A section whose input file is absent says so in the page instead of
showing a figure. The report folder is made in a temporary folder and renamed into place, so a
reader sees the previous report or the new one, never a mix.

docs/REPORT.md describes every figure and how to read it.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixbin import layout, readers
from pixbin import report_figures as figs
from pixbin.errors import PixbinError
from pixbin.fileio import atomic_path
from pixbin.sorting import MOTION_FOLDER

__all__ = ["write_report", "write_session_report", "write_index", "SECTIONS"]

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX = "index.html"
DATASET_REPORT = "report.html"
LFP_SPAN_S = 60.0
N_BEST_UNITS = 8
POSE_FRAME_SEARCH = 600  # frames decoded at most to find one with a pose
NOT_METRICS = {"unit_id", "channel", "x_um", "depth_um", "depth_below_surface_um", "phy_ch",
               "phy_depth", "num_spikes", "depth_corrected_um", "motion_displacement_um"}

_STYLE = """
body{font-family:sans-serif;max-width:1150px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;margin-top:2em} h3{font-size:1.05em}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:1em 0} figcaption{font-size:.9em;color:#444;margin-top:.3em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.4em .8em;margin:.6em 0}
.fail{color:#b00;font-weight:bold} .ok{color:#070}
nav a{margin-right:1em} details summary{cursor:pointer} code{font-size:.85em}
"""

# Sets body[data-loaded] once every image has loaded ("all") or one failed ("broken"); the page
# reads the same without it (a check for tests and headless browsers).
_LOAD_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-loaded', ok ? 'all' : 'broken');
  document.body.setAttribute('data-images', String(imgs.length));
});
</script>"""


@dataclass
class Section:
    """One section of the page: a title and its parts (figures, tables, notes) in order."""

    key: str
    title: str
    parts: list[str] = field(default_factory=list)

    def figure(self, png: Path, caption: str) -> None:
        """A figure already written into the report folder, with its caption."""
        self.parts.append(f'<figure><img src="{html.escape(png.name)}" alt="{html.escape(caption[:120])}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def note(self, text: str) -> None:
        """A visible note (why a figure is not there)."""
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def html(self, fragment: str) -> None:
        """Already-escaped HTML (a table)."""
        self.parts.append(fragment)

    def render(self) -> str:
        body = "\n".join(self.parts) or '<p class="note">nothing to show</p>'
        return f'<section id="{self.key}">\n<h2>{html.escape(self.title)}</h2>\n{body}\n</section>'


@dataclass
class _Context:
    """What the section builders share: the session, its files and the report folder."""

    data_root: Path
    session_id: str
    files: layout.Processed
    out: Path

    @property
    def dir(self) -> Path:
        return self.files.dir

    def cached(self, name: str, read: Callable[[], Any]) -> Any:
        """Read once per report (units, spikes, trials are used by several sections)."""
        cache = self.__dict__.setdefault("_cache", {})
        if name not in cache:
            cache[name] = read()
        return cache[name]

    def units(self):
        return self.cached("units", lambda: readers.read_units(self.dir))

    def spikes(self):
        return self.cached("spikes", lambda: readers.read_spikes(self.dir))

    def trials(self):
        return self.cached("trials", lambda: readers.read_trials(self.dir))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """An HTML table of ``rows`` (cells escaped; True/False coloured)."""
    def cell(v: Any) -> str:
        if isinstance(v, bool) or isinstance(v, np.bool_):
            return f'<td class="{"ok" if v else "fail"}">{v}</td>'
        if isinstance(v, float):
            v = f"{v:.6g}"
        return f"<td>{html.escape('' if v is None else str(v))}</td>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _missing(section: Section, path: Path, stage: str) -> None:
    section.note(f"skipped: {path.name} is absent (written by the {stage} stage)")


def _probes(ctx: _Context) -> list[str]:
    """The session's probes: from spikes.h5, units.parquet and sync.json's streams."""
    found: set[str] = set()
    if ctx.files.spikes.is_file():
        found |= set(ctx.spikes())
    if ctx.files.units.is_file():
        found |= set(ctx.units()["probe"].astype(str))
    if ctx.files.sync_json.is_file():
        found |= {s.split(".")[0] for s in readers.read_sync(ctx.dir).get("streams", {})
                  if s.startswith("imec")}
    return sorted(found) or ["imec0"]


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def _sync_section(ctx: _Context, s: Section) -> None:
    """The sync stage's figure(s) copied in, and sync.json's streams as a table."""
    recs = range(len(readers.read_lag(ctx.dir))) if ctx.files.lag_json.is_file() else [0]
    for rec in recs:
        png = ctx.files.sync_figure(rec)
        if png.is_file():
            dest = ctx.out / png.name
            with atomic_path(dest) as tmp:
                shutil.copyfile(png, tmp)
            s.figure(dest, f"Recording {rec}: probe SY bit and behaviour sync around three matched "
                           "edges, and the residuals of every matched edge after the fit (docs/SYNC.md).")
        else:
            _missing(s, png, "sync")
    if not ctx.files.sync_json.is_file():
        return _missing(s, ctx.files.sync_json, "sync")
    sync = readers.read_sync(ctx.dir)
    rows = []
    for name, st in sync.get("streams", {}).items():
        res = st.get("residual_us") or {}
        rows.append({"stream": name, "offset_s": st.get("offset_s"), "ppm": st.get("ppm"),
                     "pass": st.get("pass"),
                     "residual_us (median / max)": (f"{res['median']:.1f} / {res['max']:.1f}"
                                                    if "median" in res else ""),
                     "decided_by": st.get("decided_by", ""),
                     "warnings": "; ".join(map(str, st.get("warnings") or []))})
    ok = bool(sync.get("pass"))
    s.html(f'<p>sync.json overall: <span class="{"ok" if ok else "fail"}">{"PASS" if ok else "FAIL"}'
           f"</span> {html.escape(str(sync.get('reason') or ''))}</p>")
    s.html(_table(rows, ["stream", "offset_s", "ppm", "pass", "residual_us (median / max)",
                         "decided_by", "warnings"]))
    for w in sync.get("warnings") or []:
        s.note(f"sync warning: {w}")


def _drift_section(ctx: _Context, s: Section) -> None:
    """Per probe: spike depth against time, with the sorter's motion estimate when one is stored."""
    for path, stage in ((ctx.files.spikes, "spikes"), (ctx.files.units, "spikes")):
        if not path.is_file():
            return _missing(s, path, stage)
    units = ctx.units()
    for probe, (times, ids) in sorted(ctx.spikes().items()):
        motion_dir = ctx.files.sorting_dir(probe) / MOTION_FOLDER
        if motion_dir.is_dir():
            _motion_drift_map(ctx, s, probe, motion_dir)
            continue
        u = units[units["probe"] == probe].set_index("unit_id")["depth_um"]
        known = np.isin(ids, u.index.to_numpy())
        if not known.any():
            s.note(f"{probe}: no spike belongs to a unit of units.parquet")
            continue
        depths = u.reindex(ids[known]).to_numpy(float)
        png = figs.drift_map(ctx.out / f"drift_{probe}.png", probe, times[known], depths)
        s.figure(png, f"{probe}: each spike at its time and its unit's depth (depth_um of "
                      "units.parquet); no motion estimate is stored for this probe. Horizontal "
                      "bands that stay level mean a stable probe; bands that bend together mean drift.")


def _motion_drift_map(ctx: _Context, s: Section, probe: str, motion_dir: Path) -> None:
    """The peaks the motion was estimated from, at their own depth, with the estimate over them."""
    from pixbin.sorting import load_motion

    info = load_motion(motion_dir)
    motion, peaks, locations = info["motion"], info["peaks"], info["peak_locations"]
    rate = float(info["parameters"].get("sampling_frequency") or 0) or _ap_rate(ctx, probe)
    times = peaks["sample_index"] / rate
    png = figs.drift_map(ctx.out / f"drift_{probe}.png", probe, times, np.asarray(locations["y"], float),
                         motion_times_s=motion.temporal_bins_s[0], motion_depths_um=motion.spatial_bins_um,
                         displacement_um=motion.displacement[0], what="detected peaks")
    s.figure(png, f"{probe}: each peak the sorter's motion estimate used, at its time and its "
                  f"localised depth ({layout.recorded_path(motion_dir, ctx.dir)}); red: each depth "
                  "block's centre moved by the estimated displacement. The red lines should follow "
                  "the bands of dots; level bands and lines mean a stable probe.")


def _ap_rate(ctx: _Context, probe: str) -> float:
    """The probe's AP rate, from spikes.h5."""
    import h5py

    with h5py.File(ctx.files.spikes, "r") as h5:
        return float(h5[probe].attrs["sampling_frequency_hz"])


def _metric_columns(units) -> tuple[list[str], list[str]]:
    """(numeric metric columns with values, those entirely NaN)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    numeric = [c for c in units.columns if c not in NOT_METRICS and not c.startswith("phy_")
               and is_numeric_dtype(units[c]) and not is_bool_dtype(units[c])]
    empty = [c for c in numeric if not np.isfinite(units[c].to_numpy(float)).any()]
    return [c for c in numeric if c not in empty], empty


def _units_section(ctx: _Context, s: Section) -> None:
    """Metric distributions, units by depth coloured by area, waveforms of the best units."""
    if not ctx.files.units.is_file():
        return _missing(s, ctx.files.units, "spikes")
    units = ctx.units()
    if not len(units):
        return s.note("units.parquet has no units")
    counts = units.groupby([units["probe"], units["label"].astype(str)]).size()
    s.html(_table([{"probe": p, "label": lab, "units": n} for (p, lab), n in counts.items()],
                  ["probe", "label", "units"]))
    metrics, empty = _metric_columns(units)
    if metrics:
        png = figs.metric_histograms(ctx.out / "unit_metrics.png", units, metrics)
        s.figure(png, "Distribution of each quality metric of units.parquet over all units "
                      f"({', '.join(metrics)}).")
    if empty:
        s.note(f"no values in units.parquet for: {', '.join(empty)} (all NaN: not computable "
               "for this session, e.g. no waveforms without an AP recording, or a recording "
               "shorter than the presence-ratio bin)")
    rate = "firing_rate_hz" if "firing_rate_hz" in units and np.isfinite(
        units["firing_rate_hz"].to_numpy(float)).any() else None
    png = figs.units_by_depth(ctx.out / "units_depth.png", units, rate)
    s.figure(png, "Each unit at its depth on its probe, coloured by area (open: label noise); "
                  "x: firing rate.")
    _waveforms(ctx, s, units)


def _phy_folder(ctx: _Context, units, probe: str) -> Path | None:
    """The phy folder a probe's units came from (recorded in units.parquet, else
    ``sorting/<probe>/phy``), if it exists."""
    for entry in (units.attrs.get("pixbin") or {}).get("probes") or []:
        if entry.get("probe") == probe and entry.get("phy_folder"):
            folder = Path(entry["phy_folder"])
            folder = folder if folder.is_absolute() else ctx.dir / folder
            if folder.is_dir():
                return folder
    folder = ctx.files.sorting_dir(probe) / "phy"
    return folder if folder.is_dir() else None


def _templates(folder: Path) -> tuple[np.ndarray, dict[int, int], np.ndarray | None] | None:
    """(templates (n, t, ch), cluster → template index, template channel indices or None) of a
    phy folder, or None without ``templates.npy``."""
    if not (folder / "templates.npy").is_file():
        return None
    templates = np.load(folder / "templates.npy", mmap_mode="r")
    clusters_file, templates_file = folder / "spike_clusters.npy", folder / "spike_templates.npy"
    mapping: dict[int, int] = {}
    if clusters_file.is_file() and templates_file.is_file():
        clusters = np.load(clusters_file).ravel()
        per_spike = np.load(templates_file).ravel()
        for c in np.unique(clusters):
            mapping[int(c)] = int(np.bincount(per_spike[clusters == c]).argmax())
    channels = None
    for name in ("template_ind.npy", "templates_ind.npy"):
        if (folder / name).is_file():
            channels = np.load(folder / name)
    return templates, mapping, channels


def _best_units(units, n: int):
    """The ``n`` non-noise units with the highest SNR (or spike count without SNR)."""
    u = units[units["label"].astype(str) != "noise"] if "label" in units else units
    for key in ("snr", "num_spikes", "firing_rate_hz"):
        if key in u and np.isfinite(u[key].to_numpy(float)).any():
            return u.sort_values(key, ascending=False, na_position="last").head(n), key
    return u.head(n), None


def _waveforms(ctx: _Context, s: Section, units) -> None:
    """Templates of the best units from their phy folder (``templates.npy``), if it has them."""
    waves, notes = [], []
    for probe in sorted(units["probe"].unique()):
        folder = _phy_folder(ctx, units, probe)
        loaded = _templates(folder) if folder is not None else None
        if loaded is None:
            notes.append(f"{probe}: " + ("no phy folder" if folder is None
                                         else f"no templates.npy in {folder.name}/"))
            continue
        best, key = _best_units(units[units["probe"] == probe], N_BEST_UNITS)
        entries = (units.attrs.get("pixbin") or {}).get("probes") or []
        rate = next((e.get("sampling_frequency_hz") for e in entries if e.get("probe") == probe),
                    None) or 30000.0
        waves += _unit_waves(loaded, best, probe, key, float(rate))
    if notes:
        s.note("waveforms skipped for " + "; ".join(notes) + " (a sorter run or a phy export "
               "with templates has them; an imported folder without templates does not)")
    if waves:
        png = figs.unit_waveforms(ctx.out / "unit_waveforms.png", waves[:N_BEST_UNITS])
        s.figure(png, "Template (mean waveform, as stored in the phy folder's templates.npy) of the "
                      "best units on their peak channel (black) and four neighbouring channels "
                      "(grey); time from the peak channel's extremum.")


def _unit_waves(loaded, best, probe: str, key: str | None, rate_hz: float) -> list[dict]:
    """The waveform panels of ``best`` units from a phy folder's templates."""
    templates, mapping, channels = loaded
    out = []
    for _, unit in best.iterrows():
        index = mapping.get(int(unit["unit_id"]), int(unit["unit_id"]))
        if index >= templates.shape[0]:
            continue
        t = np.asarray(templates[index], dtype=float)  # (n_t, n_ch)
        peak = int(np.ptp(t, axis=0).argmax())
        order = np.argsort(np.abs(np.arange(t.shape[1]) - peak))[1:5]
        label = f" {key}={unit[key]:.3g}" if key else ""
        channel = int(channels[index, peak]) if channels is not None else peak
        out.append({"title": f"{probe} unit {int(unit['unit_id'])} · {unit.get('area', '')} · ch {channel}{label}",
                    "time_ms": (np.arange(t.shape[0]) - np.abs(t[:, peak]).argmax()) / rate_hz * 1000,
                    "peak": t[:, peak], "neighbours": t[:, order]})
    return out


def _reaction_times(trials) -> tuple[np.ndarray | None, str]:
    """Tone onset → lever push (back sensor open) per trial, where both exist."""
    for start, end in (("tone_onset_s", "back_sensor_open_s"), ("start_s", "align_time_s")):
        if start in trials and end in trials:
            rt = (trials[end] - trials[start]).to_numpy(float)
            rt = rt[np.isfinite(rt) & (rt > 0)]
            if len(rt):
                return rt, f"{start} → {end}"
    return None, ""


def _behaviour_section(ctx: _Context, s: Section) -> None:
    """Trials and outcomes over the session, and reaction times."""
    if not ctx.files.trials.is_file():
        return _missing(s, ctx.files.trials, "behaviour")
    trials = ctx.trials()
    if not len(trials):
        return s.note("trials.parquet has no trials")
    table = trials.groupby([trials["action"].astype(str), trials["outcome"].astype(str)]).size()
    s.html(_table([{"action": a, "outcome": o, "trials": n} for (a, o), n in table.items()],
                  ["action", "outcome", "trials"]))
    rt, label = _reaction_times(trials)
    png = figs.behaviour_summary(ctx.out / "behaviour.png", trials, rt, label)
    caption = "Every trial at its start time, one row per action, coloured by outcome."
    s.figure(png, caption + (f" Right: reaction times ({label})." if rt is not None else ""))
    if rt is None:
        s.note("no reaction times: trials.parquet has no tone_onset_s → back_sensor_open_s pair")


def _windows() -> dict[str, tuple[float, float]]:
    """Each configured action's window (the default dataset config), for the rasters."""
    from pixbin.dataset import DatasetConfig

    try:
        return {a.name: tuple(a.window_s) for a in DatasetConfig.default().actions}
    except PixbinError:
        return {}


def _aligned(spikes: dict, units, align: np.ndarray, window: tuple[float, float]) -> dict:
    """``{area: [trial][unit] -> spike times relative to the alignment]}`` (non-noise units)."""
    out: dict[str, list[list[np.ndarray]]] = {}
    keep = units[units["label"].astype(str) != "noise"] if "label" in units else units
    sorted_by_unit = {}
    for probe, (times, ids) in spikes.items():
        order = np.argsort(ids, kind="stable")
        uniq, starts = np.unique(ids[order], return_index=True)
        bounds = np.append(starts, len(order))
        sorted_by_unit[probe] = {int(u): times[order[bounds[i]:bounds[i + 1]]] for i, u in enumerate(uniq)}
    for area, group in keep.groupby(keep["area"].astype(str)):
        trains = [sorted_by_unit.get(p, {}).get(int(u), np.empty(0))
                  for p, u in zip(group["probe"], group["unit_id"])]
        out[area] = [[t[np.searchsorted(t, a + window[0]):np.searchsorted(t, a + window[1])] - a
                      for t in trains] for a in align]
    return out


def _raster_section(ctx: _Context, s: Section) -> None:
    """Raster and PSTH per area for each action, aligned to the trial's align_time_s."""
    for path, stage in ((ctx.files.trials, "behaviour"), (ctx.files.spikes, "spikes"),
                        (ctx.files.units, "spikes")):
        if not path.is_file():
            return _missing(s, path, stage)
    trials, windows = ctx.trials(), _windows()
    for action in sorted(trials["action"].astype(str).unique()):
        t = trials[(trials["action"].astype(str) == action) & np.isfinite(trials["align_time_s"])]
        if not len(t):
            s.note(f"{action}: no trial with an alignment time")
            continue
        window = windows.get(action, (-1.0, 1.0))
        areas = _aligned(ctx.spikes(), ctx.units(), np.sort(t["align_time_s"].to_numpy(float)), window)
        if not areas:
            s.note(f"{action}: no units")
            continue
        event = t["align_event"].astype(str).iloc[0]
        png = figs.raster_psth(ctx.out / f"raster_{action}.png", action, window, areas)
        s.figure(png, f"{action} ({len(t)} trials, aligned to {event}, red line): top, spikes of "
                      "every unit of the area, one row per trial (units stacked inside the row); "
                      "bottom, the mean rate per unit in 20 ms bins.")


def _lfp_power(ds, span_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Welch PSD of a ``span_s`` slice from the middle of a lazily opened LFP file, channels at
    the same depth averaged: (freqs, depths, power (depth, freq), (t0, t1))."""
    from scipy.signal import welch

    rate = float(ds.attrs.get("rate_hz", 1000.0))
    n = ds.sizes["time"]
    k = min(n, int(span_s * rate))
    start = (n - k) // 2
    x = ds["lfp"].isel(time=slice(start, start + k)).values.astype(np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < 256:
        raise PixbinError(f"LFP slice has only {len(x)} complete samples")
    freqs, p = welch(x, fs=rate, nperseg=min(1024, len(x)), axis=0)  # (f, ch)
    y = ds["y_um"].values if "y_um" in ds else ds["channel"].values.astype(float)
    depths = np.unique(y)
    power = np.stack([p[:, y == d].mean(axis=1) for d in depths])
    t = ds["time"].values
    return freqs, depths, power, (float(t[start]), float(t[start + k - 1]))


def _lfp_section(ctx: _Context, s: Section) -> None:
    """Power spectrum by depth of each probe's 1 kHz LFP (a bounded slice, read lazily)."""
    for probe in _probes(ctx):
        path = ctx.files.lfp(probe)
        if not path.is_file():
            _missing(s, path, "lfp")
            continue
        with readers.read_lfp(ctx.dir, probe) as ds:
            freqs, depths, power, span = _lfp_power(ds, LFP_SPAN_S)
        png = figs.lfp_spectrum(ctx.out / f"lfp_{probe}.png", probe, freqs, depths, power, span)
        s.figure(png, f"{probe}: power spectral density (Welch, 1.02 s segments) of "
                      f"{span[1] - span[0]:.0f} s of the 1 kHz LFP from the middle of the recording, "
                      "channels at the same depth averaged. Left: each depth's power relative to the median "
                      "over depth at that frequency (red: more power than typical); right: the "
                      "median spectrum.")


def _cameras(ctx: _Context) -> list[str]:
    """Cameras with pose-stage outputs: the pose record's camera and every pose file."""
    found = {p.name[: -len(layout.POSE_SUFFIX)] for p in ctx.files.pose_files()}
    record = ctx.files.record("pose")
    if record.is_file():
        camera = (json.loads(record.read_text()).get("summary") or {}).get("camera")
        if isinstance(camera, str):
            found.add(camera)
    return sorted(found)


def _camera_section(ctx: _Context, s: Section) -> None:
    """Frame intervals and drops over time; one frame with the pose overlaid."""
    cameras = _cameras(ctx)
    if not cameras:
        return s.note("skipped: no camera outputs (no pose record, no <camera>_pose.h5)")
    for camera in cameras:
        frames_path, times_path = ctx.files.frames_json(camera), ctx.files.frame_times(camera)
        if not (frames_path.is_file() and times_path.is_file()):
            _missing(s, frames_path if not frames_path.is_file() else times_path, "pose")
            continue
        frames = readers.read_frames(ctx.dir, camera)
        times = readers.read_frame_times(ctx.dir, camera)
        png = figs.frame_intervals(ctx.out / f"frames_{camera}.png", camera, times, frames.get("period_s"))
        s.figure(png, f"{camera}: interval between consecutive saved frames. {frames.get('n_ttl')} "
                      f"exposures (TTL), {frames.get('n_saved')} saved, {frames.get('n_dropped')} "
                      f"dropped (indices {frames.get('dropped_frame_indices')}); a dropped frame "
                      "shows as one interval of two periods.")
        _pose_overlay(ctx, s, camera, frames, times)


def _video_frame(video: Path, index: int) -> np.ndarray:
    """Frame ``index`` of a video as a grey (h, w) uint8 array (decodes frames 0…index)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video), pix_fmt="gray", bits_per_pixel=8)
    meta = next(reader)
    w, h = meta["size"]
    try:
        for i, raw in enumerate(reader):
            if i == index:
                return np.frombuffer(raw, np.uint8).reshape(h, w)
    finally:
        reader.close()
    raise PixbinError(f"{video}: has no frame {index}")


def _pose_overlay(ctx: _Context, s: Section, camera: str, frames: dict, times: np.ndarray) -> None:
    """One saved frame with the 1 kHz pose at its time overlaid, when both exist."""
    if not ctx.files.pose(camera).is_file():
        return _missing(s, ctx.files.pose(camera), "pose (with dlc_output or dlc_config)")
    video = layout.camera_video(layout.interim_dir(ctx.data_root, ctx.session_id), camera,
                                frames.get("video_codec", "libx264"))
    if not video.is_file():
        return s.note(f"pose overlay skipped: the video {video.name} is not in interim/ "
                      "(re-run extract + pose to regenerate it)")
    pose = readers.read_pose(ctx.dir, camera)
    n = min(len(times), POSE_FRAME_SEARCH)
    at = pose.sel(time=times[:n], method="nearest")
    good = np.isfinite(at["x"].values).sum(axis=1)
    if not good.any():
        return s.note(f"pose overlay skipped: no keypoint in the first {n} frames")
    index = int(np.flatnonzero(good == good.max())[len(np.flatnonzero(good == good.max())) // 2])
    image = _video_frame(video, index)
    points = {str(k): (float(at["x"].values[index, j]), float(at["y"].values[index, j]))
              for j, k in enumerate(pose["keypoint"].values) if np.isfinite(at["x"].values[index, j])}
    png = figs.pose_frame(ctx.out / f"pose_{camera}.png", camera, image, points,
                          f"{camera}: saved frame {index} at {times[index]:.3f} s")
    s.figure(png, f"{camera}: saved frame {index} (from {video.name}) with the 1 kHz pose at "
                  "the frame's time (nearest sample) overlaid; the markers should sit on the "
                  "body parts.")


def _records_section(ctx: _Context, s: Section) -> None:
    """The stage records: status, duration, parameters, version, start time."""
    from pixbin.stages import STAGES

    rows = []
    for stage in STAGES:
        path = ctx.files.record(stage)
        if not path.is_file():
            rows.append({"stage": stage, "status": "not run"})
            continue
        r = json.loads(path.read_text())
        params = html.escape(json.dumps(r.get("params"), indent=1, sort_keys=True))
        rows.append({"stage": stage, "status": r.get("status"), "duration_s": r.get("duration_s"),
                     "pixbin_version": r.get("pixbin_version"), "started": r.get("started"),
                     "error": r.get("error") or "", "params": params})
    table = _table([{k: v for k, v in r.items() if k != "params"} for r in rows],
                   ["stage", "status", "duration_s", "pixbin_version", "started", "error"])
    s.html(table)
    for r in rows:
        if r.get("params"):
            s.html(f"<details><summary>{html.escape(r['stage'])} parameters</summary>"
                   f"<pre><code>{r['params']}</code></pre></details>")


SECTIONS: tuple[tuple[str, str, Callable[[_Context, Section], None]], ...] = (
    ("sync", "Sync QC", _sync_section),
    ("drift", "Drift map", _drift_section),
    ("units", "Unit quality", _units_section),
    ("behaviour", "Behaviour", _behaviour_section),
    ("raster", "Raster and PSTH per area", _raster_section),
    ("lfp", "LFP power by depth", _lfp_section),
    ("camera", "Camera and pose", _camera_section),
    ("records", "Stage records", _records_section),
)


def _build(ctx: _Context, key: str, title: str, builder) -> Section:
    """Run one section builder; a failure becomes a visible note, never a missing section."""
    section = Section(key, title)
    try:
        builder(ctx, section)
    except Exception as e:  # noqa: BLE001 - the rest of the report is still worth writing
        log.warning("%s: report section %s failed: %s", ctx.session_id, key, e)
        section.note(f"could not be drawn: {type(e).__name__}: {e}")
    return section


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{_STYLE}</style>{_LOAD_CHECK}</head>\n<body>\n{body}\n</body></html>\n")


def write_session_report(data_root: str | os.PathLike, session_id: str) -> Path:
    """Write ``processed/<session>/report/`` (index.html + PNGs) and return index.html's path."""
    from pixbin import __version__

    data_root = Path(data_root)
    files = layout.Processed(layout.processed_dir(data_root, session_id))
    if not files.dir.is_dir():
        raise PixbinError(f"{files.dir}: no processed folder (run pixbin process {session_id})")
    final = files.dir / REPORT_DIR
    with atomic_path(final) as tmp:
        tmp.mkdir()
        ctx = _Context(data_root, session_id, files, tmp)
        sections = [_build(ctx, *spec) for spec in SECTIONS]
        nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
        body = (f"<h1>Session {html.escape(session_id)}</h1>\n<p>pixbin {html.escape(__version__)} · "
                f'<a href="../../{DATASET_REPORT}">all sessions</a></p>\n<nav>{nav}</nav>\n'
                + "\n".join(s.render() for s in sections))
        (tmp / INDEX).write_text(_page(f"pixbin report {session_id}", body), encoding="utf-8")
    log.info("report of %s: %s", session_id, final / INDEX)
    return final / INDEX


def _session_row(data_root: Path, session_id: str) -> dict[str, Any]:
    """The dataset page's row of a session: link, sync pass, units, trials, stage states."""
    from pixbin.stages import STAGES

    files = layout.Processed(layout.processed_dir(data_root, session_id))
    row: dict[str, Any] = {"session": session_id}
    if files.sync_json.is_file():
        row["sync pass"] = bool(readers.read_sync(files.dir).get("pass"))
    if files.units.is_file():
        row["units"] = len(readers.read_units(files.dir))
    if files.trials.is_file():
        row["trials"] = len(readers.read_trials(files.dir))
    for stage in STAGES:
        path = files.record(stage)
        row[stage] = json.loads(path.read_text()).get("status") if path.is_file() else "not run"
    return row


def write_index(data_root: str | os.PathLike) -> Path:
    """Write ``processed/report.html``: one row per session that has a report, linked."""
    from pixbin.stages import STAGES

    data_root = Path(data_root)
    root = layout.processed_root(data_root)
    ids = sorted(p.name for p in root.iterdir()
                 if p.is_dir() and (p / REPORT_DIR / INDEX).is_file())
    rows = [_session_row(data_root, sid) for sid in ids]
    columns = ["session", "sync pass", "units", "trials", *STAGES]
    table = _table(rows, columns)
    for sid in ids:  # the session cell becomes a link (ids are folder names, escaped)
        e = html.escape(sid)
        table = table.replace(f"<td>{e}</td>", f'<td><a href="{e}/{REPORT_DIR}/{INDEX}">{e}</a></td>', 1)
    body = f"<h1>pixbin sessions</h1>\n<p>{len(ids)} session report(s)</p>\n{table}"
    path = root / DATASET_REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(_page("pixbin sessions", body), encoding="utf-8")
    return path


def _processed_sessions(data_root: Path) -> list[str]:
    """Every session folder of ``processed/`` (hidden and temporary folders left out)."""
    root = layout.processed_root(data_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_report(data_root: str | os.PathLike, sessions: Iterable[str] | None = None) -> list[Path]:
    """Write the report of each session (default: every processed session) and the dataset page.

    Returns the sessions' ``index.html`` paths, then ``processed/report.html``.
    """
    data_root = Path(data_root)
    ids = list(sessions) if sessions else _processed_sessions(data_root)
    if not ids:
        raise PixbinError(f"{layout.processed_root(data_root)}: no processed session to report")
    paths = [write_session_report(data_root, sid) for sid in ids]
    return paths + [write_index(data_root)]
