"""Version ``data/`` as a DataLad dataset: create it, save derived files and how they were made.

``data/`` is a DataLad dataset (git + git-annex). Small text files are committed to git,
binaries go to git-annex (the rules are :mod:`pixbin.versioning_rules`), so a collaborator can
``datalad clone`` the dataset and ``datalad get`` only the tensors they need. ``interim/`` is
regenerable and never saved. See ``docs/VERSIONING.md`` for the user-facing commands.

This module is the public entry: :func:`ensure_dataset`, :func:`save`, :func:`run_recorded`,
:func:`clone`, :func:`get`, :func:`drop`, :func:`status`. What made a file is read back from the
history by :func:`pixbin.versioning_history.file_history`; every failure is a
:class:`pixbin.versioning_datalad.VersioningError`. DataLad is imported lazily (it is slow to
import), and nothing changes ``PATH`` at import time (see :mod:`pixbin.versioning_datalad`).

Examples
--------
>>> from pixbin import versioning
>>> versioning.ensure_dataset("data")                                  # doctest: +SKIP
>>> versioning.save("data", ["binned"], "bin all sessions",
...                 command=["pixbin", "build"], parameters={"bin_size_s": 0.01})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pixbin import __version__
from pixbin.versioning_datalad import (
    VersioningError,
    call_datalad,
    check_identity,
    dataset_root,
    git,
    head_commit,
    inject_run,
    inside,
    is_dataset,
    prepare_environment,
)
from pixbin.versioning_history import command_text, commit_message
from pixbin.versioning_rules import gitattributes_rules, gitignore_rules, write_block

__all__ = [
    "DatasetStatus",
    "DEFAULT_SAVE_PATHS",
    "STAGE_DIRS",
    "ensure_dataset",
    "save",
    "run_recorded",
    "record_stage_runs",
    "clone",
    "get",
    "drop",
    "status",
]

logger = logging.getLogger(__name__)

#: What :func:`save` saves when no paths are given (relative to the dataset root).
DEFAULT_SAVE_PATHS: tuple[str, ...] = ("processed", "binned")
#: The stage folders every data dataset has.
STAGE_DIRS: tuple[str, ...] = ("raw", "interim", "processed", "binned")


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
# creating the dataset
# --------------------------------------------------------------------------------------------
def _collision_hint(root: Path) -> str:
    """What to do when a repository around ``root`` tracks files inside it (DataLad refuses)."""
    above = root.parent
    while not above.is_dir():
        above = above.parent
    top = git(above, "rev-parse", "--show-toplevel", check=False).strip()
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
    :func:`pixbin.versioning_rules.gitattributes_rules` and a ``.gitignore`` that keeps
    ``interim/`` out. Existing datasets only get missing or outdated rules written and committed.

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
    prepare_environment()
    if not is_dataset(root):
        check_identity(root)
        if (root / ".git").exists():
            raise VersioningError(
                f"{root} is a git repository but not a DataLad dataset; turn it into one with "
                f"`datalad create --force {root}` (inspect it first), or move it away and retry"
            )
        has_content = root.is_dir() and any(root.iterdir())
        logger.info("creating DataLad dataset at %s", root)
        call_datalad(
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
        for name, block in ((".gitattributes", gitattributes_rules()), (".gitignore", gitignore_rules()))
        if write_block(root / name, block)
    ]
    pending = git(root, "status", "--porcelain", "--", ".gitattributes", ".gitignore").strip()
    if changed or pending:
        check_identity(root)
        call_datalad(
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
# saving with the command and parameters
# --------------------------------------------------------------------------------------------
def _as_list(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _changed_files(root: Path, commit: str) -> list[str]:
    out = git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", "-z", commit)
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
    ``pixbin-version:`` lines (:func:`pixbin.versioning_history.commit_message`), which
    :func:`pixbin.versioning_history.file_history` reads back. Creates the dataset first
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
        targets = inside(root, _as_list(paths), "save")
        if not targets:
            raise VersioningError(f"no paths given to save in {root}; pass paths or None for the defaults")
    for t in targets:
        rel = t.relative_to(root)
        if rel.parts and rel.parts[0] == "interim":
            raise VersioningError(
                f"refusing to save {t}: interim/ is regenerable from raw/ and never versioned; "
                "save the processed/ or binned/ outputs made from it instead"
            )
        if not t.exists() and not git(root, "ls-files", "--", str(rel)).strip():
            raise VersioningError(
                f"cannot save {t}: it does not exist and was never saved in {root}; check the path"
            )
    if not targets:
        logger.info("nothing to save in %s (no %s)", root, " or ".join(DEFAULT_SAVE_PATHS))
        return None
    if message is None:
        subject = f"[pixbin] {command_text(command)}" if command is not None else (
            "[pixbin] save " + ", ".join(str(t.relative_to(root)) or "." for t in targets)
        )
    else:
        if not message.strip():
            raise VersioningError(f"empty commit message for saving {root}; say what was made")
        subject = message
    full_message = commit_message(subject, command, parameters)
    before = head_commit(root)
    call_datalad(
        "save",
        f"saving {', '.join(str(t) for t in targets)}",
        f"check `git -C {root} status` (a leftover .git/index.lock from a killed process must be "
        "removed) and retry",
        dataset=str(root),
        path=[str(t) for t in targets],
        message=full_message,
    )
    after = head_commit(root)
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
    inject: bool = False,
    parameters: Any = None,
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
    inject : do not run ``cmd``: it already ran (e.g. in a dask worker); record it and save
        ``outputs`` (``datalad run --inject``), so ``datalad rerun`` can repeat it.
    parameters : the parameters used, added as a ``pixbin-parameters:`` trailer.

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
        inside(root, [p], "record")
    subject = message.strip() if message and message.strip() else f"[pixbin] {command_text(cmd)}"
    text = commit_message(subject, cmd, parameters)
    before = head_commit(root)
    what = f"datalad run of `{command_text(cmd)}` in {root}"
    hint = "read the command's output above; nothing was saved (fix and rerun, or `datalad save` by hand)"
    arguments = {"cmd": [str(c) for c in cmd], "inputs": [str(p) for p in inputs] or None,
                 "outputs": [str(p) for p in outputs] or None, "message": text,
                 "explicit": explicit}
    if inject:
        inject_run(what, hint, root, **arguments)
    else:
        call_datalad("run", what, hint, dataset=str(root), **arguments)
    after = head_commit(root)
    if after == before or after is None:
        logger.info("`%s` changed nothing in %s; no commit made", command_text(cmd), root)
        return None
    full = git(root, "log", "-1", "--format=%B", after)
    return {"commit": after, "message": full, "files": _changed_files(root, after)}


def _stage_run_paths(session: Any, stage: Any, record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The inputs (raw files, upstream outputs and records) and outputs of one stage run,
    relative to the dataset root; ``interim/`` is never saved, so it is left out of both."""
    from pixbin import layout
    from pixbin.pipeline import _read_record

    root = Path(session.data_root)

    def rel(path: str | os.PathLike[str]) -> str | None:
        p = Path(os.path.relpath(Path(path) if Path(path).is_absolute() else root / path, root))
        return None if p.parts[0] in ("interim", "..") else p.as_posix()

    inputs = [rel(path) for f in session.files if stage.reads_role(f.role) for path in f.raw_paths]
    for name in stage.upstream_of(session):
        inputs += [rel(p) for p in (_read_record(session, name) or {}).get("outputs", [])]
        inputs.append(rel(layout.Processed(session.processed_dir).record(name)))
    outputs = [rel(p) for p in record.get("outputs", [])]
    outputs.append(rel(layout.Processed(session.processed_dir).record(stage.name)))
    return sorted({p for p in inputs if p}), sorted({p for p in outputs if p})


def record_stage_runs(
    data_dir: str | os.PathLike[str],
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    config: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Record each stage that ran as a DataLad run commit (``datalad run --inject``), serially.

    The stages already ran (in this process or in dask workers); each ``done`` stage of each
    session becomes one commit whose run record re-runs exactly that stage for that session
    (``pixbin process <session> --stages <stage> --force <stage> --serial --no-save``), with
    its raw files and upstream outputs as inputs and its outputs and stage record as outputs,
    so ``datalad rerun <commit>`` repeats it. Stages writing only to ``interim/`` (extract)
    are not recorded: ``interim/`` is never saved.

    Parameters
    ----------
    data_dir : the dataset root (``data/``).
    results : ``{session: {stage: record}}`` as returned by
        :func:`pixbin.pipeline.process_sessions`.
    config : the pipeline YAML the stages ran with (passed on to the recorded command).

    Returns
    -------
    list of dict
        The new commits (``{"commit", "message", "files"}``), in the order they were made.
    """
    from pixbin.pipeline import STAGES
    from pixbin.session import load_session

    root = ensure_dataset(data_dir)
    commits = []
    for session_id, records in results.items():
        session = load_session(root, session_id)
        for name, record in records.items():
            if record.get("status") != "done":
                continue
            inputs, outputs = _stage_run_paths(session, STAGES[name], record)
            if len(outputs) < 2:  # only the stage record: its outputs are all in interim/
                continue
            cmd = ["pixbin", "--quiet", "process", session_id, "--data", ".", "--stages", name,
                   "--force", name, "--serial", "--no-save"]
            if config is not None:
                cmd += ["--config", str(Path(config).expanduser().absolute())]
            made = run_recorded(
                root, cmd, inputs, outputs, f"[pixbin] {name} stage of {session_id}",
                inject=True,
                parameters={"stage": name, "session": session_id,
                            "params": record.get("params"), "run_id": record.get("run_id")},
            )
            if made:
                commits.append(made)
    return commits


def save_raw(data_dir: str | os.PathLike[str], session_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Register the raw folders of these sessions in the dataset: one commit per folder that
    has unsaved files (subject ``[pixbin] raw data of <folder>``), none for one already saved.

    Binaries (``.bin``, TDMS, archives) go to git-annex the DataLad way: each file's content is
    moved into ``.git/annex/objects`` (same filesystem: a rename, nothing copied) and the file
    becomes a read-only symlink to it; its bytes are unchanged. ``.meta`` and other small text
    files go to git. A clone then has every raw path and ``datalad get raw/<folder>`` fetches
    the content, after which ``pixbin process`` runs there. Hashing a session's binaries once
    takes about as long as reading them.
    """
    from pixbin.session import load_session

    root = ensure_dataset(data_dir)
    folders = sorted({load_session(root, sid).raw_dir.relative_to(root).as_posix() for sid in session_ids})
    commits = []
    for folder in folders:
        if not git(root, "status", "--porcelain", "--untracked-files=all", "--", folder).strip():
            continue  # saved before and unchanged
        made = save(root, [folder], f"[pixbin] raw data of {folder.split('/', 1)[-1]}")
        if made:
            commits.append(made)
    return commits


def record_build_run(
    data_dir: str | os.PathLike[str],
    session_ids: Sequence[str],
    config: str | os.PathLike[str] | None = None,
) -> dict[str, Any] | None:
    """Record a finished ``pixbin build`` as a DataLad run commit (``datalad run --inject``).

    The run record is the build of exactly these sessions (``pixbin --quiet build <ids> --data .
    --no-save [--config <abs path>]``), with their ``processed/<session>`` folders as inputs and
    ``binned/`` as output, so ``datalad rerun <commit>`` builds it again.

    Returns
    -------
    dict or None
        The new commit (``{"commit", "message", "files"}``), or None when ``binned/`` did not change.
    """
    root = ensure_dataset(data_dir)
    ids = list(session_ids)
    cmd = ["pixbin", "--quiet", "build", *ids, "--data", ".", "--no-save"]
    if config is not None:
        cmd += ["--config", str(Path(config).expanduser().absolute())]
    return run_recorded(root, cmd, [f"processed/{sid}" for sid in ids], ["binned"],
                        f"[pixbin] build of {len(ids)} session(s)", inject=True,
                        parameters={"sessions": ids, "config": None if config is None else str(config)})


# --------------------------------------------------------------------------------------------
# clone / get / drop / status
# --------------------------------------------------------------------------------------------
def clone(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``datalad clone`` a data dataset (local path, ``ria+file://…#~alias`` or URL) to ``path``.

    Only git content (text files, annex pointers) is fetched; use :func:`get` for file content.

    Parameters
    ----------
    source : a dataset path, a ``ria+file://…#~alias`` RIA store URL, or a git URL.
    path : where the clone goes (absent or an empty folder).

    Returns
    -------
    Path
        The absolute root of the clone.
    """
    dest = Path(path).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise VersioningError(
            f"cannot clone into {dest}: it exists and is not an empty folder; choose a new path"
        )
    src = os.fspath(source)
    if "://" not in src and not src.startswith("ria+") and Path(src).expanduser().exists():
        src = str(Path(src).expanduser().absolute())
    check_identity(dest.parent if dest.parent.exists() else Path.cwd())
    call_datalad(
        "clone",
        f"cloning {src} into {dest}",
        "check that the source exists and is readable (a RIA store URL looks like "
        "ria+file:///shared/store#~alias)",
        source=src,
        path=str(dest),
    )
    if not is_dataset(dest):
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
    root = dataset_root(dataset_path)
    targets = inside(root, _as_list(paths), "get")
    results = call_datalad(
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

    Parameters
    ----------
    dataset_path : the dataset root.
    paths : files or folders, relative to the dataset root or absolute inside it.
    force : drop even the last known copy.

    Returns
    -------
    list of Path
        Absolute paths of the files whose content is no longer present locally.
    """
    root = dataset_root(dataset_path)
    targets = inside(root, _as_list(paths), "drop")
    results = call_datalad(
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
    """Return which files of the dataset live in git, which in git-annex, and what is unsaved.

    Parameters
    ----------
    data_dir : the dataset root.

    Returns
    -------
    DatasetStatus
    """
    root = dataset_root(data_dir)
    results = call_datalad(
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
