"""Continuous signals of the binned dataset: behaviour, pose and LFP around each trial.

Behaviour and pose are sampled at the spike bins' centres (linear interpolation of the 1 kHz
files, :func:`pixbin.binning.values_at_bin_centres`); LFP keeps its 1 kHz samples in each
trial's window (:func:`pixbin.binning.signal_windows`), for the channels at an area's depths.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from pixbin.binned_inputs import group_name, lfp_file, regular_clock, session_unit_ids
from pixbin.layout import POSE_SUFFIX
from pixbin.binning import signal_windows, values_at_bin_centres
from pixbin.errors import DatasetError

if TYPE_CHECKING:
    from pixbin.dataset import ActionSpec

__all__ = ["behaviour_dataset", "pose_dataset", "lfp_dataset"]

logger = logging.getLogger(__name__)


def behaviour_dataset(path: Path, align: np.ndarray, time_s: np.ndarray, trial_ids: np.ndarray) -> xr.Dataset:
    """The (time,) variables of the behaviour file at the bin centres of every trial."""
    out: dict[str, Any] = {}
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        t0, rate = regular_clock(ds["time"].to_numpy(), path)
        for name, var in ds.data_vars.items():
            if var.dims != ("time",):
                logger.info("%s: variable %s has dims %s, not (time,); skipped", path, name, var.dims)
                continue
            values = values_at_bin_centres(var.to_numpy(), rate, align, time_s, t0_s=t0)
            attrs = {k: v for k, v in var.attrs.items() if isinstance(v, (str, int, float))}
            out[group_name(name)] = (("trial_id", "time"), values, attrs)
    return xr.Dataset(out, coords={"trial_id": trial_ids, "time": time_s},
                      attrs={"source_file": path.name, "sampling": "linear interpolation at bin centres"})


def pose_dataset(paths: list[Path], align: np.ndarray, time_s: np.ndarray, trial_ids: np.ndarray,
                 threshold: float | None) -> xr.Dataset:
    """x, y, likelihood of every camera's keypoints at the bin centres of every trial
    (x, y masked where likelihood < ``threshold``, when given)."""
    parts: dict[str, list[np.ndarray]] = {"x": [], "y": [], "likelihood": []}
    keypoints: list[str] = []
    cameras: list[str] = []
    for path in paths:
        camera = path.name[: -len(POSE_SUFFIX)]
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            missing = [v for v in parts if v not in ds]
            if missing or "keypoint" not in ds.dims:
                raise DatasetError(
                    f"{path}: expected variables x, y, likelihood with dims (time, keypoint); "
                    f"found variables {list(ds.data_vars)}, dims {dict(ds.sizes)}"
                )
            t0, rate = regular_clock(ds["time"].to_numpy(), path)
            likelihood = ds["likelihood"].transpose("time", "keypoint").to_numpy()
            for name in parts:
                values = ds[name].transpose("time", "keypoint").to_numpy()
                if threshold is not None and name != "likelihood":
                    values = np.where(likelihood >= threshold, values, np.nan)
                parts[name].append(values_at_bin_centres(values, rate, align, time_s, t0_s=t0))
            names = [str(k) for k in ds["keypoint"].to_numpy()]
        keypoints += [f"{camera}.{k}" for k in names] if len(paths) > 1 else names
        cameras += [camera] * len(names)
    data = {name: (("trial_id", "time", "keypoint"), np.concatenate(v, axis=2)) for name, v in parts.items()}
    ds = xr.Dataset(data, coords={"trial_id": trial_ids, "time": time_s, "keypoint": keypoints,
                                  "camera": ("keypoint", cameras)})
    ds.attrs.update(sampling="linear interpolation at bin centres",
                    likelihood_threshold=float(threshold) if threshold is not None else "none (mask of the pose file)")
    return ds


def lfp_dataset(processed_dir: Path, area_units: pd.DataFrame, align: np.ndarray, spec: ActionSpec,
                trial_ids: np.ndarray) -> xr.Dataset | None:
    """LFP windows at 1 kHz of the channels whose depth (y_um) lies in the depth range of the
    area's units on each probe (the nearest channel to each unit when none does)."""
    windows, coords = [], {"probe": [], "probe_channel": [], "y_um": [], "x_um": []}
    lfp_time = None
    for probe, units in area_units.groupby(area_units["probe"].astype(str), sort=True):
        path = lfp_file(processed_dir, probe)
        if path is None:
            continue
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if "lfp" not in ds or "y_um" not in ds.coords:
                raise DatasetError(f"{path}: expected variable lfp (time, channel) with coord y_um; "
                                   f"found {list(ds.variables)}")
            t0, rate = regular_clock(ds["time"].to_numpy(), path)
            y = ds["y_um"].to_numpy()
            lo, hi = units["depth_um"].min(), units["depth_um"].max()
            idx = np.flatnonzero((y >= lo) & (y <= hi))
            if idx.size == 0:
                idx = np.unique([int(np.argmin(np.abs(y - d))) for d in units["depth_um"]])
            lfp = ds["lfp"].transpose("time", "channel").isel(channel=idx)
            w, lfp_time = signal_windows(lfp, rate, align, spec.window_s, t0_s=t0)
            windows.append(w)
            coords["probe"] += [probe] * idx.size
            coords["probe_channel"] += ds["channel"].to_numpy()[idx].astype(np.int64).tolist()
            coords["y_um"] += y[idx].astype(np.float64).tolist()
            x = ds["x_um"].to_numpy()[idx] if "x_um" in ds.coords else np.full(idx.size, np.nan)
            coords["x_um"] += x.astype(np.float64).tolist()
    if not windows:
        return None
    channel = session_unit_ids(coords["probe"], coords["probe_channel"], where=processed_dir)
    return xr.Dataset(
        {"lfp": (("trial_id", "lfp_time", "channel"), np.concatenate(windows, axis=2), {"units": "uV"})},
        coords={"trial_id": trial_ids, "lfp_time": ("lfp_time", lfp_time, {"units": "s"}), "channel": channel,
                **{k: ("channel", np.asarray(v)) for k, v in coords.items()}},
        attrs={"channel_rule": "channels with y_um inside the depth range of the area's units"},
    )
