"""Write the binned dataset's files: the HDF5 encoding, one session's DataTree, combined actions,
and the staging folder that makes a whole build appear at once.

A per-session file ``out_dir/sessions/session_<id>/<action>.h5`` is written from a DataTree
(:func:`write_tree`, with :func:`dataset_encoding` per Dataset). The per-action file
``out_dir/<action>.h5`` is combined from the per-session files by copying HDF5 groups (raw
chunks, no decompression, memory independent of the number of sessions). ``h5py``'s copy does
not update the object references of netCDF-4 dimension scales across files, so they are
re-attached after the copy (:func:`_copy_group`); no library does this.

A build is made in a staging folder beside ``out_dir`` and swapped into place as a whole
(:func:`staged_dir`), so ``out_dir`` always holds one complete build whose manifests match its
files, never a mix of two runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import xarray as xr

from pixbin import layout
from pixbin.binned_read import BinnedBackend
from pixbin.errors import DatasetError
from pixbin.fileio import (
    PROVENANCE_KEY,
    atomic_path,
    process_alive,
    provenance,
    temporary_of,
    to_json,
)

if TYPE_CHECKING:
    from pixbin.dataset import CompressionConfig

__all__ = ["dataset_encoding", "write_tree", "combine_action", "staged_dir"]

logger = logging.getLogger(__name__)


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
    merged over all sessions and ``created`` renewed (also in ``provenance``). The result is
    opened as a DataTree (:class:`pixbin.binned_read.BinnedBackend`) before it replaces any
    previous file.
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
    attrs["source"] = to_json(source, sort_keys=True)
    attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = (json.loads(attrs[PROVENANCE_KEY]) if PROVENANCE_KEY in attrs
              else provenance(json.loads(attrs["parameters"])))
    attrs[PROVENANCE_KEY] = to_json({**record, "created": attrs["created"]}, sort_keys=True)
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
        # the whole DataTree, read as open_action does (plain engine="h5netcdf" costs O(sessions²))
        with xr.open_datatree(tmp, engine=BinnedBackend) as dt:
            found = sorted(dt.children)
        expected = sorted(f"session_{s}" for s in session_ids)
        if found != expected:
            raise DatasetError(f"{final}: combined file holds groups {found}; expected {expected}")
    return final


# --------------------------------------------------------------------------------------------
# one build at a time: a staging folder swapped into place

#: Temporaries of :func:`pixbin.fileio.atomic_path` and of :func:`staged_dir` (never carried over).
_OLD = ".old"


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, rewritten: Collection[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a staging folder for a whole build of ``final``; swap it into place if the block succeeds.

    The staging folder ``.<name>.tmp-<pid>-<hex>`` lies beside ``final`` (the naming of
    :func:`pixbin.fileio.atomic_path`: hidden, ignored by git and by every reader). It starts with
    hard links (copies where the file system has none; git-annex symlinks as symlinks) to every
    entry of ``final`` but the paths ``rewritten`` (relative to ``final``) and temporaries, so what
    the build does not rewrite stays as it was; the block must replace files (as
    :func:`pixbin.fileio.atomic_path` does), never write into a carried one, which is shared with
    the previous build until the swap. The swap is one ``renameat2(RENAME_EXCHANGE)`` where
    the system has it (Linux): ``final`` holds the old build, then the new one, at every instant.
    Elsewhere ``final`` is renamed to ``.<name>.tmp-<pid>-<hex>.old`` and the staging folder to
    ``final``: between the two renames ``final`` is absent, never mixed. The old build is then
    deleted. Leftovers of a killed build (their process gone) are handled first: an ``.old``
    folder is renamed back when ``final`` is missing, everything else is deleted.
    """
    final = Path(os.path.realpath(final))  # a symlinked data/binned: stage beside its target
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    if final.exists() and not final.is_dir():
        raise DatasetError(f"{final}: expected the binned dataset folder; found a file")
    if os.path.ismount(final):
        raise DatasetError(f"{final} is a mount point: a build is made beside it and renamed into "
                           "place, which a mount point cannot be; mount the folder above it, or make "
                           f"{final} a symbolic link to a folder on that disk")
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir()
        if final.is_dir():
            shutil.copymode(final, staging)
            _link_tree(final, staging, {Path(p).as_posix() for p in rewritten})
        yield staging
        _swap(staging, final)
    finally:  # a failed build, or after an exchange the old build
        shutil.rmtree(staging, ignore_errors=True)


def _link_tree(src: Path, dst: Path, skip: set[str], prefix: str = "") -> None:
    for entry in os.scandir(src):
        rel = prefix + entry.name
        if rel in skip or temporary_of(entry.name.removesuffix(_OLD)) is not None:
            continue
        target = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            target.mkdir()
            shutil.copymode(entry.path, target)
            _link_tree(Path(entry.path), target, skip, rel + "/")
        else:
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)


def _swap(staging: Path, final: Path) -> None:
    """Put the complete ``staging`` at ``final``; the old build ends at ``staging`` or is deleted."""
    if not final.exists():
        os.rename(staging, final)
    elif not _exchange(staging, final):
        aside = staging.with_name(staging.name + _OLD)
        os.rename(final, aside)
        os.rename(staging, final)
        shutil.rmtree(aside, ignore_errors=True)
    logger.info("%s: the new build is in place", final)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove_leftovers(final: Path) -> None:
    """Undo what a killed :func:`staged_dir` of ``final`` left beside it (only if its process is gone)."""
    def killed_leftover(name: str) -> bool:
        found = temporary_of(name.removesuffix(_OLD))
        return found is not None and found[0] == final.name and not process_alive(found[1])

    found = sorted(p for p in final.parent.iterdir() if killed_leftover(p.name))
    for path in found:
        if path.name.endswith(_OLD) and not final.exists():
            os.rename(path, final)
            logger.warning("%s: restored the previous build from %s (a build was killed while "
                           "swapping it in)", final, path.name)
        else:
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("%s: removed %s, left by a build that was killed", final, path.name)
