"""The log of one stage run: what pixbin and its libraries said while the stage ran.

:func:`stage_log` is the pipeline's context manager around a stage: every log record emitted in
the stage's thread (pixbin's and the libraries', at the levels the loggers let through) and
every Python warning raised there go to ``processed/<session>/logs/<stage>.log``. Warnings go
*only* there (not to the terminal), so a long run's terminal shows pixbin's own lines and the
progress bars; the stage record counts them and quotes the first few. The log is written to a
temporary file and renamed into place when the stage ends (done or failed), so a killed run
leaves no partial log under the final name.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StageLog", "stage_log", "WARNINGS_QUOTED"]

#: How many distinct warning messages a stage record quotes (the log has them all).
WARNINGS_QUOTED = 5

_WARNINGS_LOGGER = "py.warnings"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class StageLog:
    """What a stage run logged: the log file, the number of warnings and the first distinct ones."""

    path: Path
    n_warnings: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self, data_root: Path) -> dict:
        """The stage record's ``log`` entry (path relative to ``data/``)."""
        return {"path": os.path.relpath(self.path, data_root), "n_warnings": self.n_warnings,
                "warnings": self.warnings}


class _ThreadHandler(logging.FileHandler):
    """Writes the records of one thread; counts and quotes the warnings among them."""

    def __init__(self, path: Path, result: StageLog) -> None:
        super().__init__(path, mode="w", encoding="utf-8", delay=False)
        self.thread_id = threading.get_ident()
        self.result = result
        self.setFormatter(logging.Formatter(_FORMAT))
        self.addFilter(lambda record: record.thread == self.thread_id)

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.name == _WARNINGS_LOGGER:
            self.result.n_warnings += 1
            text = _warning_text(record.getMessage())
            if text not in self.result.warnings and len(self.result.warnings) < WARNINGS_QUOTED:
                self.result.warnings.append(text)


def _warning_text(message: str) -> str:
    """``path:line: Category: text`` as :func:`warnings.formatwarning` writes it → ``Category: text``."""
    first = message.strip().splitlines()[0] if message.strip() else message
    parts = first.split(": ", 1)
    return parts[1] if len(parts) == 2 and ":" in parts[0] else first


#: Threads inside a stage → their handler; the warnings logger hands their records only there.
_ACTIVE: dict[int, _ThreadHandler] = {}
_LOCK = threading.Lock()


class _WarningsToStageLog(logging.Filter):
    """On the ``py.warnings`` logger: a warning raised inside a stage goes to that stage's log only."""

    def filter(self, record: logging.LogRecord) -> bool:
        handler = _ACTIVE.get(record.thread)
        if handler is None:
            return True
        handler.handle(record)
        return False


_WARNINGS_FILTER = _WarningsToStageLog()


@contextmanager
def stage_log(path: str | os.PathLike) -> Iterator[StageLog]:
    """Within the block, this thread's log records and warnings are written to ``path``.

    Warnings are shown once per place as Python's filters decide (``-W`` applies), logged as
    ``py.warnings`` records and kept off the terminal. The file appears under ``path`` when the
    block ends, also when it raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # as atomic_path's
    result = StageLog(path=path)
    handler = _ThreadHandler(tmp, result)
    root = logging.getLogger()
    warnings_logger = logging.getLogger(_WARNINGS_LOGGER)
    with _LOCK:
        if not _ACTIVE:
            logging.captureWarnings(True)
            warnings_logger.addFilter(_WARNINGS_FILTER)
        _ACTIVE[handler.thread_id] = handler
    root.addHandler(handler)
    try:
        yield result
    finally:
        root.removeHandler(handler)
        with _LOCK:
            _ACTIVE.pop(handler.thread_id, None)
            if not _ACTIVE:
                warnings_logger.removeFilter(_WARNINGS_FILTER)
                logging.captureWarnings(False)
        handler.close()
        os.replace(tmp, path)
