"""The simulated probes as SpikeGLX writes them: AP and LF ``.bin`` files and their ``.meta``.

An NP1.0 probe (AP + LF bands) or an NP2.0 single-shank probe (one wide-band AP stream, no LF
file): 385 saved channels (384 + the SY word, whose bit :data:`SYNC_BIT` carries the 1 Hz sync
wave), int16 at the gains of the probe (:data:`PROBE_MODELS`). The run's NIDQ board
(:func:`nidq_meta_text`, :func:`write_nidq`): :data:`NIDQ_N_ANALOG` XA channels of noise and one
digital word whose bit :data:`NIDQ_SYNC_BIT` carries the same sync wave, on the board's own clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixbin.errors import ConfigError
from pixbin.simulate_ttl import square_wave
from pixbin.simulate_units import DriftParams, imposed_displacement, unit_footprint

if TYPE_CHECKING:
    from pixbin.simulate import SimulationParams

__all__ = [
    "CALIBRATED_AP_RATE_HZ",
    "N_CHANNELS",
    "SYNC_BIT",
    "PROBE_MODELS",
    "ProbeModel",
    "format_meta",
    "meta_text",
    "write_ap",
    "write_lf",
    "NIDQ_RATE_HZ",
    "NIDQ_N_ANALOG",
    "NIDQ_SYNC_BIT",
    "nidq_meta_text",
    "write_nidq",
]

#: A real calibrated AP ``imSampRate`` (Hz): calibrated rates are not integers.
CALIBRATED_AP_RATE_HZ = 29999.941586
#: Recorded channels (the SY word comes after them).
N_CHANNELS = 384
#: Bit of the SY word that carries SpikeGLX's sync wave.
SYNC_BIT = 6
_AP_GAIN, _LF_GAIN, _AI_RANGE_V = 500, 250, 0.6
#: The NIDQ board's nominal ``niSampRate`` (Hz), its analog (XA) channels, the sync line's bit.
NIDQ_RATE_HZ = 25000.0
NIDQ_N_ANALOG = 3
NIDQ_SYNC_BIT = 0
_NI_RANGE_V, _NI_MAX_INT, _NI_NOISE_V = 10.0, 32768, 0.05


@dataclass(frozen=True)
class ProbeModel:
    """What differs between the simulated probe types: meta fields, gains, bands."""

    name: str
    prb_type: int
    part_number: str
    ap_gain: float
    ai_range_v: float
    max_int: int
    has_lf: bool

    @property
    def ap_uv_per_bit(self) -> float:
        return self.ai_range_v / self.max_int / self.ap_gain * 1e6


#: The probe types the simulator writes, by the name used in ``SimulationParams.probes``.
PROBE_MODELS = {
    "NP1.0": ProbeModel("NP1.0", 0, "PRB_1_4_0480_1", _AP_GAIN, _AI_RANGE_V, 512, True),
    "NP2.0": ProbeModel("NP2.0", 21, "NP2000", 80, 0.5, 8192, False),
}


def format_meta(fields: dict) -> str:
    """``key=value`` lines of a SpikeGLX ``.meta``, in the order of ``fields``.

    Parameters
    ----------
    fields : dict
        Meta keys and their values (written with ``str``).

    Returns
    -------
    str
    """
    return "".join(f"{k}={v}\n" for k, v in fields.items())


def meta_text(p: SimulationParams, stream: str, n_samples: int, rate_hz: float,
              probe: str = "imec0", model: ProbeModel = PROBE_MODELS["NP1.0"]) -> str:
    """The ``.meta`` of one stream of a simulated probe (every key of a real one).

    Parameters
    ----------
    p : SimulationParams
        The session (its id and start time name and date the file).
    stream : {"ap", "lf"}
        Which band.
    n_samples : int
        Samples per channel in the ``.bin``.
    rate_hz : float
        ``imSampRate``.
    probe : str
        ``imecN``: names the file.
    model : ProbeModel
        The probe type (NP2.0: one wide-band AP stream).

    Returns
    -------
    str
        ``key=value`` lines.
    """
    is_ap = stream == "ap"
    stem = f"{p.file_stem}_g0_t0.{probe}.{stream}.bin"
    n_saved = N_CHANNELS + 1
    created = p.start_time.strftime("%Y-%m-%dT%H:%M:%S")
    imro, chan_map, shank_map = _channel_tables(is_ap, model)
    lines = {
        "acqApLfSy": "384,384,1" if model.has_lf else "384,0,1",
        "appVersion": "20230425",
        "fileCreateTime": created,
        "fileName": f"D:/data/{p.session_id}/{stem}",
        "fileSizeBytes": n_samples * n_saved * 2,
        "fileTimeSecs": repr(n_samples / rate_hz),
        "firstSample": 0,
        "gateMode": "Immediate",
        "imAiRangeMax": model.ai_range_v,
        "imAiRangeMin": -model.ai_range_v,
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
        "imDatPrb_pn": model.part_number,
        "imDatPrb_port": 1 + int(probe[4:]),
        "imDatPrb_slot": 2,
        "imDatPrb_sn": 18194809281,
        "imDatPrb_type": model.prb_type,
        "imLEDEnable": "false",
        **({} if model.has_lf else {"imMaxInt": model.max_int}),
        "imRoFile": "",
        "imSampRate": repr(rate_hz),
        "imStdby": "",
        "imTrgRising": "true",
        "imTrgSource": 0,
        "nSavedChans": n_saved,
        "snsApLfSy": "384,0,1" if is_ap else "0,384,1",
        "snsSaveChanSubset": ("0:383,768" if is_ap else "384:768") if model.has_lf else "0:384",
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
    return format_meta(lines)


def _channel_tables(is_ap: bool, model: ProbeModel) -> tuple[str, str, str]:
    """The ``~imroTbl``, ``~snsChanMap`` and ``~snsShankMap`` of bank 0 of the probe."""
    if model.has_lf:  # NP1.0: (channel bank reference apGain lfGain apHighPass)
        imro = "(0,384)" + "".join(f"({c} 0 0 {_AP_GAIN} {_LF_GAIN} 1)" for c in range(N_CHANNELS))
    else:  # NP2.0 single shank: (channel bankMask reference electrode)
        imro = f"({model.prb_type},384)" + "".join(f"({c} 1 0 {c})" for c in range(N_CHANNELS))
    prefix = "AP" if is_ap else "LF"
    offset = 0 if is_ap else N_CHANNELS
    chan_map = ("(384,384,1)" if model.has_lf else "(384,0,1)") + "".join(
        f"({prefix}{c};{c + offset}:{c})" for c in range(N_CHANNELS)
    ) + ("(SY0;768:768)" if model.has_lf else "(SY0;384:384)")
    shank_map = "(1,2,480)" + "".join(f"(0:{c % 2}:{c // 2}:1)" for c in range(N_CHANNELS))
    return imro, chan_map, shank_map


def write_ap(
    path: Path,
    p: SimulationParams,
    n_samples: int,
    units: list[dict],
    spike_times: np.ndarray,
    spike_ids: np.ndarray,
    sync_rising: np.ndarray,
    rng_seed: int,
    model: ProbeModel = PROBE_MODELS["NP1.0"],
    drift: DriftParams | None = None,
    positions: np.ndarray | None = None,
) -> None:
    """Write the AP ``.bin``: noise, the units' spikes on their footprints, the SY word.

    Parameters
    ----------
    path : Path
        The ``.bin`` to write.
    p : SimulationParams
        ``ap_rate_hz`` and ``noise_uv`` are read.
    n_samples : int
        Samples per channel.
    units, spike_times, spike_ids
        From :func:`pixbin.simulate_units.simulate_units`.
    sync_rising : ndarray
        Rising edges (s) of the 1 Hz sync wave on SY bit :data:`SYNC_BIT`.
    rng_seed : int
        Seed of the noise (drawn per 30000-sample chunk).
    model : ProbeModel
        Gain and ADC range of the probe type.
    drift : DriftParams, optional
        Motion imposed on the units: each spike's footprint is that of its soma moved by
        :func:`pixbin.simulate_units.imposed_displacement` at the spike's time and the soma's
        depth (``positions``, the channel positions, is then needed). None or no motion: the
        units' fixed footprints.
    """
    uv_per_bit = model.ap_uv_per_bit
    top = model.max_int
    chunk = 30000
    spike_samples = np.round(spike_times * p.ap_rate_hz).astype(np.int64)
    moving = drift is not None and drift.moves
    if moving and positions is None:
        raise ConfigError(f"{path}: write_ap was given a drift without the channel positions; "
                          "expected positions= (pixbin.simulate_units.probe_positions of the meta)")
    shifts = (imposed_displacement(drift, spike_times, [units[u]["soma_um"][1] for u in spike_ids])
              if moving else None)
    with open(path, "wb") as f:
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            rng = np.random.default_rng([rng_seed, start])
            data = rng.standard_normal((stop - start, N_CHANNELS), dtype=np.float32)
            data *= p.noise_uv
            lo = np.searchsorted(spike_samples, start - 60)
            hi = np.searchsorted(spike_samples, stop + 30)
            for k in range(lo, hi):
                s, unit = spike_samples[k], units[spike_ids[k]]
                a, b = s - 30 - start, s + 60 - start
                wa, wb = max(0, -a), 90 - max(0, b - (stop - start))
                if wa >= wb:
                    continue
                if moving:
                    channels, weights = unit_footprint(positions, unit["soma_um"], unit["amplitude_uv"],
                                                       shifts[k])
                else:
                    channels, weights = unit["footprint_channels"], unit["_weights"]
                seg = np.outer(unit["_waveform"][wa:wb], weights)
                data[a + wa : a + wb, channels] += seg.astype(np.float32)
            out = np.empty((stop - start, N_CHANNELS + 1), dtype=np.int16)
            out[:, :N_CHANNELS] = np.clip(np.round(data / uv_per_bit), -top, top - 1)
            t = np.arange(start, stop) / p.ap_rate_hz
            out[:, N_CHANNELS] = square_wave(t, sync_rising, 0.5) * (1 << SYNC_BIT)
            f.write(out.tobytes())


def write_lf(
    path: Path,
    n_samples: int,
    rate_hz: float,
    positions: np.ndarray,
    tone_onsets: np.ndarray,
    sync_rising: np.ndarray,
    rng_seed: int,
) -> None:
    """Write the LF ``.bin``: theta, a slow common source, tone-evoked potentials, the SY word.

    Parameters
    ----------
    path : Path
        The ``.bin`` to write.
    n_samples : int
        Samples per channel.
    rate_hz : float
        LF sample rate.
    positions : ndarray, shape (n_channels, 2)
        Channel positions (µm): the depth profile of each component.
    tone_onsets : ndarray
        Tone onsets (s) that evoke a potential 50 ms later.
    sync_rising : ndarray
        Rising edges (s) of the 1 Hz sync wave on SY bit :data:`SYNC_BIT`.
    rng_seed : int
        Seed of the common source and of the noise (drawn per 25000-sample chunk).
    """
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
                + rng.standard_normal((t.size, N_CHANNELS)) * 10.0
            )
            out = np.empty((t.size, N_CHANNELS + 1), dtype=np.int16)
            out[:, :N_CHANNELS] = np.clip(np.round(data / uv_per_bit), -512, 511)
            out[:, N_CHANNELS] = square_wave(t, sync_rising, 0.5) * (1 << SYNC_BIT)
            f.write(out.tobytes())


def nidq_meta_text(p: SimulationParams, n_samples: int) -> str:
    """The ``.meta`` of the simulated NIDQ stream (the keys of a real PXIe-6363 one).

    Parameters
    ----------
    p : SimulationParams
        The session (its id and start time name and date the file).
    n_samples : int
        Samples per channel in the ``.bin``.

    Returns
    -------
    str
        ``key=value`` lines: :data:`NIDQ_N_ANALOG` XA channels and one digital word, the sync on
        its digital line :data:`NIDQ_SYNC_BIT` (``syncNiChanType=0``).
    """
    n_saved = NIDQ_N_ANALOG + 1
    counts = f"0,0,{NIDQ_N_ANALOG},1"
    chan_map = f"(0,0,{NIDQ_N_ANALOG},1,1)" + "".join(
        f"(XA{c};{c}:{c})" for c in range(NIDQ_N_ANALOG)) + f"(XD0;{NIDQ_N_ANALOG}:{NIDQ_N_ANALOG})"
    lines = {
        "acqMnMaXaDw": counts,
        "appVersion": "20230425",
        "fileCreateTime": p.start_time.strftime("%Y-%m-%dT%H:%M:%S"),
        "fileName": f"D:/data/{p.session_id}/{p.file_stem}_g0_t0.nidq.bin",
        "fileSizeBytes": n_samples * n_saved * 2,
        "fileTimeSecs": repr(n_samples / NIDQ_RATE_HZ),
        "firstSample": 0,
        "gateMode": "Immediate",
        "nSavedChans": n_saved,
        "niAiRangeMax": _NI_RANGE_V,
        "niAiRangeMin": -_NI_RANGE_V,
        "niAiTermination": "Default",
        "niClockLine1": "Internal",
        "niClockSource": f"Internal : {NIDQ_RATE_HZ:.6f}",
        "niDev1": "PXI1Slot7",
        "niDev1ProductName": "PXIe-6363",
        "niMAChans1": "",
        "niMAGain": 1,
        "niMNChans1": "",
        "niMNGain": 200,
        "niMaxInt": _NI_MAX_INT,
        "niMuxFactor": 32,
        "niSampRate": repr(NIDQ_RATE_HZ),
        "niStartEnable": "false",
        "niXAChans1": f"0:{NIDQ_N_ANALOG - 1}",
        "niXDBytes1": 1,
        "niXDChans1": "0:7",
        "snsMnMaXaDw": counts,
        "snsSaveChanSubset": "all",
        "syncNiChan": NIDQ_SYNC_BIT,
        "syncNiChanType": 0,
        "syncNiThresh": 1.1,
        "syncSourceIdx": 0,
        "syncSourcePeriod": 1,
        "trigMode": "Immediate",
        "typeImEnabled": 1,
        "typeNiEnabled": 1,
        "typeThis": "nidq",
        "userNotes": "simulated by pixbin",
        "~snsChanMap": chan_map,
        "~snsShankMap": "(1,2,0)",
    }
    return format_meta(lines)


def write_nidq(path: Path, n_samples: int, sample_times_s: Callable[[np.ndarray], np.ndarray],
               sync_rising: np.ndarray, rng_seed: int) -> None:
    """Write the NIDQ ``.bin``: noise on the XA channels, the sync wave on the digital word.

    Parameters
    ----------
    path : Path
        The ``.bin`` to write.
    n_samples : int
        Samples per channel.
    sample_times_s : callable
        Sample indices → their times (s) on the clock of ``sync_rising`` (the board's own clock
        runs off it).
    sync_rising : ndarray
        Rising edges (s) of the 1 Hz sync wave on digital line :data:`NIDQ_SYNC_BIT`.
    rng_seed : int
        Seed of the noise (drawn per 25000-sample chunk).
    """
    volts_per_bit = _NI_RANGE_V / _NI_MAX_INT
    chunk = 25000
    with open(path, "wb") as f:
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            rng = np.random.default_rng([rng_seed, start])
            out = np.empty((stop - start, NIDQ_N_ANALOG + 1), dtype=np.int16)
            noise = rng.standard_normal((stop - start, NIDQ_N_ANALOG)) * _NI_NOISE_V
            out[:, :NIDQ_N_ANALOG] = np.round(noise / volts_per_bit)
            t = sample_times_s(np.arange(start, stop))
            out[:, NIDQ_N_ANALOG] = square_wave(t, sync_rising, 0.5) * (1 << NIDQ_SYNC_BIT)
            f.write(out.tobytes())
