"""Readers for every file of ``data/processed/<session>/`` (names from :mod:`pixbin.layout`).

Each takes the session's processed folder and returns plain numpy / pandas / xarray objects; a
missing or malformed file is a :class:`~pixbin.errors.PixbinError` naming the file and the stage
that writes it. Everything downstream (the binned dataset, notebooks, user code) reads through
these, so a file's format is read in one place.

Examples
--------
>>> from pixbin import readers  # doctest: +SKIP
>>> units = readers.read_units("data/processed/240101_SIM01")  # doctest: +SKIP
>>> times_s, unit_ids = readers.read_spikes("data/processed/240101_SIM01")["imec0"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pixbin import layout
from pixbin.errors import PixbinError

__all__ = [
    "read_sync",
    "read_lag",
    "read_events",
    "read_trials",
    "read_action_labels",
    "read_behaviour_channels",
    "read_units",
    "read_spikes",
    "read_lfp",
    "read_frames",
    "read_frame_times",
    "read_pose",
]


def _files(processed_dir: str | os.PathLike) -> layout.Processed:
    return layout.Processed(Path(processed_dir))


def _existing(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise PixbinError(f"{path}: not found; it is written by the {stage} stage "
                          f"(pixbin process --stages {stage})")
    return path


def _json(path: Path, stage: str) -> Any:
    try:
        return json.loads(_existing(path, stage).read_text())
    except json.JSONDecodeError as e:
        raise PixbinError(f"{path}: not valid JSON ({e}); re-run the {stage} stage") from e


def read_sync(processed_dir: str | os.PathLike) -> dict[str, Any]:
    """``sync.json``: per-stream clock models and their QC (see docs/SYNC.md)."""
    return _json(_files(processed_dir).sync_json, "sync")


def read_lag(processed_dir: str | os.PathLike) -> list[dict[str, int]]:
    """``lag.json``: the lab's integer-ms overhangs, one entry per recording."""
    return _json(_files(processed_dir).lag_json, "sync")


def _unreadable(path: Path, stage: str, error: Exception) -> PixbinError:
    return PixbinError(f"{path}: unreadable ({type(error).__name__}: {error}); delete it and "
                       f"re-run the {stage} stage (pixbin process --force {stage})")


def _parquet_table(path: Path, stage: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(_existing(path, stage))
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, stage, e) from e


def _parquet(path: Path, stage: str):
    return _parquet_table(path, stage).to_pandas()


def read_events(processed_dir: str | os.PathLike):
    """``events.parquet``: ``time_s``, ``event``, ``channel``, ``in_recording``."""
    return _parquet(_files(processed_dir).events, "behaviour")


def read_trials(processed_dir: str | os.PathLike):
    """``trials.parquet``: one row per trial with its action, alignment and outcome."""
    return _parquet(_files(processed_dir).trials, "behaviour")


def read_action_labels(processed_dir: str | os.PathLike, rec: int = 0
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """``action_labels_<rec>.npy`` (N × 2 flags at 1 kHz) and its ``.json`` description (flag
    names → values; empty when the sidecar is missing)."""
    files = _files(processed_dir)
    labels = np.load(_existing(files.action_labels(rec), "behaviour"))
    sidecar = files.action_labels_json(rec)
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return labels, info


def read_behaviour_channels(processed_dir: str | os.PathLike):
    """The 1 kHz behaviour channels (``<rig file>_processed.h5``), loaded, or None if absent;
    several rig files are an error."""
    import xarray as xr

    found = _files(processed_dir).behaviour_channel_files()
    if len(found) > 1:
        raise PixbinError(f"{processed_dir}: several behaviour channel files "
                          f"{[p.name for p in found]}; expected one")
    if not found:
        return None
    with xr.open_dataset(found[0], engine="h5netcdf") as ds:
        return ds.load()


def read_units(processed_dir: str | os.PathLike):
    """``units.parquet``; ``attrs["pixbin"]`` holds the stage's record (per-probe sources under
    ``probes``, the provenance record under ``provenance``)."""
    table = _parquet_table(_files(processed_dir).units, "spikes")
    frame = table.to_pandas()
    meta = (table.schema.metadata or {}).get(b"pixbin")
    if meta:
        frame.attrs["pixbin"] = json.loads(meta)
    return frame


def read_spikes(processed_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``spikes.h5``: ``{probe: (spike_times_s float64, spike_unit_ids int64)}``."""
    import h5py

    path = _existing(_files(processed_dir).spikes, "spikes")
    out = {}
    with h5py.File(path, "r") as h5:
        for probe, group in h5.items():
            missing = [n for n in ("spike_times_s", "spike_unit_ids") if n not in group]
            if missing:
                raise PixbinError(f"{path}: /{probe} has no dataset(s) {missing}; found "
                                  f"{sorted(group)}; re-run the spikes stage")
            out[probe] = (group["spike_times_s"][()].astype(np.float64, copy=False),
                          group["spike_unit_ids"][()].astype(np.int64, copy=False))
    return out


def read_lfp(processed_dir: str | os.PathLike, probe: str = "imec0"):
    """``<probe>.lf_processed.h5`` opened lazily (xarray Dataset ``lfp`` (time, channel), µV)."""
    import xarray as xr

    return xr.open_dataset(_existing(_files(processed_dir).lfp(probe), "lfp"), engine="h5netcdf")


def read_frames(processed_dir: str | os.PathLike, camera: str) -> dict[str, Any]:
    """``<camera>_frames.json``: frame reconciliation, dropped frames, the camera clock map."""
    return _json(_files(processed_dir).frames_json(camera), "pose")


def read_frame_times(processed_dir: str | os.PathLike, camera: str) -> np.ndarray:
    """``<camera>_frame_times.npy``: probe-clock time of each saved frame."""
    return np.load(_existing(_files(processed_dir).frame_times(camera), "pose"))


def read_pose(processed_dir: str | os.PathLike, camera: str):
    """``<camera>_pose.h5`` loaded (x, y, likelihood at 1 kHz on the probe clock)."""
    import xarray as xr

    with xr.open_dataset(_existing(_files(processed_dir).pose(camera), "pose"),
                         engine="h5netcdf") as ds:
        return ds.load()
