"""Read the binned dataset: open an action file lazily, export one area as Allen-style ``.npy``.

:func:`open_action` opens ``<action>.h5`` as a dask-backed DataTree; :func:`export_npy` (also
``code/utils/access_action_structure.py`` and ``pixbin export``) saves one action x area of every
session as ``.npy`` files with ``.json`` sidecars (docs/FORMAT.md, "Reading a file").
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from pixbin import layout
from pixbin.errors import DatasetError
from pixbin.fileio import write_json, write_npy

__all__ = ["DATA_GROUPS", "open_action", "export_npy"]

logger = logging.getLogger(__name__)

#: The Datasets of an area group, in the order of docs/FORMAT.md.
DATA_GROUPS = ("spike_data", "behaviour", "pose", "lfp", "trials")


def open_action(path: str | os.PathLike) -> xr.DataTree:
    """Open a binned ``<action>.h5`` lazily (dask-backed variables).

    Examples
    --------
    >>> dt = open_action("data/binned/rewarded_push.h5")  # doctest: +SKIP
    >>> dt["session_211024_VR46/MOs/spike_data"].spike_data  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: binned action file not found")
    return xr.open_datatree(path, engine="h5netcdf", chunks={})


def export_npy(
    action: str,
    area: str,
    out_path: str | os.PathLike,
    data: str = "spike_data",
    in_path: str | os.PathLike = "data/binned",
    sessions: Sequence[str] | None = None,
) -> list[Path]:
    """Save one area's data of every session as ``session_<id>-<action>-<area>-<data>.npy``.

    The Allen ``access_stimulus_structure`` habit: ``spike_data`` / ``spike_counts`` are saved as
    (unit_id, trial_id, time); ``behaviour`` as (trial_id, time, variable), ``pose`` as
    (trial_id, time, keypoint, variable), ``lfp`` as (trial_id, lfp_time, channel); one variable
    of a group with ``data="<group>/<variable>"`` (e.g. ``behaviour/Back_Sensor``) as
    (trial_id, time[, ...]); ``trials`` as a structured array (trial_id,). Beside each ``.npy``
    a ``.json`` sidecar holds dims, shape, dtype and coordinates.

    Parameters
    ----------
    action, area
        e.g. ``"rewarded_push"``, ``"MOs"``.
    out_path
        Folder for the output files (created).
    data
        What to export (see above).
    in_path
        The binned dataset folder: ``<action>.h5`` is read, or, when absent, the per-session
        files ``sessions/session_<id>/<action>.h5``.
    sessions
        Session ids (with or without ``session_``); all when None.

    Returns
    -------
    list[Path]
        The ``.npy`` files written.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    group, variable = _data_group(data)
    wanted = None if sessions is None else {s if s.startswith("session_") else f"session_{s}" for s in sessions}
    files = _action_files(in_path, action, wanted)
    written: list[Path] = []
    seen_areas: set[str] = set()
    for file in files:
        # list groups with h5py and open only the one Dataset needed: opening a whole combined
        # file as a DataTree reads the metadata of every session
        with h5py.File(file, "r") as f:
            layout = {name: {a: set(f[name][a]) for a in f[name]} for name in f if name.startswith("session_")}
        with xr.open_dataset(file, engine="h5netcdf") as root:
            root_attrs = {k: _jsonable(root.attrs[k]) for k in
                          ("align_event", "window_s", "bin_size_s", "bin_edges", "time_reference") if k in root.attrs}
        for name in sorted(layout):
            if wanted is not None and name not in wanted:
                continue
            seen_areas.update(layout[name])
            if area not in layout[name]:
                continue
            if group not in layout[name][area]:
                logger.warning("%s: /%s/%s has no %s group; skipped", file, name, area, group)
                continue
            where = f"/{name}/{area}/{group}"
            with xr.open_dataset(file, group=where, engine="h5netcdf") as ds:
                array, meta = _export_array(ds, group, variable, f"{file}:{where}")
            stem = f"{name}-{action}-{area}-{data.replace('/', '.')}"
            meta.update(file=str(file), group=where, session=name[len("session_"):], action=action,
                        area=area, data=data, **root_attrs)
            written.append(write_npy(out_path / f"{stem}.npy", array))
            write_json(out_path / f"{stem}.json", meta)
    if not written:
        raise DatasetError(f"{files[0] if len(files) == 1 else in_path}: no session has area {area!r} "
                           f"with {group!r}; areas found: {sorted(seen_areas)}")
    return written


def _data_group(data: str) -> tuple[str, str | None]:
    """(group, variable) named by the ``data`` argument of :func:`export_npy`."""
    variable: str | None
    if "/" in data:
        group, variable = data.split("/", 1)
    elif data in ("spike_data", "spike_counts"):
        group, variable = "spike_data", data
    else:
        group, variable = data, None
    if group not in DATA_GROUPS:
        raise DatasetError(f"data {data!r}: expected one of {['spike_counts', *DATA_GROUPS]} "
                           "or '<group>/<variable>'")
    return group, variable


def _action_files(in_path: Path, action: str, wanted: set[str] | None) -> list[Path]:
    """The combined ``<action>.h5``, or else the per-session files (of the ``wanted`` sessions)."""
    combined = layout.Binned(in_path).action(action)
    if combined.is_file():
        files = [combined]
    else:
        files = layout.Binned(in_path).session_actions(action)
        if wanted is not None:
            files = [f for f in files if f.parent.name in wanted]
        if not files:
            raise DatasetError(f"{combined}: not found, and no per-session files "
                               f"{in_path}/sessions/session_*/{action}.h5")
    return files


def _export_array(ds: xr.Dataset, group: str, variable: str | None, where: str) -> tuple[np.ndarray, dict[str, Any]]:
    if group == "trials":
        frame = ds.to_dataframe().reset_index()
        fields = []
        for column in frame.columns:
            values = frame[column].to_numpy()
            if values.dtype == object:
                values = values.astype(str)
            fields.append((column, values))
        array = np.rec.fromarrays([v for _, v in fields], names=[n for n, _ in fields]).view(np.ndarray)
        return array, {"dims": ["trial_id"], "shape": list(array.shape), "dtype": str(array.dtype),
                       "fields": [n for n, _ in fields],
                       "coords": {"trial_id": {"dim": "trial_id", "values": _jsonable(ds["trial_id"].values)}}}
    if variable is None and len(ds.data_vars) == 1:
        variable = next(iter(ds.data_vars))
    if variable is not None:
        if variable not in ds.data_vars:
            raise DatasetError(f"{where}: no variable {variable!r}; found {list(ds.data_vars)}")
        var = ds[variable]
        if group == "spike_data":
            var = var.transpose("unit_id", "trial_id", "time")
        array, dims, variables = var.to_numpy(), list(var.dims), None
    else:
        names = list(ds.data_vars)
        stacked = xr.concat([ds[n] for n in names], dim="variable")
        stacked = stacked.transpose(*ds[names[0]].dims, "variable")
        array, dims, variables = stacked.to_numpy(), list(stacked.dims), names
    coords = {}
    for name, coord in ds.coords.items():
        if len(coord.dims) == 1 and coord.dims[0] in dims:
            coords[name] = {"dim": coord.dims[0], "values": _jsonable(coord.values)}
    meta: dict[str, Any] = {"dims": dims, "shape": list(array.shape), "dtype": str(array.dtype), "coords": coords}
    if variables is not None:
        meta["variables"] = variables
    return array, meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return [None if not math.isfinite(v) else float(v) for v in value.ravel().tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
