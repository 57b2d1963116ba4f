"""Read the binned dataset: open an action file lazily, export one area as Allen-style ``.npy``.

:func:`open_action` opens ``<action>.h5`` (or only some of its sessions and areas) as a
dask-backed DataTree; :func:`open_group` opens one group of it as a Dataset; :func:`export_npy`
(also ``code/utils/access_action_structure.py`` and ``pixbin export``) saves one action x area of
every session as ``.npy`` files with ``.json`` sidecars (docs/FORMAT.md, "Reading a file").

**Why not plain** ``xr.open_datatree(path, engine="h5netcdf")``: it gives the same DataTree, but
h5netcdf (1.8.2) names each dimension of a variable by dereferencing the variable's
``DIMENSION_LIST`` and asking HDF5 for the scale's path (``h5py .name``, ``H5Iget_name``). An
object opened by reference has no path, so HDF5 searches the whole file from the root, in name
order, until it meets the object (``H5G_get_name_by_addr``): each lookup costs time in proportion
to the objects before it, and opening a file of N sessions costs O(N²) (docs/PERFORMANCE.md,
"Reading many sessions"; the upstream fix is benchmarks/upstream/). No layout of the file avoids
it. :class:`BinnedBackend` is the h5netcdf backend of xarray with one change: a dimension scale
is recognised by its HDF5 object identity among the dimensions in the variable's scope (as
netCDF-C does), not by its path; it also keeps each variable's and group's h5py object instead
of reopening it by path on every attribute. Any netCDF-4 file opens with
``xr.open_datatree(path, engine=BinnedBackend)``.

:func:`open_action` goes further (linear, and ~4x fewer CPU seconds than ``BinnedBackend``): one
pass of h5py's low-level API over the groups asked for builds each group's finished Dataset, as
``xr.open_dataset(chunks=...)`` would leave it: dimensions by scale identity; attributes as
h5netcdf decodes them (numbers and strings read with one low-level open each, other types by
h5py); the encodings of xarray's h5netcdf store; CF decoding done directly where it only moves a
NaN ``_FillValue`` into the encoding or reads variable-length strings as ``str`` arrays (xarray's
``decode_cf_variable`` decodes the rest: other fill values, packing, times, booleans); dimension
coordinates read in one HDF5 read each and indexed; the other variables dask arrays with one task
per chunk (no ``da.from_array``); the DataTree linked once, top down, without copies. A group
holding anything else than what pixbin writes (user types, fixed-length string variables,
non-native byte order, unlimited or phony dimensions, dimensions of parent groups, other
filters) is opened through
:class:`BinnedBackend` instead. Values, coordinates, attributes, encodings and dask chunks are
those of the plain reader (checked by ``tests/test_binned_read.py``).
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
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.backends.api import _maybe_create_default_indexes, _protect_dataset_variables_inplace
from xarray.backends.file_manager import CachingFileManager
from xarray.backends.h5netcdf_ import H5NetCDFStore
from xarray.backends.locks import HDF5_LOCK
from xarray.backends.store import StoreBackendEntrypoint
from xarray.conventions import decode_cf_variable
from xarray.core import indexing
from xarray.indexes import PandasIndex
from xarray.namedarray.parallelcompat import guess_chunkmanager
from xarray.namedarray.utils import _get_chunk

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
# the fast reader: finished Datasets from one pass of h5py's low-level API (see the module docstring)

#: h5netcdf's hidden attributes (netCDF-4 bookkeeping), never user attributes.
_HIDDEN_ATTRS = h5netcdf.attrs._HIDDEN_ATTRS
_SCALE = b"DIMENSION_SCALE"
_NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable"
#: The HDF5 filters whose encoding the fast reader writes as h5netcdf does.
_FAST_FILTERS = frozenset({"gzip", "shuffle", "fletcher32"})
_NUMBER_KINDS = frozenset("biuf")
#: Attributes that make xarray's CF decoding do more than move a NaN ``_FillValue`` into the
#: encoding: a variable holding one is decoded by xarray itself (``decode_cf_variable``).
_CF_ATTRS = frozenset({"missing_value", "scale_factor", "add_offset", "_Unsigned", "units", "calendar", "dtype",
                       "_Encoding", "bounds"})


class _NotFast(Exception):
    """A group the fast reader leaves to :class:`BinnedBackend` (what it holds is not what pixbin writes)."""


class _H5Array(BackendArray):
    """One HDF5 dataset, read on demand as h5netcdf reads it (variable-length strings as ``str``).

    The dataset opened with the file the manager held is reused while the manager holds that file."""

    def __init__(self, manager: CachingFileManager, file: h5py.File, dataset: h5py.h5d.DatasetID, path: str,
                 shape: tuple[int, ...], dtype: np.dtype, vlen_str: bool) -> None:
        self.manager, self.h5path, self.vlen_str = manager, path, vlen_str
        self.shape, self.dtype = shape, dtype
        self._opened: tuple[h5py.File, h5py.h5d.DatasetID] | None = (file, dataset)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}

    def __getitem__(self, key: Any) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR,
                                                  self._getitem)

    def _getitem(self, key: tuple) -> np.ndarray:
        with HDF5_LOCK:
            file = self.manager.acquire(needs_lock=False)
            opened = self._opened
            dataset = h5py.Dataset(opened[1]) if opened is not None and opened[0] is file else file[self.h5path]
            return dataset.asstr()[key] if self.vlen_str else dataset[key]

    def read_all(self) -> np.ndarray:
        """Every value, read while opening (one HDF5 read), as h5py's ``dataset[()]`` (and
        ``.asstr()``) gives them."""
        assert self._opened is not None, "read_all is for the dataset met while opening"
        values = np.empty(self.shape, self.dtype)
        with HDF5_LOCK:
            if values.size:
                self._opened[1].read(h5py.h5s.ALL, h5py.h5s.ALL, values)
        if self.vlen_str:
            encoding = h5py.check_string_dtype(self.dtype).encoding
            values = np.array([b.decode(encoding) for b in values.flat], dtype=object).reshape(self.shape)
        return values


def _name(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _NotFast(f"{where}: a name that is not UTF-8") from error


def _attr_names(obj: Any, plist: Any, where: str) -> list[str]:
    """The attribute names of ``obj`` in h5py's order (creation order where tracked)."""
    names: list[bytes] = []
    tracked = plist.get_attr_creation_order() & h5py.h5p.CRT_ORDER_TRACKED
    h5py.h5a.iterate(obj, names.append, index_type=h5py.h5.INDEX_CRT_ORDER if tracked else h5py.h5.INDEX_NAME)
    return [_name(n, where) for n in names]


#: (numpy dtype, h5py string info, whether plain) of the HDF5 datatypes met, by serialised type.
_TYPES: dict[bytes, tuple[np.dtype, Any, bool]] = {}


def _type_info(datatype: h5py.h5t.TypeID) -> tuple[np.dtype, Any, bool]:
    """The numpy dtype of an HDF5 datatype (as h5py gives it), its h5py string info and whether
    it is plain: a number or a fixed or variable-length string, read here with the low-level API
    (h5py itself reads the others: compound, enum, array, reference, other vlen). Cached: h5py
    makes a new dtype each time."""
    key = datatype.encode()
    found = _TYPES.get(key)
    if found is None:
        if len(_TYPES) > 256:
            _TYPES.clear()
        dtype = datatype.dtype
        string = h5py.check_string_dtype(dtype)
        text = string is not None and (dtype.kind == "S" or string.length is None)
        plain = (dtype.subdtype is None and not dtype.names and not h5py.check_enum_dtype(dtype)
                 and (dtype.kind in _NUMBER_KINDS or text))
        found = _TYPES[key] = (dtype, string, plain)
    return found


def _plain_attr(obj: Any, key: str) -> tuple[Any, Any] | None:
    """(``h5py.AttributeManager(obj)[key]``, its h5py string info) for numbers and strings, read
    with the low-level API (one open); None for what h5py itself must read."""
    attr = h5py.h5a.open(obj, key.encode())
    dtype, string, plain = _type_info(attr.get_type())
    shape = attr.shape
    if not plain or shape is None:  # h5py's own types, empty attributes
        return None
    value = np.zeros(shape, dtype=dtype)
    attr.read(value)
    if string is not None and string.length is None:
        value = np.array([b.decode("utf-8", "surrogateescape") for b in value.flat], dtype=dtype).reshape(value.shape)
    return (value[()] if value.ndim == 0 else value), string


def _raw_attr(obj: Any, key: str) -> Any:
    """``h5py.AttributeManager(obj)[key]``."""
    plain = _plain_attr(obj, key)
    return h5py.AttributeManager(_Bound(obj))[key] if plain is None else plain[0]


def _dimension_list(obj: Any) -> np.ndarray:
    """``attrs["DIMENSION_LIST"]`` (each axis's references to its scales), read as h5py reads it."""
    attr = h5py.h5a.open(obj, b"DIMENSION_LIST")
    value = np.zeros(attr.shape, dtype=_type_info(attr.get_type())[0])
    attr.read(value)
    return value


class _Bound:
    """What ``h5py.AttributeManager`` needs of an object: its low-level id."""

    def __init__(self, obj: Any) -> None:
        self.id = obj


def _attr(obj: Any, key: str, where: str) -> Any:
    """Attribute ``key`` as h5netcdf's ``Attributes`` and xarray's ``_read_attributes`` give it."""
    plain = _plain_attr(obj, key)
    if plain is None:
        value: Any = h5netcdf.attrs.Attributes(h5py.AttributeManager(_Bound(obj)), None, h5py)[key]
    else:
        value, string = plain
        if string is not None:
            if string.length is not None and string.length > 1:
                value = (value.decode(string.encoding, "surrogateescape") if np.isscalar(value)
                         else [b.decode(string.encoding, "surrogateescape") for b in value.flat])
            elif not np.isscalar(value):
                value = value.tolist()
        if isinstance(value, np.ndarray | list) and len(value) == 1:
            value = value[0]
    if key not in ("_FillValue", "missing_value") and isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _NotFast(f"{where}: attribute {key} is not UTF-8") from error
    return value


def _user_attrs(obj: Any, keys: list[str], where: str) -> dict[str, Any]:
    return {k: _attr(obj, k, where) for k in keys if k not in _HIDDEN_ATTRS}


def _encoding(dcpl: Any, shape: tuple[int, ...], dims: tuple[str, ...], dtype: np.dtype, vlen_str: bool,
              source: str, where: str) -> dict[str, Any]:
    """The encoding xarray's h5netcdf store gives a variable (``H5NetCDFStore.open_store_variable``)."""
    encoding: dict[str, Any] = {"dtype": str if vlen_str else dtype}
    chunks = dcpl.get_chunk() if shape != () and dcpl.get_layout() == h5py.h5d.CHUNKED else None
    if chunks:
        encoding.update(contiguous=False, chunksizes=chunks, preferred_chunks=dict(zip(dims, chunks, strict=True)))
    else:
        encoding.update(contiguous=True, chunksizes=None)
    filters = h5py._hl.filters.get_filters(dcpl)
    if not filters.keys() <= _FAST_FILTERS:
        raise _NotFast(f"{where}: filters {sorted(filters)}")
    encoding.update(zlib="gzip" in filters, szip=False, bzip2=False, blosc=False, zstd=False,
                    shuffle="shuffle" in filters, fletcher32="fletcher32" in filters)
    if "gzip" in filters:
        encoding["complevel"] = filters["gzip"]
    encoding["source"] = source
    encoding["original_shape"] = shape
    return encoding


def _decoded(name: str, dims: tuple[str, ...], array: _H5Array, attrs: dict[str, Any],
             encoding: dict[str, Any]) -> xr.Variable:
    """What xarray's CF decoding (``decode_cf_variable``) makes of the variable h5netcdf's store gives.

    Built here for the variables pixbin writes most: numbers whose one CF attribute is a NaN
    ``_FillValue`` (moved to the encoding, the values untouched) and variable-length strings
    without CF attributes (read now as a fixed-width ``str`` array). xarray decodes the others."""
    cf = attrs.keys() & _CF_ATTRS
    if not cf and array.dtype.kind in _NUMBER_KINDS:
        fill = attrs.get("_FillValue", None)
        if fill is None or (array.dtype.kind == "f" and isinstance(fill, np.floating) and np.isnan(fill)):
            if "_FillValue" in attrs:
                encoding["_FillValue"] = attrs.pop("_FillValue")
            return xr.Variable(dims, indexing.LazilyIndexedArray(array), attrs, encoding, fastpath=True)
    if not cf and array.vlen_str and dims and "_FillValue" not in attrs:
        values = array.read_all().astype(str)
        return xr.Variable(dims, values, attrs, {"dtype": values.dtype}, fastpath=True)
    variable = xr.Variable(dims, indexing.LazilyIndexedArray(array), attrs, encoding)
    return decode_cf_variable(name, variable, stack_char_dim=False)


def _read_group(reader: _TreeReader, group: h5py.h5g.GroupID, where: str) -> tuple[xr.Dataset, bool, list[str]]:
    """The Dataset of ``group`` as :func:`open_action` opens it (decoded, indexed, chunked),
    whether the group defines dimensions, and the names of its subgroups.

    Raises :class:`_NotFast` for anything but fixed-size dimension scales of the group itself,
    variables labelled by them and native numbers or variable-length strings."""
    subgroups: list[str] = []
    found: list[tuple[str, Any, Any, list[str]]] = []
    scales: dict[Any, str] = {}
    sizes: dict[str, int] = {}
    dimids: dict[int, str] = {}
    for raw_name in group:
        name = _name(raw_name, where)
        obj = h5py.h5o.open(group, raw_name)
        if isinstance(obj, h5py.h5g.GroupID):
            subgroups.append(name)
            continue
        if not isinstance(obj, h5py.h5d.DatasetID) or name.startswith("_nc4_non_coord_"):
            raise _NotFast(f"{where}/{name}: not a plain dataset")
        dcpl = obj.get_create_plist()
        keys = _attr_names(obj, dcpl, f"{where}/{name}")
        if "CLASS" in keys and _raw_attr(obj, "CLASS") == _SCALE:
            space = obj.get_space()
            shape = space.get_simple_extent_dims()
            if len(shape) != 1 or space.get_simple_extent_dims(True) != shape or "_Netcdf4Dimid" not in keys:
                raise _NotFast(f"{where}/{name}: not a fixed-size netCDF-4 dimension")
            dimid = int(_raw_attr(obj, "_Netcdf4Dimid"))
            if dimid in dimids:
                raise _NotFast(f"{where}: dimension id {dimid} twice")
            scales[obj], sizes[name], dimids[dimid] = name, shape[0], name
            if "NAME" in keys and _NOT_A_VARIABLE in _raw_attr(obj, "NAME"):
                continue  # a dimension without a coordinate variable
        found.append((name, obj, dcpl, keys))

    file_id = reader.file.id
    names = {name for name, *_ in found}
    variables: dict[str, xr.Variable] = {}
    coord_names: set[str] = set()
    for name, obj, dcpl, keys in found:
        path = f"{where.rstrip('/')}/{name}"
        if name in sizes:
            axes = _raw_attr(obj, "_Netcdf4Coordinates") if "_Netcdf4Coordinates" in keys else None
            if axes is not None and [dimids.get(int(c)) for c in axes] != [name]:
                raise _NotFast(f"{path}: _Netcdf4Coordinates {axes}")
            dims: tuple[str, ...] = (name,)
        elif "DIMENSION_LIST" in keys:
            try:
                dims = tuple(scales[h5py.h5r.dereference(refs[-1], file_id)] for refs in _dimension_list(obj))
            except (KeyError, IndexError, TypeError, ValueError) as error:
                raise _NotFast(f"{path}: a dimension scale outside the group") from error
        elif obj.rank == 0:
            dims = ()
        else:
            raise _NotFast(f"{path}: no dimension scales")
        shape = obj.shape
        if shape != tuple(sizes[d] for d in dims):
            raise _NotFast(f"{path}: shape {shape} is not that of its dimensions")
        dtype, _, plain = _type_info(obj.get_type())
        vlen_str = dtype.kind == "O"
        if not plain or dtype.kind == "S" or not dtype.isnative:
            raise _NotFast(f"{path}: dtype {dtype}")
        attrs = _user_attrs(obj, keys, path)
        if "coordinates" in attrs:
            coordinates = attrs.pop("coordinates")
            if not isinstance(coordinates, str):
                raise _NotFast(f"{path}: coordinates {coordinates!r}")
            coord_names.update(c for c in coordinates.split() if c in names)
        else:
            coordinates = None
        array = _H5Array(reader.manager, reader.file, obj, path, shape, dtype, vlen_str)
        encoding = _encoding(dcpl, shape, dims, dtype, vlen_str, reader.source, path)
        variable = _decoded(name, dims, array, attrs, encoding)
        if coordinates is not None:
            variable.encoding["coordinates"] = coordinates
        variables[name] = variable

    attrs = _user_attrs(group, _attr_names(group, group.get_create_plist(), where), where)
    if "coordinates" in attrs:
        raise _NotFast(f"{where}: a coordinates attribute of the group")
    return _dataset(variables, coord_names, attrs, reader, where), bool(sizes), subgroups


def _dataset(variables: dict[str, xr.Variable], coord_names: set[str], attrs: dict[str, Any], reader: _TreeReader,
             where: str) -> xr.Dataset:
    """The Dataset xarray's ``open_dataset(chunks=...)`` makes of a group's decoded variables: data
    variables then coordinates (the store's order in each), dimension coordinates indexed (read now),
    the other variables dask arrays."""
    coords = [name for name, var in variables.items() if name in coord_names or var.dims == (name,)]
    ordered = {name: var for name, var in variables.items() if name not in coords} | {n: variables[n] for n in coords}
    final: dict[str, xr.Variable] = {}
    indexes: dict[str, PandasIndex] = {}
    dims: dict[str, int] = {}
    for name, var in ordered.items():
        for dim, size in zip(var.dims, var.shape, strict=True):
            dims.setdefault(dim, size)
        if var.dims == (name,):
            index = PandasIndex.from_variables({name: _loaded(var)}, options={})
            final[name], indexes[name] = index.create_variables({name: var})[name], index
        elif var.ndim:
            final[name] = xr.Variable(var.dims, reader.dask_array(var, f"{where.rstrip('/')}/{name}"), var.attrs,
                                      var.encoding, fastpath=True)
        else:  # as xarray leaves a 0-d variable: lazy, not chunked
            final[name] = xr.Variable((), indexing.CopyOnWriteArray(var._data), var.attrs, var.encoding, fastpath=True)
    return xr.Dataset._construct_direct(final, set(coords), dims, attrs, indexes, {"unlimited_dims": set()})


def _loaded(var: xr.Variable) -> xr.Variable:
    """``var`` with its values read in one HDF5 read where it is a whole dataset not yet read."""
    data = var._data
    if (type(data) is indexing.LazilyIndexedArray and isinstance(data.array, _H5Array)
            and all(k == slice(None) for k in data.key.tuple)):
        return xr.Variable(var.dims, data.array.read_all(), var.attrs, var.encoding, fastpath=True)
    return var


def _regular_blocks(size: int, chunk: int) -> tuple[int, ...]:
    """Dask's blocks of ``chunk`` along a dimension of ``size`` (``normalize_chunks`` of one int)."""
    if not size:
        return (0,)
    whole, rest = divmod(size, chunk)
    return (chunk,) * whole + ((rest,) if rest else ())


def _dask_array(array: Any, blocks: tuple[tuple[int, ...], ...], name: str, dtype: np.dtype) -> Any:
    """A dask array of ``blocks`` of ``array`` with one task per block (as ``da.from_array`` reads
    it, without its graph machinery)."""
    import dask.array as da
    from dask.array.core import getter

    original = "original-" + name
    graph: dict[Any, Any] = {original: indexing.ImplicitToExplicitIndexingAdapter(array, indexing.OuterIndexer)}
    if all(len(b) == 1 for b in blocks):
        graph[(name,) + (0,) * len(blocks)] = (getter, original, tuple(slice(0, b[0]) for b in blocks))
    else:
        starts = [np.cumsum((0,) + b).tolist() for b in blocks]
        for index in np.ndindex(*(len(b) for b in blocks)):
            graph[(name, *index)] = (getter, original, tuple(slice(s[i], s[i + 1]) for s, i in zip(starts, index)))
    return da.Array(graph, name, blocks, meta=np.empty((0,) * len(blocks), dtype=dtype))


def _tree(datasets: dict[str, xr.Dataset]) -> xr.DataTree:
    """The DataTree of ``datasets`` (paths, parents before children): each node made once and
    attached once, top down (``DataTree.from_dict`` copies every node as it goes)."""
    nodes = {path: _node(ds) for path, ds in datasets.items()}
    children: dict[str, dict[str, xr.DataTree]] = {}
    for path, node in nodes.items():
        if path != "/":
            parent, name = path.rsplit("/", 1)
            children.setdefault(parent or "/", {})[name] = node
    for path, node in nodes.items():
        if path in children:
            node.children = children[path]  # checks alignment with the parents, as from_dict does
    return nodes["/"]


def _node(ds: xr.Dataset) -> xr.DataTree:
    """A DataTree node holding ``ds`` itself (``DataTree(dataset=ds)`` copies each variable: the
    Datasets made here are held by nothing else)."""
    node = xr.DataTree()
    node._set_node_data(ds)
    return node


# --------------------------------------------------------------------------------------------
# opening


def open_action(path: str | os.PathLike, chunks: Any = None, *, sessions: Sequence[str] | None = None,
                areas: Sequence[str] | None = None) -> xr.DataTree:
    """Open a binned ``<action>.h5`` lazily (dask-backed variables; ``chunks={}`` by default).

    The same DataTree as ``xr.open_datatree(path, engine="h5netcdf", chunks={})`` (values,
    coordinates, attributes, encodings), built from one h5py pass over the groups asked for.
    ``sessions`` (ids, with or without ``session_``) and ``areas`` (e.g. ``["MOs"]``) restrict it
    to those session and area groups (the root and session groups keep their attributes); a name
    the file does not hold raises :class:`~pixbin.errors.DatasetError` listing what it holds.

    Examples
    --------
    >>> dt = open_action("data/binned/rewarded_push.h5", sessions=["211024_VR46"], areas=["MOs"])  # doctest: +SKIP
    >>> dt["session_211024_VR46/MOs/spike_data"].spike_data  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: binned action file not found")
    chunks = {} if chunks is None else chunks
    if not isinstance(chunks, int | dict) and chunks != "auto":
        raise DatasetError(f"chunks must be an int, dict or 'auto', not {chunks!r}")
    if isinstance(sessions, str) or isinstance(areas, str):
        raise DatasetError(f"{path}: sessions and areas are lists of names, not one string")
    reader = _TreeReader(path, chunks)
    try:
        datasets = reader.read(sessions=None if sessions is None else [_session_name(s) for s in sessions],
                               areas=None if areas is None else list(areas))
        tree = _tree(datasets)
    except Exception:
        reader.close()
        raise
    for node in tree.subtree:
        node.set_close(reader.close)
    tree.encoding["source"] = os.path.abspath(reader.source)
    return tree


def _session_name(session: str) -> str:
    return session if session.startswith("session_") else f"session_{session}"


class _TreeReader:
    """The Datasets of the groups of one file, parents before children, as :func:`open_action` opens them."""

    def __init__(self, path: Path, chunks: Any) -> None:
        from dask.base import tokenize

        self.path, self.chunks, self.source = path, chunks, os.fspath(path)
        self.manager = CachingFileManager(h5py.File, self.source, mode="r")
        self.file: h5py.File = None  # type: ignore[assignment]  # the manager's file while reading
        self.fallback: CachingFileManager | None = None  # h5netcdf, for groups the fast reader leaves
        self.token = tokenize(os.path.abspath(self.source), os.path.getmtime(self.source), chunks)

    def close(self) -> None:
        for manager in (self.manager, self.fallback):
            if manager is not None:
                manager.close()

    def read(self, sessions: list[str] | None, areas: list[str] | None) -> dict[str, xr.Dataset]:
        """Every group but the session groups not in ``sessions`` and the area groups not in
        ``areas`` (and their subgroups); None: all."""
        self.file = self.manager.acquire()
        datasets: dict[str, xr.Dataset] = {}
        held_areas: set[str] = set()
        root_scope, _, held = self._open("/", False, datasets)
        if sessions is not None:
            unknown = [s for s in sessions if s not in held]
            if unknown:
                raise DatasetError(f"{self.path}: no session group {unknown}; the file holds {held}")
        for session in held if sessions is None else sessions:
            session_scope, _, found_areas = self._open(f"/{session}", root_scope, datasets)
            held_areas.update(found_areas)
            for area in found_areas:
                if areas is None or area in areas:
                    self._open_subtree(f"/{session}/{area}", session_scope, datasets)
        if areas is not None:
            unknown = [a for a in areas if a not in held_areas]
            if unknown:
                raise DatasetError(f"{self.path}: no area {unknown} in sessions "
                                   f"{held if sessions is None else sessions}; they hold areas {sorted(held_areas)}")
        return datasets

    def _open_subtree(self, group: str, parent_dims: bool, datasets: dict[str, xr.Dataset]) -> None:
        scope, _, subgroups = self._open(group, parent_dims, datasets)
        for name in subgroups:
            self._open_subtree(f"{group}/{name}", scope, datasets)

    def _open(self, group: str, parent_dims: bool, datasets: dict[str, xr.Dataset]) -> tuple[bool, bool, list[str]]:
        """Open ``group`` into ``datasets``; (whether it or a parent defines dimensions, whether
        it does, its subgroups)."""
        try:
            if parent_dims:
                raise _NotFast(f"{group}: dimensions of a parent group in scope")
            ds, dims, subgroups = _read_group(self, h5py.h5o.open(self.file.id, group.encode()), group)
        except _NotFast as why:
            logger.debug("%s: %s; read through h5netcdf", self.path, why)
            ds, dims = self._fallback(group), True
            h5group = self.file[group]
            subgroups = [n for n in h5group if isinstance(h5group[n], h5py.Group)]
        datasets[group] = ds
        return parent_dims or dims, dims, subgroups

    def _fallback(self, group: str) -> xr.Dataset:
        """``group`` through :class:`BinnedBackend`'s h5netcdf store, as ``xr.open_dataset`` opens it."""
        if self.fallback is None:
            self.fallback = CachingFileManager(_File, self.source, mode="r", kwargs=_FILE_KWARGS)
        ds = StoreBackendEntrypoint().open_dataset(H5NetCDFStore(self.fallback, group=group, mode="r", lock=HDF5_LOCK))
        _protect_dataset_variables_inplace(ds, cache=False)
        ds = _maybe_create_default_indexes(ds)
        return ds._replace({name: var if var._in_memory or not var.ndim else
                            xr.Variable(var.dims, self.dask_array(var, f"{group.rstrip('/')}/{name}"), var.attrs,
                                        var.encoding, fastpath=True)
                            for name, var in ds.variables.items()})

    def dask_array(self, var: xr.Variable, name: str) -> Any:
        """``var`` as a dask array chunked as ``xr.open_dataset(chunks=self.chunks)`` chunks it."""
        from dask.array.core import normalize_chunks

        preferred = var.encoding.get("preferred_chunks", {})
        if self.chunks == {}:  # the stored chunks, or the whole dimension
            blocks = tuple(_regular_blocks(size, preferred.get(dim) or size) for dim, size in zip(var.dims, var.shape))
        else:
            chunks = _get_chunk(var._data, self.chunks, guess_chunkmanager("dask"), preferred_chunks=preferred,
                                dims=var.dims)
            blocks = normalize_chunks(tuple(chunks[d] for d in var.dims), var.shape, dtype=var.dtype)
        data = var._data if isinstance(var._data, indexing.CopyOnWriteArray) else indexing.CopyOnWriteArray(var._data)
        return _dask_array(data, blocks, f"open_action-{self.token}{name}", var.dtype)


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
