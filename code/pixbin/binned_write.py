"""Write the binned dataset's files: the HDF5 encoding, one session's DataTree, combined actions.

A per-session file ``out_dir/sessions/session_<id>/<action>.h5`` is written from a DataTree
(:func:`write_tree`, with :func:`dataset_encoding` per Dataset). The per-action file
``out_dir/<action>.h5`` is combined from the per-session files by copying HDF5 groups (raw
chunks, no decompression, memory independent of the number of sessions). ``h5py``'s copy does
not update the object references of netCDF-4 dimension scales across files, so they are
re-attached after the copy (:func:`_copy_group`); no library does this.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import xarray as xr

from pixbin import layout
from pixbin.errors import DatasetError
from pixbin.fileio import atomic_path

if TYPE_CHECKING:
    from pixbin.dataset import CompressionConfig

__all__ = ["dataset_encoding", "write_tree", "combine_action"]


def dataset_encoding(ds: xr.Dataset, compression: CompressionConfig) -> dict[str, dict[str, Any]]:
    """h5netcdf encoding of the (trial_id, ...) variables of ``ds`` (:meth:`CompressionConfig.encoding`)."""
    enc = {}
    for name, var in ds.data_vars.items():
        if var.ndim and var.dims[0] == "trial_id" and var.size:
            itemsize = 1 if var.dtype == bool else var.dtype.itemsize
            enc[name] = compression.encoding(var.shape, itemsize)
    return enc


def write_tree(path: Path, tree: Mapping[str, xr.Dataset], encoding: Mapping[str, dict[str, Any]]) -> None:
    """Write ``tree`` (group path -> Dataset) to ``path`` as one netCDF-4 file, atomically."""
    with atomic_path(path) as tmp:
        xr.DataTree.from_dict(tree).to_netcdf(tmp, engine="h5netcdf", encoding=encoding)


def _copy_group(src: h5py.File, path: str, dst: h5py.File, dimid_offset: int) -> int:
    """Copy ``src[path]`` to ``dst[path]`` and re-attach its netCDF-4 dimension scales.

    h5py/HDF5 copy the DIMENSION_LIST / REFERENCE_LIST attributes verbatim, so their object
    references would still point into ``src``; they are deleted and rebuilt with
    ``dims[i].attach_scale`` on the copies. ``_Netcdf4Dimid`` values are shifted by
    ``dimid_offset`` so they stay unique in the file. Returns the next free dimension id.
    """
    src.copy(src[path], dst, name=path)
    g_src, g_dst = src[path], dst[path]
    names: list[str] = []
    g_src.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    top = dimid_offset
    for n in names:
        attrs = g_dst[n].attrs
        for a in ("DIMENSION_LIST", "REFERENCE_LIST"):
            if a in attrs:
                del attrs[a]
        if "_Netcdf4Dimid" in attrs:
            value = int(attrs["_Netcdf4Dimid"]) + dimid_offset
            attrs["_Netcdf4Dimid"] = np.int32(value)
            top = max(top, value + 1)
        if "_Netcdf4Coordinates" in attrs:
            attrs["_Netcdf4Coordinates"] = (np.asarray(attrs["_Netcdf4Coordinates"]) + dimid_offset).astype(np.int32)
    prefix = g_src.name.rstrip("/") + "/"
    for n in names:
        s = g_src[n]
        if "DIMENSION_LIST" not in s.attrs:
            continue
        for axis, refs in enumerate(s.attrs["DIMENSION_LIST"]):
            for ref in refs:
                scale = src[ref].name
                if not scale.startswith(prefix):
                    raise DatasetError(
                        f"{src.filename}: {s.name} uses dimension {scale} outside {path}; "
                        "expected self-contained session groups (docs/FORMAT.md)"
                    )
                g_dst[n].dims[axis].attach_scale(g_dst[scale[len(prefix):]])
    return top


def combine_action(out_dir: str | os.PathLike, action: str, session_ids: Sequence[str]) -> Path:
    """Combine ``out_dir/sessions/session_<id>/<action>.h5`` into ``out_dir/<action>.h5``.

    Groups are copied with h5py (compressed chunks as they are; memory does not grow with the
    number of sessions). Root attributes come from the first session file, with ``source``
    merged over all sessions and ``created`` renewed. The result is opened with
    ``xr.open_datatree`` before it replaces any previous file.
    """
    out_dir = Path(out_dir)
    files = [layout.Binned(out_dir).session_action(s, action) for s in session_ids]
    missing = [str(p) for p in files if not p.is_file()]
    if not files or missing:
        raise DatasetError(f"combine {action!r}: per-session files not found: {missing or 'no sessions given'}")
    source: dict[str, Any] = {}
    for p in files:
        with xr.open_dataset(p, engine="h5netcdf") as root:
            if p == files[0]:
                attrs = dict(root.attrs)
            source.update(json.loads(root.attrs["source"]))
    attrs["source"] = json.dumps(source, sort_keys=True)
    attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    final = layout.Binned(out_dir).action(action)
    with atomic_path(final) as tmp:
        xr.Dataset(attrs=attrs).to_netcdf(tmp, engine="h5netcdf")
        dimid = 0
        with h5py.File(tmp, "r+") as dst:
            for session_id, p in zip(session_ids, files):
                with h5py.File(p, "r") as src:
                    for name in src:
                        if name in dst:
                            raise DatasetError(f"combine {action!r}: group /{name} of {p} is already in the file")
                        dimid = _copy_group(src, name, dst, dimid)
        with xr.open_datatree(tmp, engine="h5netcdf") as dt:
            found = sorted(dt.children)
        expected = sorted(f"session_{s}" for s in session_ids)
        if found != expected:
            raise DatasetError(f"{final}: combined file holds groups {found}; expected {expected}")
    return final
