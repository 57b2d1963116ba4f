"""The simulated probe's units: areas along the shank, footprints, waveforms, spike trains.

Units sit in the areas of :data:`AREAS` at channel positions read back from the AP meta; their
firing is driven by the task's tones, pushes and rewards (:mod:`pixbin.simulate_task`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixbin.errors import ConfigError

if TYPE_CHECKING:
    from pixbin.simulate import SimulationParams

__all__ = ["AREAS", "DriftParams", "imposed_displacement", "probe_positions", "simulate_units",
           "unit_footprint"]

#: Depth (µm from the tip) about which non-rigid drift scales: the middle of NP1.0 bank 0.
DRIFT_PIVOT_UM = 1920.0


@dataclass(frozen=True)
class DriftParams:
    """Motion of the brain against the probe imposed on the simulated units (default: none).

    The displacement of tissue at depth ``y`` (µm from the tip) at time ``t`` (s, the probe's file
    time) is ``(ramp_um_per_min * t / 60 + sum of the jumps already passed) * (1 +
    depth_gain_per_mm * (y - DRIFT_PIVOT_UM) / 1000)``, in µm, positive = away from the tip (a unit
    at depth ``y0`` at time 0 sits at ``y0 + displacement``; SpikeInterface's sign). ``jumps``:
    ``(time_s, um)`` pairs, each a sudden step. ``depth_gain_per_mm = 0`` is rigid drift.
    """

    ramp_um_per_min: float = 0.0
    jumps: tuple[tuple[float, float], ...] = ()
    depth_gain_per_mm: float = 0.0

    @property
    def moves(self) -> bool:
        """Whether any motion is imposed."""
        return self.ramp_um_per_min != 0.0 or any(um != 0.0 for _, um in self.jumps)

    def validate(self, duration_s: float) -> None:
        """Refuse jumps outside the recording and a gain that folds the tissue over itself."""
        bad = [t for t, _ in self.jumps if not 0.0 < t < duration_s]
        if bad:
            raise ConfigError(f"drift.jumps at {bad} s: expected times inside the recording "
                              f"(0, {duration_s}) s")
        if abs(self.depth_gain_per_mm) * DRIFT_PIVOT_UM / 1000 >= 1:
            raise ConfigError(f"drift.depth_gain_per_mm {self.depth_gain_per_mm}: expected |gain| < "
                              f"{1000 / DRIFT_PIVOT_UM:.3f} (the scale must stay positive along the probe)")


def imposed_displacement(drift: DriftParams, times_s: np.ndarray, depths_um: np.ndarray) -> np.ndarray:
    """Imposed displacement (µm) at each ``(times_s[i], depths_um[i])`` (arrays broadcast)."""
    times_s = np.asarray(times_s, dtype=np.float64)
    rigid = drift.ramp_um_per_min * times_s / 60.0
    for jump_s, um in drift.jumps:
        rigid = rigid + np.where(times_s >= jump_s, um, 0.0)
    scale = 1.0 + drift.depth_gain_per_mm * (np.asarray(depths_um, dtype=np.float64) - DRIFT_PIVOT_UM) / 1000.0
    return rigid * scale


def unit_footprint(
    positions: np.ndarray, soma_um: np.ndarray, amplitude_uv: float, shift_um: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Channels a unit's spike reaches and its peak amplitude (µV) on each, with the soma moved
    ``shift_um`` in depth: ``amplitude_uv / (1 + (d / 35 µm)^2)``, normalised so that the nearest
    channel gets ``amplitude_uv`` at the unmoved position; channels above 5 % of it."""
    x, y, z = (float(v) for v in soma_um)

    def falloff(soma_y: float) -> np.ndarray:
        dist = np.sqrt((positions[:, 0] - x) ** 2 + (positions[:, 1] - soma_y) ** 2 + z**2)
        return 1.0 / (1.0 + (dist / 35.0) ** 2)

    weights = falloff(y + shift_um) / falloff(y).max()
    footprint = np.flatnonzero(weights > 0.05)
    return footprint, weights[footprint] * amplitude_uv

#: Areas along the probe, depth from the tip in µm (half-open ranges), and how the task drives
#: their units. ``LSr`` is the unresponsive control area.
AREAS: tuple[dict, ...] = (
    {"area": "LSr", "depth_min_um": 0.0, "depth_max_um": 800.0, "responds_to": []},
    {"area": "CP", "depth_min_um": 800.0, "depth_max_um": 2200.0, "responds_to": ["push", "reward"]},
    {"area": "MOs", "depth_min_um": 2200.0, "depth_max_um": 3400.0, "responds_to": ["tone", "push"]},
)
_AREA_SHARE = {"LSr": 0.25, "CP": 0.40, "MOs": 0.35}


def probe_positions(ap_meta: Path) -> np.ndarray:
    """Channel (x, y) positions in µm read back from the meta by probeinterface.

    Parameters
    ----------
    ap_meta : Path
        The AP ``.meta`` file.

    Returns
    -------
    ndarray, shape (n_channels, 2), in channel order.
    """
    import probeinterface

    probe = probeinterface.read_spikeglx(ap_meta)
    order = np.argsort(probe.device_channel_indices)
    return np.asarray(probe.contact_positions)[order]


def _bump_trace(centres: np.ndarray, sigma_s: float, n: int, dt_s: float) -> np.ndarray:
    """Sum of unit-height Gaussians at ``centres`` on a grid of ``n`` samples of ``dt_s``."""
    trace = np.zeros(n)
    half = int(4 * sigma_s / dt_s)
    for c in centres:
        i = int(round(c / dt_s))
        lo, hi = max(i - half, 0), min(i + half + 1, n)
        if lo < hi:
            t = np.arange(lo, hi) * dt_s
            trace[lo:hi] += np.exp(-0.5 * ((t - c) / sigma_s) ** 2)
    return trace


def _task_drive(trials: list[dict], n_bins: int, dt_s: float) -> dict[str, np.ndarray]:
    """Per task variable, a trace of unit-height bumps that modulates the responsive units."""
    tone = np.array([t["tone_onset_s"] for t in trials if "tone_onset_s" in t])
    pushes = np.array([t["back_sensor_open_s"] for t in trials if "back_sensor_open_s" in t])
    rewards = np.array([t["reward_signal_s"] for t in trials if "reward_signal_s" in t])
    return {
        "tone": _bump_trace(tone + 0.10, 0.05, n_bins, dt_s),
        "push": _bump_trace(pushes, 0.15, n_bins, dt_s),
        "reward": _bump_trace(rewards + 0.25, 0.15, n_bins, dt_s),
    }


def simulate_units(
    p: SimulationParams,
    rng: np.random.Generator,
    positions: np.ndarray,
    trials: list[dict],
    duration_s: float,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Units with areas, footprints, waveforms and task-modulated spike trains.

    Parameters
    ----------
    p : SimulationParams
        ``n_units`` and ``ap_rate_hz`` are read.
    rng : numpy.random.Generator
        Where every random draw comes from, in a fixed order.
    positions : ndarray, shape (n_channels, 2)
        Channel positions (µm), from :func:`probe_positions`.
    trials : list of dict
        The task's trials (:class:`pixbin.simulate_task.TaskTruth`), which drive the rates.
    duration_s : float
        Length of the recording (s).

    Returns
    -------
    units : list of dict
        One dict a unit; keys starting with ``_`` (weights, waveform) are for the AP writer only.
    spike_times : ndarray
        Spike times (s, probe clock), sorted.
    spike_ids : ndarray of int64
        The unit of each spike.
    """
    dt_s = 0.001
    n_bins = int(duration_s / dt_s)
    drive = _task_drive(trials, n_bins, dt_s)
    counts = rng.multinomial(p.n_units, [_AREA_SHARE[a["area"]] for a in AREAS])
    wf_t = (np.arange(90) - 30) / p.ap_rate_hz * 1000.0  # ms
    units, spike_times, spike_ids = [], [], []
    unit_id = 0
    for area, n_area in zip(AREAS, counts):
        in_area = np.flatnonzero(
            (positions[:, 1] >= area["depth_min_um"] + 20)
            & (positions[:, 1] < area["depth_max_um"] - 20)
        )
        for _ in range(n_area):
            channel = int(rng.choice(in_area))
            soma = positions[channel] + rng.uniform(-8, 8, size=2)
            z_um = rng.uniform(15, 45)
            amplitude_uv = rng.uniform(70, 220)
            footprint, weights = unit_footprint(positions, np.r_[soma, z_um], amplitude_uv)
            narrow = rng.random() < 0.25
            w1, w2 = (0.10, 0.25) if narrow else (0.18, 0.45)
            waveform = -np.exp(-0.5 * (wf_t / w1) ** 2) + 0.35 * np.exp(
                -0.5 * ((wf_t - 2.2 * w2) / w2) ** 2
            )
            waveform /= -waveform.min()
            base, gains, times = _spike_train(rng, area, drive, n_bins, dt_s, duration_s)
            units.append({
                "unit_id": unit_id, "area": area["area"], "channel": channel,
                "depth_um": float(positions[channel, 1]), "x_um": float(positions[channel, 0]),
                "soma_um": [float(soma[0]), float(soma[1]), float(z_um)],
                "amplitude_uv": float(amplitude_uv), "base_rate_hz": base,
                "modulation_gains": gains, "n_spikes": int(times.size),
                "footprint_channels": footprint.tolist(),
                "_weights": weights, "_waveform": waveform,
            })
            spike_times.append(times)
            spike_ids.append(np.full(times.size, unit_id, dtype=np.int64))
            unit_id += 1
    times = np.concatenate(spike_times)
    ids = np.concatenate(spike_ids)
    order = np.argsort(times, kind="stable")
    return units, times[order], ids[order]


def _spike_train(
    rng: np.random.Generator,
    area: dict,
    drive: dict[str, np.ndarray],
    n_bins: int,
    dt_s: float,
    duration_s: float,
) -> tuple[float, dict[str, float], np.ndarray]:
    """A unit's base rate, task gains and refractory spike times (s)."""
    base = float(np.exp(rng.uniform(np.log(0.8), np.log(15.0))))
    gains = {}
    if area["responds_to"] and rng.random() < 0.8:
        gains = {k: float(rng.uniform(1.5, 5.0)) for k in area["responds_to"]}
    rate = np.full(n_bins, base)
    for name, g in gains.items():
        rate += base * g * drive[name]
    n_per_bin = rng.poisson(rate * dt_s)
    times = np.repeat(np.arange(n_bins) * dt_s, n_per_bin) + rng.uniform(
        0, dt_s, size=int(n_per_bin.sum())
    )
    times = _enforce_refractory(np.sort(times), 0.0015)
    times = times[(times > 0.003) & (times < duration_s - 0.003)]
    return base, gains, times


def _enforce_refractory(times: np.ndarray, refractory_s: float) -> np.ndarray:
    """Drop spikes closer than ``refractory_s`` to the previous kept spike."""
    while times.size > 1:
        bad = np.flatnonzero(np.diff(times) < refractory_s)
        if bad.size == 0:
            break
        keep = np.ones(times.size, dtype=bool)
        keep[bad[np.r_[True, np.diff(bad) > 1]] + 1] = False
        times = times[keep]
    return times
