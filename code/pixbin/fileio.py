"""Atomic writes, the one JSON encoder and the one provenance record shared by every stage.

Every output is written to a temporary name beside its final path and renamed into place, so an
interrupted run never leaves a file that a later run would take as complete.

Every output carries the same provenance record (:func:`provenance`) under the key
:data:`PROVENANCE_KEY` (a JSON key, an HDF5 attribute, or inside the parquet metadata): when it is
written, the versions that made it, its parameters and, under the pipeline, the stage and run id
that also name its record ``processed/<S>/.records/<stage>.json``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import os
import platform
import re
import shutil
import uuid
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROVENANCE_KEY",
    "atomic_path",
    "to_json",
    "stage_run",
    "write_json",
    "read_json",
    "write_npy",
    "write_parquet",
    "versions",
    "provenance",
    "sha256_file",
    "data_lock",
    "remove_stale_temporaries",
    "temporary_of",
    "process_alive",
]

_TRACKED_PACKAGES = (
    "pixbin",
    "numpy",
    "scipy",
    "pandas",
    "xarray",
    "h5netcdf",
    "spikeinterface",
    "probeinterface",
    "nptdms",
    "numba",
)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only if the block succeeds.

    Works for files and directories. The temporary name starts with ``.`` and contains ``.tmp-`` so
    that leftovers from a killed process are recognisable (and ignored) by every reader. An
    ``OSError`` that names no file (a full disk inside a writer library) is raised again naming
    ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(final)) from e
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


PROVENANCE_KEY = "provenance"

# atomic_path's names, also with an extension a writer added for its tool (ffmpeg: ``.mp4``)
_TEMPORARY = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?$")

_STAGE_RUN: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "pixbin_stage_run", default=None)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def to_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with pixbin's one encoder: numpy scalars and arrays, paths, dates, sets."""
    return json.dumps(obj, default=_json_default, **kwargs)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. numpy scalars/arrays and paths are converted."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(obj, indent=2) + "\n")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save one array as ``.npy``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return path


def write_parquet(path: str | os.PathLike, frame, metadata: dict | None = None) -> Path:
    """Write a pandas DataFrame as parquet, atomically; ``metadata`` goes into the file's
    key-value metadata under ``pixbin`` (JSON)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged[b"pixbin"] = to_json(metadata).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape pixbin's outputs."""
    found = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@contextlib.contextmanager
def stage_run(stage: str, run_id: str) -> Iterator[None]:
    """Within the block, :func:`provenance` records name this stage run (set by the pipeline)."""
    token = _STAGE_RUN.set({"stage": stage, "run_id": run_id})
    try:
        yield
    finally:
        _STAGE_RUN.reset(token)


def provenance(parameters: dict | None = None) -> dict[str, Any]:
    """The record stored with every output: creation time, versions, parameters and (under the
    pipeline) the stage run that made it."""
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "parameters": parameters or {},
    }
    run = _STAGE_RUN.get()
    if run is not None:
        record.update(run)
    return record


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 8 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def data_lock(lock_path: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block, or raise :class:`LockError` naming
    the process that holds it. The operating system releases it when the process ends (also on
    kill -9), so a lock is never left behind."""
    import fcntl

    from pixbin.errors import LockError

    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise LockError(f"{path.parent.parent}: in use by {holder}; wait for it to finish "
                            "(one `pixbin process` or `pixbin build` at a time per data/ folder)"
                            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({command}, since "
                f"{_dt.datetime.now().isoformat(timespec='seconds')})\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def temporary_of(name: str) -> tuple[str, int] | None:
    """``(final name, writer's pid)`` if ``name`` is a temporary of :func:`atomic_path`
    (``.NAME.tmp-<pid>-<hex8>``, maybe with an extension after it), else None."""
    match = _TEMPORARY.match(name)
    return None if match is None else (match["final"], int(match["pid"]))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of :func:`atomic_path` below ``folder`` whose writing process is
    gone (a killed run); return them. Those of live processes are left alone."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp-*"):
        found = temporary_of(path.name)
        if found is None or process_alive(found[1]):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
