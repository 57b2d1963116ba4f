"""raw → interim: safe, verified, atomic, idempotent.

Each raw file (or the single member of its ``.tar.gz``) is copied into ``interim/<session>/``
under a temporary name while its sha256 is computed, then renamed into place. A manifest
(``interim/<session>/manifest.json``) records size and sha256 of every interim file and the raw
file it came from (size + mtime), so a re-run skips files that are up to date and redoes stale
ones. Archives must hold exactly one regular file with the bare name: absolute paths, ``..``,
links and devices are refused (the standard library's ``data`` extraction filter is applied on
top). Raw files are only ever read.

A file joined from several SpikeGLX triggers (:attr:`pixbin.session.RawFile.parts`) is written as
CatGT would: the ``.bin`` parts one after the other, and the first trigger's ``.meta`` with
``fileSizeBytes``/``fileTimeSecs`` of the whole and ``pixbinJoinedTriggers`` (the trigger
numbers) / ``pixbinTriggerSamples`` (samples of each). Only triggers that follow each other
sample for sample are joined (each meta's ``firstSample`` is the previous one's plus its
samples) and every ``.bin`` but the last must be as long as its meta says; a gap, an overlap, a
part of another probe or rate, or a short part is an ExtractError naming both files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pixbin import layout
from pixbin.errors import ExtractError, MetaError
from pixbin.fileio import atomic_path, read_json, sha256_file, write_json
from pixbin.layout import INTERIM_MANIFEST as MANIFEST
from pixbin.progress import stage_bar
from pixbin.session import RawFile, Session
from pixbin.spikeglx import meta_with, parse_meta

__all__ = ["ExtractParams", "extract_file", "extract_session", "verify_interim"]

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


@dataclass(frozen=True)
class ExtractParams:
    """The extract stage has no parameters (a ``pipeline.yaml`` section for it must be empty)."""


def _raw_signature(raw: RawFile, interim_dir: Path) -> dict:
    """The raw file's size and mtime (what makes its copy current), and where it is, relative to
    the interim folder (no machine path in data/); lists of them for a file joined from parts."""
    stats = [(layout.recorded_path(path, interim_dir), path.stat()) for path in raw.raw_paths]
    signature = {"source": [where for where, _ in stats],
                 "source_size": [stat.st_size for _, stat in stats],
                 "source_mtime_ns": [stat.st_mtime_ns for _, stat in stats]}
    return signature if raw.parts else {k: v[0] for k, v in signature.items()}


class _WriteError(Exception):
    """Writing into interim/ failed (disk full, permission, read-only): not the archive's fault."""


def _copy_into(src, out, digest, progress: Callable[[int], None] | None) -> int:
    """Copy ``src`` to the open file ``out`` while hashing; the bytes copied."""
    size = 0
    while chunk := src.read(_CHUNK):
        try:
            out.write(chunk)
        except OSError as e:
            raise _WriteError(e) from e
        digest.update(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return size


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


def _append(raw: RawFile, out, digest, dest_dir: Path, progress) -> int:
    """Append one raw file (or its archive's single member) to the open file ``out``; the bytes
    appended."""
    if raw.compressed:
        return _append_archive(raw, out, digest, dest_dir, progress)
    try:
        src = open(raw.raw_path, "rb")
    except OSError as e:
        raise ExtractError(f"{raw.raw_path}: cannot read it ({e.strerror})") from e
    with src:
        try:
            return _copy_into(src, out, digest, progress)
        except OSError as e:  # reading (writing failures are _WriteError)
            raise ExtractError(f"{raw.raw_path}: cannot read it ({e.strerror})") from e


def _append_archive(raw: RawFile, out, digest, dest_dir: Path, progress) -> int:
    archive = raw.raw_path
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.next()
            if member is None:
                raise ExtractError(f"{archive}: empty archive, expected {raw.name!r}")
            _check_member(archive, member, raw.name, dest_dir)
            source = tar.extractfile(member)
            size = _copy_into(source, out, digest, progress)
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
    return size


def _write_parts(parts: Sequence[RawFile], tmp: Path, progress, sizes: list[int] | None = None
                 ) -> tuple[int, str]:
    """Write the parts one after the other into ``tmp``; total size and sha256 (``sizes``
    receives each part's)."""
    digest = hashlib.sha256()
    try:
        out = open(tmp, "wb")
    except OSError as e:
        raise _WriteError(e) from e
    total = 0
    with out:
        for part in parts:
            size = _append(part, out, digest, tmp.parent, progress)
            total += size
            if sizes is not None:
                sizes.append(size)
        try:
            out.flush()
        except OSError as e:
            raise _WriteError(e) from e
    return total, digest.hexdigest()


# ------------------------------------------------------------------------ joined triggers
#: meta keys every trigger of one stream must share (those it has)
_SAME_IN_EVERY_TRIGGER = ("typeThis", "imSampRate", "niSampRate", "nSavedChans",
                          "snsSaveChanSubset", "imDatPrb_sn", "imDatPrb_type", "~imroTbl")


def _meta_text(raw: RawFile) -> str:
    buf = io.BytesIO()
    _append(raw, buf, hashlib.sha256(), Path("."), None)
    return buf.getvalue().decode("utf-8-sig", errors="replace")


@dataclass(frozen=True)
class _Trigger:
    part: RawFile
    text: str
    meta: dict[str, Any]
    n_samples: int
    first_sample: int
    rate_hz: float


def _trigger(part: RawFile, joined_name: str) -> _Trigger:
    text = _meta_text(part)
    try:
        meta = parse_meta(text, part.raw_path)
        n_saved, size, first = (int(meta[k]) for k in ("nSavedChans", "fileSizeBytes", "firstSample"))
        rate = float(meta.get("imSampRate") or meta["niSampRate"])
    except (KeyError, ValueError, MetaError):
        raise ExtractError(
            f"{part.raw_path}: needs nSavedChans, fileSizeBytes, firstSample and a sample rate to "
            f"be joined with the other triggers of {joined_name} (where it starts and how long "
            "it is); join the triggers with CatGT instead") from None
    return _Trigger(part, text, meta, size // (2 * n_saved), first, rate)


def _triggers(meta: RawFile) -> list[_Trigger]:
    """Each trigger of a joined ``.meta``, checked to continue the one before it."""
    found = [_trigger(part, meta.name) for part in meta.parts]
    for before, after in zip(found, found[1:]):
        for key in _SAME_IN_EVERY_TRIGGER:
            if before.meta.get(key) != after.meta.get(key):
                raise ExtractError(
                    f"{after.part.raw_path}: {key}={after.meta.get(key)!r}, but "
                    f"{before.part.raw_path.name} has {before.meta.get(key)!r}; triggers of one "
                    "stream are one probe at one rate")
        expected = before.first_sample + before.n_samples
        if after.first_sample != expected:
            gap = after.first_sample - expected
            what = f"a gap of {gap} samples" if gap > 0 else f"an overlap of {-gap} samples"
            raise ExtractError(
                f"{after.part.raw_path}: trigger t{after.part.trigger} starts at sample "
                f"{after.first_sample} (firstSample), but t{before.part.trigger} "
                f"({before.part.raw_path.name}) ends before sample {expected}: {what} "
                f"({abs(gap) / before.rate_hz:.6g} s); pixbin joins only triggers that follow each "
                "other sample for sample (the rig and camera do not pause with the probe). Join "
                "them with CatGT (-t=<first>,<last>, which zero-fills gaps) and give its _tcat "
                "files, or give each trigger its own session folder")
    return found


def _joined_meta_text(triggers: list[_Trigger]) -> str:
    """The first trigger's meta with the whole's size and duration and the joined triggers."""
    first = triggers[0]
    n_samples = sum(t.n_samples for t in triggers)
    text = meta_with(first.text, {"fileSizeBytes": n_samples * int(first.meta["nSavedChans"]) * 2,
                                  "fileTimeSecs": repr(n_samples / first.rate_hz)})
    return (text + "pixbinJoinedTriggers=" + ",".join(t.part.trigger for t in triggers) + "\n"
            + "pixbinTriggerSamples=" + ",".join(str(t.n_samples) for t in triggers) + "\n")


def _write_joined(raw: RawFile, tmp: Path, progress, meta: RawFile | None) -> tuple[int, str]:
    """Write a file joined from triggers: the meta, or the ``.bin`` parts checked against the
    triggers' metas (``meta``)."""
    if raw.role.endswith("_meta"):
        data = _joined_meta_text(_triggers(raw)).encode()
        try:
            tmp.write_bytes(data)
        except OSError as e:
            raise _WriteError(e) from e
        return len(data), hashlib.sha256(data).hexdigest()
    if meta is None or not meta.parts:
        raise ExtractError(f"{raw.raw_path}: cannot join the triggers of {raw.name} without "
                           "their .meta files (where each starts and how long it is)")
    triggers = _triggers(meta)
    sizes: list[int] = []
    total, digest = _write_parts(raw.parts, tmp, progress, sizes)
    for k, (trigger, part, size) in enumerate(zip(triggers, raw.parts, sizes)):
        expected = int(trigger.meta["fileSizeBytes"])
        if size != expected and k < len(sizes) - 1:
            raise ExtractError(
                f"{part.raw_path}: holds {size} bytes, its meta "
                f"{trigger.part.raw_path.name} says {expected}; the triggers after it would be "
                "joined at the wrong samples")
    return total, digest


def _up_to_date(raw: RawFile, target: Path, entry: dict | None) -> bool:
    if entry is None or not target.exists():
        return False
    signature = _raw_signature(raw, target.parent)
    return (
        entry.get("source_size") == signature["source_size"]
        and entry.get("source_mtime_ns") == signature["source_mtime_ns"]
        and target.stat().st_size == entry.get("size")
    )


def extract_file(raw: RawFile, interim_dir: str | Path, manifest: dict,
                 progress: Callable[[int], None] | None = None, *,
                 meta: RawFile | None = None) -> Path:
    """Copy or decompress one raw file into ``interim_dir`` unless it is up to date.

    ``manifest`` (name → record) is updated in place with the file's size, sha256 and source.
    A ``.bin`` joined from triggers needs the joined ``meta`` of its stream. Returns the interim
    path.
    """
    interim_dir = Path(interim_dir)
    target = interim_dir / raw.name
    if _up_to_date(raw, target, manifest.get(raw.name)):
        log.debug("%s is up to date", target)
        return target
    if raw.parts:
        log.info("joining triggers %s → %s", ", ".join(p.name for p in raw.parts), target)
    else:
        log.info("extracting %s → %s", raw.raw_path, target)
    try:
        with atomic_path(target) as tmp:
            if raw.parts:
                size, digest = _write_joined(raw, tmp, progress, meta)
            else:
                size, digest = _write_parts([raw], tmp, progress)
    except _WriteError as e:
        raise _write_failed(raw, target, e) from e
    manifest[raw.name] = {"size": size, "sha256": digest, **_raw_signature(raw, interim_dir)}
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
            meta = (_stream_meta(session, raw) if raw.parts and raw.role.endswith("_bin")
                    else None)
            extract_file(raw, interim, manifest, progress or bar.update, meta=meta)
            if manifest.get(raw.name) != before:
                write_json(manifest_path, manifest)
    return manifest


def _stream_meta(session: Session, raw: RawFile) -> RawFile | None:
    """The ``.meta`` of the stream a ``.bin`` belongs to (None when the session has none)."""
    role = raw.role[: -len("bin")] + "meta"
    return session.file(role, probe=raw.probe) if session.has(role, probe=raw.probe) else None


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
