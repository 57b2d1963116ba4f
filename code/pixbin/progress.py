"""Progress bars inside long stages (extract bytes, LFP chunks, video frames).

Shown only where a person watches: on a terminal (stderr is a TTY), not under CI, not with
``pixbin --quiet`` (which sets :data:`NO_PROGRESS_ENV`, inherited by dask workers). Bars are
tqdm's, cleared when done (``leave=False``) so the per-stage bar of ``pixbin process`` stays
the one line that remains; log lines go through ``logging_redirect_tqdm`` in the CLI.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm

__all__ = ["NO_PROGRESS_ENV", "progress_shown", "stage_bar"]

#: set (to anything non-empty) to hide every progress bar
NO_PROGRESS_ENV = "PIXBIN_NO_PROGRESS"


def progress_shown() -> bool:
    """True when progress bars are drawn: stderr is a terminal, not CI, not quiet."""
    return sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get(NO_PROGRESS_ENV)


def stage_bar(desc: str, total: float | None = None, unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar for work inside a stage (``total=None``: counts without an end, e.g. bytes
    of an archive whose unpacked size is unknown until read)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not progress_shown(),
                dynamic_ncols=True, **kwargs)
