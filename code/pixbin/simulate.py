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
- optionally (``nidq``) the run's NIDQ board ``.bin`` + ``.meta`` at 25 kHz nominal on its own
  clock: noise on three analog channels and the sync wave on bit 0 of its digital word;
- every file as its own ``<file>.tar.gz`` under ``data/raw/<YYMMDD_mouseID>/``, an ignored
  ``extra/`` subfolder, ``areas.csv``, ``session.yaml`` (the simulated subject and the time zone of
  the metas' ``fileCreateTime``, UTC, as :mod:`pixbin.nwb` reads it) and the ground truth
  (``ground_truth.json`` + ``.npz``).

Clocks: the truth is expressed on the probe clock (AP sample / imSampRate). Behaviour sample ``k``
is taken at probe time ``offset_s + k / rate_true_hz`` with
``rate_true_hz = behaviour_rate_hz * (1 + drift_ppm * 1e-6)``, while the TDMS declares the nominal
``wf_increment = 1 / behaviour_rate_hz``: exactly the situation the sync stage must measure.
Everything is streamed in chunks, so an hour-long session is written in bounded memory.

This module holds the parameters, the session's clocks and sync pulses, the ground truth and the
packing; the parts are written by :mod:`pixbin.simulate_task` (the task's trials and signals),
:mod:`pixbin.simulate_units` (units and spikes), :mod:`pixbin.simulate_probe` (SpikeGLX files),
:mod:`pixbin.simulate_rig` (behaviour TDMS) and :mod:`pixbin.simulate_camera` (camera TDMS).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixbin.errors import ConfigError
from pixbin.fileio import atomic_path, write_json
from pixbin.params import params_from_dict
from pixbin.simulate_camera import camera_exposures, write_camera
from pixbin.simulate_probe import (
    CALIBRATED_AP_RATE_HZ,
    N_CHANNELS,
    NIDQ_RATE_HZ,
    NIDQ_SYNC_BIT,
    PROBE_MODELS,
    SYNC_BIT,
    meta_text,
    nidq_meta_text,
    write_ap,
    write_lf,
    write_nidq,
)
from pixbin.simulate_rig import write_behaviour_tdms
from pixbin.simulate_task import TaskTruth, events_from_intervals, simulate_task
from pixbin.simulate_units import AREAS, DriftParams, probe_positions, simulate_units

__all__ = [
    "SimulationParams",
    "simulate_session",
    "load_ground_truth",
    "write_ground_truth_phy",
    "write_ground_truth_dlc",
    "split_into_triggers",
]

log = logging.getLogger(__name__)

#: Pipeline config for the simulator's sessions: their sync pulser starts and stops with the probe
#: file, as ``train_within_probe`` assumes, so the train's ends decide the alignment
#: (docs/SYNC.md section 3; without it the sync stage refuses them as ambiguous).
SIMULATED_RIG_CONFIG = {"sync": {"train_within_probe": True}}


@dataclass(frozen=True)
class SimulationParams:
    """What to simulate. Times in seconds; ``offset_s`` is the probe time of the first behaviour
    sample (negative: the behaviour DAQ started first); ``behaviour_tail_s`` how long the behaviour
    DAQ keeps recording after the probe stops (negative: it stops earlier).

    ``probes`` lists the probe types of imec0, imec1, ... (``"NP1.0"``, ``"NP2.0"``: one wide-band
    stream, no LF file). Probe imecN (N >= 1) runs on its own clock: its sample 0 is at imec0
    time ``probe_start_s[N-1]`` and its clock runs ``probe_drift_ppm[N-1]`` ppm fast against
    imec0's (defaults: 4 ms × N and -40 ppm); each probe has ``n_units`` units. ``drift``: motion
    of the tissue against every probe (:class:`pixbin.simulate_units.DriftParams`, none by default);
    the ground truth's ``parameters.drift`` gives it back. Ground truth is on
    the imec0 clock. ``sync_code``: the pulser sends pseudo-random intervals (0.7–1.3 s, as
    Open Ephys/Allen rigs do) instead of SpikeGLX's 1 Hz square wave. ``nidq``: also write the
    run's NIDQ stream, its sample 0 at imec0 time ``nidq_start_s``, its clock ``nidq_drift_ppm``
    fast against imec0's (ground truth ``nidq``)."""

    session_id: str = "240101_SIM01"
    duration_s: float = 60.0
    seed: int = 0
    n_units: int = 48
    drift_ppm: float = 20.0
    offset_s: float = -2.5
    behaviour_tail_s: float = 1.5
    dropped_pulses: int = 2
    dropped_frames: int = 3
    ap_rate_hz: float = CALIBRATED_AP_RATE_HZ
    behaviour_rate_hz: float = 25000.0
    camera_fps: float = 30.0
    frame_height: int = 48
    frame_width: int = 64
    noise_uv: float = 7.0
    opto: bool = False
    write_ap: bool = True
    compress: bool = True
    sync_code: bool = False
    probes: tuple[str, ...] = ("NP1.0",)
    probe_drift_ppm: tuple[float, ...] = ()
    probe_start_s: tuple[float, ...] = ()
    drift: DriftParams = DriftParams()
    nidq: bool = False
    nidq_drift_ppm: float = 15.0
    nidq_start_s: float = -0.006

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
        self.drift.validate(self.duration_s)
        if self.n_units < 1:
            raise ConfigError(f"n_units must be >= 1, got {self.n_units}")
        unknown = [t for t in self.probes if t not in PROBE_MODELS]
        if not self.probes or unknown:
            raise ConfigError(f"probes must list probe types among {sorted(PROBE_MODELS)}, "
                              f"got {list(self.probes)}")
        if self.probes[0] != "NP1.0":
            raise ConfigError("probes[0] (imec0, whose LF band the demo's LFP comes from) must be "
                              f"NP1.0, got {self.probes[0]!r}")
        for name in ("probe_drift_ppm", "probe_start_s"):
            if len(getattr(self, name)) not in (0, len(self.probes) - 1):
                raise ConfigError(f"{name} needs one value per probe after imec0 "
                                  f"({len(self.probes) - 1}), got {list(getattr(self, name))}")
        if any(abs(s) > 0.05 for s in self.probe_start_s):
            raise ConfigError(f"probe_start_s {list(self.probe_start_s)}: probes of one run start "
                              "within milliseconds; give |start| <= 0.05 s")
        if abs(self.nidq_start_s) > 0.05:
            raise ConfigError(f"nidq_start_s {self.nidq_start_s}: the NIDQ and the probes of one "
                              "run start within milliseconds; give |nidq_start_s| <= 0.05 s")

    def probe_clock(self, n: int) -> tuple[float, float]:
        """(start on the imec0 clock in s, drift in ppm) of probe ``imecN``; (0, 0) for imec0."""
        if n == 0:
            return 0.0, 0.0
        start = self.probe_start_s[n - 1] if self.probe_start_s else 0.004 * n
        drift = self.probe_drift_ppm[n - 1] if self.probe_drift_ppm else -40.0
        return float(start), float(drift)

    @property
    def file_stem(self) -> str:
        """The mouse part of the session id, which starts the name of every SpikeGLX file."""
        return self.session_id.split("_", 1)[1]

    @property
    def start_time(self) -> dt.datetime:
        """When the recording started: 10:30 UTC on the day of the session id."""
        day = dt.datetime.strptime(self.session_id[:6], "%y%m%d")
        return day.replace(hour=10, minute=30, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class _Clocks:
    """Sample counts and spans of one session; times on the probe clock."""

    n_ap: int
    n_lf: int
    lf_rate: float
    probe_end: float
    rate_true: float
    n_behaviour: int
    behaviour_end: float
    overlap: tuple[float, float]


def _clocks(p: SimulationParams) -> _Clocks:
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
    return _Clocks(n_ap, n_lf, lf_rate, probe_end, rate_true, n_behaviour, behaviour_end, overlap)


@dataclass(frozen=True)
class _Sync:
    """SpikeGLX's 1 Hz pulser (runs while the probe records) and what the behaviour DAQ sees."""

    phase: float
    rising: np.ndarray
    dropped: np.ndarray
    behaviour: np.ndarray


def _sync_pulses(p: SimulationParams, rng: np.random.Generator, clocks: _Clocks) -> _Sync:
    overlap = clocks.overlap
    phase = float(rng.uniform(0.05, 0.95))
    sync_rising = np.arange(phase, clocks.probe_end, 1.0)
    if p.sync_code:  # pseudo-random intervals (0.7-1.3 s), drawn apart from the session's stream
        steps = np.random.default_rng([p.seed, 2000]).uniform(0.7, 1.3, sync_rising.size + 2)
        sync_rising = phase + np.concatenate([[0.0], np.cumsum(steps)])
        sync_rising = sync_rising[sync_rising < clocks.probe_end]
    in_overlap = np.flatnonzero(
        (sync_rising > overlap[0] + 3) & (sync_rising < overlap[1] - 4)
    )
    dropped = np.sort(rng.choice(in_overlap, size=min(p.dropped_pulses, in_overlap.size),
                                 replace=False))
    return _Sync(phase, sync_rising, dropped, np.delete(sync_rising, dropped))


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
    final_dir = Path(data_root) / "raw" / p.session_id
    with atomic_path(final_dir) as out:
        out.mkdir(parents=True)
        _write_session(out, p, say)
        for name in sorted(q.name for q in out.iterdir()):
            if name.endswith((".bin", ".meta", ".tdms")):
                say(f"packing {name}")
                _pack(out / name, p.compress)
    say(f"session written to {final_dir}")
    return final_dir


def _session_yaml(p: SimulationParams) -> str:
    """``session.yaml`` of the simulated session: the clock the metas' ``fileCreateTime`` is on
    (:attr:`SimulationParams.start_time`, UTC) and the simulated subject."""
    return (f"timezone: UTC\n"
            f"subject_id: {p.file_stem}\n"
            f"species: Mus musculus\n"
            f"sex: U\n"
            f"age: P90D\n"
            f"session_description: simulated session (pixbin simulate, seed {p.seed})\n"
            f"keywords: [Neuropixels, simulated]\n")


def _write_session(out: Path, p: SimulationParams, say: Callable[[str], None]) -> None:
    """Draw the session and write its files (unpacked) and ground truth into ``out``."""
    seeds = np.random.SeedSequence(p.seed).generate_state(8)
    rng = np.random.default_rng(seeds[0])
    stem = f"{p.file_stem}_g0_t0"
    clocks = _clocks(p)
    sync = _sync_pulses(p, rng, clocks)
    overlap = clocks.overlap

    # task and units
    truth = simulate_task(p, rng, overlap[0] + 0.5, overlap[1] - 0.5)
    ap_meta = out / f"{stem}.imec0.ap.meta"
    ap_meta.write_text(meta_text(p, "ap", clocks.n_ap, p.ap_rate_hz))
    lf_meta = out / f"{stem}.imec0.lf.meta"
    lf_meta.write_text(meta_text(p, "lf", clocks.n_lf, clocks.lf_rate))
    positions = probe_positions(ap_meta)
    units, spike_times, spike_ids = simulate_units(p, rng, positions, truth.trials,
                                                   clocks.probe_end)
    say(f"{len(units)} units, {spike_times.size} spikes, {len(truth.trials)} trials")

    # camera: exposures (TTL) across the overlap, some frames not saved
    frame_times, saved, marker_xy = camera_exposures(p, rng, overlap)

    if p.write_ap:
        say("writing AP band")
        write_ap(out / f"{stem}.imec0.ap.bin", p, clocks.n_ap, units, spike_times, spike_ids,
                 sync.rising, seeds[1], drift=p.drift, positions=positions)
    say("writing LF band")
    tones = np.array([t["tone_onset_s"] for t in truth.trials if "tone_onset_s" in t])
    write_lf(out / f"{stem}.imec0.lf.bin", clocks.n_lf, clocks.lf_rate, positions, tones,
             sync.rising, seeds[2])
    say("writing behaviour TDMS")
    write_behaviour_tdms(out / "NeuropixelBehaviour(0).tdms", p, clocks.n_behaviour,
                         clocks.rate_true, truth.intervals, sync.behaviour, frame_times, seeds[3])
    say("writing camera TDMS")
    write_camera(out / "USB_Camera.tdms", out / "USB_Camerameta.tdms", p, frame_times,
                 saved, marker_xy, seeds[4])

    others = {f"imec{n}": _write_other_probe(out, p, n, clocks, sync, truth, say)
              for n in range(1, len(p.probes))}
    nidq = _write_nidq(out, p, clocks, sync, say) if p.nidq else None

    # areas table, ignored extra folder, ground truth
    lines = ["probe,area,depth_min_um,depth_max_um"] + [
        f"imec{n},{a['area']},{a['depth_min_um']},{a['depth_max_um']}"
        for n in range(len(p.probes)) for a in AREAS
    ]
    (out / "areas.csv").write_text("\n".join(lines) + "\n")
    (out / "session.yaml").write_text(_session_yaml(p))
    (out / "extra").mkdir()
    (out / "extra" / "notes.txt").write_text("subfolders of a session are ignored\n")
    doc = _ground_truth(p, clocks, sync, truth, units, frame_times, saved)
    if others:
        doc["other_probes"] = {name: o["truth"] for name, o in others.items()}
    if nidq is not None:
        doc["nidq"] = nidq
    write_json(out / "ground_truth.json", doc)
    per_probe = {f"{key}_{name}": o[key] for name, o in others.items()
                 for key in ("spike_times_s", "spike_unit_ids")}
    np.savez_compressed(
        out / "ground_truth.npz", spike_times_s=spike_times, spike_unit_ids=spike_ids,
        sync_rising_s=sync.rising, frame_times_s=frame_times, frame_saved=saved,
        marker_x=marker_xy[:, 0], marker_y=marker_xy[:, 1], **per_probe,
    )


def _write_other_probe(out: Path, p: SimulationParams, n: int, clocks: _Clocks, sync: _Sync,
                       truth: TaskTruth, say: Callable[[str], None]) -> dict:
    """Write probe ``imecN`` (own clock: start and drift of :meth:`SimulationParams.probe_clock`)
    with its own units; return its ground truth (spike times on the imec0 clock)."""
    name, model = f"imec{n}", PROBE_MODELS[p.probes[n]]
    start, drift = p.probe_clock(n)
    own_per_imec0 = 1 + drift * 1e-6  # this probe's seconds per imec0 second

    def own(t: np.ndarray) -> np.ndarray:  # imec0 time → this probe's file time
        return (np.asarray(t) - start) * own_per_imec0

    rng = np.random.default_rng([p.seed, 1000 + n])
    n_ap = int(own(clocks.probe_end) * p.ap_rate_hz)
    n_ap -= n_ap % 12
    stem = f"{p.file_stem}_g0_t0.{name}"
    ap_meta = out / f"{stem}.ap.meta"
    ap_meta.write_text(meta_text(p, "ap", n_ap, p.ap_rate_hz, name, model))
    positions = probe_positions(ap_meta)
    units, times, ids = simulate_units(p, rng, positions, truth.trials, clocks.probe_end)
    inside = (own(times) >= 0) & (own(times) < (n_ap - 90) / p.ap_rate_hz)
    times, ids = times[inside], ids[inside]
    rising = own(sync.rising)
    rising = rising[rising >= 0]
    say(f"{name} ({model.name}, {drift:+g} ppm, starts {start * 1000:g} ms): {len(units)} units, "
        f"{times.size} spikes")
    if p.write_ap:
        say(f"writing {name} AP band")
        write_ap(out / f"{stem}.ap.bin", p, n_ap, units, own(times), ids, rising,
                 int(rng.integers(2**31)), model, drift=p.drift, positions=positions)
    if model.has_lf:
        lf_rate = p.ap_rate_hz / 12.0
        (out / f"{stem}.lf.meta").write_text(meta_text(p, "lf", n_ap // 12, lf_rate, name, model))
        say(f"writing {name} LF band")
        write_lf(out / f"{stem}.lf.bin", n_ap // 12, lf_rate, positions, np.empty(0), rising,
                 int(rng.integers(2**31)))
    public = [{k: v for k, v in u.items() if not k.startswith("_")} for u in units]
    return {
        "truth": {"type": model.name, "start_s": start, "drift_ppm": drift,
                  "ap_rate_hz": p.ap_rate_hz, "n_samples_ap": n_ap,
                  "map_to_imec0": {"offset_s": start, "rate": 1 / own_per_imec0},
                  "units": public},
        "spike_times_s": times, "spike_unit_ids": ids,
    }


def _write_nidq(out: Path, p: SimulationParams, clocks: _Clocks, sync: _Sync,
                say: Callable[[str], None]) -> dict:
    """Write the run's NIDQ stream (own clock: sample 0 at imec0 time ``nidq_start_s``, running
    ``nidq_drift_ppm`` fast) up to the probe's end; return its ground truth."""
    start, drift = p.nidq_start_s, p.nidq_drift_ppm
    own_per_imec0 = 1 + drift * 1e-6  # NIDQ seconds per imec0 second
    n_samples = int((clocks.probe_end - start) * own_per_imec0 * NIDQ_RATE_HZ)

    def imec0_time(k: np.ndarray) -> np.ndarray:
        return start + k / NIDQ_RATE_HZ / own_per_imec0

    stem = f"{p.file_stem}_g0_t0.nidq"
    (out / f"{stem}.meta").write_text(nidq_meta_text(p, n_samples))
    say(f"writing NIDQ ({drift:+g} ppm, starts {start * 1000:g} ms)")
    write_nidq(out / f"{stem}.bin", n_samples, imec0_time, sync.rising,
               int(np.random.default_rng([p.seed, 3000]).integers(2**31)))
    return {"start_s": start, "drift_ppm": drift, "rate_nominal_hz": NIDQ_RATE_HZ,
            "n_samples": n_samples, "sync_digital_line": NIDQ_SYNC_BIT,
            "map_to_imec0": {"offset_s": start, "rate": 1 / own_per_imec0}}


def _ground_truth(
    p: SimulationParams,
    clocks: _Clocks,
    sync: _Sync,
    truth: TaskTruth,
    units: list[dict],
    frame_times: np.ndarray,
    saved: np.ndarray,
) -> dict:
    """The content of ``ground_truth.json``."""
    lag_start = int(round(-p.offset_s * 1000))
    lag_end = int(round((clocks.behaviour_end - clocks.probe_end) * 1000))
    public_units = [{k: v for k, v in u.items() if not k.startswith("_")} for u in units]
    return {
        "session_id": p.session_id,
        "parameters": dataclasses.asdict(p),
        "clock": "imec0 AP, seconds (sample / imSampRate)",
        "probe": {"name": "imec0", "ap_rate_hz": p.ap_rate_hz, "lf_rate_hz": clocks.lf_rate,
                  "n_samples_ap": clocks.n_ap, "n_samples_lf": clocks.n_lf,
                  "duration_s": clocks.probe_end, "sync_bit": SYNC_BIT},
        "behaviour": {"offset_s": p.offset_s, "drift_ppm": p.drift_ppm,
                      "rate_nominal_hz": p.behaviour_rate_hz, "rate_true_hz": clocks.rate_true,
                      "n_samples": clocks.n_behaviour, "end_s": clocks.behaviour_end},
        "lag": {"lag_start": lag_start, "lag_end": lag_end},
        "sync": {"period_s": None if p.sync_code else 1.0, "code": p.sync_code, "high_s": 0.5,
                 "first_rising_s": sync.phase,
                 "n_pulses_probe": int(sync.rising.size),
                 "dropped_behaviour_pulse_times_s": sync.rising[sync.dropped].tolist()},
        "areas": [{k: v for k, v in a.items()} for a in AREAS],
        "units": public_units,
        "events": events_from_intervals(truth.intervals),
        "trials": truth.trials,
        "opto": truth.opto,
        "camera": {"name": "USB_Camera", "fps": p.camera_fps, "n_exposures": int(frame_times.size),
                   "n_saved": int(saved.sum()),
                   "dropped_frame_indices": np.flatnonzero(~saved).tolist(),
                   "frame_time": "TTL rising edge (exposure onset), probe clock",
                   "width": p.frame_width, "height": p.frame_height,
                   "keypoints": ["marker"]},
    }


def load_ground_truth(session_dir: str | Path) -> dict:
    """Read ``ground_truth.json`` and the arrays of ``ground_truth.npz`` into one dict."""
    import json

    session_dir = Path(session_dir)
    truth = json.loads((session_dir / "ground_truth.json").read_text())
    with np.load(session_dir / "ground_truth.npz") as arrays:
        truth["arrays"] = {k: arrays[k] for k in arrays.files}
    return truth


def write_ground_truth_phy(session_dir: str | Path, folder: str | Path, probe: str = "imec0") -> Path:
    """Write the simulated ground-truth spike trains as a Kilosort/phy folder (a perfect sorter).

    The folder has what :func:`pixbin.phy.read_phy_folder` imports (``spike_times.npy`` in AP
    samples, ``spike_clusters.npy``, ``cluster_group.tsv`` with every unit ``good``,
    ``cluster_info.tsv`` with the peak channel and depth, ``params.py``, ``channel_map.npy``,
    ``channel_positions.npy``) of ``probe``, in that probe's own samples. Tests and CI feed it to the spikes stage through its import path
    (``phy_folders``) to check the later stages without paying for a sorter run; sorting itself
    is checked against the same truth elsewhere.
    """
    truth = load_ground_truth(session_dir)
    folder = Path(folder)
    rate = truth["probe"]["ap_rate_hz"]
    times, ids = truth["arrays"]["spike_times_s"], truth["arrays"]["spike_unit_ids"]
    if probe != "imec0":  # its sorter sees its own clock: imec0 times mapped back
        other = truth["other_probes"][probe]
        imec0_map = other["map_to_imec0"]
        times = (truth["arrays"][f"spike_times_s_{probe}"] - imec0_map["offset_s"]) / imec0_map["rate"]
        ids = truth["arrays"][f"spike_unit_ids_{probe}"]
        truth = {**truth, "units": other["units"]}
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        samples = np.round(times * rate).astype(np.uint64)
        np.save(tmp / "spike_times.npy", samples[:, None])
        np.save(tmp / "spike_clusters.npy", ids.astype(np.int32))
        np.save(tmp / "channel_map.npy", np.arange(N_CHANNELS, dtype=np.int32))
        positions = np.column_stack([np.zeros(N_CHANNELS), np.zeros(N_CHANNELS)])
        for unit in truth["units"]:
            positions[unit["channel"]] = (unit["x_um"], unit["depth_um"])
        np.save(tmp / "channel_positions.npy", positions)
        rows = [f"{u['unit_id']}\tgood" for u in truth["units"]]
        (tmp / "cluster_group.tsv").write_text("cluster_id\tgroup\n" + "\n".join(rows) + "\n")
        info = [f"{u['unit_id']}\t{u['channel']}\t{u['depth_um']}\tgood" for u in truth["units"]]
        (tmp / "cluster_info.tsv").write_text(
            "cluster_id\tch\tdepth\tgroup\n" + "\n".join(info) + "\n")
        (tmp / "params.py").write_text(
            f"dat_path = 'ground_truth_no_recording.bin'\nn_channels_dat = {N_CHANNELS + 1}\n"
            f"dtype = 'int16'\noffset = 0\nsample_rate = {rate!r}\nhp_filtered = False\n")
    return folder


def write_ground_truth_dlc(session_dir: str | Path, path: str | Path, likelihood: float = 0.99,
                           scorer: str = "DLC_resnet50_simOct1shuffle1_1000") -> Path:
    """Write the simulated camera marker as a DeepLabCut output CSV (a perfect pose estimator).

    One row per *saved* frame (the video's frames: dropped frames have none), the three DLC
    header rows (``scorer``, ``bodyparts`` = ``marker``, ``coords`` = x, y, likelihood) and the
    marker's true pixel position, every likelihood ``likelihood``: what
    :func:`pixbin.dlc.read_dlc_output` imports. The demo (without DeepLabCut) and the tests feed
    it to the pose stage as ``pose: {dlc_output: <path>}``.
    """
    import pandas as pd

    arrays = load_ground_truth(session_dir)["arrays"]
    saved = arrays["frame_saved"]
    columns = pd.MultiIndex.from_product([[scorer], ["marker"], ["x", "y", "likelihood"]],
                                         names=["scorer", "bodyparts", "coords"])
    values = np.column_stack([arrays["marker_x"][saved], arrays["marker_y"][saved],
                              np.full(int(saved.sum()), likelihood)])
    path = Path(path)
    with atomic_path(path) as tmp:
        pd.DataFrame(values, columns=columns).to_csv(tmp)
    return path


def split_into_triggers(session_dir: str | Path, n_triggers: int) -> list[Path]:
    """Split every uncompressed SpikeGLX stream of trigger 0 in ``session_dir`` (and its
    folders) into ``n_triggers`` files ``_t0 … _tN-1`` that follow each other sample for sample, as
    SpikeGLX writes the triggers of one gate (``firstSample``, ``fileSizeBytes`` and
    ``fileTimeSecs`` of each); the trigger-0 files are replaced. Returns the files written."""
    from pixbin.spikeglx import meta_with, read_meta

    if n_triggers < 2:
        raise ConfigError(f"n_triggers must be >= 2, got {n_triggers}")
    written: list[Path] = []
    for meta_path in sorted(Path(session_dir).rglob("*_t0.*.meta")):
        bin_path = meta_path.with_suffix(".bin")
        meta = read_meta(meta_path)
        n_saved = int(meta["nSavedChans"])
        rate = float(meta.get("imSampRate") or meta["niSampRate"])
        data = (np.fromfile(bin_path, dtype=np.int16).reshape(-1, n_saved) if bin_path.is_file()
                else None)  # a stream written as its meta only (write_ap=False)
        n_samples = data.shape[0] if data is not None else int(meta["fileSizeBytes"]) // (2 * n_saved)
        bounds = np.linspace(0, n_samples, n_triggers + 1).astype(np.int64)
        text = meta_path.read_text()
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            values = {"fileSizeBytes": (b - a) * n_saved * 2, "fileTimeSecs": repr((b - a) / rate),
                      "firstSample": int(meta.get("firstSample", 0)) + int(a)}
            out_meta = meta_path.with_name(meta_path.name.replace("_t0.", f"_t{k}.", 1))
            out_meta.write_text(meta_with(text, values))
            written.append(out_meta)
            if data is not None:
                data[a:b].tofile(out_meta.with_suffix(".bin"))
                written.append(out_meta.with_suffix(".bin"))
    return written
