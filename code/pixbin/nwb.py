"""One session's processed outputs (and its binned tensors) as one NWB file (docs/NWB.md).

:func:`export_nwb` reads ``data/processed/<session>/`` through :mod:`pixbin.readers`, the probe
geometry from the session's SpikeGLX ``.meta`` files, subject and session metadata from an
optional ``data/raw/<session>/session.yaml`` (:func:`read_session_metadata`), and the session's
per-action files in ``data/binned/sessions/`` when built. Every time in the file is on the imec0
AP clock, in seconds from the session start (the AP file's ``fileCreateTime``). Needs the
``[nwb]`` extra (pynwb, ndx-pose, ndx-binned-spikes).

Examples
--------
>>> from pixbin.nwb import export_nwb  # doctest: +SKIP
>>> export_nwb("data", "240101_SIM01")  # doctest: +SKIP
PosixPath('data/exports/nwb/240101_SIM01.nwb')
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pixbin import __version__, layout, readers
from pixbin.binned_inputs import regular_clock, session_unit_ids
from pixbin.errors import ConfigError, DatasetError, PixbinError
from pixbin.fileio import atomic_path, provenance, sha256_file, to_json

__all__ = [
    "SESSION_YAML",
    "SessionMetadata",
    "read_session_metadata",
    "recording_end_s",
    "trial_stop_times",
    "default_nwb_path",
    "export_nwb",
]

log = logging.getLogger(__name__)

#: The optional metadata file in ``data/raw/<session>/``.
SESSION_YAML = "session.yaml"
_SEXES = ("M", "F", "U", "O")
_ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
_UNIT_COLUMNS = {  # units.parquet columns with a known meaning; others are described generically
    "cluster_id": "the sorter's cluster id on its probe (unit_id of units.parquet)",
    "probe": "probe name, imecN",
    "label": "good / mua / noise / unsorted",
    "label_source": "where the label came from (curated, sorter, metrics)",
    "channel": "peak channel (readout channel of the probe)",
    "x_um": "x position of the peak channel on the probe, um",
    "depth_um": "y position of the peak channel above the tip-most site row, um",
    "depth_below_surface_um": "insertion depth minus depth_um, um (NaN without an insertion depth)",
    "area": "brain area of the peak channel (areas table); the electrode's location",
    "firing_rate_hz": "spikes per second over the recording",
    "num_spikes": "number of spikes",
}


# --------------------------------------------------------------------------- session.yaml
@dataclass(frozen=True)
class SessionMetadata:
    """Subject and session metadata of ``session.yaml``; see docs/NWB.md for which are required
    by NWB and by DANDI and what a missing key becomes."""

    timezone: str | None = None
    subject_id: str | None = None
    species: str = "Mus musculus"
    sex: str = "U"
    age: str | None = None
    date_of_birth: dt.date | None = None
    strain: str | None = None
    genotype: str | None = None
    session_description: str | None = None
    experiment_description: str | None = None
    experimenter: tuple[str, ...] = ()
    institution: str | None = None
    lab: str | None = None
    keywords: tuple[str, ...] = ()
    source: Path | None = field(default=None, compare=False)


def read_session_metadata(raw_dir: str | os.PathLike) -> SessionMetadata:
    """``<raw_dir>/session.yaml`` checked (unknown keys, types, ISO 8601 age, sex, timezone), or
    the defaults when the file is absent."""
    import yaml

    path = Path(raw_dir) / SESSION_YAML
    if not path.is_file():
        return SessionMetadata()
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, found {type(content).__name__}")
    known = [f.name for f in fields(SessionMetadata) if f.name != "source"]
    unknown = sorted(set(content) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys: {known}")
    values: dict[str, Any] = {}
    for key, value in content.items():
        if value is None:
            continue
        if key in ("experimenter", "keywords"):
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
                raise ConfigError(f"{path}: {key}: expected a string or a list of strings; found {value!r}")
            values[key] = tuple(items)
        elif key == "date_of_birth":
            if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
                raise ConfigError(f"{path}: date_of_birth: expected a date YYYY-MM-DD; found {value!r}")
            values[key] = value
        elif not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {key}: expected a non-empty string; found {value!r}")
        else:
            values[key] = value.strip()
    if "sex" in values and values["sex"] not in _SEXES:
        raise ConfigError(f"{path}: sex: expected one of {list(_SEXES)}; found {values['sex']!r}")
    if "age" in values and not _ISO_DURATION.match(values["age"]):
        raise ConfigError(f"{path}: age: expected an ISO 8601 duration such as P90D or P12W; "
                          f"found {values['age']!r}")
    if "timezone" in values:
        _zone(values["timezone"], path)
    return SessionMetadata(**values, source=path)


def _zone(name: str, where: Path) -> dt.tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(f"{where}: timezone: {name!r} is not an IANA time zone name "
                          "(e.g. Europe/London, America/New_York, UTC)") from e


# --------------------------------------------------------------------------- shared helpers
def recording_end_s(processed_dir: str | os.PathLike) -> float:
    """End of the imec0 probe recording in probe seconds: AP samples / rate of units.parquet's
    record, else the 1 kHz behaviour file's end."""
    units = readers.read_units(processed_dir)
    for entry in units.attrs.get("pixbin", {}).get("probes", []):
        if entry.get("probe") == "imec0" and entry.get("n_samples") and entry.get("sampling_frequency_hz"):
            return float(entry["n_samples"]) / float(entry["sampling_frequency_hz"])
    channels = readers.read_behaviour_channels(processed_dir)
    if channels is not None:
        t0, rate = regular_clock(channels["time"].to_numpy(), Path(processed_dir))
        return t0 + channels.sizes["time"] / rate
    raise PixbinError(f"{layout.Processed(Path(processed_dir)).units}: records no imec0 sample count "
                      "and the session has no 1 kHz behaviour file; re-run the spikes stage "
                      "(pixbin process --force spikes)")


def trial_stop_times(trials: pd.DataFrame, end_s: float) -> np.ndarray:
    """A trial lasts until the next trial's start (``start_s`` order); the last one until the
    recording end (or its own start, if that lies after the end)."""
    start = trials["start_s"].to_numpy(dtype=np.float64)
    if np.any(np.diff(start) < 0) or not np.all(np.isfinite(start)):
        raise DatasetError("trials.parquet: start_s must be finite and ascending with trial_id "
                           "(the behaviour stage writes it so); re-run the behaviour stage")
    if start.size == 0:
        return start
    return np.r_[start[1:], max(float(end_s), float(start[-1]))]


def default_nwb_path(data_dir: str | os.PathLike, session: str) -> Path:
    """``data/exports/nwb/<session>.nwb``."""
    return layout.exports_dir(Path(data_dir)) / "nwb" / f"{session}.nwb"


# --------------------------------------------------------------------------- raw inputs
def _meta_copy(raw_session: Any, probe: str, tmp: Path) -> Path:
    """An uncompressed ``.meta`` of ``probe`` (AP, else LF): the interim copy, the raw file, or
    the raw archive unpacked into ``tmp``."""
    from pixbin.extract import extract_file

    role = "ap_meta" if raw_session.has("ap_meta", probe=probe) else "lf_meta"
    raw = raw_session.file(role, probe=probe)
    interim = raw_session.interim_dir / raw.name
    if interim.is_file():
        return interim
    if not raw.compressed:
        return raw.raw_path
    return extract_file(raw, tmp, {})


def _session_start(meta_path: Path, meta: SessionMetadata, raw_dir: Path) -> dt.datetime:
    from pixbin.spikeglx import read_meta

    created = read_meta(meta_path).get("fileCreateTime")
    try:
        start = dt.datetime.fromisoformat(str(created))
    except ValueError as e:
        raise PixbinError(f"{meta_path}: fileCreateTime {created!r} is not an ISO date and time; "
                          "the NWB session start time is taken from it") from e
    if start.tzinfo is not None:
        return start
    if meta.timezone is None:
        raise ConfigError(
            f"{meta_path}: fileCreateTime {created} has no time zone, and NWB needs the session "
            f"start time with one; add 'timezone: <IANA name>' (e.g. Europe/London) to "
            f"{raw_dir / SESSION_YAML}")
    return start.replace(tzinfo=_zone(meta.timezone, meta.source or raw_dir / SESSION_YAML))


# --------------------------------------------------------------------------- export
def export_nwb(data_dir: str | os.PathLike, session: str, out: str | os.PathLike | None = None, *,
               include_lfp: bool = False, include_binned: bool = True) -> Path:
    """Write one session as an NWB file, atomically.

    Parameters
    ----------
    data_dir
        The ``data/`` folder (raw/, processed/, binned/).
    session
        Session id (folder name in ``data/processed``).
    out
        The file to write; default ``data/exports/nwb/<session>.nwb``.
    include_lfp
        Add the 1 kHz LFP of every probe as an ElectricalSeries (large: 384 channels × 4 bytes
        per ms).
    include_binned
        Add the session's binned tensors of ``data/binned/sessions/`` (when built) as
        ndx-binned-spikes ``BinnedAlignedSpikes``; they must have been built from the current
        units, spikes and trials.

    Returns
    -------
    Path of the NWB file.
    """
    from pynwb import NWBHDF5IO

    data_dir = Path(data_dir)
    out = Path(out) if out is not None else default_nwb_path(data_dir, session)
    with tempfile.TemporaryDirectory(prefix="pixbin-nwb-") as tmp, contextlib.ExitStack() as opened:
        nwbfile = _build(data_dir, session, Path(tmp), opened, include_lfp, include_binned)
        with atomic_path(out) as part:
            written = part.with_name(part.name + ".nwb")  # pynwb wants the extension
            try:
                with NWBHDF5IO(str(written), "w") as io:
                    io.write(nwbfile)
                written.rename(part)
            finally:
                written.unlink(missing_ok=True)
    log.info("%s: NWB file written", out)
    return out


def _build(data_dir: Path, session_id: str, tmp: Path, opened: contextlib.ExitStack,
           include_lfp: bool, include_binned: bool):
    """The NWBFile in memory; LFP files stay open in ``opened`` until it is written."""
    from pynwb import NWBFile
    from pynwb.file import Subject

    from pixbin.session import load_session as load_raw_session

    processed = layout.processed_dir(data_dir, session_id)
    if not processed.is_dir():
        raise PixbinError(f"{processed}: processed session folder not found; run pixbin process "
                          f"{session_id}")
    raw_session = load_raw_session(data_dir, session_id)
    meta = read_session_metadata(raw_session.raw_dir)
    units = readers.read_units(processed)
    probes = sorted(set(units["probe"].astype(str)), key=lambda p: int(p[4:]))
    metas = {probe: _meta_copy(raw_session, probe, tmp) for probe in sorted({"imec0", *probes})}
    start = _session_start(metas["imec0"], meta, raw_session.raw_dir)
    _warn_dandi(meta, raw_session.raw_dir)

    files = layout.Processed(processed)
    used = [files.units, files.spikes, files.trials]
    nwbfile = NWBFile(
        session_description=meta.session_description or (
            f"Neuropixels recording of mouse {raw_session.mouse} on {raw_session.date.isoformat()} "
            f"during a behavioural task, processed by pixbin {__version__} (session {session_id})"),
        identifier=str(uuid.uuid4()),
        session_start_time=start,
        session_id=session_id,
        experimenter=list(meta.experimenter) or None,
        experiment_description=meta.experiment_description,
        institution=meta.institution,
        lab=meta.lab,
        keywords=list(meta.keywords) or None,
        source_script=f"pixbin {__version__} (pixbin.nwb.export_nwb)",
        source_script_file_name="pixbin/nwb.py",
        subject=Subject(
            subject_id=meta.subject_id or raw_session.mouse, species=meta.species, sex=meta.sex,
            age=meta.age, strain=meta.strain, genotype=meta.genotype,
            date_of_birth=(dt.datetime.combine(meta.date_of_birth, dt.time(), start.tzinfo)
                           if meta.date_of_birth else None)),
    )
    groups = _add_electrodes(nwbfile, metas, units, processed)
    _add_units(nwbfile, units, readers.read_spikes(processed), groups, processed)
    end_s = recording_end_s(processed)
    trials = readers.read_trials(processed)
    _add_trials(nwbfile, trials, end_s)
    events_path = files.events
    if events_path.is_file():
        _add_events(nwbfile, readers.read_events(processed))
        used.append(events_path)
    behaviour = readers.read_behaviour_channels(processed)
    if behaviour is not None:
        used.append(files.behaviour_channel_files()[0])
        _add_behaviour(nwbfile, behaviour, used[-1])
    for path in files.pose_files():
        if not path.name.startswith("."):
            camera = path.name[: -len(layout.POSE_SUFFIX)]
            _add_pose(nwbfile, camera, readers.read_pose(processed, camera), path)
            used.append(path)
    if include_lfp:
        for probe in probes:
            if files.lfp(probe).is_file():
                lfp = opened.enter_context(readers.read_lfp(processed, probe))
                _add_lfp(nwbfile, probe, lfp, files.lfp(probe))
                used.append(files.lfp(probe))
    if include_binned:
        binned = layout.Binned(layout.binned_dir(data_dir))
        current = {p.name: sha256_file(p) for p in (files.units, files.spikes, files.trials)}
        for path in sorted(binned.session_dir(session_id).glob("*.h5")):
            if not path.name.startswith("."):
                _add_binned(nwbfile, path, session_id, current)
                used.append(path)
    nwbfile.notes = "pixbin provenance: " + to_json(
        {**provenance({"include_lfp": include_lfp, "include_binned": include_binned}),
         "source": {layout.recorded_path(p, data_dir): sha256_file(p) for p in used}},
        sort_keys=True)
    return nwbfile


def _warn_dandi(meta: SessionMetadata, raw_dir: Path) -> None:
    missing = [k for k, v in (("age or date_of_birth", meta.age or meta.date_of_birth),
                              ("sex (U = unknown was used)", meta.sex != "U" or None),
                              ("subject_id (the mouse of the session name was used)", meta.subject_id))
               if not v]
    if missing:
        log.warning("%s: %s not given; DANDI requires age or date_of_birth and a known sex, so "
                    "this file will not pass dandi validate until they are added",
                    raw_dir / SESSION_YAML, ", ".join(missing))


def _add_electrodes(nwbfile, metas: dict[str, Path], units: pd.DataFrame, processed: Path) -> dict:
    """A Device and an ElectrodeGroup per probe, one electrodes row per saved data channel with
    its position and the brain area of the spikes stage's areas table."""
    from pixbin.spikeglx import read_meta, read_probe
    from pixbin.units import AREA_UNASSIGNED, assign_areas, read_areas_table

    areas = None
    for entry in units.attrs.get("pixbin", {}).get("probes", []):
        if entry.get("areas_table"):
            areas = read_areas_table(processed / entry["areas_table"])
            break
    nwbfile.add_electrode_column("channel", "readout channel of the probe")
    nwbfile.add_electrode_column("shank", "shank index of the contact")
    groups = {}
    for probe, meta_path in metas.items():
        geometry = read_probe(meta_path)
        info = read_meta(meta_path)
        annotations = geometry.annotations
        part = str(annotations.get("part_number", info.get("imDatPrb_pn", "unknown")))
        if part not in nwbfile.device_models:
            nwbfile.create_device_model(
                name=part, manufacturer=str(annotations.get("manufacturer", "imec")), model_number=part,
                description=str(annotations.get("description", "Neuropixels probe")))
        serial = str(annotations.get("serial_number", info.get("imDatPrb_sn", "")))
        device = nwbfile.create_device(
            name=probe, description=f"{probe} ({meta_path.name})", model=nwbfile.device_models[part],
            serial_number=serial or None)
        channel = np.asarray(geometry.contact_annotations.get("channel_ids", geometry.device_channel_indices),
                             dtype=np.int64)
        pos = np.asarray(geometry.contact_positions, dtype=np.float64)
        shank = (np.zeros(channel.size, dtype=np.int64) if geometry.shank_ids is None
                 else np.asarray(geometry.shank_ids).astype(np.int64))
        frame = pd.DataFrame({"probe": probe, "channel": channel, "depth_um": pos[:, 1]})
        location = np.full(channel.size, "unknown", dtype=object)
        if areas is not None and probe in set(areas.table["probe"]):
            location = assign_areas(frame, areas)["area"].to_numpy()
            location[location == AREA_UNASSIGNED] = "unknown"
        order = np.argsort(channel, kind="stable")
        spanned = list(dict.fromkeys(str(a) for a in location[np.argsort(pos[:, 1], kind="stable")]))
        group = nwbfile.create_electrode_group(
            name=probe, description=f"every saved data channel of {probe}",
            location=", ".join(spanned), device=device)
        groups[probe] = group
        for i in order:
            nwbfile.add_electrode(group=group, location=str(location[i]), rel_x=float(pos[i, 0]),
                                  rel_y=float(pos[i, 1]), channel=int(channel[i]), shank=int(shank[i]))
    return groups


def _electrode_rows(nwbfile) -> dict[tuple[str, int], int]:
    table = nwbfile.electrodes
    return {(g.name, int(c)): i for i, (g, c) in
            enumerate(zip(table["group"].data, table["channel"].data))}


def _column_values(values: pd.Series) -> list:
    """A parquet column as values NWB can store (missing strings as "")."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(bool).tolist()
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy().tolist()
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]


def _add_units(nwbfile, units: pd.DataFrame, spikes: dict, groups: dict, processed: Path) -> None:
    from pynwb.misc import Units

    ids = session_unit_ids(units["probe"].astype(str).tolist(), units["unit_id"].to_numpy(),
                           where=layout.Processed(processed).units)
    order = np.argsort(ids, kind="stable")
    table = units.rename(columns={"unit_id": "cluster_id"}).iloc[order].reset_index(drop=True)
    ids = ids[order]
    rates = [r for r in (_spikes_rate(processed, p) for p in groups) if r]
    nwbfile.units = Units(
        name="units", resolution=1 / min(rates) if rates else -1.0,
        description=("units of the spikes stage (units.parquet); spike_times in seconds on the "
                     "imec0 AP clock; id = probe number * 100000 + cluster_id"))
    columns = {}
    for name in table.columns:
        columns[name] = _column_values(table[name])
        nwbfile.add_unit_column(name, _UNIT_COLUMNS.get(name, f"units.parquet column {name}"))
    rows = _electrode_rows(nwbfile)
    for k, unit_id in enumerate(ids):
        probe, cluster = str(table["probe"][k]), int(table["cluster_id"][k])
        if probe not in spikes:
            raise DatasetError(f"{layout.Processed(processed).spikes}: no group /{probe} for the "
                               f"units of {probe} in units.parquet; re-run the spikes stage")
        times, clusters = spikes[probe]
        electrode = rows.get((probe, int(table["channel"][k])))
        nwbfile.add_unit(id=int(unit_id), spike_times=times[clusters == cluster],
                         electrode_group=groups[probe],
                         electrodes=[electrode] if electrode is not None else [],
                         **{name: values[k] for name, values in columns.items()})


def _spikes_rate(processed: Path, probe: str) -> float | None:
    """The AP sampling rate recorded in ``spikes.h5`` for ``probe`` (None when absent)."""
    import h5py

    with h5py.File(layout.Processed(processed).spikes, "r") as f:
        value = f[probe].attrs.get("sampling_frequency_hz") if probe in f else None
    return None if value is None else float(np.ravel(value)[0])


def _add_trials(nwbfile, trials: pd.DataFrame, end_s: float) -> None:
    from pynwb.epoch import TimeIntervals

    trials = trials.sort_values("trial_id", kind="stable").reset_index(drop=True)
    stop = trial_stop_times(trials, end_s)
    table = TimeIntervals(name="trials", description=(
        "trials.parquet of the behaviour stage: start_time = start_s (the trial start as the task "
        "defines it), stop_time = the next trial's start (the last: the recording end); "
        "id = trial_id"))
    extra = [c for c in trials.columns if c not in ("trial_id", "start_s")]
    for name in extra:
        table.add_column(name, _trial_description(name))
    columns = {name: _column_values(trials[name]) for name in extra}
    for k in range(len(trials)):
        table.add_interval(id=int(trials["trial_id"][k]), start_time=float(trials["start_s"][k]),
                           stop_time=float(stop[k]), **{n: v[k] for n, v in columns.items()})
    nwbfile.trials = table


def _trial_description(name: str) -> str:
    known = {"action": "action (task's name of the trial type)",
             "align_event": "the action's default alignment event",
             "align_time_s": "time of the first align_event in the trial's scan window, s (NaN if none)",
             "outcome": "trial outcome", "valid": "start and alignment event inside the probe recording",
             "reason": "why the trial is not valid ('' when valid)"}
    if name in known:
        return known[name]
    if name.endswith("_s"):
        return f"time of the trial's first {name[:-2]} event, s (NaN if none)"
    return f"trials.parquet column {name}"


def _add_events(nwbfile, events: pd.DataFrame) -> None:
    from pynwb.event import EventsTable

    for name, rows in events.groupby("event", sort=True):
        table = EventsTable(
            name=str(name), description=f"every {name} event of the behaviour recording, probe clock",
            source_description="TTL edges of the behaviour rig's channels (pixbin behaviour stage)")
        table.add_column("channel", "behaviour channel the event was detected on")
        table.add_column("in_recording", "whether the event lies inside the probe recording")
        for row in rows.sort_values("time_s", kind="stable").itertuples(index=False):
            table.add_event(timestamp=float(row.time_s), channel=str(row.channel),
                            in_recording=bool(row.in_recording))
        nwbfile.add_events_table(table)


def _behaviour_module(nwbfile):
    if "behavior" not in nwbfile.processing:
        nwbfile.create_processing_module("behavior", "behaviour channels and pose on the probe clock")
    return nwbfile.processing["behavior"]


def _add_behaviour(nwbfile, channels, path: Path) -> None:
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import TimeSeries
    from pynwb.behavior import BehavioralTimeSeries

    t0, rate = regular_clock(channels["time"].to_numpy(), path)
    container = BehavioralTimeSeries(name="BehaviourChannels")
    for name, var in channels.data_vars.items():
        if var.dims != ("time",):
            continue
        container.add_timeseries(TimeSeries(
            name=str(name), data=H5DataIO(var.to_numpy(), compression="gzip"),
            unit=str(var.attrs.get("units", "a.u.")) or "a.u.", starting_time=t0, rate=rate,
            description=f"{path.name}: rig channel {name} resampled at {rate:g} Hz on the probe "
                        "clock (NaN where the behaviour recording does not cover the probe)"))
    _behaviour_module(nwbfile).add(container)


def _add_pose(nwbfile, camera: str, pose, path: Path) -> None:
    from hdmf.backends.hdf5 import H5DataIO
    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons

    t0, rate = regular_clock(pose["time"].to_numpy(), path)
    keypoints = [str(k) for k in pose["keypoint"].to_numpy()]
    device = nwbfile.create_device(name=camera, description=f"behaviour camera {camera}")
    skeleton = Skeleton(name=f"{camera}_keypoints", nodes=keypoints,
                        edges=np.zeros((0, 2), dtype=np.uint8))
    series = []
    for k, keypoint in enumerate(keypoints):
        xy = np.stack([pose["x"].to_numpy()[:, k], pose["y"].to_numpy()[:, k]], axis=1)
        series.append(PoseEstimationSeries(
            name=keypoint, data=H5DataIO(xy, compression="gzip"),
            confidence=H5DataIO(pose["likelihood"].to_numpy()[:, k], compression="gzip"),
            confidence_definition="DeepLabCut likelihood", unit="pixels",
            reference_frame="(0, 0) is the top-left corner of the video frame",
            starting_time=t0, rate=rate,
            description=f"{path.name}: {keypoint} at {rate:g} Hz on the probe clock, NaN where "
                        "masked (low likelihood or no frame)"))
    module = _behaviour_module(nwbfile)
    module.add(Skeletons(name=f"{camera}_skeletons", skeletons=[skeleton]))
    module.add(PoseEstimation(
        name=f"PoseEstimation_{camera}", pose_estimation_series=series, device=device,
        skeleton=skeleton, scorer=str(pose.attrs.get("scorer", "")) or None,
        source_software="DeepLabCut",
        description=f"{path.name}: DeepLabCut keypoints of {camera} interpolated to {rate:g} Hz"))


def _add_lfp(nwbfile, probe: str, lfp, path: Path) -> None:
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.data_utils import GenericDataChunkIterator
    from pynwb.ecephys import LFP, ElectricalSeries

    t0, rate = regular_clock(lfp["time"].to_numpy(), path)
    rows = _electrode_rows(nwbfile)
    channels = [int(c) for c in lfp["channel"].to_numpy()]
    missing = [c for c in channels if (probe, c) not in rows]
    if missing:
        raise DatasetError(f"{path}: channel(s) {missing[:10]} are not contacts of {probe}'s "
                           "probe geometry (electrodes table); re-run the lfp stage")
    region = nwbfile.create_electrode_table_region([rows[(probe, c)] for c in channels],
                                                   f"the LFP channels of {probe}")
    variable = lfp["lfp"]

    class _Chunks(GenericDataChunkIterator):
        def _get_data(self, selection):
            return variable[selection].to_numpy()

        def _get_maxshape(self):
            return variable.shape

        def _get_dtype(self):
            return np.dtype(variable.dtype)

    if "ecephys" not in nwbfile.processing:
        nwbfile.create_processing_module("ecephys", "LFP and binned spikes on the probe clock")
    series = ElectricalSeries(
        name=f"LFP_{probe}", data=H5DataIO(_Chunks(buffer_gb=0.1), compression="gzip"),
        electrodes=region, starting_time=t0, rate=rate, conversion=1e-6,
        filtering=str(lfp.attrs.get("filter", "")),
        description=f"{path.name}: LFP in uV (conversion 1e-6 to V) at {rate:g} Hz on the probe clock")
    module = nwbfile.processing["ecephys"]
    if "LFP" not in module.data_interfaces:
        module.add(LFP(name="LFP"))  # in the file first, so the series' region shares its root
    module["LFP"].add_electrical_series(series)


def _add_binned(nwbfile, path: Path, session_id: str, current: dict[str, str]) -> None:
    """The session's tensors of one action: every area's units, (unit, trial, bin), with
    spike_counts (else spike_data as 0/1), the trials in align_time order."""
    from ndx_binned_spikes import BinnedAlignedSpikes

    from pixbin.binned_read import open_action

    with open_action(path) as tree:
        node = tree[f"session_{session_id}"]
        built = {k: v for k, v in _json_attr(node.attrs.get("source", "{}")).items() if k in current}
        stale = sorted(k for k, v in current.items() if built.get(k) != v)
        if stale:
            raise DatasetError(f"{path}: built from other versions of {stale} than those in "
                               f"processed/{session_id}; run pixbin build, or export with "
                               "include_binned=False")
        areas = [child for child in node.children.values() if "spike_data" in child.children]
        if not areas:
            log.info("%s: no trial of this action in session %s; not exported", path, session_id)
            return
        parts = [child["spike_data"].to_dataset() for child in areas]
        variable = "spike_counts" if all("spike_counts" in p for p in parts) else "spike_data"
        counts = np.concatenate([p[variable].transpose("unit_id", "trial_id", "time").to_numpy()
                                 .astype(np.uint8) for p in parts], axis=0)
        unit_ids = np.concatenate([p["unit_id"].to_numpy() for p in parts])
        align = areas[0]["trials"].to_dataset()["align_time"].to_numpy()
        attrs = dict(tree.attrs)
    order = np.argsort(unit_ids, kind="stable")
    events = np.argsort(align, kind="stable")
    rows = {int(u): i for i, u in enumerate(nwbfile.units.id.data)}
    window = np.ravel(attrs["window_s"]).astype(float)
    bin_s = float(np.ravel(attrs["bin_size_s"])[0])
    action = str(attrs["action"])
    region = nwbfile.units.create_region("units_region", [rows[int(u)] for u in unit_ids[order]],
                                         f"the units of the {action} tensor")
    if "ecephys" not in nwbfile.processing:
        nwbfile.create_processing_module("ecephys", "LFP and binned spikes on the probe clock")
    nwbfile.processing["ecephys"].add(BinnedAlignedSpikes(
        name=f"BinnedAlignedSpikes_{action}", bin_width_in_ms=bin_s * 1000,
        event_to_bin_offset_in_ms=window[0] * 1000, data=counts[order][:, events],
        event_timestamps=align[events], units_region=region,
        description=(f"{path.name}: {variable} of action {action} (pixbin build), aligned to "
                     f"{attrs['align_event']}, bins [t, t + {bin_s:g} s) from align + "
                     f"{window[0]:g} s; events in align_time order (trials table align_time_s)")))


def _json_attr(value: Any) -> dict:
    import json

    return json.loads(value) if isinstance(value, str) else {}
