"""Spikes stage: sort or import a Kilosort/phy folder per probe, compute unit quality metrics,
assign brain areas, and write ``units.parquet`` + ``spikes.h5`` (docs/PIPELINE.md, docs/SORTING.md).

The parts live in their own modules: :mod:`pixbin.phy` reads phy folders (the one interchange
format, so ``unit_id`` is always the phy ``cluster_id``), :mod:`pixbin.sorting` sorts with
SpikeInterface and computes the quality metrics, :mod:`pixbin.units` holds the unit presets and
brain areas. This module runs them for each probe and writes the stage's files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from pixbin.clock import ClockMap
from pixbin.errors import ConfigError, PixbinError, SortingError
from pixbin.fileio import PROVENANCE_KEY, atomic_path, provenance, read_json, to_json, write_json, write_parquet
from pixbin import layout
from pixbin.params import params_from_dict, params_to_dict
from pixbin.phy import PhySorting, phy_curation, read_phy_folder
from pixbin.sorting import (
    ANALYZER_FOLDER,
    DEFAULT_MOTION_PRESET,
    MOTION_FOLDER,
    choose_sorter,
    compute_unit_metrics,
    create_unit_analyzer,
    export_phy_folder,
    load_motion,
    load_unit_analyzer,
    read_ap_recording,
    resolve_motion,
    run_sorter_on_recording,
    save_unit_analyzer,
    spike_train_metrics,
    unit_displacements,
)
from pixbin.units import apply_metric_labels, assign_areas, read_areas_table

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    from spikeinterface.core import BaseRecording

__all__ = [
    "ProbeInput",
    "SpikesParams",
    "run_spikes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeInput:
    """What the spikes stage gets for one probe.

    Give ``ap_bin`` (a SpikeGLX ``*.ap.bin``, its ``.meta`` beside it) to sort, ``phy_folder`` to
    import a curated Kilosort/phy folder, or both (import; the recording then gives the calibrated
    sample rate, the duration and the waveform metrics). ``ap_meta`` alone with ``phy_folder``
    gives the rate and duration without waveform metrics. ``areas_table``: see
    :func:`pixbin.units.read_areas_table` (overrides the one given to :func:`run_spikes`);
    ``insertion_depth_um``: tip depth below the brain surface, for ``depth_below_surface_um``;
    ``clock_map``: this probe's AP seconds → the probe clock (imec0 AP seconds), from the sync
    stage (``imecN.ap`` in ``sync.json``); None for imec0, whose clock is the probe clock.
    """

    ap_bin: Path | None = None
    phy_folder: Path | None = None
    ap_meta: Path | None = None
    areas_table: Path | None = None
    insertion_depth_um: float | None = None
    clock_map: ClockMap | None = None

    def __post_init__(self) -> None:
        if self.ap_bin is None and self.phy_folder is None:
            raise ConfigError("ProbeInput: expected ap_bin (to sort) or phy_folder (to import), found neither")
        for name in ("ap_bin", "phy_folder", "ap_meta", "areas_table"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))


@dataclass(frozen=True)
class SpikesParams:
    """Parameters of the spikes stage (recorded beside the outputs).

    ``phy_folders`` maps a probe (``imec0``) to a curated Kilosort/phy folder to import instead
    of sorting: relative to ``data/``, ``{session}`` replaced by the session id.
    ``motion_correction`` (true, false, ``"auto"``, the default, or ``"sorter"``) and ``motion_preset`` (a SpikeInterface
    ``correct_motion`` preset) drive the sorter's motion correction, see
    :func:`pixbin.sorting.resolve_motion`.
    """

    sorter: str = "auto"
    sorter_params: Mapping[str, Any] = field(default_factory=dict)
    n_jobs: int = 2
    chunk_duration_s: float = 1.0
    presence_ratio_bin_s: float = 60.0
    isi_threshold_ms: float = 1.5
    min_isi_ms: float = 0.0
    max_spikes_per_unit: int = 500
    noise_chunks: int = 20
    waveform_metrics: bool = True
    phase_shift: bool = False
    motion_correction: bool | Literal["auto", "sorter"] = "auto"
    motion_preset: str = DEFAULT_MOTION_PRESET
    phy_folders: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SpikesParams:
        """Build from a config mapping; unknown keys and wrong types raise ConfigError."""
        return params_from_dict(cls, values, what="spikes parameter")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for provenance)."""
        return params_to_dict(self)

    def phy_folder(self, probe: str, session_id: str, data_root: Path) -> Path | None:
        """The phy folder to import for ``probe`` of a session, or None (sort it)."""
        if probe not in self.phy_folders:
            return None
        folder = Path(self.phy_folders[probe].format(session=session_id))
        return folder if folder.is_absolute() else Path(data_root) / folder


def _main_channel_indices(phy: PhySorting, recording: BaseRecording) -> np.ndarray | None:
    """phy peak channels as recording channel indices, or None (SpikeInterface then finds them)."""
    channels = phy.clusters["channel"].to_numpy(dtype=np.int64)
    if channels.size == 0:
        return None
    if channels.min() < 0 or channels.max() >= recording.get_num_channels():
        return None
    return channels


def _phy_folder_for_probe(
    probe: str, inp: ProbeInput, out_dir: Path, params: SpikesParams, recording: BaseRecording | None,
    record: dict[str, Any], job: dict[str, Any],
) -> tuple[Path, Any]:
    """The phy folder to read (the given one, else the sorting of ``recording`` exported under
    ``out_dir/sorting/<probe>/phy``) and the analyzer of that sorting (None for a given folder)."""
    analyzer = None
    if inp.phy_folder is not None:
        phy_folder = inp.phy_folder
        record["source"] = "phy"
    else:
        sort_dir = layout.Processed(out_dir).sorting_dir(probe)
        sorter = choose_sorter(params.sorter)[0]
        if any(k in params.sorter_params for k in _MOTION_SORTER_KEYS):
            raise ConfigError(f"spikes.sorter_params {sorted(params.sorter_params)}: motion correction is set by "
                              f"spikes.motion_correction and spikes.motion_preset; expected none of "
                              f"{list(_MOTION_SORTER_KEYS)} in sorter_params")
        motion = resolve_motion(sorter, recording, params.motion_correction, params.motion_preset)
        key = _sort_key(params, sorter, inp.ap_bin, motion)
        phy_folder = sort_dir / "phy"
        record.update(source="sorter", sorter=sorter, motion=dict(motion))
        if _kept_sort_matches(sort_dir, key):  # sorted before: keep it and its curation in phy
            curation = phy_curation(phy_folder)
            record.update(sort_reused=True, curated_in_phy=curation)
            if not curation["clusters"] and (sort_dir / ANALYZER_FOLDER).is_dir():
                analyzer = load_unit_analyzer(sort_dir / ANALYZER_FOLDER)
            return phy_folder, analyzer
        if phy_folder.is_dir() and any(phy_curation(phy_folder).values()):
            raise SortingError(f"{phy_folder}: curated in phy, but the sorter, its parameters or the "
                               f"recording changed since that sort; expected the same to keep the "
                               f"curation (restore them), or move the folder away to sort again")
        sorting = run_sorter_on_recording(recording, sort_dir, sorter=sorter, params=params.sorter_params,
                                          phase_shift=params.phase_shift, export_phy=False, motion=motion,
                                          **job)
        analyzer = create_unit_analyzer(sorting, recording, max_spikes_per_unit=params.max_spikes_per_unit,
                                        noise_chunks=params.noise_chunks, phase_shift=params.phase_shift,
                                        **job)
        phy_folder = export_phy_folder(analyzer, phy_folder, **job)
        record.update(sort_reused=False, sort_key=key)
    return phy_folder, analyzer


#: Sorter parameters of motion correction, owned by SpikesParams.motion_correction / motion_preset.
_MOTION_SORTER_KEYS = ("apply_motion_correction", "motion_correction_preset", "motion_correction", "nblocks")

#: SpikesParams fields that change only metrics and labels: any other field's change re-sorts.
_METRIC_ONLY_FIELDS = ("presence_ratio_bin_s", "isi_threshold_ms", "min_isi_ms", "max_spikes_per_unit",
                       "noise_chunks", "waveform_metrics", "phy_folders", "n_jobs", "chunk_duration_s")

#: ``sorting/<probe>/sort.json``: what a kept sort was made from, written once its analyzer and
#: phy folder are complete.
SORT_KEY_FILE = "sort.json"


def _sort_key(params: SpikesParams, sorter: str, ap_bin: Path, motion: Mapping[str, Any]) -> str:
    """What a sort depends on, as JSON: the sorter, the sorting parameters, the motion correction
    applied and the AP file (its .meta's content, which holds SpikeGLX's fileSHA1 and creation
    time, and the .bin's size)."""
    import hashlib

    values = {k: v for k, v in params.to_dict().items() if k not in _METRIC_ONLY_FIELDS}
    meta = hashlib.sha256(ap_bin.with_suffix(".meta").read_bytes()).hexdigest()
    return to_json({**values, "sorter": sorter, "motion_applied": bool(motion["apply"]),
                    "motion_applied_preset": motion["preset"], "ap_meta_sha256": meta,
                    "ap_bin_bytes": ap_bin.stat().st_size})


def _kept_sort_matches(sort_dir: Path, key: str) -> bool:
    """Whether ``sort_dir`` holds a complete sort made from ``key``."""
    path = sort_dir / SORT_KEY_FILE
    if not (path.is_file() and (sort_dir / "phy").is_dir()):
        return False
    try:
        return read_json(path).get("key") == key
    except (ValueError, OSError):
        return False


def _keep_sort(sort_dir: Path, analyzer: Any, key: str) -> None:
    """Save the fresh sort's analyzer (with its metrics) and then its key: a later run reuses it."""
    save_unit_analyzer(analyzer, sort_dir / ANALYZER_FOLDER)
    write_json(sort_dir / SORT_KEY_FILE, {"key": key, PROVENANCE_KEY: provenance()})


def _probe_n_samples(
    phy: PhySorting, phy_folder: Path, inp: ProbeInput, recording: BaseRecording | None, stream: Any,
    record: dict[str, Any],
) -> int:
    """Samples of the probe's recording: the recording's, the meta's, params.py's binary's, else
    up to the last spike; ``record`` says which."""
    if recording is not None or stream is not None:
        n_samples = recording.get_num_samples() if recording is not None else stream.n_samples
        source = inp.ap_bin if recording is not None else inp.ap_meta
        record["duration_from"] = ("recording" if recording is not None
                                   else f"{inp.ap_meta.name} ({stream.n_samples_from})")
        if phy.spike_times_samples.size and phy.spike_times_samples.max() >= n_samples:
            raise SortingError(f"{phy_folder}: spike at sample {phy.spike_times_samples.max()} but "
                               f"{source} has {n_samples} samples; expected the phy folder of that recording")
    elif phy.n_samples is not None:
        n_samples = phy.n_samples
        record["duration_from"] = "params.py dat_path"
    else:
        n_samples = int(phy.spike_times_samples.max()) + 1 if phy.spike_times_samples.size else 0
        record["duration_from"] = "last spike (no recording, dat_path not found)"
        logger.warning("%s: recording duration unknown; firing rates use the last spike time", phy_folder)
    record["n_samples"] = int(n_samples)
    return n_samples


def _probe_metrics(
    phy: PhySorting, phy_folder: Path, recording: BaseRecording | None, analyzer: Any, n_samples: int,
    params: SpikesParams, job: dict[str, Any],
) -> pd.DataFrame:
    """Unit metrics from the recording's waveforms when there is one, else from the spike times."""
    if recording is not None and params.waveform_metrics and phy.unit_ids.size:
        if analyzer is None:
            analyzer = create_unit_analyzer(
                phy.to_spikeinterface(), recording, main_channel_indices=_main_channel_indices(phy, recording),
                max_spikes_per_unit=params.max_spikes_per_unit, noise_chunks=params.noise_chunks,
                phase_shift=params.phase_shift, **job)
        if not np.array_equal(np.asarray(analyzer.unit_ids, dtype=np.int64), phy.unit_ids):
            raise SortingError(f"{phy_folder}: cluster ids {phy.unit_ids[:10]} differ from the sorting's "
                               f"unit ids {np.asarray(analyzer.unit_ids)[:10]}; expected the same units")
        metrics = compute_unit_metrics(analyzer, presence_ratio_bin_s=params.presence_ratio_bin_s,
                                       isi_threshold_ms=params.isi_threshold_ms,
                                       min_isi_ms=params.min_isi_ms, **job)
    else:
        metrics = spike_train_metrics(
            phy.spike_times_samples, phy.spike_clusters, phy.unit_ids,
            sampling_frequency_hz=phy.sampling_frequency_hz, n_samples=max(n_samples, 1),
            presence_ratio_bin_s=params.presence_ratio_bin_s, isi_threshold_ms=params.isi_threshold_ms,
            min_isi_ms=params.min_isi_ms)
    return metrics


def _probe_units(
    probe: str, inp: ProbeInput, phy: PhySorting, metrics: pd.DataFrame, areas_table: Path | None,
    record: dict[str, Any], out_dir: Path,
) -> pd.DataFrame:
    """The probe's rows of ``units.parquet``: phy columns, depth below surface, area, metrics, then
    the folder's other cluster columns as ``phy_<column>``."""
    clusters = phy.clusters
    base = pd.DataFrame({
        "unit_id": clusters["cluster_id"].to_numpy(dtype=np.int64),
        "probe": probe,
        "label": clusters["label"].astype(str).to_numpy(),
        "label_source": clusters["label_source"].astype(str).to_numpy(),
        "ks_label": clusters["ks_label"].astype(object).to_numpy(),
        "channel": clusters["channel"].to_numpy(dtype=np.int64),
        "x_um": clusters["x_um"].to_numpy(dtype=np.float64),
        "depth_um": clusters["depth_um"].to_numpy(dtype=np.float64),
    })
    base["depth_below_surface_um"] = (float(inp.insertion_depth_um) - base["depth_um"]
                                      if inp.insertion_depth_um is not None else np.nan)
    table_path = inp.areas_table if inp.areas_table is not None else areas_table
    areas = read_areas_table(table_path) if table_path is not None else None
    record["areas_table"] = layout.recorded_path(table_path, out_dir)
    base = assign_areas(base, areas)
    units = apply_metric_labels(base.merge(metrics, on="unit_id", how="left", validate="one_to_one"))
    known = {"cluster_id", "label", "label_source", "ks_label", "channel", "x_um", "depth_um", "n_spikes"}
    for column in clusters.columns:
        if column not in known:
            units[f"phy_{column}"] = clusters[column].to_numpy()
    return units


def _add_motion_columns(
    units: pd.DataFrame, phy: PhySorting, sort_dir: Path, record: dict[str, Any], out_dir: Path,
) -> pd.DataFrame:
    """``motion_displacement_um`` (mean estimated displacement over the unit's spikes at its depth)
    and ``depth_corrected_um`` (``depth_um`` minus it: the depth in the motion's reference frame)
    after ``depth_below_surface_um``; NaN for a probe without a stored motion estimate. The
    estimate's folder, SpikeInterface parameters and run times go to ``record["motion"]``."""
    displacement = np.full(len(units), np.nan)
    motion_record = record.get("motion")
    folder = sort_dir / MOTION_FOLDER
    if motion_record is not None and motion_record["apply"] and folder.is_dir():
        info = load_motion(folder)
        motion = info["motion"]
        displacement = unit_displacements(motion, phy.spike_times_s, phy.spike_clusters,
                                          units["unit_id"].to_numpy(), units["depth_um"].to_numpy())
        values = np.concatenate([np.asarray(d, dtype=np.float64).ravel() for d in motion.displacement])
        motion_record.update(
            stored=True, folder=layout.recorded_path(folder, out_dir),
            n_spatial_bins=int(motion.spatial_bins_um.size),
            temporal_bin_s=float(np.median(np.diff(motion.temporal_bins_s[0]))),
            displacement_range_um=[float(values.min()), float(values.max())] if values.size else None,
            si_parameters=info["parameters"], run_times_s=info["run_times"])
    elif motion_record is not None:
        motion_record["stored"] = False
    at = units.columns.get_loc("depth_below_surface_um") + 1
    units.insert(at, "motion_displacement_um", displacement)
    units.insert(at, "depth_corrected_um", units["depth_um"].to_numpy(dtype=np.float64) - displacement)
    return units


def _units_for_probe(
    probe: str, inp: ProbeInput, out_dir: Path, params: SpikesParams, areas_table: Path | None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    """One probe: its rows of units.parquet, spike times (s), spike unit ids and provenance record."""
    recording = read_ap_recording(inp.ap_bin) if inp.ap_bin is not None else None
    stream = None
    if recording is None and inp.ap_meta is not None:
        from pixbin.spikeglx import stream_info

        stream = stream_info(inp.ap_meta)
    record: dict[str, Any] = {"probe": probe}
    job = {"n_jobs": params.n_jobs, "chunk_duration_s": params.chunk_duration_s}
    phy_folder, analyzer = _phy_folder_for_probe(probe, inp, out_dir, params, recording, record, job)
    rate = recording.sampling_frequency if recording is not None else None
    if stream is not None:
        rate = stream.rate_hz
    phy = read_phy_folder(phy_folder, sampling_frequency_hz=rate)
    record.update(phy_folder=layout.recorded_path(phy_folder, out_dir),
                  sampling_frequency_hz=phy.sampling_frequency_hz)
    n_samples = _probe_n_samples(phy, phy_folder, inp, recording, stream, record)
    metrics = _probe_metrics(phy, phy_folder, recording, analyzer, n_samples, params, job)
    if "sort_key" in record:  # a fresh sort, complete now: keep it for the next run
        _keep_sort(layout.Processed(out_dir).sorting_dir(probe), analyzer, record.pop("sort_key"))
    record["metrics_from"] = str(metrics["metrics_from"].iloc[0]) if len(metrics) else "none"
    units = _probe_units(probe, inp, phy, metrics, areas_table, record, out_dir)
    units = _add_motion_columns(units, phy, layout.Processed(out_dir).sorting_dir(probe), record, out_dir)
    times_s = phy.spike_times_s
    if inp.clock_map is not None:
        times_s = inp.clock_map.to_probe(times_s)
        record["clock_map"] = {"stream": inp.clock_map.stream, **inp.clock_map.to_dict()}
    return units, times_s, phy.spike_clusters, record


def _clock_note(probe: str, clock_map: dict | None) -> str:
    """What ``spike_times_s`` of one probe are measured in (the ``clock`` attribute)."""
    if clock_map is None:
        return f"{probe} AP samples / imSampRate, sample 0 = t 0"
    return (f"imec0 AP seconds: {probe} AP samples / imSampRate mapped by sync.json "
            f"{clock_map['stream']} (offset_s {clock_map['offset_s']!r}, rate {clock_map['rate']!r})")


def run_spikes(
    *,
    probes: Mapping[str, ProbeInput],
    out_dir: str | os.PathLike,
    params: SpikesParams | None = None,
    areas_table: str | os.PathLike | None = None,
    failed_probes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Spikes stage: sort or import each probe, then write ``units.parquet`` and ``spikes.h5``.

    A probe whose sorting or import fails does not stop the others: its one-line error is
    recorded under ``failed_probes`` (in the returned summary and both files' ``pixbin``
    metadata) and its units are absent. When every probe fails the stage fails.

    Parameters
    ----------
    probes : mapping probe name -> ProbeInput
        e.g. ``{"imec0": ProbeInput(ap_bin=...)}``; one sorting per probe.
    out_dir : path
        ``processed/<session>/``; sorter folders go to ``out_dir/sorting/<probe>/``.
    params : SpikesParams, optional
    areas_table : path, optional
        Areas table for every probe (rows name the probe); a ProbeInput's own table wins.
    failed_probes : mapping probe name -> str, optional
        Probes the caller could not prepare (e.g. no clock map), recorded like a failed sort.

    Returns
    -------
    dict
        ``{"units": path, "spikes": path, "failed_probes": {probe: error}}``.
    """
    import h5py

    params = params or SpikesParams()
    out_dir = Path(out_dir)
    if not probes and not failed_probes:
        raise ConfigError("run_spikes: expected at least one probe, found none")
    t0 = time.perf_counter()
    tables, trains, records = [], {}, []
    failed = dict(failed_probes or {})
    for probe, inp in probes.items():
        try:
            units, times_s, unit_ids, record = _units_for_probe(
                str(probe), inp, out_dir, params, Path(areas_table) if areas_table is not None else None)
        except PixbinError as exc:
            failed[str(probe)] = str(exc)
            logger.error("spikes: %s failed, going on with the other probes: %s", probe, exc)
            continue
        order = np.argsort(times_s, kind="stable")
        trains[str(probe)] = (times_s[order].astype(np.float64), unit_ids[order].astype(np.int64))
        tables.append(units)
        records.append(record)
    if not tables:
        raise SortingError("every probe failed: " + "; ".join(f"{p}: {e}" for p, e in failed.items()))
    units = pd.concat(tables, ignore_index=True)
    units = units.sort_values(["probe", "unit_id"], kind="stable").reset_index(drop=True)
    prov = {PROVENANCE_KEY: provenance(params.to_dict()), "probes": records,
            "run_time_s": time.perf_counter() - t0}
    if failed:
        prov["failed_probes"] = failed

    units_path, spikes_path = layout.Processed(out_dir).units, layout.Processed(out_dir).spikes
    # both files appear together or not at all
    with atomic_path(units_path) as tmp_units, atomic_path(spikes_path) as tmp_spikes:
        write_parquet(tmp_units, units, metadata=prov)
        with h5py.File(tmp_spikes, "w") as h5:
            h5.attrs["pixbin"] = to_json(prov)
            h5.attrs[PROVENANCE_KEY] = to_json(prov[PROVENANCE_KEY])
            for record in records:
                probe = record["probe"]
                times, ids = trains[probe]
                group = h5.create_group(probe)
                group.create_dataset("spike_times_s", data=times)
                group.create_dataset("spike_unit_ids", data=ids)
                group.attrs["sampling_frequency_hz"] = record["sampling_frequency_hz"]
                group.attrs["clock"] = _clock_note(probe, record.get("clock_map"))
                group.attrs["source"] = record["phy_folder"]
    logger.info("spikes: %d units on %d probes in %.1f s", len(units), len(records), prov["run_time_s"])
    return {"units": units_path, "spikes": spikes_path, "failed_probes": failed}
