"""Helpers shared by the benchmark scripts (imported as a sibling module: run the scripts as
``python benchmarks/bench_<name>.py``)."""

from __future__ import annotations

import os

__all__ = ["evict"]


def evict(*paths: str | os.PathLike) -> None:
    """Drop these files' clean pages from the page cache (``posix_fadvise(DONTNEED)``: no root
    needed, only these files)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
