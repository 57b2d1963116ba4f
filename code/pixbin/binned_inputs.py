"""Read one processed session for the binned dataset: units, trials and splits, spikes, 1 kHz files.

:func:`read_inputs` gathers what :func:`pixbin.dataset.build_session` needs from
``data/processed/<session_id>/`` (units.parquet, trials.parquet, spikes.h5, the behaviour, pose
and LFP files, sync.json, lag.json) and checks it: the selected units with their session-unique
ids (:func:`session_unit_ids`), the trials with their split, and where the recording ends.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd
import xarray as xr

from pixbin import layout
from pixbin.binned_trials import assign_splits
from pixbin.errors import DatasetError, SessionError, SortingError
from pixbin.fileio import read_json, sha256_file, to_json
from pixbin.session import parse_session_id

if TYPE_CHECKING:
    from pixbin.dataset import DatasetConfig

__all__ = [
    "UNIT_ID_STRIDE",
    "Inputs",
    "global_unit_ids",
    "session_unit_ids",
    "group_name",
    "regular_clock",
    "behaviour_file",
    "pose_files",
    "lfp_file",
    "read_inputs",
]

logger = logging.getLogger(__name__)

#: Session-unique unit id = probe number * UNIT_ID_STRIDE + the probe's cluster id.
UNIT_ID_STRIDE = 100_000
#: File name ending of a camera's pose file: ``<camera>_pose.h5``.

_PROBE_RE = re.compile(r"^imec(\d+)$")
_CLOCK_TOLERANCE_S = 1e-6


@dataclass
class Inputs:
    """What build_session reads from one processed session folder."""

    processed_dir: Path
    session_id: str
    units: pd.DataFrame  # selected units + session_unit_id, sorted by it
    trials: pd.DataFrame
    splits: pd.Series  # trial_id -> split
    recording_end_s: float
    recording_end_source: str
    source: dict[str, str]  # file name -> sha256
    attrs: dict[str, Any]  # session group attrs


#: The stage that writes each processed table the build reads (to name it in an error).
_MADE_BY = {"units.parquet": "spikes", "trials.parquet": "behaviour"}


def _read_parquet(path: Path, required: Sequence[str]) -> pd.DataFrame:
    stage = _MADE_BY.get(path.name, "spikes/behaviour")
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; expected the {stage} stage output")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}); delete it and re-run the "
                           f"{stage} stage (pixbin process --force {stage})") from e
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {missing}; expected {list(required)}; "
            f"found {list(frame.columns)}"
        )
    return frame


def _probe_number(probe: str, where: Path) -> int:
    match = _PROBE_RE.match(str(probe))
    if not match:
        raise DatasetError(f"{where}: probe name {probe!r} is not 'imecN'")
    return int(match.group(1))


def session_unit_ids(probes: Sequence[str], cluster_ids: Sequence[int], *, where: str | Path = "units") -> np.ndarray:
    """Session-unique unit ids: ``N * 100000 + cluster_id`` for probe ``imecN``.

    On a one-probe (imec0) session the unit id equals the sorter's cluster id.
    """
    cluster = np.asarray(cluster_ids, dtype=np.int64)
    if cluster.size and (cluster.min() < 0 or cluster.max() >= UNIT_ID_STRIDE):
        raise DatasetError(
            f"{where}: cluster ids must lie in [0, {UNIT_ID_STRIDE}) to form session unit ids; "
            f"found {cluster.min()} .. {cluster.max()}"
        )
    number = np.array([_probe_number(p, Path(str(where))) for p in probes], dtype=np.int64)
    return number * UNIT_ID_STRIDE + cluster


def global_unit_ids(session_id: str, session_unit_ids: Sequence[int]) -> np.ndarray:
    """Unit ids unique across sessions: ``"<session_id>/<session unit id>"`` (strings)."""
    return np.array([f"{session_id}/{int(u)}" for u in session_unit_ids], dtype=object).astype(str)


def _select_units(units: pd.DataFrame, preset: str, path: Path) -> pd.DataFrame:
    """Units kept by :func:`pixbin.units.select_units` (presets all / phy_good / allen / ...)."""
    from pixbin.units import select_units  # unit presets; not needed to read the dataset

    try:
        kept = select_units(units, preset)
    except SortingError as e:
        raise DatasetError(f"{path}: unit preset {preset!r} cannot be applied: {e}") from e
    return kept.reset_index(drop=True)


def group_name(value: Any) -> str:
    """An area or variable name usable as an HDF5 name ('/' -> '_'; empty -> 'unassigned')."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return "unassigned"
    return str(value).strip().replace("/", "_")


def regular_clock(time: np.ndarray, path: Path) -> tuple[float, float]:
    """(t0_s, rate_hz) of a regularly sampled time coordinate; DatasetError if irregular."""
    if time.ndim != 1 or time.size < 2:
        raise DatasetError(f"{path}: time coordinate must be 1-D with >= 2 samples; found shape {time.shape}")
    t0 = float(time[0])
    rate = (time.size - 1) / (float(time[-1]) - t0)
    err = np.max(np.abs(time - (t0 + np.arange(time.size) / rate)))
    if not math.isfinite(rate) or rate <= 0 or err > _CLOCK_TOLERANCE_S:
        raise DatasetError(
            f"{path}: time coordinate is not regularly sampled (rate {rate!r} Hz, max deviation "
            f"{err!r} s > {_CLOCK_TOLERANCE_S} s); expected t = k / 1000 s on the probe clock"
        )
    return t0, rate


def _sync_summary(value: Any, depth: int = 0) -> Any:
    """Scalars and short lists of sync.json (the QC numbers), without the long edge tables."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            s = _sync_summary(v, depth + 1)
            if s is not None:
                out[str(k)] = s
        return out or None
    if isinstance(value, list):
        if len(value) > 8 or depth > 6:
            return None
        items = [_sync_summary(v, depth + 1) for v in value]
        return [v for v in items if v is not None] or None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def behaviour_file(processed_dir: Path) -> Path | None:
    """The session's processed behaviour file, or None; DatasetError if there are several."""
    found = layout.Processed(processed_dir).behaviour_channel_files()
    if len(found) > 1:
        raise DatasetError(
            f"{processed_dir}: expected at most one behaviour channels file; found {[p.name for p in found]}"
        )
    return found[0] if found else None


def pose_files(processed_dir: Path) -> list[Path]:
    """The session's pose files ``<camera>_pose.h5``, sorted by name."""
    return [p for p in layout.Processed(processed_dir).pose_files() if not p.name.startswith(".")]


def lfp_file(processed_dir: Path, probe: str) -> Path | None:
    """The processed LFP file of ``probe``, or None."""
    path = layout.Processed(processed_dir).lfp(probe)
    return path if path.is_file() else None


def read_inputs(processed_dir: Path, session_id: str, config: DatasetConfig) -> Inputs:
    """Read and check what the dataset needs of one processed session folder."""
    try:
        date, mouse, extra = parse_session_id(session_id)
    except SessionError as e:
        raise DatasetError(f"{processed_dir}: {e}") from e
    if not processed_dir.is_dir():
        raise DatasetError(f"{processed_dir}: processed session folder not found")

    units_path = layout.Processed(processed_dir).units
    units = _read_parquet(units_path, ("unit_id", "probe", "label", "area", "depth_um", "channel"))
    if units.duplicated(["probe", "unit_id"]).any():
        dup = units.loc[units.duplicated(["probe", "unit_id"]), ["probe", "unit_id"]].head(5)
        raise DatasetError(f"{units_path}: (probe, unit_id) must be unique; repeated: {dup.values.tolist()}")
    units = _select_units(units, config.unit_preset, units_path)
    units = units.assign(
        session_unit_id=session_unit_ids(units["probe"].astype(str).tolist(),
                                         units["unit_id"].to_numpy(), where=units_path)
    ).sort_values("session_unit_id", kind="stable").reset_index(drop=True)

    trials_path = layout.Processed(processed_dir).trials
    trials = _read_parquet(trials_path, ("trial_id", "action"))
    if trials["trial_id"].duplicated().any():
        raise DatasetError(
            f"{trials_path}: trial_id must be unique; repeated: "
            f"{trials.loc[trials['trial_id'].duplicated(), 'trial_id'].head(10).tolist()}"
        )
    trials = trials.sort_values("trial_id", kind="stable").reset_index(drop=True)
    splits = assign_splits(trials, session_id, config.split, source=trials_path)

    spikes_path = layout.Processed(processed_dir).spikes
    if not spikes_path.is_file():
        raise DatasetError(f"{spikes_path}: file not found; expected the spikes stage output")
    probes = sorted(set(units["probe"].astype(str)))

    used = [units_path, trials_path, spikes_path]
    behaviour = behaviour_file(processed_dir) if config.include_behaviour else None
    pose = pose_files(processed_dir) if config.include_pose else []
    lfp = [p for p in (lfp_file(processed_dir, probe) for probe in probes) if p] if config.include_lfp else []
    ends: list[tuple[float, str]] = []
    for path in [p for p in [behaviour, *pose, *lfp] if p is not None]:
        used.append(path)
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if "time" not in ds.coords:
                raise DatasetError(f"{path}: no 'time' coordinate; found coords {list(ds.coords)}")
            t0, rate = regular_clock(ds["time"].to_numpy(), path)
            # rounded to 1 ns: the float coordinate's rate is exact only to ~1e-13
            ends.append((round(t0 + ds.sizes["time"] / rate, 9), path.name))
    if ends:
        recording_end, end_source = min(ends)
    else:
        recording_end, end_source = _last_spike_time(spikes_path), "last spike (no 1 kHz file)"
        logger.warning("%s: no 1 kHz file; the recording is taken to end at the last spike, %.3f s",
                       processed_dir, recording_end)

    attrs: dict[str, Any] = {
        "session_id": session_id,
        "mouse": mouse,
        "date": date.isoformat(),
        "probes": ",".join(probes),
        "recording_end_s": float(recording_end),
        "recording_end_source": end_source,
        "unit_id_rule": f"probe number N of imecN * {UNIT_ID_STRIDE} + cluster_id",
    }
    if extra:
        attrs["extra"] = extra
    files = layout.Processed(processed_dir)
    for path in (files.sync_json, files.lag_json):
        if path.is_file():
            used.append(path)
            content = read_json(path)
            key = "sync_qc" if path == files.sync_json else "lag"
            summary = _sync_summary(content) if path == files.sync_json else content
            attrs[key] = to_json(summary, sort_keys=True)
    source = {p.name: sha256_file(p) for p in used}
    attrs["source"] = to_json(source, sort_keys=True)
    return Inputs(processed_dir, session_id, units, trials, splits, float(recording_end),
                  end_source, source, attrs)


def _last_spike_time(spikes_path: Path) -> float:
    last = 0.0
    with h5py.File(spikes_path, "r") as f:
        for probe in f:
            times = f[probe].get("spike_times_s")
            if times is not None and times.shape[0]:
                last = max(last, float(times[-1]))
    return last
