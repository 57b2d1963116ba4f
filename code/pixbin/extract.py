"""raw → interim: safe, verified, atomic, idempotent.

Each raw file (or the single member of its ``.tar.gz``) is copied into ``interim/<session>/``
under a temporary name while its sha256 is computed, then renamed into place. A manifest
(``interim/<session>/manifest.json``) records size and sha256 of every interim file and the raw
file it came from (size + mtime), so a re-run skips files that are up to date and redoes stale
ones. Archives must hold exactly one regular file with the bare name: absolute paths, ``..``,
links and devices are refused (the standard library's ``data`` extraction filter is applied on
top). Raw files are only ever read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pixbin import layout
from pixbin.errors import ExtractError
from pixbin.fileio import atomic_path, read_json, sha256_file, write_json
from pixbin.layout import INTERIM_MANIFEST as MANIFEST
from pixbin.progress import stage_bar
from pixbin.session import RawFile, Session

__all__ = ["ExtractParams", "extract_file", "extract_session", "verify_interim"]

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


@dataclass(frozen=True)
class ExtractParams:
    """The extract stage has no parameters (a ``pipeline.yaml`` section for it must be empty)."""


def _raw_signature(path: Path, interim_dir: Path) -> dict:
    """The raw file's size and mtime (what makes its copy current), and where it is, relative to
    the interim folder (no machine path in data/)."""
    stat = path.stat()
    return {"source": layout.recorded_path(path, interim_dir), "source_size": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns}


class _WriteError(Exception):
    """Writing into interim/ failed (disk full, permission, read-only): not the archive's fault."""


def _copy_hashing(src, dst: Path, progress: Callable[[int], None] | None) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    try:
        out = open(dst, "wb")
    except OSError as e:
        raise _WriteError(e) from e
    with out:
        while chunk := src.read(_CHUNK):
            try:
                out.write(chunk)
            except OSError as e:
                raise _WriteError(e) from e
            digest.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
        try:
            out.flush()
        except OSError as e:
            raise _WriteError(e) from e
    return size, digest.hexdigest()


def _write_failed(raw: RawFile, target: Path, e: _WriteError) -> ExtractError:
    cause = e.args[0]
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    return ExtractError(f"{target}: cannot write the copy of {raw.raw_path.name} into "
                        f"{target.parent} ({reason}); the raw file is intact")


def _check_member(archive: Path, member: tarfile.TarInfo, expected: str, dest: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ExtractError(f"{archive}: unsafe member path {member.name!r} (absolute or '..')")
    if not member.isfile():
        kind = ("link" if (member.issym() or member.islnk()) else
                "directory" if member.isdir() else "device or special file")
        raise ExtractError(f"{archive}: member {member.name!r} is a {kind}; only files allowed")
    if name.name != expected or len(name.parts) != 1:
        raise ExtractError(
            f"{archive}: expected one member named {expected!r}, found {member.name!r}"
        )
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(member, str(dest))
        except tarfile.FilterError as e:
            raise ExtractError(f"{archive}: member {member.name!r} refused: {e}") from e


def _extract_archive(raw: RawFile, tmp: Path, progress) -> tuple[int, str]:
    archive = raw.raw_path
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.next()
            if member is None:
                raise ExtractError(f"{archive}: empty archive, expected {raw.name!r}")
            _check_member(archive, member, raw.name, tmp.parent)
            source = tar.extractfile(member)
            size, digest = _copy_hashing(source, tmp, progress)
            if size != member.size:
                raise ExtractError(
                    f"{archive}: member {raw.name!r} is truncated: header says "
                    f"{member.size} bytes, read {size}"
                )
            extra = tar.next()
            if extra is not None:
                raise ExtractError(
                    f"{archive}: holds more than one member ({raw.name!r}, {extra.name!r})"
                )
            # read the gzip stream to its end: only there are its CRC-32 and size checked
            while tar.fileobj.read(_CHUNK):
                pass
    except PermissionError as e:
        raise ExtractError(f"{archive}: cannot read the archive ({e.strerror})") from e
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ExtractError(f"{archive}: corrupted or truncated archive ({e})") from e
    return size, digest


def _up_to_date(raw: RawFile, target: Path, entry: dict | None) -> bool:
    if entry is None or not target.exists():
        return False
    signature = _raw_signature(raw.raw_path, target.parent)
    return (
        entry.get("source_size") == signature["source_size"]
        and entry.get("source_mtime_ns") == signature["source_mtime_ns"]
        and target.stat().st_size == entry.get("size")
    )


def extract_file(raw: RawFile, interim_dir: str | Path, manifest: dict,
                 progress: Callable[[int], None] | None = None) -> Path:
    """Copy or decompress one raw file into ``interim_dir`` unless it is up to date.

    ``manifest`` (name → record) is updated in place with the file's size, sha256 and source.
    Returns the interim path.
    """
    interim_dir = Path(interim_dir)
    target = interim_dir / raw.name
    if _up_to_date(raw, target, manifest.get(raw.name)):
        log.debug("%s is up to date", target)
        return target
    log.info("extracting %s → %s", raw.raw_path, target)
    try:
        with atomic_path(target) as tmp:
            if raw.compressed:
                size, digest = _extract_archive(raw, tmp, progress)
            else:
                try:
                    with open(raw.raw_path, "rb") as src:
                        size, digest = _copy_hashing(src, tmp, progress)
                except OSError as e:
                    raise ExtractError(f"{raw.raw_path}: cannot read it ({e.strerror})") from e
    except _WriteError as e:
        raise _write_failed(raw, target, e) from e
    manifest[raw.name] = {"size": size, "sha256": digest,
                          **_raw_signature(raw.raw_path, Path(interim_dir))}
    return target


def extract_session(session: Session, roles: Iterable[str] | None = None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Bring a session's files (or only ``roles``) into ``interim/<session>/``; return the
    manifest. The manifest is saved after each file, so an interrupted run resumes.
    ``progress`` receives the bytes written; by default a terminal shows them as a bar."""
    interim = session.interim_dir
    interim.mkdir(parents=True, exist_ok=True)
    manifest_path = interim / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    wanted = set(roles) if roles is not None else None
    # the unpacked size of a .tar.gz is known only once read: the bar counts bytes, no total
    with stage_bar(f"{session.session_id} extract", unit="B", unit_scale=True,
                   unit_divisor=1024) as bar:
        for raw in session.files:
            if raw.role == "areas" or (wanted is not None and raw.role not in wanted):
                continue
            before = manifest.get(raw.name)
            extract_file(raw, interim, manifest, progress or bar.update)
            if manifest.get(raw.name) != before:
                write_json(manifest_path, manifest)
    return manifest


def verify_interim(session: Session) -> list[str]:
    """Re-hash every interim file against the manifest; return a list of problems (empty = ok)."""
    manifest_path = session.interim_dir / MANIFEST
    if not manifest_path.exists():
        return [f"{manifest_path}: no manifest"]
    problems = []
    for name, entry in read_json(manifest_path).items():
        path = session.interim_dir / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif os.path.getsize(path) != entry["size"]:
            problems.append(f"{path}: size {os.path.getsize(path)} != {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    return problems
