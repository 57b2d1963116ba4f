#!/usr/bin/env python
"""Save one action x area of the binned dataset as Allen-style ``.npy`` files.

Mirrors ``access_stimulus_structure`` of the Allen binned dataset
(Mlynarski-Group/Allen_visual_neuropixel_data_binned): for every session holding the area,
``session_<id>-<action>-<area>-<data>.npy`` is written, spike data as (unit_id, trial_id, time),
other data as (trial_id, time[, ...]), with a JSON sidecar of the same stem holding the dims,
shape, dtype and coordinates (unit ids, trial ids, times, ...). The file layout it reads is
docs/FORMAT.md; the code is :func:`pixbin.binned_read.export_npy` (this script adds the CLI).

Usage::

    python code/utils/access_action_structure.py rewarded_push MOs exports/
    python code/utils/access_action_structure.py rewarded_push MOs exports/ --data behaviour \\
        --in-path data/binned --sessions 211024_VR46

or, from Python::

    from access_action_structure import access_action_structure
    paths = access_action_structure("rewarded_push", "MOs", "exports/")
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from pixbin.binned_read import export_npy
except ImportError:  # run from a source checkout where pixbin is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pixbin.binned_read import export_npy

__all__ = ["access_action_structure", "main"]

DATA_CHOICES = ("spike_data", "spike_counts", "behaviour", "pose", "lfp", "trials")


def access_action_structure(
    action: str,
    area: str,
    out_path: str | Path,
    data: str = "spike_data",
    in_path: str | Path = "data/binned",
    sessions: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``session_<id>-<action>-<area>-<data>.npy`` (+ ``.json``) for every session.

    Parameters
    ----------
    action
        Action name, the stem of ``<in_path>/<action>.h5`` (e.g. ``rewarded_push``).
    area
        Brain area group (e.g. ``MOs``).
    out_path
        Output folder (created).
    data
        ``spike_data`` (bool, unit x trial x time), ``spike_counts`` (uint8, same dims),
        ``behaviour``, ``pose``, ``lfp``, ``trials``, or ``<group>/<variable>``
        (e.g. ``behaviour/Back_Sensor``).
    in_path
        The binned dataset folder (default ``data/binned``, relative to the working directory).
    sessions
        Session ids to export (default: all).

    Returns
    -------
    list[Path]
        The ``.npy`` files written.
    """
    return export_npy(action, area, out_path, data=data, in_path=in_path, sessions=sessions)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Save one action x area of the binned dataset as .npy files (Allen-style).",
    )
    parser.add_argument("action", help="action name, e.g. rewarded_push")
    parser.add_argument("area", help="brain area, e.g. MOs")
    parser.add_argument("out_path", type=Path, help="output folder")
    parser.add_argument("--data", default="spike_data",
                        help=f"one of {', '.join(DATA_CHOICES)} or <group>/<variable> (default spike_data)")
    parser.add_argument("--in-path", type=Path, default=Path("data/binned"),
                        help="binned dataset folder (default data/binned)")
    parser.add_argument("--sessions", nargs="+", default=None, help="session ids (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from pixbin.errors import PixbinError

    try:
        paths = access_action_structure(args.action, args.area, args.out_path, data=args.data,
                                        in_path=args.in_path, sessions=args.sessions)
    except PixbinError as e:
        logging.getLogger("access_action_structure").error("%s", e)
        return 1
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
