"""Find sessions in ``data/raw`` and their files by role.

A session is a folder ``YYMMDD_mouseID[_extra]`` in ``data/raw``. Its files (compressed as
``<file>.tar.gz`` or not) are recognised by name:

- SpikeGLX probe streams ``<run>_gN_tM.imecP.{ap,lf}.{bin,meta}`` (``imec0`` and ``imec00``
  spellings are the same probe; the phase-3A ``.imec.`` spelling is probe 0), also as CatGT
  writes them (``_tcat``) and as SpikeGLX exports them (``.exported.imecP``). They may lie in the
  session folder itself or in SpikeGLX's own folders: a run folder ``<run>_gN/`` and its probe
  folders ``<run>_gN_imecP/`` (also a probe folder directly in the session folder);
- a SpikeGLX NIDQ stream ``<run>_gN_tM.nidq.{bin,meta}`` (same spellings; in the session
  folder or the run folder): the sync stage maps it onto imec0 (the ``nidq`` clock map), no
  other stage reads it yet;
- the behaviour rig's ``NAME(N).tdms`` (e.g. ``NeuropixelBehaviour(0).tdms``);
- cameras: ``<camera>.tdms`` with their ``<camera>meta.tdms`` companion;
- ``areas.csv``: the per-session depth → brain area table.

Other subfolders are ignored, and so are files with other names (logged; a NIDQ-looking
``.bin``/``.meta`` whose name does not parse with a warning). A folder with several SpikeGLX
gates is one session per gate, ``<folder>_gN``, holding that gate's probe and NIDQ files (and
``areas.csv``); its behaviour and camera
files are left out with a warning, since nothing says which gate they belong to. Names that
look like a role but do not parse, two files for the same role, a session whose only SpikeGLX
files lie in subfolders pixbin cannot place, and a folder of such files whose name is not a
session name, are errors that name the files.

Several triggers of one gate (``_t0``, ``_t1``, … of a stream) are one recording: they become one
:class:`RawFile` named as CatGT names a concatenation (``<run>_gN_tcat.…``) whose ``parts`` are
the trigger files in order. The extract stage joins them (:mod:`pixbin.extract`) when their metas
say they follow each other sample for sample, and refuses a gap or an overlap. Triggers must be
numbered without holes, and a stream's ``.bin`` and ``.meta`` must have the same triggers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pixbin import layout
from pixbin.errors import SessionError

__all__ = ["RawFile", "Session", "find_sessions", "scan_sessions", "load_session",
           "parse_session_id"]

log = logging.getLogger(__name__)

_SESSION_RE = re.compile(r"^(?P<date>\d{6})_(?P<mouse>[A-Za-z0-9-]+)(?:_(?P<extra>.+))?$")
_PROBE_RE = re.compile(
    r"^(?P<run>.+)_g(?P<gate>\d+)_t(?P<trigger>\d+|cat)(?:\.exported)?\.imec(?P<probe>\d*)\."
    r"(?P<band>ap|lf)\.(?P<kind>bin|meta)$"
)
_NIDQ_RE = re.compile(
    r"^(?P<run>.+)_g(?P<gate>\d+)_t(?P<trigger>\d+|cat)(?:\.exported)?\.nidq\.(?P<kind>bin|meta)$"
)
_GATE_SESSION_RE = re.compile(r"^(?P<folder>.+)_g(?P<gate>\d+)$")
_RUN_DIR_RE = re.compile(r"^(?P<run>.+)_g(?P<gate>\d+)$")
_PROBE_DIR_RE = re.compile(r"^(?P<run>.+)_g(?P<gate>\d+)_imec(?P<probe>\d+)$")
_BEHAVIOUR_RE = re.compile(r"^(?P<name>[^()]+)\((?P<rec>\d+)\)\.tdms$")
_ARCHIVE_SUFFIX = ".tar.gz"


@dataclass(frozen=True)
class RawFile:
    """One raw file of a session, by role.

    ``role`` is one of ``ap_bin, ap_meta, lf_bin, lf_meta`` (with ``probe``), ``nidq_bin,
    nidq_meta`` (with ``gate``), ``behaviour`` (with ``recording``), ``camera``, ``camera_meta``
    (with ``camera``) or ``areas``.
    ``name`` is the uncompressed file name; ``raw_path`` the file in raw/ (maybe a .tar.gz).
    A file joined from several triggers has ``trigger`` ``"cat"``, ``parts`` (one RawFile per
    trigger, in order) and the first part's ``raw_path``.
    """

    role: str
    name: str
    raw_path: Path
    compressed: bool
    probe: str | None = None
    gate: int | None = None
    trigger: str | None = None
    camera: str | None = None
    recording: int | None = None
    parts: tuple[RawFile, ...] = ()

    @property
    def raw_paths(self) -> tuple[Path, ...]:
        """Every raw file this one is made from (its parts, or itself)."""
        return tuple(p.raw_path for p in self.parts) or (self.raw_path,)


@dataclass(frozen=True)
class Session:
    """A raw session and where its interim and processed files live."""

    session_id: str
    date: dt.date
    mouse: str
    extra: str | None
    data_root: Path
    files: tuple[RawFile, ...]
    folder: str | None = None  # the raw folder when it is not the session id (one gate of several)

    @property
    def raw_dir(self) -> Path:
        return layout.raw_dir(self.data_root, self.folder or self.session_id)

    @property
    def interim_dir(self) -> Path:
        return layout.interim_dir(self.data_root, self.session_id)

    @property
    def processed_dir(self) -> Path:
        return layout.processed_dir(self.data_root, self.session_id)

    @property
    def probes(self) -> list[str]:
        """Probe names (``imec0``, ``imec1``…) that have at least one file."""
        return sorted({f.probe for f in self.files if f.probe}, key=lambda p: int(p[4:]))

    @property
    def cameras(self) -> list[str]:
        return sorted({f.camera for f in self.files if f.role == "camera"})

    def has(self, role: str, *, probe: str | None = None, camera: str | None = None) -> bool:
        """Whether the session has a file for ``role`` (of this probe/camera)."""
        return any(self._matches(f, role, probe, camera) for f in self.files)

    def file(self, role: str, *, probe: str | None = None, camera: str | None = None) -> RawFile:
        """The file for ``role``; :class:`SessionError` naming the session folder if absent."""
        found = [f for f in self.files if self._matches(f, role, probe, camera)]
        if not found:
            which = f" of {probe or camera}" if (probe or camera) else ""
            present = ", ".join(sorted(f.name for f in self.files)) or "nothing"
            raise SessionError(
                f"{self.raw_dir}: no {role}{which} file (found: {present})"
            )
        return found[0]

    def interim_path(self, role: str, *, probe: str | None = None,
                     camera: str | None = None) -> Path:
        """Where the uncompressed copy of a role's file lives in ``interim/``."""
        return self.interim_dir / self.file(role, probe=probe, camera=camera).name

    @staticmethod
    def _matches(f: RawFile, role: str, probe: str | None, camera: str | None) -> bool:
        return (f.role == role and (probe is None or f.probe == probe)
                and (camera is None or f.camera == camera))


def parse_session_id(name: str) -> tuple[dt.date, str, str | None]:
    """Split ``YYMMDD_mouseID[_extra]`` into (date, mouse, extra); :class:`SessionError` if not."""
    match = _SESSION_RE.match(name)
    if not match:
        raise SessionError(
            f"session folder {name!r} does not match YYMMDD_mouseID[_extra] (e.g. 211024_VR46)"
        )
    try:
        date = dt.datetime.strptime(match["date"], "%y%m%d").date()
    except ValueError as e:
        raise SessionError(f"session folder {name!r}: {match['date']!r} is not a date") from e
    return date, match["mouse"], match["extra"]


def _bare_name(path: Path) -> str:
    """The file name without ``.tar.gz``."""
    return path.name[: -len(_ARCHIVE_SUFFIX)] if path.name.endswith(_ARCHIVE_SUFFIX) else path.name


def _classify(path: Path) -> RawFile | None:
    compressed = path.name.endswith(_ARCHIVE_SUFFIX)
    name = _bare_name(path)
    common = {"name": name, "raw_path": path, "compressed": compressed}
    nidq = _NIDQ_RE.match(name)
    if nidq:
        return RawFile(role=f"nidq_{nidq['kind']}", gate=int(nidq["gate"]),
                       trigger=nidq["trigger"], **common)
    if ".imec" in name and name.endswith((".bin", ".meta")):
        match = _PROBE_RE.match(name)
        if not match:
            raise SessionError(
                f"{path}: looks like a SpikeGLX file but does not match "
                "<run>_gN_tM.imecP.{ap,lf}.{bin,meta}"
            )
        probe = f"imec{int(match['probe'] or 0)}"
        role = f"{match['band']}_{match['kind']}"
        return RawFile(role=role, probe=probe, gate=int(match["gate"]), trigger=match["trigger"],
                       **common)
    if name.endswith(".tdms"):
        match = _BEHAVIOUR_RE.match(name)
        if match:
            return RawFile(role="behaviour", recording=int(match["rec"]), **common)
        stem = name[: -len(".tdms")]
        if stem.endswith("meta"):
            return RawFile(role="camera_meta", camera=stem[: -len("meta")], **common)
        return RawFile(role="camera", camera=stem, **common)
    if name == layout.AREAS_CSV:
        return RawFile(role="areas", **common)
    return None


def load_session(data_root: str | Path, session_id: str) -> Session:
    """Read one session: the folder ``data_root/raw/<session_id>``, or gate N of a folder that
    holds several SpikeGLX gates (session id ``<folder>_gN``)."""
    data_root = Path(data_root)
    raw_dir = layout.raw_dir(data_root, session_id)
    gate_of = _GATE_SESSION_RE.match(session_id)
    if not raw_dir.is_dir() and gate_of and layout.raw_dir(data_root, gate_of["folder"]).is_dir():
        return _gate_session(data_root, gate_of["folder"], int(gate_of["gate"]))
    if not raw_dir.is_dir():
        raise SessionError(f"{raw_dir}: session folder not found")
    files = _folder_files(raw_dir)
    gates = _gates(files)
    if len(gates) > 1:
        raise SessionError(
            f"{raw_dir}: files of several SpikeGLX gates {gates}; each gate is its own session: "
            + ", ".join(f"{session_id}_g{g}" for g in gates)
        )
    date, mouse, extra = parse_session_id(session_id)
    return Session(session_id, date, mouse, extra, data_root, tuple(files))


def _gates(files: list[RawFile]) -> list[int]:
    return sorted({f.gate for f in files if f.gate is not None})


def _gate_session(data_root: Path, folder: str, gate: int) -> Session:
    """Gate ``gate`` of a folder with several gates: its probe files and the areas table. The
    folder's behaviour and camera files are left out: nothing in them says which gate they
    belong to (put them with their gate's files in a folder of its own to use them)."""
    raw_dir = layout.raw_dir(data_root, folder)
    files = _folder_files(raw_dir)
    if gate not in _gates(files):
        raise SessionError(f"{raw_dir}: no files of SpikeGLX gate {gate} (gates {_gates(files)})")
    kept = [f for f in files if f.gate == gate or f.role == "areas"]
    left = sorted(f.name for f in files if f.gate is None and f.role != "areas")
    if left:
        log.warning("%s: several gates; %s not assigned to gate %d (nothing says which gate they "
                    "belong to): move them with that gate's files into a folder of their own",
                    raw_dir, ", ".join(left), gate)
    session_id = f"{folder}_g{gate}"
    date, mouse, extra = parse_session_id(session_id)
    return Session(session_id, date, mouse, extra, data_root, tuple(kept), folder=folder)


def _folder_files(raw_dir: Path) -> list[RawFile]:
    """The classified files of a session folder (checked: unique roles, cameras with metas)."""
    files: list[RawFile] = []
    for path in _candidate_files(raw_dir):
        raw = _classify(path)
        if raw is None:
            if _bare_name(path).endswith((".nidq.bin", ".nidq.meta")):
                log.warning("%s: looks like a SpikeGLX NIDQ file but does not match "
                            "<run>_gN_tM.nidq.{bin,meta}; ignored (rename it to use it)", path)
            else:
                log.debug("%s: not a pixbin input, ignored", path)
            continue
        files.append(raw)
    if not any(f.probe for f in files):
        _refuse_unplaced_spikeglx(raw_dir)
    probe_gates = {f.gate for f in files if f.probe}
    stray = [f for f in files if f.role.startswith("nidq") and f.gate not in probe_gates]
    if stray:
        log.warning("%s: %s of a gate without probe files; ignored", raw_dir,
                    ", ".join(sorted(f.name for f in stray)))
        files = [f for f in files if f not in stray]
    files = _join_triggers(raw_dir, files)
    for gate in _gates(files) or [None]:  # roles are unique within a gate
        _check_unique(raw_dir, [f for f in files if f.gate in (gate, None)])
    cameras = {f.camera for f in files if f.role == "camera"}
    for f in files:
        if f.role == "camera_meta" and f.camera not in cameras:
            raise SessionError(f"{f.raw_path}: camera metadata without its video {f.camera}.tdms")
    return files


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _candidate_files(raw_dir: Path) -> list[Path]:
    """The session folder's own files, and those of SpikeGLX's folders in it: run folders
    ``<run>_gN/`` with their probe folders ``<run>_gN_imecP/``, and probe folders placed directly
    in the session folder. Other subfolders are ignored."""
    paths = _files_in(raw_dir)
    for sub in sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _PROBE_DIR_RE.match(sub.name):
            paths += _files_in(sub)
        elif _RUN_DIR_RE.match(sub.name):
            paths += _files_in(sub)
            for probe_dir in sorted(q for q in sub.iterdir()
                                    if q.is_dir() and _PROBE_DIR_RE.match(q.name)):
                paths += _files_in(probe_dir)
    return paths


def _refuse_unplaced_spikeglx(raw_dir: Path) -> None:
    """A session with no probe file that pixbin can place, but SpikeGLX metas somewhere below it:
    say where they are and what pixbin expects instead of finding an empty session."""
    metas = sorted(p for p in raw_dir.rglob("*.meta") if ".imec" in p.name or p.name.endswith(".ap.meta"))
    if not metas:
        return
    shown = ", ".join(str(p.relative_to(raw_dir)) for p in metas[:4])
    raise SessionError(
        f"{raw_dir}: no SpikeGLX probe file in a layout pixbin can use, but found {shown}"
        f"{' …' if len(metas) > 4 else ''}. pixbin reads <run>_gN_tM.imecP.{{ap,lf}}.{{bin,meta}} "
        "(also _tcat, .exported.) in the session folder, in a run folder <run>_gN/ or in its "
        "probe folders <run>_gN_imecP/; rename or move the files to one of these"
    )


def _join_triggers(raw_dir: Path, files: list[RawFile]) -> list[RawFile]:
    """The files with the numbered triggers of each SpikeGLX stream file of a gate replaced by
    one joined file (``_tcat`` name, ``parts`` in trigger order; the first keeps its place).
    SessionError for trigger numbers with holes and for a ``.bin`` and ``.meta`` of one stream
    with different triggers."""
    groups: dict[tuple, list[RawFile]] = {}
    for f in files:
        if f.gate is not None and f.trigger is not None and f.trigger.isdigit():
            groups.setdefault((f.role, f.probe, f.gate), []).append(f)
    joined: dict[tuple, RawFile] = {}
    for key, parts in groups.items():
        parts.sort(key=lambda f: int(f.trigger))
        numbers = [int(f.trigger) for f in parts]
        if len(parts) < 2 or len(set(numbers)) < len(numbers):
            continue  # one trigger, or one given twice (refused by _check_unique)
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            raise SessionError(
                f"{raw_dir}: triggers {['t%d' % n for n in numbers]} of {parts[0].name} have no "
                f"{', '.join('t%d' % n for n in missing)}; pixbin joins triggers that follow each "
                "other: add the missing files, or give the triggers as separate sessions")
        first = parts[0]
        name = first.name.replace(f"_t{first.trigger}.", "_tcat.", 1)
        joined[key] = dataclasses.replace(first, name=name, trigger="cat", parts=tuple(parts))
    for role, probe, gate in joined:
        kind = "bin" if role.endswith("_bin") else "meta"
        other = {"bin": "meta", "meta": "bin"}[kind]
        pair = (role[: -len(kind)] + other, probe, gate)
        mine = [f"t{f.trigger}" for f in groups[(role, probe, gate)]]
        theirs = [f"t{f.trigger}" for f in groups.get(pair, [])]
        if theirs and mine != theirs:
            raise SessionError(
                f"{raw_dir}: {joined[(role, probe, gate)].name} would join triggers {mine} "
                f"but the .{other} files are of triggers {theirs}; every trigger needs its .bin "
                "and .meta")
    out: list[RawFile] = []
    for f in files:
        key = (f.role, f.probe, f.gate)
        if key in joined and f.trigger is not None and f.trigger.isdigit():
            if f is joined[key].parts[0]:
                out.append(joined[key])
            continue
        out.append(f)
    return out


def _check_unique(raw_dir: Path, files: list[RawFile]) -> None:
    seen: dict[tuple, RawFile] = {}
    for f in files:
        key = (f.role, f.probe, f.camera, f.recording if f.role != "behaviour" else None)
        if key in seen and {seen[key].trigger, f.trigger} == {"cat"} and (seen[key].parts or f.parts):
            catgt = seen[key] if not seen[key].parts else f
            raise SessionError(
                f"{raw_dir}: {catgt.raw_path.name} (CatGT's) and the triggers it would join "
                f"({', '.join(p.raw_path.name for p in (seen[key].parts or f.parts))}); keep one")
        if key in seen:
            raise SessionError(
                f"{raw_dir}: two files for the same role ({f.role}"
                f"{' ' + f.probe if f.probe else ''}): {seen[key].raw_path.name} and "
                f"{f.raw_path.name}; keep one"
            )
        seen[key] = f


def _holds_inputs(folder: Path) -> bool:
    """Whether a folder holds files pixbin would read as a session's (by name)."""
    for path in _candidate_files(folder):
        try:
            if _classify(path) is not None:
                return True
        except SessionError:
            return True
    return False


def scan_sessions(data_root: str | Path) -> tuple[list[Session], dict[str, str]]:
    """Every session folder in ``data_root/raw``: those that load, sorted by name, and the
    problem of each folder that does not (``{folder name: message}``), so one bad folder never
    stops the others. A folder whose name is not ``YYMMDD_mouseID[_extra]`` is a problem when it
    holds files pixbin reads (raw probe, rig, camera or areas files), else it is skipped with a
    warning (it is not a session)."""
    raw = layout.raw_root(Path(data_root))
    if not raw.is_dir():
        raise SessionError(f"{raw}: raw data folder not found")
    sessions, problems = [], {}
    for path in sorted(raw.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        if not _SESSION_RE.match(path.name):
            if _holds_inputs(path):  # meant as a session: say why it is not one
                problems[path.name] = (
                    f"{path}: session folder name does not match YYMMDD_mouseID[_extra] "
                    "(e.g. 211024_VR46); rename the folder")
            else:
                log.warning("%s: not a session folder name (YYMMDD_mouseID[_extra]), skipped",
                            path)
            continue
        try:
            gates = _gates(_folder_files(path))
            if len(gates) > 1:
                sessions += [_gate_session(Path(data_root), path.name, g) for g in gates]
            else:
                sessions.append(load_session(data_root, path.name))
        except SessionError as e:
            problems[path.name] = str(e)
    return sessions, problems


def find_sessions(data_root: str | Path, names: list[str] | None = None) -> list[Session]:
    """All sessions in ``data_root/raw`` (or the named ones), sorted by name.

    Named folders that do not load are an error; found by listing, they are skipped with a
    warning (:func:`scan_sessions` returns them).
    """
    if names:
        return [load_session(data_root, n) for n in names]
    sessions, problems = scan_sessions(data_root)
    for name, message in problems.items():
        log.warning("session %s skipped: %s", name, message)
    return sessions
