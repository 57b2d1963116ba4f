"""What made each file of the data dataset, as its git history records it.

:func:`pixbin.versioning.save` ends its commit messages with trailers made by
:func:`commit_message` (``pixbin-command:``, ``pixbin-parameters:`` as sorted JSON,
``pixbin-version:``); :func:`file_history` reads them back, with the run record of a
``datalad run`` commit, for the last commit that changed a file. (The record stored inside
each output file is another thing: :func:`pixbin.fileio.provenance`.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
from collections.abc import Sequence
from typing import Any

from pixbin import __version__
from pixbin.fileio import to_json
from pixbin.versioning_datalad import VersioningError, dataset_root, git, inside

__all__ = ["command_text", "commit_message", "file_history"]

logger = logging.getLogger(__name__)

_RUN_RECORD_BEGIN = "=== Do not change lines below ==="
_RUN_RECORD_END = "^^^ Do not change lines above ^^^"


def _parameters_json(parameters: Any) -> str:
    if dataclasses.is_dataclass(parameters) and not isinstance(parameters, type):
        parameters = dataclasses.asdict(parameters)
    try:
        return to_json(parameters, sort_keys=True, separators=(", ", ": "))
    except (TypeError, ValueError) as exc:
        raise VersioningError(
            f"parameters {parameters!r} cannot be written as JSON for the commit message ({exc}); "
            "pass a mapping or dataclass of plain values"
        ) from exc


def command_text(command: str | Sequence[str]) -> str:
    """Return a command line as one shell-quoted string.

    Parameters
    ----------
    command : a string (returned as is) or an argv list.

    Returns
    -------
    str
    """
    return command if isinstance(command, str) else shlex.join([str(c) for c in command])


def commit_message(message: str, command: str | Sequence[str] | None, parameters: Any) -> str:
    """Return ``message`` followed by the pixbin trailers that :func:`file_history` reads back.

    Parameters
    ----------
    message : the first line(s) of the commit message.
    command : the command line that made the files, or None (no ``pixbin-command:`` line).
    parameters : a mapping or dataclass, written as sorted JSON with :func:`pixbin.fileio.to_json`,
        or None (no ``pixbin-parameters:`` line).

    Returns
    -------
    str
        The full commit message; it always ends with ``pixbin-version:``.

    Raises
    ------
    VersioningError
        When ``parameters`` cannot be written as JSON.
    """
    lines = [message.strip(), ""]
    if command is not None:
        lines.append(f"pixbin-command: {command_text(command)}")
    if parameters is not None:
        lines.append(f"pixbin-parameters: {_parameters_json(parameters)}")
    lines.append(f"pixbin-version: {__version__}")
    return "\n".join(lines)


def file_history(data_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return what made ``path``: the last commit that changed it and the trailers it records.

    Parameters
    ----------
    data_dir : the dataset root.
    path : a file, relative to the dataset root or absolute inside it.

    Returns
    -------
    dict
        ``commit``, ``date`` (ISO), ``subject``, ``command`` (str or None), ``parameters``
        (parsed JSON or None), ``version`` (str or None), ``run_record`` (the ``datalad run``
        record or None).

    Raises
    ------
    VersioningError
        When ``data_dir`` is not a dataset, or ``path`` is outside it or was never saved.
    """
    root = dataset_root(data_dir)
    (full,) = inside(root, [path], "read the history of")
    rel = full.relative_to(root).as_posix()
    out = git(root, "log", "-1", "--format=%H%x00%aI%x00%B", "--", rel)
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
