"""Sync-only synthetic sessions: the probe's SY word and the behaviour DAQ's copy of the pulses.

What the sync tests and benchmark feed to :func:`pixbin.sync.run_sync`, with the clock truth:
an LF (and optionally AP) ``.bin`` + ``.meta`` whose last channel is the SY word (bit
:data:`~pixbin.simulate_probe.SYNC_BIT` carries a 1 Hz, 50 % duty square wave), and a behaviour
TDMS with ``NpxlSync_Signal`` (a drifting, offset copy of the train, pulses optionally dropped,
0/5 V + noise) and ``Back_Sensor`` (rare glitches). The train may run past the probe file's
end or skip pulses (on both sides), and the behaviour may lose the first or last pulses of the
overlap: the one-period cases of docs/SYNC.md. No units, task or camera: for a full session see
:func:`pixbin.simulate.simulate_session`.

Clocks as in :mod:`pixbin.simulate`: behaviour sample ``k`` is taken at probe time
``offset_s + k / rate_true_hz`` with ``rate_true_hz = beh_rate * (1 + drift_ppm * 1e-6)``; the
TDMS declares ``wf_increment = 1 / beh_rate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from pixbin.simulate_probe import CALIBRATED_AP_RATE_HZ, SYNC_BIT, format_meta
from pixbin.simulate_ttl import square_wave

__all__ = ["write_sync_session"]

_CHUNK = 1_000_000  # samples per write of a dense .bin
_HIGH_S = 0.5  # the pulses' high time


def write_sync_session(
    folder: str | Path,
    *,
    duration_s: float = 120.0,
    offset_s: float = -5.0,
    tail_s: float = 2.0,
    drift_ppm: float = 50.0,
    dropped: tuple[int, ...] = (),
    ap_rate: float = CALIBRATED_AP_RATE_HZ,
    beh_rate: float = 5000.0,
    write_ap: bool = False,
    phase: float = 0.37,
    pulses: tuple[float, float] | None = None,
    behaviour_pulses: np.ndarray | None = None,
    noise_v: float = 0.05,
    seed: int = 0,
    probe_sync: bool = True,
    lf_meta_rate_factor: float = 1.0,
    n_channels: int = 2,
    sparse: bool = False,
    segment_s: float = 10.0,
    train_overrun_s: float = 0.0,
    train_gaps: tuple[int, ...] = (),
    lost_first: int = 0,
    lost_last: int = 0,
    random_intervals: tuple[float, float] | None = None,
    pause: tuple[float, float] | None = None,
) -> dict:
    """Write a sync-only session into ``folder``; return its paths and clock truth.

    Parameters
    ----------
    folder : path-like
        Created if missing; files ``sim_g0_t0.imec0.{lf,ap}.{bin,meta}`` and
        ``NeuropixelBehaviour(0).tdms``.
    duration_s : float
        Length of the probe recording (s).
    offset_s : float
        Probe time of the first behaviour sample (negative: the DAQ starts first).
    tail_s : float
        How long the behaviour DAQ records after the probe stops (negative: it stops earlier).
    drift_ppm : float
        How much faster the behaviour clock runs than it declares.
    dropped : tuple of int
        Indices of probe pulses the behaviour DAQ misses (ignored with ``behaviour_pulses``).
    ap_rate : float
        AP ``imSampRate``; LF runs at ``ap_rate / 12``.
    beh_rate : float
        The behaviour DAQ's nominal rate (Hz).
    write_ap : bool
        Also write the AP ``.bin`` (the AP ``.meta`` is always written).
    phase : float
        First rising edge (s) of the probe's train, which runs until the probe stops (and
        ``train_overrun_s`` longer).
    pulses : (float, float), optional
        ``(start_s, stop_s)`` of the probe's train instead (it may run past the recording).
    behaviour_pulses : ndarray, optional
        Rising edges (s, probe clock) seen by the behaviour DAQ instead of the probe's own.
    noise_v : float
        SD of the noise on the behaviour channels (V).
    seed : int
        Seed of every random draw (data channels, behaviour noise).
    probe_sync : bool
        Whether the SY word carries the train (False: the SY bit stays low).
    lf_meta_rate_factor : float
        The LF ``.meta`` declares ``ap_rate / 12 * lf_meta_rate_factor``.
    n_channels : int
        Saved channels of the probe files, the SY word last.
    sparse : bool
        Create the ``.bin`` files sparse and write only the rows where the SY bit is high (data
        channels stay zero): fast, and about half the size on disk, for hour-long sessions.
        Otherwise every row is written, the data channels random in [-50, 50).
    segment_s : float
        Length (s) of each TDMS segment.
    train_overrun_s : float
        How long the pulser keeps running after the probe file ends (SpikeGLX's acquisition run
        outlasting the file); ignored with ``pulses``.
    random_intervals : (float, float), optional
        Rising edges at random intervals drawn uniformly in this range (s) instead of every
        second: a pseudo-random sync code, as Open Ephys/Allen rigs send (high for 0.5 s each).
    train_gaps : tuple of int
        Indices of pulses of the train that the pulser does not send: neither side sees them
        (an irregular train, e.g. a marker gap). ``dropped`` indexes the train without them.
    lost_first, lost_last : int
        The behaviour DAQ also loses the first / last this many pulses of the train that lie
        wholly inside both recordings (ignored with ``behaviour_pulses``).
    pause : (float, float), optional
        ``(start_s, length_s)``: the behaviour DAQ stops at probe time ``start_s`` and restarts
        ``length_s`` later, its sample count going on as if no time passed (a LabVIEW rig that
        stops and restarts acquiring within one TDMS): sample ``k >= pause_sample`` is taken at
        ``offset_s + length_s + k / rate_true_hz``. ``tail_s`` still says when it stops.

    Returns
    -------
    dict
        ``ap_meta``, ``lf_meta``, ``lf_bin``, ``ap_bin`` (None without ``write_ap``),
        ``behaviour_tdms`` (Paths) and ``truth``: ``offset_s``, ``drift_ppm``,
        ``rate_nominal_hz``, ``rate_true_hz``, ``n_samples`` (behaviour), ``probe_end_s``,
        ``lf_rate_hz``, ``lag_start`` and ``lag_end`` (ms, as in ``lag.json``) and
        ``dropped_pulse_times_s`` (every pulse of the train the behaviour lacks, ``lost_first``
        and ``lost_last`` included; not the ``train_gaps``); with ``pause``, ``pause_sample``
        (the first sample after it) and ``pause_s`` (its length).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lf_rate = ap_rate / 12
    n_lf = int(duration_s * lf_rate)
    n_ap = 12 * n_lf
    probe_end = n_ap / ap_rate
    t0, t1 = pulses if pulses is not None else (phase, probe_end + train_overrun_s)
    if random_intervals is None:
        train = np.arange(t0, t1, 1.0)
    else:  # a pseudo-random pulse train: its interval sequence is a code no shift repeats
        lo, hi = random_intervals
        steps = np.random.default_rng([seed, 99]).uniform(lo, hi, int((t1 - t0) / lo) + 2)
        train = t0 + np.concatenate([[0.0], np.cumsum(steps)])
        train = train[train < t1]
    rising = np.delete(train, list(train_gaps))
    stem = folder / "sim_g0_t0.imec0"
    lf_meta = _write_meta(Path(f"{stem}.lf.meta"), "lf", lf_rate * lf_meta_rate_factor, n_lf,
                          n_channels)
    ap_meta = _write_meta(Path(f"{stem}.ap.meta"), "ap", ap_rate, n_ap, n_channels)
    probe = dict(rising=rising if probe_sync else np.empty(0), n_channels=n_channels,
                 sparse=sparse, rng=rng)
    lf_bin = _write_bin(Path(f"{stem}.lf.bin"), n_lf, lf_rate, **probe)
    ap_bin = _write_bin(Path(f"{stem}.ap.bin"), n_ap, ap_rate, **probe) if write_ap else None

    rate_true = beh_rate * (1 + drift_ppm * 1e-6)
    pause_s = 0.0 if pause is None else float(pause[1])
    pause_sample = None if pause is None else int(np.ceil((pause[0] - offset_s) * rate_true))
    n_b = int((probe_end + tail_s - offset_s - pause_s) * rate_true)
    beh_end = offset_s + pause_s + n_b / rate_true
    if behaviour_pulses is None:
        lost = list(dropped)
        if lost_first or lost_last:  # pulses wholly inside both recordings
            inside = np.flatnonzero((rising >= max(0.0, offset_s))
                                    & (rising + _HIGH_S <= min(probe_end, beh_end)))
            lost += list(inside[:lost_first]) + list(inside[len(inside) - lost_last:])
        lost = sorted(set(int(i) % len(rising) for i in lost))
        missed = rising[lost]
        behaviour_pulses = np.delete(rising, lost)
    else:
        missed = np.empty(0)
    tdms = _write_behaviour(folder / "NeuropixelBehaviour(0).tdms", behaviour_pulses,
                            n_samples=n_b, offset_s=offset_s, rate_true=rate_true,
                            beh_rate=beh_rate, noise_v=noise_v, segment_s=segment_s, rng=rng,
                            pause_sample=pause_sample, pause_s=pause_s)
    return {
        "ap_meta": ap_meta, "lf_meta": lf_meta, "lf_bin": lf_bin, "ap_bin": ap_bin,
        "behaviour_tdms": tdms,
        "truth": {"offset_s": offset_s, "drift_ppm": drift_ppm, "rate_nominal_hz": beh_rate,
                  "rate_true_hz": rate_true, "n_samples": n_b, "probe_end_s": probe_end,
                  "lf_rate_hz": lf_rate, "lag_start": int(round(-offset_s * 1000)),
                  "lag_end": int(round((beh_end - probe_end) * 1000)),
                  "dropped_pulse_times_s": np.sort(missed).tolist(),
                  **({} if pause is None else {"pause_sample": pause_sample, "pause_s": pause_s})},
    }


def _write_meta(path: Path, stream: str, rate_hz: float, n_samples: int, n_channels: int) -> Path:
    """The few ``.meta`` keys the sync stage reads, for ``n_channels`` saved (the SY word last)."""
    n_neural = n_channels - 1
    fields = {"imSampRate": repr(rate_hz), "nSavedChans": n_channels,
              "snsApLfSy": f"{n_neural},0,1" if stream == "ap" else f"0,{n_neural},1",
              "fileSizeBytes": n_samples * n_channels * 2, "typeThis": "imec", "firstSample": 0}
    path.write_text(format_meta(fields))
    return path


def _write_bin(path: Path, n_samples: int, rate_hz: float, *, rising: np.ndarray,
               n_channels: int, sparse: bool, rng: np.random.Generator) -> Path:
    """An int16 ``.bin`` of ``n_channels``, the SY word last, high in ``[rising, rising + 0.5)``."""
    sy = n_channels - 1
    with open(path, "wb") as f:
        if sparse:
            f.truncate(n_samples * n_channels * 2)  # zeros everywhere
            _write_high_rows(f, n_samples, rate_hz, rising, n_channels)
            return path
        for s in range(0, n_samples, _CHUNK):
            k = np.arange(s, min(n_samples, s + _CHUNK))
            out = np.zeros((len(k), n_channels), np.int16)
            out[:, :sy] = rng.integers(-50, 50, (len(k), sy))
            out[:, sy] = square_wave(k / rate_hz, rising, _HIGH_S) * (1 << SYNC_BIT)
            f.write(out.tobytes())
    return path


def _write_high_rows(f: BinaryIO, n_samples: int, rate_hz: float, rising: np.ndarray,
                     n_channels: int) -> None:
    """Over a zero file, write the rows of each high half-period (first sample at or after the
    rising edge, last before the falling one), leaving all else zero."""
    row = n_channels * 2
    block = np.zeros((int(_HIGH_S * rate_hz) + 2, n_channels), np.int16)
    block[:, n_channels - 1] = 1 << SYNC_BIT
    for r in rising:
        a = max(0, int(np.ceil(r * rate_hz)))
        b = min(n_samples, int(np.ceil((r + _HIGH_S) * rate_hz)))
        if b > a:
            f.seek(a * row)
            f.write(block[: b - a].tobytes())


def _write_behaviour(path: Path, rising: np.ndarray, *, n_samples: int, offset_s: float,
                     rate_true: float, beh_rate: float, noise_v: float, segment_s: float,
                     rng: np.random.Generator, pause_sample: int | None = None,
                     pause_s: float = 0.0) -> Path:
    """The behaviour TDMS: ``NpxlSync_Signal`` high in ``[rising, rising + 0.5)`` (probe clock)
    and ``Back_Sensor`` with rare 5 V glitches, both with Gaussian noise of ``noise_v``; samples
    from ``pause_sample`` on are taken ``pause_s`` later."""
    from nptdms import ChannelObject, GroupObject, RootObject, TdmsWriter

    seg = int(beh_rate * segment_s)
    with TdmsWriter(path) as w:
        for s in range(0, n_samples, seg):
            k = np.arange(s, min(n_samples, s + seg))
            t = offset_s + k / rate_true
            if pause_sample is not None:
                t = t + np.where(k >= pause_sample, pause_s, 0.0)
            x = 5.0 * square_wave(t, rising, _HIGH_S) + rng.normal(0, noise_v, len(k))
            objs = [RootObject({"name": "NeuropixelBehaviour"})] if s == 0 else []
            props = {"wf_increment": 1.0 / beh_rate,
                     "wf_start_time": np.datetime64("2024-01-01T10:00:00"),
                     "unit_string": "V"} if s == 0 else {}
            other = 5.0 * (rng.random(len(k)) < 0.001)
            objs += [GroupObject("NpxlSync_Signal"),
                     ChannelObject("NpxlSync_Signal", "0", x, properties=props),
                     GroupObject("Back_Sensor"),
                     ChannelObject("Back_Sensor", "0", other, properties=props)]
            w.write_segment(objs)
    return path
