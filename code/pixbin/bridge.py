"""A processed session as pynapple objects (docs/NWB.md): units, trials, events, behaviour, pose.

Read through :mod:`pixbin.readers`; every time is on the imec0 AP clock in seconds. Needs the
``[nwb]`` extra (pynapple).

pynapple's intervals are closed, ``[start, end]``; pixbin's trials and bins are half-open,
``[start, stop)``. The trials IntervalSet therefore ends each trial at the largest float below the
next trial's start, so no spike belongs to two trials; count a binned window the same way
(:func:`half_open`).

Examples
--------
>>> import pixbin  # doctest: +SKIP
>>> s = pixbin.load_session("data", "240101_SIM01")  # doctest: +SKIP
>>> s.units.count(0.02, ep=s.trials[:1])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixbin import layout, readers
from pixbin.binned_inputs import regular_clock, session_unit_ids
from pixbin.nwb import recording_end_s, trial_stop_times

__all__ = ["PynappleSession", "load_session", "half_open"]


@dataclass(frozen=True)
class PynappleSession:
    """One session's processed outputs as pynapple objects."""

    session_id: str
    units: Any  # nap.TsGroup: index = session unit id, metadata = units.parquet columns
    trials: Any  # nap.IntervalSet: [start_s, next start), metadata = trials.parquet columns
    events: dict[str, Any] = field(default_factory=dict)  # event name -> nap.Ts
    behaviour: Any = None  # nap.TsdFrame (1 kHz channels) or None
    pose: dict[str, Any] = field(default_factory=dict)  # camera -> nap.TsdFrame


def half_open(start_s: Any, stop_s: Any):
    """``nap.IntervalSet`` of the half-open windows ``[start, stop)`` (end = the float below
    ``stop``; a window with ``stop == start`` stays ``[start, start]``), e.g. the binned trials'
    ``start_time`` / ``stop_time``; windows must not overlap."""
    import pynapple as nap

    start = np.atleast_1d(np.asarray(start_s, dtype=np.float64))
    stop = np.atleast_1d(np.asarray(stop_s, dtype=np.float64))
    return nap.IntervalSet(start=start, end=np.maximum(np.nextafter(stop, -np.inf), start))


def load_session(data_dir: str | os.PathLike, session: str) -> PynappleSession:
    """``data/processed/<session>`` as a :class:`PynappleSession`.

    ``units`` holds every unit of units.parquet (filter on its ``label`` metadata), indexed by
    the session unit id ``N * 100000 + cluster_id`` of the binned dataset, with time support
    ``[0, recording end]``; ``behaviour`` one column per 1 kHz channel; ``pose`` per camera the
    columns ``<keypoint>_x``, ``<keypoint>_y``, ``<keypoint>_likelihood``.
    """
    import pynapple as nap

    processed = layout.processed_dir(Path(data_dir), session)
    end_s = recording_end_s(processed)
    support = nap.IntervalSet(start=0.0, end=end_s)

    units = readers.read_units(processed)
    spikes = readers.read_spikes(processed)
    ids = session_unit_ids(units["probe"].astype(str).tolist(), units["unit_id"].to_numpy(),
                           where=layout.Processed(processed).units)
    trains = {}
    for unit_id, probe, cluster in zip(ids, units["probe"].astype(str), units["unit_id"]):
        times, clusters = spikes.get(probe, (np.empty(0), np.empty(0, dtype=np.int64)))
        trains[int(unit_id)] = nap.Ts(t=times[clusters == cluster], time_support=support)
    metadata = units.rename(columns={"unit_id": "cluster_id"}).set_index(ids)
    group = nap.TsGroup(trains, time_support=support, metadata=metadata)

    trials = readers.read_trials(processed).sort_values("trial_id", kind="stable").reset_index(drop=True)
    stop = trial_stop_times(trials, end_s)
    intervals = half_open(trials["start_s"].to_numpy(), stop)
    intervals.set_info(trials.drop(columns=["start_s"]))

    events = {}
    if layout.Processed(processed).events.is_file():
        table = readers.read_events(processed)
        for name, rows in table.groupby("event", sort=True):
            events[str(name)] = nap.Ts(t=np.sort(rows["time_s"].to_numpy(dtype=np.float64)))

    channels = readers.read_behaviour_channels(processed)
    behaviour = None
    if channels is not None:
        names = [str(n) for n, v in channels.data_vars.items() if v.dims == ("time",)]
        behaviour = nap.TsdFrame(t=channels["time"].to_numpy(),
                                 d=np.stack([channels[n].to_numpy() for n in names], axis=1),
                                 columns=names)

    pose = {}
    for path in layout.Processed(processed).pose_files():
        if path.name.startswith("."):
            continue
        camera = path.name[: -len(layout.POSE_SUFFIX)]
        ds = readers.read_pose(processed, camera)
        regular_clock(ds["time"].to_numpy(), path)
        keypoints = [str(k) for k in ds["keypoint"].to_numpy()]
        columns, data = [], []
        for k, keypoint in enumerate(keypoints):
            for variable in ("x", "y", "likelihood"):
                columns.append(f"{keypoint}_{variable}")
                data.append(ds[variable].to_numpy()[:, k])
        pose[camera] = nap.TsdFrame(t=ds["time"].to_numpy(), d=np.stack(data, axis=1), columns=columns)

    return PynappleSession(session, group, intervals, events, behaviour, pose)
