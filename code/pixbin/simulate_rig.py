"""The simulated behaviour rig: the lever-push DAQ's TDMS on its own, drifting clock.

Every task signal (:mod:`pixbin.simulate_task`), ``NpxlSync_Signal`` (the probe's sync wave as the
DAQ sees it) and ``CamFrames`` (the camera exposure TTL) as 0/5 V levels with noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixbin.simulate_ttl import high, square_wave

if TYPE_CHECKING:
    from pixbin.simulate import SimulationParams

__all__ = ["write_behaviour_tdms"]

_TTL_HIGH_V, _TTL_NOISE_V = 5.0, 0.05
_CAMERA_TTL_S = 0.004


def write_behaviour_tdms(
    path: Path,
    p: SimulationParams,
    n_samples: int,
    rate_true: float,
    intervals: dict[str, list[tuple[float, float]]],
    sync_rising: np.ndarray,
    frame_ttl: np.ndarray,
    rng_seed: int,
) -> None:
    """Write ``NeuropixelBehaviour(0).tdms``: the rig's 0/5 V channels in 4 s segments.

    Sample ``k`` is taken at probe time ``p.offset_s + k / rate_true``; the file declares the
    nominal ``wf_increment = 1 / p.behaviour_rate_hz``.

    Parameters
    ----------
    path : Path
        The TDMS to write.
    p : SimulationParams
        ``opto``, ``offset_s``, ``behaviour_rate_hz`` and the start time are read.
    n_samples : int
        Samples per channel.
    rate_true : float
        The DAQ's true rate (Hz) on the probe clock.
    intervals : dict
        High intervals (s) of each task channel (:class:`pixbin.simulate_task.TaskTruth`).
    sync_rising : ndarray
        Rising edges (s) of the sync pulses the DAQ sees on ``NpxlSync_Signal``.
    frame_ttl : ndarray
        Camera exposure onsets (s), a short TTL each on ``CamFrames``.
    rng_seed : int
        Seed of the noise (drawn per segment).
    """
    from nptdms import ChannelObject, GroupObject, RootObject, TdmsWriter

    channels = ["Back_Sensor", "Front_Sensor", "Reset_Signal", "Reward_Signal", "Tone_Signal",
                "NpxlSync_Signal", "CamFrames"]
    if p.opto:
        channels += ["Shutter_Signal", "Laser_Signal"]
    start_time = np.datetime64(p.start_time.replace(tzinfo=None), "us")
    levels = {  # (onsets, offsets) per channel, sorted once for every chunk
        name: np.asarray(sorted(intervals[name]), dtype=float).reshape(-1, 2).T
        for name in channels if name in intervals
    }
    chunk = int(p.behaviour_rate_hz * 4)
    with TdmsWriter(path) as writer:
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            t = p.offset_s + np.arange(start, stop) / rate_true  # probe clock
            rng = np.random.default_rng([rng_seed, 3, start])
            objects = []
            if start == 0:
                objects.append(RootObject(properties={"name": "NeuropixelBehaviour"}))
            for name in channels:
                if name == "NpxlSync_Signal":
                    is_high = square_wave(t, sync_rising, 0.5)
                elif name == "CamFrames":
                    is_high = square_wave(t, frame_ttl, _CAMERA_TTL_S)
                else:
                    is_high = high(t, *levels[name])
                values = is_high * _TTL_HIGH_V + rng.normal(0, _TTL_NOISE_V, t.size)
                props = {}
                if start == 0:
                    objects.append(GroupObject(name))
                    props = {
                        "wf_increment": 1.0 / p.behaviour_rate_hz,
                        "wf_start_time": start_time,
                        "wf_start_offset": 0.0,
                        "wf_samples": n_samples,
                        "unit_string": "V",
                        "NI_ChannelName": f"Dev1/ai{channels.index(name)}",
                    }
                objects.append(ChannelObject(name, "0", values, properties=props))
            writer.write_segment(objects)
