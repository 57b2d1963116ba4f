"""Run git and DataLad on the data dataset for :mod:`pixbin.versioning`, raising VersioningError.

Finds ``git-annex``, checks that git can make commits, runs ``git`` and ``datalad.api`` calls,
and resolves paths inside a dataset. Every failure is raised as :class:`VersioningError`, naming
what failed and what to do.

DataLad is imported lazily inside :func:`call_datalad` (it is slow to import). DataLad calls
``git-annex`` by name; when it is not on ``PATH`` (a venv used without activating it) the
interpreter's own scripts folder, where ``pip install git-annex`` puts it, is prepended to
``os.environ["PATH"]`` on first use (nothing happens at import time).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pixbin.errors import PixbinError

__all__ = [
    "VersioningError",
    "prepare_environment",
    "check_identity",
    "git",
    "head_commit",
    "call_datalad",
    "dataset_root",
    "is_dataset",
    "inside",
]

logger = logging.getLogger(__name__)


class VersioningError(PixbinError):
    """A DataLad/git-annex operation on the data dataset failed or was refused."""


def prepare_environment() -> None:
    """Make ``git-annex`` findable by DataLad's subprocesses; refuse clearly when it is not.

    Prefers the ``git-annex`` installed beside the running interpreter (the pinned PyPI package)
    by prepending that folder to ``os.environ["PATH"]``; the change is kept for the process so
    that concurrent calls never see it undone.

    Raises
    ------
    VersioningError
        When ``git-annex`` or ``git`` cannot be found.
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


def check_identity(where: Path) -> None:
    """Refuse early when git cannot make commits (no user.name/user.email).

    Parameters
    ----------
    where : a folder (or a path inside one, possibly not made yet) where commits will be made.

    Raises
    ------
    VersioningError
        When ``git var GIT_AUTHOR_IDENT`` or ``GIT_COMMITTER_IDENT`` fails there.
    """
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


def git(root: Path, *args: str, check: bool = True) -> str:
    """Run ``git -C root args`` and return stdout; raise VersioningError on failure.

    Parameters
    ----------
    root : the repository folder.
    *args : the git subcommand and its arguments.
    check : raise when git exits non-zero (otherwise return its stdout anyway).

    Returns
    -------
    str
        git's standard output.
    """
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise VersioningError(
            f"`git {' '.join(args)}` failed in {root}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def head_commit(root: Path) -> str | None:
    """Return the commit ``HEAD`` of ``root`` points to, or None before the first commit.

    Parameters
    ----------
    root : the repository folder.

    Returns
    -------
    str or None
        The full commit hash.
    """
    out = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
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


def call_datalad(name: str, what: str, hint: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Call ``datalad.api.<name>`` and return its result records; raise on any failed record.

    Parameters
    ----------
    name : the DataLad command (``"create"``, ``"save"``, ``"run"``, ``"get"``, ...).
    what : what the call does, for the error message (``"saving data/binned"``).
    hint : what the user should do when it fails, appended to the error message.
    **kwargs : the command's arguments; a ``dataset`` path is passed as a ``Dataset``.

    Returns
    -------
    list of dict
        DataLad's result records.

    Raises
    ------
    VersioningError
        When DataLad raises, or any record has status ``error`` or ``impossible``.
    """
    prepare_environment()
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
    return _checked(results, what, hint)


def _checked(results: list[dict[str, Any]], what: str, hint: str) -> list[dict[str, Any]]:
    failed = [r for r in results if r.get("status") in ("error", "impossible")]
    if failed:
        details = "; ".join(_format_result(r) for r in failed[:10])
        more = f" (+{len(failed) - 10} more)" if len(failed) > 10 else ""
        raise VersioningError(f"{what} failed: {details}{more}; {hint}")
    return results


def inject_run(what: str, hint: str, dataset: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Record a command that already ran as a ``datalad run`` commit without running it.

    ``datalad.core.local.run.run_command(..., inject=True)`` (what ``datalad run`` uses, and
    DataLad extensions call for this): the outputs are saved and the run record written, so
    ``datalad rerun`` can repeat the command. ``kwargs`` are ``run_command``'s arguments.
    """
    prepare_environment()
    import datalad.api as dl  # noqa: PLC0415  (slow import, kept lazy)
    from datalad.core.local.run import run_command  # noqa: PLC0415

    try:
        results = list(run_command(dataset=dl.Dataset(str(dataset)), inject=True, **kwargs))
    except Exception as exc:  # DataLad raises many types; re-raise as ours, chained
        raise VersioningError(f"{what} failed: {exc}; {hint}") from exc
    return _checked(results, what, hint)


def dataset_root(data_dir: str | os.PathLike[str]) -> Path:
    """Return the absolute root of an existing dataset, or raise saying how to make one.

    Parameters
    ----------
    data_dir : the dataset folder.

    Returns
    -------
    Path
        The absolute dataset root.
    """
    root = Path(data_dir).expanduser().absolute()
    if not (root / ".datalad" / "config").is_file() or not (root / ".git").exists():
        raise VersioningError(
            f"{root} is not a DataLad dataset (no .datalad/config or .git); create it with "
            "pixbin.versioning.ensure_dataset() (or `datalad create --force`), or clone one with "
            "`datalad clone`"
        )
    return root


def is_dataset(root: Path) -> bool:
    """Return whether ``root`` is a DataLad dataset (has ``.datalad/config`` and ``.git``).

    Parameters
    ----------
    root : the folder.

    Returns
    -------
    bool
    """
    return (root / ".datalad" / "config").is_file() and (root / ".git").exists()


def inside(root: Path, paths: Iterable[str | os.PathLike[str]], what: str) -> list[Path]:
    """Absolute paths under ``root`` (relative ones are taken relative to ``root``).

    Parameters
    ----------
    root : the absolute dataset root.
    paths : paths relative to ``root`` or absolute inside it.
    what : the action, for the error message (``"save"`` gives "cannot save ...").

    Returns
    -------
    list of Path
        The normalised absolute paths, in the given order.

    Raises
    ------
    VersioningError
        When a path lies outside ``root``.
    """
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
