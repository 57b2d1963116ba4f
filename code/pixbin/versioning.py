"""Version ``data/`` as a DataLad dataset: create it, save derived files with provenance, get/drop.

``data/`` is a DataLad dataset (git + git-annex). Small text files (JSON, CSV, TSV, YAML,
Markdown, SpikeGLX ``.meta``) are committed to git; binaries (HDF5, NumPy, Parquet, raw ``.bin``,
TDMS, archives, images, videos) go to git-annex, so a collaborator can ``datalad clone`` the
dataset and ``datalad get`` only the tensors they need. ``interim/`` is regenerable and never
saved. See ``docs/VERSIONING.md`` for the user-facing commands.

DataLad is imported lazily inside the functions (it is slow to import). DataLad calls
``git-annex`` by name; when it is not on ``PATH`` (a venv used without activating it) the
interpreter's own scripts folder, where ``pip install git-annex`` puts it, is prepended to
``os.environ["PATH"]`` on first use (nothing happens at import time).

Examples
--------
>>> from pixbin import versioning
>>> versioning.ensure_dataset("data")                                  # doctest: +SKIP
>>> versioning.save("data", ["binned"], "bin all sessions",
...                 command=["pixbin", "build"], parameters={"bin_size_s": 0.01})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pixbin import __version__
from pixbin.errors import PixbinError

__all__ = [
    "VersioningError",
    "DatasetStatus",
    "ANNEX_EXTENSIONS",
    "GIT_TEXT_EXTENSIONS",
    "DEFAULT_SAVE_PATHS",
    "STAGE_DIRS",
    "TEXT_MAX_IN_GIT",
    "OTHER_MAX_IN_GIT",
    "ensure_dataset",
    "save",
    "run_recorded",
    "clone",
    "get",
    "drop",
    "status",
    "provenance",
    "gitattributes_rules",
]

logger = logging.getLogger(__name__)

#: Suffixes whose files always go to git-annex (matched case-insensitively).
ANNEX_EXTENSIONS: tuple[str, ...] = (
    "h5", "hdf5", "nc", "nwb", "mat", "npy", "npz", "parquet", "feather", "arrow",
    "bin", "dat", "tdms", "tdms_index", "tar.gz", "tgz", "gz", "bz2", "xz", "zst", "zip", "7z",
    "png", "jpg", "jpeg", "tif", "tiff", "gif", "pdf", "mp4", "avi", "mkv", "mov",
    "pkl", "pickle", "pt", "pth", "ckpt", "pb",
)  # fmt: skip
#: Suffixes of text files kept in git (unless larger than ``TEXT_MAX_IN_GIT``).
GIT_TEXT_EXTENSIONS: tuple[str, ...] = (
    "json", "csv", "tsv", "md", "rst", "txt", "yaml", "yml", "toml", "cfg", "ini", "meta",
    "py", "log", "svg",
)  # fmt: skip
#: Text files above this size go to git-annex anyway (git-annex size syntax).
TEXT_MAX_IN_GIT = "10mb"
#: Files of any other suffix go to git-annex when binary (libmagic) or larger than this.
OTHER_MAX_IN_GIT = "1mb"
#: What :func:`save` saves when no paths are given (relative to the dataset root).
DEFAULT_SAVE_PATHS: tuple[str, ...] = ("processed", "binned")
#: The stage folders every data dataset has.
STAGE_DIRS: tuple[str, ...] = ("raw", "interim", "processed", "binned")

_BEGIN = "# >>> pixbin versioning rules (written by pixbin.versioning; edit the constants there)"
_END = "# <<< pixbin versioning rules"
_IGNORE_BEGIN = "# >>> pixbin ignores (written by pixbin.versioning)"
_IGNORE_END = "# <<< pixbin ignores"
_IGNORE_LINES = (
    "/interim/",  # regenerable from raw/ (pixbin extract); never versioned
    ".*.tmp-*",  # leftovers of pixbin.fileio.atomic_path from a killed process
    "__pycache__/",
    ".ipynb_checkpoints/",
)
_RUN_RECORD_BEGIN = "=== Do not change lines below ==="
_RUN_RECORD_END = "^^^ Do not change lines above ^^^"


class VersioningError(PixbinError):
    """A DataLad/git-annex operation on the data dataset failed or was refused."""


@dataclasses.dataclass(frozen=True)
class DatasetStatus:
    """Where each tracked file of a dataset lives, and what is not saved yet.

    Paths are POSIX strings relative to the dataset root, sorted.

    Attributes
    ----------
    git : files whose content is committed to git.
    annexed : files whose content is in git-annex (present locally or not).
    annexed_present : the annexed files whose content is present in this clone.
    unsaved : untracked, modified, added or deleted files (``interim/`` is ignored, never listed).
    """

    git: tuple[str, ...]
    annexed: tuple[str, ...]
    annexed_present: tuple[str, ...]
    unsaved: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# environment: git, git-annex, identity
# --------------------------------------------------------------------------------------------
def _prepare_environment() -> None:
    """Make ``git-annex`` findable by DataLad's subprocesses; refuse clearly when it is not.

    Prefers the ``git-annex`` installed beside the running interpreter (the pinned PyPI package)
    by prepending that folder to ``os.environ["PATH"]``; the change is kept for the process so
    that concurrent calls never see it undone.
    """
    exe = "git-annex.exe" if os.name == "nt" else "git-annex"
    path = os.environ.get("PATH", "")
    for folder in dict.fromkeys((Path(sys.executable).parent, Path(sysconfig.get_path("scripts")))):
        candidate = folder / exe
        if candidate.is_file():
            found = shutil.which("git-annex", path=path)
            if found is None or Path(found).parent != folder:
                os.environ["PATH"] = f"{folder}{os.pathsep}{path}" if path else str(folder)
                logger.debug("prepended %s to PATH so DataLad finds %s", folder, candidate)
            break
    if shutil.which("git-annex") is None:
        raise VersioningError(
            f"git-annex not found on PATH nor beside the interpreter {sys.executable}; install it "
            "into this environment (`pip install git-annex` or `conda install -c conda-forge "
            "git-annex`)"
        )
    if shutil.which("git") is None:
        raise VersioningError("git not found on PATH; install git (>= 2.25) and retry")


def _check_identity(where: Path) -> None:
    """Refuse early when git cannot make commits (no user.name/user.email)."""
    cwd = where if where.is_dir() else where.parent
    while not cwd.is_dir():
        cwd = cwd.parent
    for var in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        proc = subprocess.run(["git", "var", var], cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise VersioningError(
                f"git cannot make commits in {where}: no identity ({proc.stderr.strip()}); set "
                "one with `git config --global user.name 'Your Name'` and "
                "`git config --global user.email you@lab.org`, then retry"
            )


def _git(root: Path, *args: str, check: bool = True) -> str:
    """Run ``git -C root args`` and return stdout; raise VersioningError on failure."""
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise VersioningError(
            f"`git {' '.join(args)}` failed in {root}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def _head(root: Path) -> str | None:
    out = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    return out or None


def _format_result(res: Mapping[str, Any]) -> str:
    msg = res.get("message")
    if isinstance(msg, (tuple, list)) and msg:
        try:
            msg = str(msg[0]) % tuple(msg[1:])
        except (TypeError, ValueError):
            msg = " ".join(str(m) for m in msg)
    text = f"{res.get('action', '?')} {res.get('path', '')}: {res.get('status')}"
    return f"{text} ({msg})" if msg else text


def _call(name: str, what: str, hint: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Call ``datalad.api.<name>`` and return its result records; raise on any failed record."""
    _prepare_environment()
    import datalad.api as dl  # noqa: PLC0415  (slow import, kept lazy)

    func = getattr(dl, name)
    if kwargs.get("dataset") is not None:
        # a Dataset instance (not a path string) makes relative paths, and `run`'s working
        # directory, the dataset root rather than the caller's current directory (datalad gh-3435)
        kwargs["dataset"] = dl.Dataset(str(kwargs["dataset"]))
    try:
        results = func(
            **kwargs,
            on_failure="ignore",
            return_type="list",
            result_renderer="disabled",
            result_filter=None,
            result_xfm=None,
        )
    except VersioningError:
        raise
    except Exception as exc:  # DataLad raises many types; re-raise as ours, chained
        raise VersioningError(f"{what} failed: {exc}; {hint}") from exc
    failed = [r for r in results if r.get("status") in ("error", "impossible")]
    if failed:
        details = "; ".join(_format_result(r) for r in failed[:10])
        more = f" (+{len(failed) - 10} more)" if len(failed) > 10 else ""
        raise VersioningError(f"{what} failed: {details}{more}; {hint}")
    return results


# --------------------------------------------------------------------------------------------
# configuration files
# --------------------------------------------------------------------------------------------
def _nocase(suffix: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in suffix)


def gitattributes_rules() -> str:
    """Return the pixbin block of the dataset's ``.gitattributes`` (``annex.largefiles`` rules).

    The last matching line wins in ``.gitattributes``, so the catch-all comes first, then text
    suffixes (git unless huge), then binary suffixes (always annex), then git's own dot-files.
    """
    lines = [
        _BEGIN,
        "# any other file: annex when binary or large (mimeencoding needs git-annex with libmagic;",
        "# the suffix rules below do not)",
        f"* annex.largefiles=((mimeencoding=binary)and(largerthan=0))or(largerthan={OTHER_MAX_IN_GIT})",
        f"# text: git unless larger than {TEXT_MAX_IN_GIT}",
        *(f"*.{_nocase(s)} annex.largefiles=largerthan={TEXT_MAX_IN_GIT}" for s in GIT_TEXT_EXTENSIONS),
        "# binaries: always annex",
        *(f"*.{_nocase(s)} annex.largefiles=anything" for s in ANNEX_EXTENSIONS),
        "**/.git* annex.largefiles=nothing",
        ".datalad/** annex.largefiles=nothing",
        _END,
    ]
    return "\n".join(lines) + "\n"


def _gitignore_rules() -> str:
    return "\n".join([_IGNORE_BEGIN, *_IGNORE_LINES, _IGNORE_END]) + "\n"


def _write_block(path: Path, block: str) -> bool:
    """Put ``block`` (delimited by its first and last line) into ``path``; True when it changed."""
    begin, end = block.splitlines()[0], block.splitlines()[-1]
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + tail
    else:
        new = old + ("" if not old or old.endswith("\n") else "\n") + block
    if new == old:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def _dataset_root(data_dir: str | os.PathLike[str]) -> Path:
    """Return the absolute root of an existing dataset, or raise saying how to make one."""
    root = Path(data_dir).expanduser().absolute()
    if not (root / ".datalad" / "config").is_file() or not (root / ".git").exists():
        raise VersioningError(
            f"{root} is not a DataLad dataset (no .datalad/config or .git); create it with "
            "pixbin.versioning.ensure_dataset() (or `datalad create --force`), or clone one with "
            "`datalad clone`"
        )
    return root


def _is_dataset(root: Path) -> bool:
    return (root / ".datalad" / "config").is_file() and (root / ".git").exists()


def _collision_hint(root: Path) -> str:
    """What to do when a repository around ``root`` tracks files inside it (DataLad refuses)."""
    above = root.parent
    while not above.is_dir():
        above = above.parent
    top = _git(above, "rev-parse", "--show-toplevel", check=False).strip()
    if not top:
        return "check that the folder is writable and retry"
    rel = os.path.relpath(root, top)
    return (
        f"if the repository {top} tracks files under {rel}/ (e.g. .gitkeep placeholders), untrack "
        f"them there: `git -C {top} rm -r -q --cached {rel}`, commit that, and list `/{rel}/` in "
        f"{top}/.gitignore; then retry (pixbin makes the stage folders itself)"
    )


def ensure_dataset(data_dir: str | os.PathLike[str]) -> Path:
    """Make ``data_dir`` a DataLad dataset with pixbin's git/annex rules; idempotent.

    Creates the dataset (``datalad create``, ``force=True`` when the folder has content), the
    stage folders ``raw/ interim/ processed/ binned/``, the ``annex.largefiles`` rules of
    :func:`gitattributes_rules` and a ``.gitignore`` that keeps ``interim/`` out. Existing
    datasets only get missing or outdated rules written and committed.

    Parameters
    ----------
    data_dir : the ``data/`` folder (created if absent).

    Returns
    -------
    Path
        The absolute dataset root.
    """
    root = Path(data_dir).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise VersioningError(f"{root} exists and is not a folder; pass the data/ folder")
    _prepare_environment()
    if not _is_dataset(root):
        _check_identity(root)
        if (root / ".git").exists():
            raise VersioningError(
                f"{root} is a git repository but not a DataLad dataset; turn it into one with "
                f"`datalad create --force {root}` (inspect it first), or move it away and retry"
            )
        has_content = root.is_dir() and any(root.iterdir())
        logger.info("creating DataLad dataset at %s", root)
        _call(
            "create",
            f"creating the DataLad dataset {root}",
            _collision_hint(root),
            path=str(root),
            force=has_content,
            description=f"pixbin data on {socket.gethostname()}:{root}",
        )
    for name in STAGE_DIRS:
        (root / name).mkdir(exist_ok=True)
    changed = [
        name
        for name, block in ((".gitattributes", gitattributes_rules()), (".gitignore", _gitignore_rules()))
        if _write_block(root / name, block)
    ]
    pending = _git(root, "status", "--porcelain", "--", ".gitattributes", ".gitignore").strip()
    if changed or pending:
        _check_identity(root)
        _call(
            "save",
            f"saving the versioning rules of {root}",
            f"check `git -C {root} status` and retry",
            dataset=str(root),
            path=[str(root / ".gitattributes"), str(root / ".gitignore")],
            message=f"[pixbin] versioning rules: binaries to git-annex, text to git, interim/ ignored\n\npixbin-version: {__version__}",
        )
        logger.info("wrote pixbin versioning rules in %s", root)
    return root


# --------------------------------------------------------------------------------------------
# saving with provenance
# --------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _parameters_json(parameters: Any) -> str:
    if dataclasses.is_dataclass(parameters) and not isinstance(parameters, type):
        parameters = dataclasses.asdict(parameters)
    try:
        return json.dumps(parameters, sort_keys=True, default=_json_default, separators=(", ", ": "))
    except (TypeError, ValueError) as exc:
        raise VersioningError(
            f"parameters {parameters!r} cannot be written as JSON for the commit message ({exc}); "
            "pass a mapping or dataclass of plain values"
        ) from exc


def _command_text(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else shlex.join([str(c) for c in command])


def _provenance_message(message: str, command: str | Sequence[str] | None, parameters: Any) -> str:
    lines = [message.strip(), ""]
    if command is not None:
        lines.append(f"pixbin-command: {_command_text(command)}")
    if parameters is not None:
        lines.append(f"pixbin-parameters: {_parameters_json(parameters)}")
    lines.append(f"pixbin-version: {__version__}")
    return "\n".join(lines)


def _as_list(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _inside(root: Path, paths: Iterable[str | os.PathLike[str]], what: str) -> list[Path]:
    """Absolute paths under ``root`` (relative ones are taken relative to ``root``)."""
    out = []
    for p in paths:
        p = Path(p).expanduser()
        full = p if p.is_absolute() else root / p
        full = Path(os.path.normpath(full))
        if full != root and root not in full.parents:
            raise VersioningError(
                f"cannot {what} {p}: it is outside the dataset {root}; pass paths inside it "
                "(relative paths are taken relative to the dataset root)"
            )
        out.append(full)
    return out


def _changed_files(root: Path, commit: str) -> list[str]:
    out = _git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", "-z", commit)
    return sorted(p for p in out.split("\0") if p)


def save(
    data_dir: str | os.PathLike[str],
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    message: str | None = None,
    *,
    command: str | Sequence[str] | None = None,
    parameters: Any = None,
) -> dict[str, Any] | None:
    """``datalad save`` derived files with a commit message that records how they were made.

    The message ends with ``pixbin-command:``, ``pixbin-parameters:`` (JSON) and
    ``pixbin-version:`` lines, which :func:`provenance` reads back. Creates the dataset first
    when needed (:func:`ensure_dataset`). Use :func:`run_recorded` instead when the files are made
    by one command line that ``datalad rerun`` should be able to repeat.

    Parameters
    ----------
    data_dir : the dataset root (``data/``).
    paths : files or folders to save, relative to ``data_dir`` or absolute inside it;
        default ``processed/`` and ``binned/``. ``interim/`` is refused.
    message : first line(s) of the commit message; default names the command or the paths.
    command : the pixbin command line that made the files (a string or an argv list).
    parameters : the parameters used (mapping or dataclass), written as sorted JSON.

    Returns
    -------
    dict or None
        ``{"commit", "message", "files"}`` of the new commit, or None when nothing changed.
    """
    root = ensure_dataset(data_dir)
    if paths is None:
        targets = [root / p for p in DEFAULT_SAVE_PATHS if (root / p).exists()]
    else:
        targets = _inside(root, _as_list(paths), "save")
        if not targets:
            raise VersioningError(f"no paths given to save in {root}; pass paths or None for the defaults")
    for t in targets:
        rel = t.relative_to(root)
        if rel.parts and rel.parts[0] == "interim":
            raise VersioningError(
                f"refusing to save {t}: interim/ is regenerable from raw/ and never versioned; "
                "save the processed/ or binned/ outputs made from it instead"
            )
        if not t.exists() and not _git(root, "ls-files", "--", str(rel)).strip():
            raise VersioningError(
                f"cannot save {t}: it does not exist and was never saved in {root}; check the path"
            )
    if not targets:
        logger.info("nothing to save in %s (no %s)", root, " or ".join(DEFAULT_SAVE_PATHS))
        return None
    if message is None:
        subject = f"[pixbin] {_command_text(command)}" if command is not None else (
            "[pixbin] save " + ", ".join(str(t.relative_to(root)) or "." for t in targets)
        )
    else:
        if not message.strip():
            raise VersioningError(f"empty commit message for saving {root}; say what was made")
        subject = message
    full_message = _provenance_message(subject, command, parameters)
    before = _head(root)
    _call(
        "save",
        f"saving {', '.join(str(t) for t in targets)}",
        f"check `git -C {root} status` (a leftover .git/index.lock from a killed process must be "
        "removed) and retry",
        dataset=str(root),
        path=[str(t) for t in targets],
        message=full_message,
    )
    after = _head(root)
    if after == before or after is None:
        logger.info("nothing changed in %s; no commit made", ", ".join(map(str, targets)))
        return None
    files = _changed_files(root, after)
    logger.info("saved %d file(s) in %s as %s", len(files), root, after[:10])
    return {"commit": after, "message": full_message, "files": files}


def run_recorded(
    data_dir: str | os.PathLike[str],
    cmd: Sequence[str],
    inputs: Sequence[str | os.PathLike[str]] = (),
    outputs: Sequence[str | os.PathLike[str]] = (),
    message: str | None = None,
    *,
    explicit: bool = True,
) -> dict[str, Any] | None:
    """Run ``cmd`` through ``datalad run`` so the commit holds a ``datalad rerun``-able record.

    The command runs in the dataset root (relative paths in ``cmd`` are relative to it), after
    ``datalad get`` of ``inputs`` and unlocking of ``outputs``; only ``outputs`` are saved when
    ``explicit`` (the default, so unrelated unsaved files neither block nor leak into the commit).
    The interpreter's scripts folder is on ``PATH``, so ``pixbin`` is found from a venv.

    Parameters
    ----------
    data_dir : the dataset root.
    cmd : the command as an argv list, e.g. ``["pixbin", "build", "--action", "rewarded_push"]``.
    inputs, outputs : paths relative to the dataset root (globs allowed, as ``datalad run``).
    message : commit summary; default the command line.
    explicit : save only ``outputs`` and do not require a clean dataset.

    Returns
    -------
    dict or None
        ``{"commit", "message", "files"}`` of the new commit, or None when outputs did not change.
    """
    root = ensure_dataset(data_dir)
    if isinstance(cmd, str) or not cmd:
        raise VersioningError(
            f"run_recorded in {root} needs the command as a non-empty argv list, got {cmd!r}"
        )
    if explicit and not outputs:
        raise VersioningError(
            f"run_recorded({cmd!r}) in {root}: explicit runs save only the declared outputs, and "
            "none were given; pass outputs=[...] (e.g. ['binned/rewarded_push.h5'])"
        )
    for p in (*inputs, *outputs):
        _inside(root, [p], "record")
    text = message.strip() if message and message.strip() else f"[pixbin] {_command_text(cmd)}"
    text += f"\n\npixbin-version: {__version__}"
    before = _head(root)
    _call(
        "run",
        f"datalad run of `{_command_text(cmd)}` in {root}",
        "read the command's output above; nothing was saved (fix and rerun, or `datalad save` by hand)",
        cmd=[str(c) for c in cmd],
        dataset=str(root),
        inputs=[str(p) for p in inputs] or None,
        outputs=[str(p) for p in outputs] or None,
        message=text,
        explicit=explicit,
    )
    after = _head(root)
    if after == before or after is None:
        logger.info("`%s` changed nothing in %s; no commit made", _command_text(cmd), root)
        return None
    full = _git(root, "log", "-1", "--format=%B", after)
    return {"commit": after, "message": full, "files": _changed_files(root, after)}


def provenance(data_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return what made ``path``: the last commit that changed it and its recorded provenance.

    Returns
    -------
    dict
        ``commit``, ``date`` (ISO), ``subject``, ``command`` (str or None), ``parameters``
        (parsed JSON or None), ``version`` (str or None), ``run_record`` (the ``datalad run``
        record or None).
    """
    root = _dataset_root(data_dir)
    (full,) = _inside(root, [path], "read the provenance of")
    rel = full.relative_to(root).as_posix()
    out = _git(root, "log", "-1", "--format=%H%x00%aI%x00%B", "--", rel)
    if not out.strip():
        raise VersioningError(f"{full} was never saved in {root}; save it first (pixbin.versioning.save)")
    commit, date, body = out.split("\0", 2)
    fields: dict[str, Any] = {"command": None, "parameters": None, "version": None, "run_record": None}
    for line in body.splitlines():
        for key in ("command", "parameters", "version"):
            prefix = f"pixbin-{key}: "
            if line.startswith(prefix):
                fields[key] = line[len(prefix):].strip()
    if fields["parameters"] is not None:
        try:
            fields["parameters"] = json.loads(fields["parameters"])
        except json.JSONDecodeError:
            logger.warning("commit %s: pixbin-parameters is not JSON; returned as text", commit[:10])
    if _RUN_RECORD_BEGIN in body and _RUN_RECORD_END in body:
        record = body.split(_RUN_RECORD_BEGIN, 1)[1].split(_RUN_RECORD_END, 1)[0]
        try:
            fields["run_record"] = json.loads(record)
        except json.JSONDecodeError:
            fields["run_record"] = record.strip()
    return {"commit": commit, "date": date, "subject": body.splitlines()[0] if body else "", **fields}


# --------------------------------------------------------------------------------------------
# clone / get / drop / status
# --------------------------------------------------------------------------------------------
def clone(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``datalad clone`` a data dataset (local path, ``ria+file://…#~alias`` or URL) to ``path``.

    Only git content (text files, annex pointers) is fetched; use :func:`get` for file content.
    """
    dest = Path(path).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise VersioningError(
            f"cannot clone into {dest}: it exists and is not an empty folder; choose a new path"
        )
    src = os.fspath(source)
    if "://" not in src and not src.startswith("ria+") and Path(src).expanduser().exists():
        src = str(Path(src).expanduser().absolute())
    _check_identity(dest.parent if dest.parent.exists() else Path.cwd())
    _call(
        "clone",
        f"cloning {src} into {dest}",
        "check that the source exists and is readable (a RIA store URL looks like "
        "ria+file:///shared/store#~alias)",
        source=src,
        path=str(dest),
    )
    if not _is_dataset(dest):
        raise VersioningError(f"cloned {src} into {dest}, but it is not a DataLad dataset; check the source")
    logger.info("cloned %s into %s", src, dest)
    return dest


def _files_from(results: Iterable[Mapping[str, Any]], action: str) -> list[Path]:
    return sorted(
        {
            Path(r["path"])
            for r in results
            if r.get("action") == action and r.get("type") == "file" and r.get("status") in ("ok", "notneeded")
        }
    )


def get(
    dataset_path: str | os.PathLike[str],
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """``datalad get`` the content of files (or folders) of a cloned dataset.

    Parameters
    ----------
    dataset_path : the dataset root.
    paths : files or folders, relative to the dataset root or absolute inside it.

    Returns
    -------
    list of Path
        Absolute paths of the files whose content is now present (fetched or already there).
    """
    root = _dataset_root(dataset_path)
    targets = _inside(root, _as_list(paths), "get")
    results = _call(
        "get",
        f"getting {', '.join(str(t.relative_to(root)) for t in targets)} in {root}",
        f"check the path exists in the dataset (`datalad status -d {root}`) and that a sibling "
        f"holding the content is reachable (`datalad siblings -d {root}`); ask the publisher to "
        "`datalad push --to <sibling>` if the content was never published",
        dataset=str(root),
        path=[str(t) for t in targets],
    )
    files = _files_from(results, "get")
    logger.info("content present for %d file(s) in %s", len(files), root)
    return files


def drop(
    dataset_path: str | os.PathLike[str],
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    force: bool = False,
) -> list[Path]:
    """``datalad drop`` the local content of annexed files; the file pointers stay.

    DataLad refuses to drop the last known copy; ``force=True`` (``reckless='availability'``)
    drops anyway, which loses content that was never pushed anywhere.

    Returns
    -------
    list of Path
        Absolute paths of the files whose content is no longer present locally.
    """
    root = _dataset_root(dataset_path)
    targets = _inside(root, _as_list(paths), "drop")
    results = _call(
        "drop",
        f"dropping {', '.join(str(t.relative_to(root)) for t in targets)} in {root}",
        "DataLad keeps the last copy of content: push it to a sibling first "
        "(`datalad push --to <sibling>`), or pass force=True if it can be regenerated",
        dataset=str(root),
        path=[str(t) for t in targets],
        reckless="availability" if force else None,
    )
    files = _files_from(results, "drop")
    logger.info("dropped content of %d file(s) in %s", len(files), root)
    return files


def status(data_dir: str | os.PathLike[str]) -> DatasetStatus:
    """Return which files of the dataset live in git, which in git-annex, and what is unsaved."""
    root = _dataset_root(data_dir)
    results = _call(
        "status",
        f"reading the status of {root}",
        f"check `git -C {root} status`",
        dataset=str(root),
        annex="availability",
        untracked="all",
    )
    git_files, annexed, present, unsaved = [], [], [], []
    for r in results:
        if r.get("action") != "status" or r.get("type") not in ("file", "symlink"):
            continue
        rel = Path(r["path"]).relative_to(root).as_posix()
        state = r.get("state")
        if state != "clean":
            unsaved.append(rel)
        if state in ("untracked", "deleted", "added"):
            continue
        if r.get("key"):
            annexed.append(rel)
            if r.get("has_content"):
                present.append(rel)
        else:
            git_files.append(rel)
    return DatasetStatus(
        git=tuple(sorted(git_files)),
        annexed=tuple(sorted(annexed)),
        annexed_present=tuple(sorted(present)),
        unsaved=tuple(sorted(unsaved)),
    )
