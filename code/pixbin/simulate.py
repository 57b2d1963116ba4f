"""Write realistic raw sessions with known ground truth: the demo data and every test's reference.

A simulated session is what the rig writes, packed as the lab packs it:

- SpikeGLX AP (~30 kHz) and LF (~2.5 kHz) ``.bin`` + ``.meta`` of an NP1.0 probe, 385 channels
  (384 + the SY word, whose bit 6 carries SpikeGLX's 1 Hz, 50 % duty sync square wave), with
  spikes of ground-truth units at known depths and an LFP-band signal;
- ``NeuropixelBehaviour(0).tdms``: the lever-push rig's channels at 25 kHz (0/5 V levels with
  noise) and ``NpxlSync_Signal`` (the same sync wave seen by the behaviour DAQ) on a clock with an
  offset and a drift, with optional dropped pulses; ``CamFrames``, the camera exposure TTL;
- ``USB_Camera.tdms`` + ``USB_Camerameta.tdms``: small grayscale frames of a moving marker with
  IMAQdx timestamps and skipped frames;
- every file as its own ``<file>.tar.gz`` under ``data/raw/<YYMMDD_mouseID>/``, an ignored
  ``extra/`` subfolder, ``areas.csv`` and the ground truth (``ground_truth.json`` + ``.npz``).

Clocks: the truth is expressed on the probe clock (AP sample / imSampRate). Behaviour sample ``k``
is taken at probe time ``offset_s + k / rate_true_hz`` with
``rate_true_hz = behaviour_rate_hz * (1 + drift_ppm * 1e-6)``, while the TDMS declares the nominal
``wf_increment = 1 / behaviour_rate_hz``: exactly the situation the sync stage must measure.
Everything is streamed in chunks, so an hour-long session is written in bounded memory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixbin.errors import ConfigError
from pixbin.fileio import atomic_path, write_json
from pixbin.params import params_from_dict

__all__ = [
    "SimulationParams",
    "AREAS",
    "simulate_session",
    "load_ground_truth",
    "EVENT_CHANNELS",
    "write_ground_truth_phy",
]

log = logging.getLogger(__name__)

#: Areas along the probe, depth from the tip in µm (half-open ranges), and how the task drives
#: their units. ``LSr`` is the unresponsive control area.
AREAS: tuple[dict, ...] = (
    {"area": "LSr", "depth_min_um": 0.0, "depth_max_um": 800.0, "responds_to": []},
    {"area": "CP", "depth_min_um": 800.0, "depth_max_um": 2200.0, "responds_to": ["push", "reward"]},
    {"area": "MOs", "depth_min_um": 2200.0, "depth_max_um": 3400.0, "responds_to": ["tone", "push"]},
)
_AREA_SHARE = {"LSr": 0.25, "CP": 0.40, "MOs": 0.35}

#: TDMS group of each behaviour signal; rising edge → first event name, falling → second.
EVENT_CHANNELS: dict[str, tuple[str, str | None]] = {
    "Back_Sensor": ("back_sensor_open", "back_sensor_closed"),
    "Front_Sensor": ("front_sensor_open", "front_sensor_closed"),
    "Reward_Signal": ("reward_signal", None),
    "Reset_Signal": ("reset_signal", None),
    "Tone_Signal": ("tone_onset", "tone_offset"),
    "Shutter_Signal": ("shutter_onset", "shutter_offset"),
    "Laser_Signal": ("laser_onset", "laser_offset"),
}

_N_CHANNELS = 384
_SYNC_BIT = 6
_AP_GAIN, _LF_GAIN, _AI_RANGE_V = 500, 250, 0.6
_TTL_HIGH_V, _TTL_NOISE_V = 5.0, 0.05
_CAMERA_TTL_S = 0.004


@dataclass(frozen=True)
class SimulationParams:
    """What to simulate. Times in seconds; ``offset_s`` is the probe time of the first behaviour
    sample (negative: the behaviour DAQ started first); ``behaviour_tail_s`` how long the behaviour
    DAQ keeps recording after the probe stops (negative: it stops earlier)."""

    session_id: str = "240101_SIM01"
    duration_s: float = 60.0
    seed: int = 0
    n_units: int = 48
    drift_ppm: float = 20.0
    offset_s: float = -2.5
    behaviour_tail_s: float = 1.5
    dropped_pulses: int = 2
    dropped_frames: int = 3
    ap_rate_hz: float = 29999.941586
    behaviour_rate_hz: float = 25000.0
    camera_fps: float = 30.0
    frame_height: int = 48
    frame_width: int = 64
    noise_uv: float = 7.0
    opto: bool = False
    write_ap: bool = True
    compress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> SimulationParams:
        """Build from a mapping, refusing unknown keys."""
        return params_from_dict(cls, values, what="simulation parameter")

    def validate(self) -> None:
        """Refuse parameters that cannot give a usable session."""
        parts = self.session_id.split("_")
        if len(parts) < 2 or len(parts[0]) != 6 or not parts[0].isdigit():
            raise ConfigError(
                f"session_id {self.session_id!r} must look like YYMMDD_mouseID[_extra]"
            )
        if self.duration_s < 10:
            raise ConfigError(f"duration_s must be >= 10 s, got {self.duration_s}")
        overlap = min(self.duration_s, self.duration_s + self.behaviour_tail_s) - max(
            0.0, self.offset_s
        )
        if overlap < 8:
            raise ConfigError(
                f"probe and behaviour overlap only {overlap:.1f} s; need >= 8 s "
                f"(offset_s={self.offset_s}, behaviour_tail_s={self.behaviour_tail_s})"
            )
        if self.n_units < 1:
            raise ConfigError(f"n_units must be >= 1, got {self.n_units}")


@dataclass
class _Truth:
    """Ground truth accumulated while a session is generated."""

    intervals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    trials: list[dict] = field(default_factory=list)
    opto: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- task
def _simulate_task(p: SimulationParams, rng: np.random.Generator, t0: float, t1: float) -> _Truth:
    """Lever-push task on the probe clock: tone → push → reward, misses, uncued pushes, resets.

    With ``p.opto``, half the tone trials get a stimulus (0.5 s shutter pulse + a 20 Hz, 10-pulse
    laser train) within ±150 ms of the tone (cued) and half the inter-trial intervals get one
    after the reset (uncued); the outcomes cycle through no push, full push and partial push
    (lever off the back sensor but never at the front), so every opto action of the lever-push
    task occurs. Non-opto sessions draw exactly the same random numbers as before.
    """
    truth = _Truth(intervals={name: [] for name in EVENT_CHANNELS})
    iv = truth.intervals
    opto_outcomes = ("nopush", "push_full", "push_partial")
    n_stim = {"cued": 0, "uncued": 0}

    def push(start: float) -> tuple[float, float]:
        front_on = start + rng.uniform(0.10, 0.20)
        front_off = front_on + rng.uniform(0.20, 0.35)
        back_off = front_off + rng.uniform(0.10, 0.20)
        iv["Back_Sensor"].append((start, back_off))
        iv["Front_Sensor"].append((front_on, front_off))
        return front_on, back_off

    def partial_push(start: float) -> float:
        back_off = start + rng.uniform(0.15, 0.30)
        iv["Back_Sensor"].append((start, back_off))
        return back_off

    def stimulate(stim: float, cue: str, outcome: str, trial_start: float) -> None:
        iv["Shutter_Signal"].append((stim, stim + 0.5))
        for k in range(10):  # a 20 Hz, 10-pulse laser train
            iv["Laser_Signal"].append((stim + 0.05 * k, stim + 0.05 * k + 0.010))
        truth.opto.append({
            "start_s": stim, "stop_s": stim + 0.5, "n_laser_pulses": 10,
            "cued": cue == "cued", "outcome": outcome, "trial_start_s": trial_start,
            "actions": [f"{cue}_shutter_{outcome}", f"{cue}_laser_{outcome}"],
        })

    t = t0 + rng.uniform(0.5, 1.5)
    while t < t1 - 7.0:
        if rng.random() < 0.3:  # an uncued push in the inter-trial interval
            start = t + rng.uniform(0.3, 1.0)
            _, back_off = push(start)
            truth.trials.append(
                {"action": "uncued_push", "start_s": start, "back_sensor_open_s": start,
                 "outcome": "uncued"}
            )
            t = back_off + rng.uniform(1.0, 2.0)
            continue
        tone_on = t
        cued = None  # the opto outcome of a cued stimulus on this trial
        if p.opto and rng.random() < 0.5:
            cued = opto_outcomes[n_stim["cued"] % 3]
            n_stim["cued"] += 1
            stim = tone_on + rng.uniform(-0.15, 0.15)
            rewarded = cued == "push_full"
        else:
            rewarded = rng.random() < 0.65
        if rewarded:
            if cued is None:
                push_on = tone_on + rng.uniform(0.25, 0.9)
            else:
                push_on = max(tone_on, stim) + rng.uniform(0.05, 0.25)
            front_on, back_off = push(push_on)
            reward = front_on + 0.010
            iv["Reward_Signal"].append((reward, reward + 0.100))
            iv["Tone_Signal"].append((tone_on, reward))
            reset = max(back_off, reward) + rng.uniform(1.2, 1.8)
            truth.trials.append(
                {"action": "rewarded_push", "start_s": tone_on, "tone_onset_s": tone_on,
                 "back_sensor_open_s": push_on, "reward_signal_s": reward,
                 "outcome": "rewarded"}
            )
        else:
            tone_off = tone_on + 2.0
            iv["Tone_Signal"].append((tone_on, tone_off))
            reset = tone_off + rng.uniform(0.8, 1.2)
            trial = {"action": "missed_tone", "start_s": tone_on, "tone_onset_s": tone_on,
                     "outcome": "missed"}
            if cued == "push_partial":
                push_on = max(tone_on, stim) + rng.uniform(0.05, 0.25)
                partial_push(push_on)
                trial["back_sensor_open_s"] = push_on
            truth.trials.append(trial)
        if cued is not None:
            stimulate(stim, "cued", cued, min(tone_on, stim))
        iv["Reset_Signal"].append((reset, reset + 0.050))
        reset_end = reset
        if cued is None and p.opto and rng.random() < 0.5:
            outcome = opto_outcomes[n_stim["uncued"] % 3]
            n_stim["uncued"] += 1
            stim = reset + rng.uniform(0.3, 0.6)
            stimulate(stim, "uncued", outcome, stim)
            reset_end = stim + 0.8
            if outcome != "nopush":
                start = stim + rng.uniform(0.05, 0.25)
                if outcome == "push_full":
                    _, back_off = push(start)
                else:
                    back_off = partial_push(start)
                truth.trials.append(
                    {"action": "uncued_push", "start_s": start, "back_sensor_open_s": start,
                     "outcome": "uncued"}
                )
                reset_end = max(reset_end, back_off)
        t = reset_end + rng.uniform(1.5, 3.0)
    truth.trials.sort(key=lambda tr: tr["start_s"])
    for i, trial in enumerate(truth.trials):
        trial["trial_id"] = i
    return truth


def _events_from_intervals(intervals: dict[str, list[tuple[float, float]]]) -> list[dict]:
    events = []
    for channel, (rise_name, fall_name) in EVENT_CHANNELS.items():
        for on, off in intervals.get(channel, []):
            events.append({"time_s": on, "event": rise_name, "channel": channel})
            if fall_name:
                events.append({"time_s": off, "event": fall_name, "channel": channel})
    events.sort(key=lambda e: (e["time_s"], e["event"]))
    return events


# --------------------------------------------------------------------------- units
def _probe_positions(ap_meta: Path) -> np.ndarray:
    """Channel (x, y) positions in µm read back from the meta by probeinterface."""
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


def _simulate_units(p, rng, positions, trials, duration_s):
    """Units with areas, footprints, waveforms and task-modulated spike trains."""
    dt_s = 0.001
    n_bins = int(duration_s / dt_s)
    tone = np.array([t["tone_onset_s"] for t in trials if "tone_onset_s" in t])
    pushes = np.array([t["back_sensor_open_s"] for t in trials if "back_sensor_open_s" in t])
    rewards = np.array([t["reward_signal_s"] for t in trials if "reward_signal_s" in t])
    drive = {
        "tone": _bump_trace(tone + 0.10, 0.05, n_bins, dt_s),
        "push": _bump_trace(pushes, 0.15, n_bins, dt_s),
        "reward": _bump_trace(rewards + 0.25, 0.15, n_bins, dt_s),
    }
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
            dist = np.sqrt(((positions - soma) ** 2).sum(axis=1) + z_um**2)
            weights = 1.0 / (1.0 + (dist / 35.0) ** 2)
            weights /= weights.max()
            footprint = np.flatnonzero(weights > 0.05)
            amplitude_uv = rng.uniform(70, 220)
            narrow = rng.random() < 0.25
            w1, w2 = (0.10, 0.25) if narrow else (0.18, 0.45)
            waveform = -np.exp(-0.5 * (wf_t / w1) ** 2) + 0.35 * np.exp(
                -0.5 * ((wf_t - 2.2 * w2) / w2) ** 2
            )
            waveform /= -waveform.min()
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
            units.append({
                "unit_id": unit_id, "area": area["area"], "channel": channel,
                "depth_um": float(positions[channel, 1]), "x_um": float(positions[channel, 0]),
                "soma_um": [float(soma[0]), float(soma[1]), float(z_um)],
                "amplitude_uv": float(amplitude_uv), "base_rate_hz": base,
                "modulation_gains": gains, "n_spikes": int(times.size),
                "footprint_channels": footprint.tolist(),
                "_weights": weights[footprint] * amplitude_uv, "_waveform": waveform,
            })
            spike_times.append(times)
            spike_ids.append(np.full(times.size, unit_id, dtype=np.int64))
            unit_id += 1
    times = np.concatenate(spike_times)
    ids = np.concatenate(spike_ids)
    order = np.argsort(times, kind="stable")
    return units, times[order], ids[order]


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


# --------------------------------------------------------------------------- SpikeGLX
def _meta_text(p: SimulationParams, stream: str, n_samples: int, rate_hz: float) -> str:
    is_ap = stream == "ap"
    stem = f"{_file_stem(p)}_g0_t0.imec0.{stream}.bin"
    n_saved = _N_CHANNELS + 1
    created = _session_datetime(p).strftime("%Y-%m-%dT%H:%M:%S")
    imro = "(0,384)" + "".join(f"({c} 0 0 {_AP_GAIN} {_LF_GAIN} 1)" for c in range(_N_CHANNELS))
    prefix = "AP" if is_ap else "LF"
    offset = 0 if is_ap else _N_CHANNELS
    chan_map = "(384,384,1)" + "".join(
        f"({prefix}{c};{c + offset}:{c})" for c in range(_N_CHANNELS)
    ) + "(SY0;768:768)"
    shank_map = "(1,2,480)" + "".join(f"(0:{c % 2}:{c // 2}:1)" for c in range(_N_CHANNELS))
    lines = {
        "acqApLfSy": "384,384,1",
        "appVersion": "20230425",
        "fileCreateTime": created,
        "fileName": f"D:/data/{p.session_id}/{stem}",
        "fileSizeBytes": n_samples * n_saved * 2,
        "fileTimeSecs": repr(n_samples / rate_hz),
        "firstSample": 0,
        "gateMode": "Immediate",
        "imAiRangeMax": _AI_RANGE_V,
        "imAiRangeMin": -_AI_RANGE_V,
        "imCalibrated": "true",
        "imDatApi": "3.31",
        "imDatBs_fw": "2.0.137",
        "imDatBsc_fw": "3.2.176",
        "imDatBsc_hw": "2.1",
        "imDatBsc_pn": "NP2_QBSC_00",
        "imDatBsc_sn": 434,
        "imDatFx_hw": "1.2",
        "imDatFx_pn": "NP2_FLEX_0",
        "imDatHs_fw": "5.1",
        "imDatHs_pn": "NP2_HS_30",
        "imDatHs_sn": 1116,
        "imDatPrb_pn": "PRB_1_4_0480_1",
        "imDatPrb_port": 1,
        "imDatPrb_slot": 2,
        "imDatPrb_sn": 18194809281,
        "imDatPrb_type": 0,
        "imLEDEnable": "false",
        "imRoFile": "",
        "imSampRate": repr(rate_hz),
        "imStdby": "",
        "imTrgRising": "true",
        "imTrgSource": 0,
        "nSavedChans": n_saved,
        "snsApLfSy": "384,0,1" if is_ap else "0,384,1",
        "snsSaveChanSubset": "0:383,768" if is_ap else "384:768",
        "syncImInputSlot": 2,
        "syncSourceIdx": 0,
        "syncSourcePeriod": 1,
        "trigMode": "Immediate",
        "typeImEnabled": 1,
        "typeNiEnabled": 0,
        "typeThis": "imec",
        "userNotes": "simulated by pixbin",
        "~imroTbl": imro,
        "~snsChanMap": chan_map,
        "~snsShankMap": shank_map,
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def _high(t: np.ndarray, onsets: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """True where ``t`` lies in [onsets_i, offsets_i) for some i (onsets sorted)."""
    i = np.searchsorted(onsets, t, side="right") - 1
    ok = i >= 0
    out = np.zeros(t.shape, dtype=bool)
    out[ok] = t[ok] < offsets[i[ok]]
    return out


def _square_wave(t: np.ndarray, rising: np.ndarray, high_s: float) -> np.ndarray:
    """True where ``t`` lies in [rising_i, rising_i + high_s) for some i (rising sorted)."""
    return _high(t, rising, rising + high_s)


def _write_ap(path, p, n_samples, units, spike_times, spike_ids, sync_rising, rng_seed):
    uv_per_bit = _AI_RANGE_V / 512 / _AP_GAIN * 1e6
    chunk = 30000
    spike_samples = np.round(spike_times * p.ap_rate_hz).astype(np.int64)
    with open(path, "wb") as f:
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            rng = np.random.default_rng([rng_seed, start])
            data = rng.standard_normal((stop - start, _N_CHANNELS), dtype=np.float32)
            data *= p.noise_uv
            lo = np.searchsorted(spike_samples, start - 60)
            hi = np.searchsorted(spike_samples, stop + 30)
            for s, uid in zip(spike_samples[lo:hi], spike_ids[lo:hi]):
                unit = units[uid]
                a, b = s - 30 - start, s + 60 - start
                wa, wb = max(0, -a), 90 - max(0, b - (stop - start))
                if wa >= wb:
                    continue
                seg = np.outer(unit["_waveform"][wa:wb], unit["_weights"])
                data[a + wa : a + wb, unit["footprint_channels"]] += seg.astype(np.float32)
            out = np.empty((stop - start, _N_CHANNELS + 1), dtype=np.int16)
            out[:, :_N_CHANNELS] = np.clip(np.round(data / uv_per_bit), -512, 511)
            t = np.arange(start, stop) / p.ap_rate_hz
            out[:, _N_CHANNELS] = _square_wave(t, sync_rising, 0.5) * (1 << _SYNC_BIT)
            f.write(out.tobytes())


def _write_lf(path, p, n_samples, rate_hz, positions, tone_onsets, sync_rising, rng_seed):
    from scipy import signal as sps

    uv_per_bit = _AI_RANGE_V / 512 / _LF_GAIN * 1e6
    depth = positions[:, 1]
    theta_w = 0.4 + 0.6 * np.exp(-(((depth - 1500) / 900) ** 2))
    slow_w = 0.5 + 0.5 * depth / depth.max()
    evoked_w = np.exp(-(((depth - 2800) / 500) ** 2))
    b, a = sps.butter(2, 20.0 / (rate_hz / 2))  # a smooth, 1/f-like common source
    zi = sps.lfilter_zi(b, a) * 0.0
    chunk = 25000
    rng_common = np.random.default_rng([rng_seed, 1])
    with open(path, "wb") as f:
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            t = np.arange(start, stop) / rate_hz
            slow, zi = sps.lfilter(b, a, rng_common.standard_normal(stop - start) * 300.0, zi=zi)
            theta = 80.0 * np.sin(2 * np.pi * 7.0 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.05 * t))
            near = tone_onsets[(tone_onsets > t[0] - 0.5) & (tone_onsets < t[-1] + 0.1)]
            evoked = np.zeros(t.size)
            for onset in near:
                evoked -= 120.0 * np.exp(-0.5 * ((t - onset - 0.05) / 0.02) ** 2)
            rng = np.random.default_rng([rng_seed, 2, start])
            data = (
                np.outer(theta, theta_w) + np.outer(slow, slow_w) + np.outer(evoked, evoked_w)
                + rng.standard_normal((t.size, _N_CHANNELS)) * 10.0
            )
            out = np.empty((t.size, _N_CHANNELS + 1), dtype=np.int16)
            out[:, :_N_CHANNELS] = np.clip(np.round(data / uv_per_bit), -512, 511)
            out[:, _N_CHANNELS] = _square_wave(t, sync_rising, 0.5) * (1 << _SYNC_BIT)
            f.write(out.tobytes())


# --------------------------------------------------------------------------- TDMS
def _write_behaviour_tdms(path, p, n_samples, rate_true, intervals, sync_rising, frame_ttl,
                          rng_seed):
    from nptdms import ChannelObject, GroupObject, RootObject, TdmsWriter

    channels = ["Back_Sensor", "Front_Sensor", "Reset_Signal", "Reward_Signal", "Tone_Signal",
                "NpxlSync_Signal", "CamFrames"]
    if p.opto:
        channels += ["Shutter_Signal", "Laser_Signal"]
    start_time = np.datetime64(_session_datetime(p).replace(tzinfo=None), "us")
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
                    high = _square_wave(t, sync_rising, 0.5)
                elif name == "CamFrames":
                    high = _square_wave(t, frame_ttl, _CAMERA_TTL_S)
                else:
                    high = _high(t, *levels[name])
                values = high * _TTL_HIGH_V + rng.normal(0, _TTL_NOISE_V, t.size)
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


def _write_camera(video_path, meta_path, p, frame_times, saved, marker_xy, rng_seed):
    from nptdms import ChannelObject, TdmsWriter

    h, w = p.frame_height, p.frame_width
    yy, xx = np.mgrid[0:h, 0:w]
    cam_ppm = 35.0
    base_us = 3_600_000_000_000 + int(np.random.default_rng(rng_seed).integers(0, 1 << 30))
    saved_idx = np.flatnonzero(saved)
    with TdmsWriter(video_path) as writer:
        for k in range(0, saved_idx.size, 300):
            idx = saved_idx[k : k + 300]
            rng = np.random.default_rng([rng_seed, 4, k])
            frames = rng.normal(20, 3, size=(idx.size, h, w))
            for j, i in enumerate(idx):
                x, y = marker_xy[i]
                frames[j] += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
            pixels = np.clip(np.round(frames), 0, 255).astype(np.uint8).ravel()
            writer.write_segment([ChannelObject("Image", "Image", pixels)])
    stamps = base_us + np.round(frame_times[saved] * 1e6 * (1 + cam_ppm * 1e-6)).astype(np.int64)
    with TdmsWriter(meta_path) as writer:
        writer.write_segment([
            ChannelObject("keys", "IMAQdxTimestampHigh", (stamps >> 32).astype(np.uint32)),
            ChannelObject("keys", "IMAQdxTimestampLow", (stamps & 0xFFFFFFFF).astype(np.uint32)),
            ChannelObject("keys", "IMAQdxActualHeight", np.full(saved_idx.size, h, np.uint32)),
            ChannelObject("frames", "ind_skipped", np.flatnonzero(~saved).astype(np.int32)),
        ])


# --------------------------------------------------------------------------- session
def _file_stem(p: SimulationParams) -> str:
    return p.session_id.split("_", 1)[1]


def _session_datetime(p: SimulationParams) -> dt.datetime:
    day = dt.datetime.strptime(p.session_id[:6], "%y%m%d")
    return day.replace(hour=10, minute=30, tzinfo=dt.timezone.utc)


def _pack(path: Path, compress: bool) -> Path:
    """Tar+gzip ``path`` into ``path.tar.gz`` (one member: the bare name) and remove ``path``."""
    if not compress:
        return path
    final = path.with_name(path.name + ".tar.gz")
    with atomic_path(final) as tmp:
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
            tar.add(path, arcname=path.name)
    path.unlink()
    return final


def simulate_session(
    data_root: str | Path,
    params: SimulationParams | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **overrides,
) -> Path:
    """Write one simulated raw session under ``data_root/raw/<session_id>/``.

    Parameters
    ----------
    data_root
        The ``data/`` folder (``raw/`` is created inside it).
    params, overrides
        A :class:`SimulationParams`, and/or its fields as keywords (``duration_s=30``).
    progress
        Called with a short message as each file is written.

    Returns
    -------
    Path of the raw session folder. An existing folder of the same name is replaced.
    """
    p = params or SimulationParams()
    if overrides:
        p = SimulationParams.from_dict({**dataclasses.asdict(p), **overrides})
    p.validate()
    say = progress or (lambda msg: log.info(msg))
    seeds = np.random.SeedSequence(p.seed).generate_state(8)
    rng = np.random.default_rng(seeds[0])

    final_dir = Path(data_root) / "raw" / p.session_id
    with atomic_path(final_dir) as out:
        out.mkdir(parents=True)
        stem = f"{_file_stem(p)}_g0_t0"

        # clocks and spans (probe clock)
        n_ap = int(round(p.duration_s * p.ap_rate_hz))
        n_ap -= n_ap % 12
        lf_rate = p.ap_rate_hz / 12.0
        n_lf = n_ap // 12
        probe_end = n_ap / p.ap_rate_hz
        rate_true = p.behaviour_rate_hz * (1 + p.drift_ppm * 1e-6)
        behaviour_end = probe_end + p.behaviour_tail_s
        n_behaviour = int((behaviour_end - p.offset_s) * rate_true)
        behaviour_end = p.offset_s + n_behaviour / rate_true
        overlap = (max(0.0, p.offset_s), min(probe_end, behaviour_end))

        # sync: SpikeGLX's 1 Hz pulser runs while the probe records
        phase = float(rng.uniform(0.05, 0.95))
        sync_rising = np.arange(phase, probe_end, 1.0)
        in_overlap = np.flatnonzero(
            (sync_rising > overlap[0] + 3) & (sync_rising < overlap[1] - 4)
        )
        dropped = np.sort(rng.choice(in_overlap, size=min(p.dropped_pulses, in_overlap.size),
                                     replace=False))
        behaviour_sync = np.delete(sync_rising, dropped)

        # task and units
        truth = _simulate_task(p, rng, overlap[0] + 0.5, overlap[1] - 0.5)
        ap_meta = out / f"{stem}.imec0.ap.meta"
        ap_meta.write_text(_meta_text(p, "ap", n_ap, p.ap_rate_hz))
        lf_meta = out / f"{stem}.imec0.lf.meta"
        lf_meta.write_text(_meta_text(p, "lf", n_lf, lf_rate))
        positions = _probe_positions(ap_meta)
        units, spike_times, spike_ids = _simulate_units(p, rng, positions, truth.trials, probe_end)
        say(f"{len(units)} units, {spike_times.size} spikes, {len(truth.trials)} trials")

        # camera: exposures (TTL) across the overlap, some frames not saved
        fps = p.camera_fps
        frame_times = np.arange(overlap[0] + 0.2, overlap[1] - 0.2, 1.0 / fps)
        frame_times = frame_times + rng.normal(0, 0.0002, frame_times.size)
        saved = np.ones(frame_times.size, dtype=bool)
        if p.dropped_frames:
            drop = rng.choice(np.arange(5, frame_times.size - 5), size=p.dropped_frames,
                              replace=False)
            saved[drop] = False
        marker_xy = np.column_stack([
            p.frame_width / 2 + 0.35 * p.frame_width * np.sin(2 * np.pi * 0.13 * frame_times),
            p.frame_height / 2 + 0.35 * p.frame_height * np.sin(2 * np.pi * 0.07 * frame_times + 1),
        ])

        if p.write_ap:
            say("writing AP band")
            _write_ap(out / f"{stem}.imec0.ap.bin", p, n_ap, units, spike_times, spike_ids,
                      sync_rising, seeds[1])
        say("writing LF band")
        tones = np.array([t["tone_onset_s"] for t in truth.trials if "tone_onset_s" in t])
        _write_lf(out / f"{stem}.imec0.lf.bin", p, n_lf, lf_rate, positions, tones,
                  sync_rising, seeds[2])
        say("writing behaviour TDMS")
        _write_behaviour_tdms(out / "NeuropixelBehaviour(0).tdms", p, n_behaviour, rate_true,
                              truth.intervals, behaviour_sync, frame_times, seeds[3])
        say("writing camera TDMS")
        _write_camera(out / "USB_Camera.tdms", out / "USB_Camerameta.tdms", p, frame_times,
                      saved, marker_xy, seeds[4])

        # areas table, ignored extra folder, ground truth
        lines = ["probe,area,depth_min_um,depth_max_um"] + [
            f"imec0,{a['area']},{a['depth_min_um']},{a['depth_max_um']}" for a in AREAS
        ]
        (out / "areas.csv").write_text("\n".join(lines) + "\n")
        (out / "extra").mkdir()
        (out / "extra" / "notes.txt").write_text("subfolders of a session are ignored\n")
        events = _events_from_intervals(truth.intervals)
        lag_start = int(round(-p.offset_s * 1000))
        lag_end = int(round((behaviour_end - probe_end) * 1000))
        public_units = [{k: v for k, v in u.items() if not k.startswith("_")} for u in units]
        ground_truth = {
            "session_id": p.session_id,
            "parameters": dataclasses.asdict(p),
            "clock": "imec0 AP, seconds (sample / imSampRate)",
            "probe": {"name": "imec0", "ap_rate_hz": p.ap_rate_hz, "lf_rate_hz": lf_rate,
                      "n_samples_ap": n_ap, "n_samples_lf": n_lf, "duration_s": probe_end,
                      "sync_bit": _SYNC_BIT},
            "behaviour": {"offset_s": p.offset_s, "drift_ppm": p.drift_ppm,
                          "rate_nominal_hz": p.behaviour_rate_hz, "rate_true_hz": rate_true,
                          "n_samples": n_behaviour, "end_s": behaviour_end},
            "lag": {"lag_start": lag_start, "lag_end": lag_end},
            "sync": {"period_s": 1.0, "high_s": 0.5, "first_rising_s": phase,
                     "n_pulses_probe": int(sync_rising.size),
                     "dropped_behaviour_pulse_times_s": sync_rising[dropped].tolist()},
            "areas": [{k: v for k, v in a.items()} for a in AREAS],
            "units": public_units,
            "events": events,
            "trials": truth.trials,
            "opto": truth.opto,
            "camera": {"name": "USB_Camera", "fps": fps, "n_exposures": int(frame_times.size),
                       "n_saved": int(saved.sum()),
                       "dropped_frame_indices": np.flatnonzero(~saved).tolist(),
                       "frame_time": "TTL rising edge (exposure onset), probe clock",
                       "width": p.frame_width, "height": p.frame_height,
                       "keypoints": ["marker"]},
        }
        write_json(out / "ground_truth.json", ground_truth)
        np.savez_compressed(
            out / "ground_truth.npz", spike_times_s=spike_times, spike_unit_ids=spike_ids,
            sync_rising_s=sync_rising, frame_times_s=frame_times, frame_saved=saved,
            marker_x=marker_xy[:, 0], marker_y=marker_xy[:, 1],
        )
        for name in sorted(q.name for q in out.iterdir()):
            if name.endswith((".bin", ".meta", ".tdms")):
                say(f"packing {name}")
                _pack(out / name, p.compress)
    say(f"session written to {final_dir}")
    return final_dir


def load_ground_truth(session_dir: str | Path) -> dict:
    """Read ``ground_truth.json`` and the arrays of ``ground_truth.npz`` into one dict."""
    import json

    session_dir = Path(session_dir)
    truth = json.loads((session_dir / "ground_truth.json").read_text())
    with np.load(session_dir / "ground_truth.npz") as arrays:
        truth["arrays"] = {k: arrays[k] for k in arrays.files}
    return truth



def write_ground_truth_phy(session_dir: str | Path, folder: str | Path) -> Path:
    """Write the simulated ground-truth spike trains as a Kilosort/phy folder (a perfect sorter).

    The folder has what :func:`pixbin.phy.read_phy_folder` imports (``spike_times.npy`` in AP
    samples, ``spike_clusters.npy``, ``cluster_group.tsv`` with every unit ``good``,
    ``cluster_info.tsv`` with the peak channel and depth, ``params.py``, ``channel_map.npy``,
    ``channel_positions.npy``). Tests and CI feed it to the spikes stage through its import path
    (``phy_folders``) to check the later stages without paying for a sorter run; sorting itself
    is checked against the same truth elsewhere.
    """
    truth = load_ground_truth(session_dir)
    folder = Path(folder)
    rate = truth["probe"]["ap_rate_hz"]
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        samples = np.round(truth["arrays"]["spike_times_s"] * rate).astype(np.uint64)
        np.save(tmp / "spike_times.npy", samples[:, None])
        np.save(tmp / "spike_clusters.npy", truth["arrays"]["spike_unit_ids"].astype(np.int32))
        np.save(tmp / "channel_map.npy", np.arange(_N_CHANNELS, dtype=np.int32))
        positions = np.column_stack([np.zeros(_N_CHANNELS), np.zeros(_N_CHANNELS)])
        for unit in truth["units"]:
            positions[unit["channel"]] = (unit["x_um"], unit["depth_um"])
        np.save(tmp / "channel_positions.npy", positions)
        rows = [f"{u['unit_id']}\tgood" for u in truth["units"]]
        (tmp / "cluster_group.tsv").write_text("cluster_id\tgroup\n" + "\n".join(rows) + "\n")
        info = [f"{u['unit_id']}\t{u['channel']}\t{u['depth_um']}\tgood" for u in truth["units"]]
        (tmp / "cluster_info.tsv").write_text(
            "cluster_id\tch\tdepth\tgroup\n" + "\n".join(info) + "\n")
        (tmp / "params.py").write_text(
            f"dat_path = 'ground_truth_no_recording.bin'\nn_channels_dat = {_N_CHANNELS + 1}\n"
            f"dtype = 'int16'\noffset = 0\nsample_rate = {rate!r}\nhp_filtered = False\n")
    return folder
