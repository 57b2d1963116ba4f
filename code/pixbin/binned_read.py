"""Read the binned dataset: open an action file lazily, export one area as Allen-style ``.npy``.

:func:`open_action` opens ``<action>.h5`` as a dask-backed DataTree; :func:`open_group` opens one
group of it as a Dataset; :func:`export_npy` (also ``code/utils/access_action_structure.py`` and
``pixbin export``) saves one action x area of every session as ``.npy`` files with ``.json``
sidecars (docs/FORMAT.md, "Reading a file").

**Why not plain** ``xr.open_datatree(path, engine="h5netcdf")``: it gives the same DataTree, but
h5netcdf (1.8.2) names each dimension of a variable by dereferencing the variable's
``DIMENSION_LIST`` and asking HDF5 for the scale's path (``h5py .name``, ``H5Iget_name``). An
object opened by reference has no path, so HDF5 searches the whole file from the root, in name
order, until it meets the object (``H5G_get_name_by_addr``): each lookup costs time in proportion
to the objects before it, and opening a file of N sessions costs O(N²) (0.4 s for 1 session,
140-215 s for 50; docs/PERFORMANCE.md, "Reading many sessions"). No layout of the file avoids
it. :class:`BinnedBackend` is the h5netcdf backend of xarray with one change: a dimension scale
is recognised by its HDF5 object identity among the dimensions in the variable's scope (as
netCDF-C does), not by its path; it also keeps each variable's and group's h5py object instead
of reopening it by path on every attribute. Values, coordinates, attributes and encodings are
those of the plain reader (checked by ``tests/test_binned_read.py``); files of every format
version open with it, and it falls back to h5netcdf's own lookup for any variable it cannot
resolve. Any netCDF-4 file opens with ``xr.open_datatree(path, engine=BinnedBackend)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5netcdf
import h5py
import numpy as np
import xarray as xr
from h5netcdf.dimensions import Dimension as _H5ncDimension
from xarray.backends import BackendEntrypoint
from xarray.backends.file_manager import CachingFileManager
from xarray.backends.h5netcdf_ import H5NetCDFStore
from xarray.backends.locks import HDF5_LOCK
from xarray.backends.store import StoreBackendEntrypoint

from pixbin import layout
from pixbin.errors import DatasetError
from pixbin.fileio import write_json, write_npy

__all__ = ["DATA_GROUPS", "BinnedBackend", "open_action", "open_group", "export_npy"]

logger = logging.getLogger(__name__)

#: The Datasets of an area group, in the order of docs/FORMAT.md.
DATA_GROUPS = ("spike_data", "behaviour", "pose", "lfp", "trials")


# --------------------------------------------------------------------------------------------
# h5netcdf without path lookups (see the module docstring)


class _Dimension(_H5ncDimension):
    """An h5netcdf dimension that keeps its h5py dataset (read-only files)."""

    @property
    def _h5ds(self) -> h5py.Dataset | None:
        if self._phony:
            return None
        found = self.__dict__.get("_pixbin_h5ds")
        if found is None:
            found = self.__dict__["_pixbin_h5ds"] = self._root._h5file[self._h5path]
        return found


class _Variable(h5netcdf.Variable):
    """An h5netcdf variable that keeps its h5py dataset and finds its dimension scales by identity."""

    @property
    def _h5ds(self) -> h5py.Dataset:
        found = self.__dict__.get("_pixbin_h5ds")
        if found is None:
            found = self.__dict__["_pixbin_h5ds"] = self._root._h5file[self._h5path]
        return found

    def _lookup_dimensions(self) -> tuple[str, ...]:
        attrs = self._h5ds.attrs
        if "DIMENSION_LIST" in attrs and "CLASS" not in attrs:  # not a scale (membership tests are cheap)
            scales = self._parent._pixbin_scales()
            file_id = self._root._h5file.id
            try:
                # the last scale of each axis, as h5netcdf and netCDF-C take it
                return tuple(scales[h5py.h5r.dereference(refs[-1], file_id)] for refs in attrs["DIMENSION_LIST"])
            except (KeyError, IndexError, TypeError, ValueError):
                pass  # a scale outside the variable's scope, or no scale: h5netcdf decides
        return super()._lookup_dimensions()


class _GroupMixin:
    """What :class:`_Group` and :class:`_File` add to h5netcdf's groups."""

    _variable_cls = _Variable

    @property
    def _group_cls(self) -> type:
        return _Group

    @property
    def _h5group(self) -> h5py.Group:
        found = self.__dict__.get("_pixbin_h5group")
        if found is None:
            found = self.__dict__["_pixbin_h5group"] = self._root._h5file[self._h5path]
        return found

    def _pixbin_init(self) -> None:
        for dim in self._dimensions.values():
            if type(dim) is _H5ncDimension:
                dim.__class__ = _Dimension

    def _pixbin_scales(self) -> dict[Any, str]:
        """h5py ObjectID (file number + address) -> name of every dimension scale in scope."""
        found = self.__dict__.get("_pixbin_scales_found")
        if found is None:
            found = {}
            for dims in reversed(self._all_dimensions.maps):  # root first: nearer groups win
                for name, dim in dims.items():
                    if not dim._phony:
                        found[dim._h5ds.id] = name
            self.__dict__["_pixbin_scales_found"] = found
        return found


class _Group(_GroupMixin, h5netcdf.Group):
    def __init__(self, parent: Any, name: str) -> None:
        super().__init__(parent, name)
        self._pixbin_init()


class _File(_GroupMixin, h5netcdf.File):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pixbin_init()


#: What xarray's h5netcdf backend passes to ``h5netcdf.File`` by default when reading.
_FILE_KWARGS = {"invalid_netcdf": None, "decode_vlen_strings": True, "driver": None, "phony_dims": "access"}


def _store(path: str | os.PathLike, group: str | None) -> H5NetCDFStore:
    manager = CachingFileManager(_File, os.fspath(path), mode="r", kwargs=_FILE_KWARGS)
    return H5NetCDFStore(manager, group=group, mode="r", lock=HDF5_LOCK)


class BinnedBackend(BackendEntrypoint):
    """xarray's h5netcdf backend for local netCDF-4 files, without HDF5 path lookups.

    Pass the class as the engine: ``xr.open_datatree(path, engine=BinnedBackend)``,
    ``xr.open_dataset(path, group=..., engine=BinnedBackend)``; every other argument of xarray's
    open functions works as with ``engine="h5netcdf"``.
    """

    description = "netCDF-4 files via h5netcdf, dimension scales matched by object (pixbin)"
    open_dataset_parameters = ("filename_or_obj", "mask_and_scale", "decode_times", "concat_characters",
                               "decode_coords", "drop_variables", "use_cftime", "decode_timedelta", "group")

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        return False  # only when asked for by class

    def open_dataset(self, filename_or_obj: Any, *, mask_and_scale: Any = True, decode_times: Any = True,
                     concat_characters: Any = True, decode_coords: Any = True, drop_variables: Any = None,
                     use_cftime: Any = None, decode_timedelta: Any = None, group: str | None = None) -> xr.Dataset:
        store = _store(filename_or_obj, group)
        with store._manager.acquire_context():
            return StoreBackendEntrypoint().open_dataset(
                store, mask_and_scale=mask_and_scale, decode_times=decode_times,
                concat_characters=concat_characters, decode_coords=decode_coords,
                drop_variables=drop_variables, use_cftime=use_cftime, decode_timedelta=decode_timedelta)

    def open_groups_as_dict(self, filename_or_obj: Any, *, group: str | None = None,
                            **decoders: Any) -> dict[str, xr.Dataset]:
        root_store = _store(filename_or_obj, None)
        manager = root_store._manager
        parent = "/" + (group or "").strip("/")
        found: dict[str, xr.Dataset] = {}
        try:
            with manager.acquire_context() as root:
                start = root if parent == "/" else root[parent]
                for path in _group_paths(start, parent):
                    store = H5NetCDFStore(manager, group=path, mode="r", lock=HDF5_LOCK)
                    relative = "/" + path[len(parent):].strip("/") if parent != "/" else path
                    found[relative] = StoreBackendEntrypoint().open_dataset(store, **decoders)
        except Exception:
            manager.close()
            raise
        return found

    def open_datatree(self, filename_or_obj: Any, **kwargs: Any) -> xr.DataTree:
        groups = self.open_groups_as_dict(filename_or_obj, **kwargs)
        try:
            tree = xr.DataTree.from_dict(groups)
        except Exception:
            for ds in groups.values():
                ds.close()
            raise
        for path, ds in groups.items():
            tree[path].set_close(ds.close)
        return tree


def _group_paths(group: Any, path: str) -> Iterator[str]:
    yield path
    for name, child in group.groups.items():
        yield from _group_paths(child, path.rstrip("/") + "/" + name)


# --------------------------------------------------------------------------------------------
# opening


def open_action(path: str | os.PathLike, chunks: Any = None) -> xr.DataTree:
    """Open a binned ``<action>.h5`` lazily (dask-backed variables; ``chunks={}`` by default).

    The same DataTree as ``xr.open_datatree(path, engine="h5netcdf", chunks={})``, in time linear
    in the number of sessions (see the module docstring).

    Examples
    --------
    >>> dt = open_action("data/binned/rewarded_push.h5")  # doctest: +SKIP
    >>> dt["session_211024_VR46/MOs/spike_data"].spike_data  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: binned action file not found")
    return xr.open_datatree(path, engine=BinnedBackend, chunks={} if chunks is None else chunks)


def open_group(path: str | os.PathLike, group: str, chunks: Any = None) -> xr.Dataset:
    """Open one group of a binned file, e.g. ``"session_211024_VR46/MOs/spike_data"``, as a Dataset.

    The same Dataset as ``xr.open_dataset(path, group=group, engine="h5netcdf")`` (lazy, numpy
    backed unless ``chunks`` is given), in time independent of the number of sessions.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: binned file not found")
    return xr.open_dataset(path, group=group, engine=BinnedBackend, chunks=chunks)


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
            with xr.open_dataset(file, group=where, engine=BinnedBackend) as ds:
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
