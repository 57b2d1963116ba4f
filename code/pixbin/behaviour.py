"""Behaviour stage: TDMS channels → events → actions → trials, and the channels at 1 kHz.

One pass over the behaviour TDMS (:func:`pixbin.tdms.iter_chunks`) does everything that needs the
samples: TTL edges at the file's own rate (hysteresis, debounce, sub-sample crossing; never
resampled first) and every analog channel low-passed and resampled onto the probe clock's 1 kHz
grid (:class:`pixbin.resample.Resampler1kHz`). Edge times are mapped to the probe clock by the
sync stage's clock map; the task (:mod:`pixbin.tasks`) turns the events table into trials.
Outputs (docs/PIPELINE.md, docs/BEHAVIOUR.md), each written atomically into ``out_dir``:

- ``action_labels_<rec>.npy``: (N, 2) task dtype at 1 kHz; column 0 action flags on the trial
  start sample, column 1 event flags on each event sample; sample = ``floor(time_s * 1000)``;
  with ``action_labels_<rec>.json`` describing the flags;
- ``events.parquet``, ``trials.parquet``;
- ``<tdms stem>_processed.h5``: one float32 variable per channel on ``time = k / 1000`` s.

Rates come from the file (``wf_increment``); nothing assumes 25 kHz. A recording that paused
(a :class:`pixbin.clock.PiecewiseClockMap`) is resampled segment by segment, NaN inside each
pause; events it cannot place are left out and reported; trials near a pause are invalid
(docs/BEHAVIOUR.md §9).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pixbin import layout
from pixbin.clock import ClockMapLike, InvertibleClockMapLike, PiecewiseClockMap, StreamClock
from pixbin.edges import EdgeDetector, Edges, ttl_detector
from pixbin.errors import BehaviourError, ConfigError, TdmsError
from pixbin.fileio import (
    PROVENANCE_KEY,
    atomic_path,
    provenance,
    to_json,
    write_json,
    write_npy,
    write_parquet,
)
from pixbin.params import params_from_dict
from pixbin.resample import PiecewiseResampler1kHz, Resampler1kHz
from pixbin.tasks import Task, get_task
from pixbin.tdms import ChannelInfo, iter_chunks, list_channels

__all__ = [
    "BehaviourParams",
    "run_behaviour",
    "label_sample",
    "merge_trains",
]

log = logging.getLogger(__name__)

LABEL_RATE_HZ = 1000.0
#: ``"auto"`` thresholds are refused when more than this fraction of the sampled values lies
#: between them (not a two-level TTL signal, or pulses too sparse to set levels from)
AUTO_MAX_BETWEEN = 0.2
_AUTO = "auto"


@dataclass(frozen=True)
class BehaviourParams:
    """Parameters of the behaviour stage (recorded beside its outputs).

    Attributes
    ----------
    chunk_samples : int
        Samples per channel read at a time (memory ≈ chunk × channels × 8 B × ~4).
    thresholds_v : mapping
        Per TDMS group, ``(low, high)`` in the channel's unit or ``"auto"`` (from the data),
        overriding the task's declaration.
    debounce_s : float
        Transition pairs closer than this are dropped (contact bounce, glitches).
    lowpass_hz : float
        −6 dB point of the anti-alias filter applied before sampling at 1 kHz (< 500 Hz).
    scan_window_s : float or None
        How far after a trial start alignment events are looked for; None: the task's (10 s).
    rec : int or None
        Recording index in ``action_labels_<rec>.npy``; None: from the TDMS stem's ``(N)``.
    write_channels : bool
        Write the 1 kHz channels file.
    task : str
        Registered task name (:func:`pixbin.tasks.get_task`) that turns events into trials;
        an unknown name is refused when the parameters are made (from the config).
    """

    chunk_samples: int = 1_000_000
    thresholds_v: Mapping[str, Any] = field(default_factory=dict)
    debounce_s: float = 0.001
    lowpass_hz: float = 400.0
    scan_window_s: float | None = None
    rec: int | None = None
    write_channels: bool = True
    task: str = "leverpush"

    def __post_init__(self) -> None:
        if int(self.chunk_samples) < 1024:
            raise ConfigError(f"chunk_samples must be >= 1024, got {self.chunk_samples}")
        if not self.debounce_s >= 0:
            raise ConfigError(f"debounce_s must be >= 0, got {self.debounce_s}")
        if not 0 < self.lowpass_hz < LABEL_RATE_HZ / 2:
            raise ConfigError(f"lowpass_hz must be in (0, 500) Hz, got {self.lowpass_hz}")
        if self.scan_window_s is not None and not self.scan_window_s > 0:
            raise ConfigError(f"scan_window_s must be > 0 or None, got {self.scan_window_s}")
        if not isinstance(self.thresholds_v, Mapping):
            raise ConfigError(f"thresholds_v must be a mapping, got {self.thresholds_v!r}")
        for group, value in self.thresholds_v.items():
            if value == _AUTO:
                continue
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"thresholds_v[{group!r}] must be 'auto' or (low, high), got {value!r}"
                ) from None
            if not low < high:
                raise ConfigError(f"thresholds_v[{group!r}]: expected low < high, got {value!r}")
        try:
            get_task(self.task)
        except BehaviourError as e:
            raise ConfigError(f"task: {e}") from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> BehaviourParams:
        """Build from a mapping (e.g. the config file), refusing unknown keys."""
        return params_from_dict(cls, values or {}, what="behaviour parameter")

    def recording(self, tdms_name: str) -> int:
        """The recording index of the outputs of rig file ``tdms_name``: :attr:`rec`, else the
        file's ``(N)``."""
        return self.rec if self.rec is not None else layout.behaviour_recording(tdms_name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (for records and file metadata)."""
        d = dataclasses.asdict(self)
        d["thresholds_v"] = {k: (v if v == _AUTO else [float(x) for x in v])
                             for k, v in self.thresholds_v.items()}
        return d


# =============================================================================== edges
def merge_trains(edges: Edges, gap_samples: float) -> Edges:
    """Merge pulse trains: a pulse whose onset follows the previous onset by at most
    ``gap_samples`` joins its train; a train has one rising edge (its first onset) and one
    falling edge (the last offset before the next train). Falling edges before the first onset
    are kept as they are."""
    rising, falling = edges.rising, edges.falling
    if gap_samples <= 0 or rising.size == 0:
        return edges
    starts = rising[np.r_[True, np.diff(rising) > gap_samples]]
    bounds = np.r_[starts, np.inf]
    head = falling[falling < starts[0]]
    offs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        inside = falling[(falling > a) & (falling < b)]
        if inside.size:
            offs.append(inside[-1])
    return Edges(starts, np.concatenate([head, np.asarray(offs, np.float64)]))


# =============================================================================== helpers
def label_sample(times_s: np.ndarray | float) -> np.ndarray:
    """1 kHz sample of a probe-clock time: ``floor(time_s * 1000)`` (the millisecond
    ``[k, k + 1)`` that contains it)."""
    return np.floor(np.asarray(times_s, np.float64) * LABEL_RATE_HZ).astype(np.int64)


def _resolve_keys(task: type[Task], channels: dict[str, ChannelInfo], path: Path
                  ) -> dict[str, str]:
    """TDMS key of every task channel present; BehaviourError for missing required ones."""
    keys: dict[str, str] = {}
    for ch in task.channels:
        for key in (ch.group, f"{ch.group}/0"):
            if key in channels:
                keys[ch.group] = key
                break
    missing = [g for g in task.required_channels() if g not in keys]
    if missing:
        raise BehaviourError(
            f"{path}: task {task.name!r} needs TDMS channel(s) {missing} (group, channel '0'), "
            f"which the file lacks; expected all of {list(task.required_channels())}, "
            f"found {sorted(channels)}"
        )
    return keys


def _check_shapes(path: Path, task_keys: dict[str, str], channels: dict[str, ChannelInfo]
                  ) -> tuple[int, float]:
    ref_group = next(iter(task_keys))
    ref = channels[task_keys[ref_group]]
    for group, key in task_keys.items():
        info = channels[key]
        if not math.isfinite(info.rate_hz):
            raise TdmsError(
                f"{path}: channel {key!r} has no valid 'wf_increment' property; expected seconds "
                "per sample, cannot tell its rate"
            )
        if info.n_samples != ref.n_samples:
            raise TdmsError(
                f"{path}: channel {key!r} holds {info.n_samples} samples; expected "
                f"{ref.n_samples} like {task_keys[ref_group]!r} (every task channel is sampled "
                "together)"
            )
        if info.rate_hz != ref.rate_hz:
            raise TdmsError(
                f"{path}: channel {key!r} is sampled at {info.rate_hz!r} Hz; expected "
                f"{ref.rate_hz!r} Hz like {task_keys[ref_group]!r}"
            )
    if ref.n_samples < 2:
        raise TdmsError(f"{path}: channel {task_keys[ref_group]!r} holds {ref.n_samples} samples")
    return ref.n_samples, ref.rate_hz


# =============================================================================== stage
def run_behaviour(
    *,
    behaviour_tdms: str | os.PathLike,
    clock_map: InvertibleClockMapLike,
    probe_duration_s: float,
    out_dir: str | os.PathLike,
    task: str | type[Task] | None = None,
    params: BehaviourParams | None = None,
) -> dict[str, Any]:
    """Label one behaviour recording: events, trials, 1 kHz labels and channels.

    Parameters
    ----------
    behaviour_tdms : path-like
        The behaviour TDMS (``NeuropixelBehaviour(0).tdms``), uncompressed.
    clock_map : InvertibleClockMapLike
        Behaviour clock ↔ probe clock (``pixbin.clock.ClockMap.load(processed, "behaviour")``):
        ``to_probe`` times the events, ``from_probe`` places the 1 kHz grid in the recording.
    probe_duration_s : float
        AP samples / imSampRate; the 1 kHz arrays have ``floor(probe_duration_s * 1000)`` rows.
    out_dir : path-like
        ``processed/<session>/``.
    task : str or Task subclass, optional
        Overrides ``params.task`` (e.g. a Task class that is not registered).
    params : BehaviourParams
        Stage parameters.

    Returns
    -------
    dict
        Summary: counts of events, actions and trials (valid/invalid with reasons), events
        outside the probe recording, unlabelled events, thresholds, outputs, timings; for a
        recording that paused also ``pauses`` and ``events_unplaced``.

    Raises
    ------
    BehaviourError
        A required channel is missing, thresholds cannot be set, the clock map is unusable, or
        the recording paused and the task's flags leave no bit to mark the pauses with.
    TdmsError
        The file is unreadable, or a task channel has another length or rate than the others.
    """
    t_start = time.perf_counter()
    params = params or BehaviourParams()
    path = Path(behaviour_tdms)
    out_dir = Path(out_dir)
    task_cls = get_task(task if task is not None else params.task)
    scan_s = float(params.scan_window_s or task_cls.scan_window_s)
    _check_request(task_cls, params, probe_duration_s)
    channels, task_keys, n_in, rate_hz, skipped, resample_keys = _plan_channels(
        path, task_cls, params)
    detectors, thresholds = _edge_detectors(path, task_cls, task_keys, channels, params)
    pauses = _pauses(clock_map)
    not_recorded = _not_recorded_flag(path, task_cls) if pauses else 0
    segments = _segment_samples(clock_map, rate_hz, n_in)
    n_out, probe_t, resampler = _probe_grid(path, clock_map, probe_duration_s, n_in, rate_hz,
                                            segments, resample_keys, params)

    t_read = time.perf_counter()
    channels_1k = _read_pass(path, params, task_keys, detectors, resampler, resample_keys)
    t_pass = time.perf_counter() - t_read

    events, raw_counts, unplaced = _probe_events(task_cls, detectors, clock_map, rate_hz, n_out,
                                                   segments)
    _warn_unplaced(path, unplaced)
    trials, unlabelled = _label_trials(path, task_cls, events, scan_s, n_out, pauses)
    labels = _action_labels(task_cls, events, trials, n_out, pauses, scan_s, not_recorded)
    t_rules = time.perf_counter()

    meta = _record(path, task_cls, params, rate_hz, n_in, task_keys, thresholds, pauses)
    outputs = _write_tables(out_dir, path, params, task_cls, meta, labels, events, trials, scan_s,
                            not_recorded)
    if channels_1k is not None:
        h5 = layout.Processed(out_dir).behaviour_channels(path.stem)
        _write_channels(h5, channels_1k, resample_keys, channels, probe_t, resampler, meta)
        outputs["channels"] = h5.name

    seconds = {"setup": round(t_read - t_start, 3), "pass": round(t_pass, 3),
               "rules": round(t_rules - t_read - t_pass, 3),
               "write": round(time.perf_counter() - t_rules, 3),
               "total": round(time.perf_counter() - t_start, 3)}
    summary = _summary(path=path, task_cls=task_cls, clock_map=clock_map, rate_hz=rate_hz,
                       n_in=n_in, n_out=n_out, events=events, raw_counts=raw_counts,
                       trials=trials, unlabelled=unlabelled, thresholds=thresholds,
                       resample_keys=resample_keys, skipped=skipped, outputs=outputs,
                       seconds=seconds, pauses=pauses, unplaced=unplaced)
    log.info("%s: %d events, %d trials (%d valid) in %.1f s", path.name, len(events),
             len(trials), summary["trials_valid"], summary["seconds"]["total"])
    return summary


def _check_request(task_cls: type[Task], params: BehaviourParams, probe_duration_s: float
                   ) -> None:
    """Refuse thresholds for channels the task does not read and a non-positive duration."""
    unknown = sorted(set(params.thresholds_v) - {c.group for c in task_cls.channels})
    if unknown:
        raise ConfigError(
            f"thresholds_v names channel(s) {unknown} that task {task_cls.name!r} does not read; "
            f"its channels: {[c.group for c in task_cls.channels]}"
        )
    if not (math.isfinite(probe_duration_s) and probe_duration_s > 0):
        raise BehaviourError(f"probe_duration_s must be a positive number, got {probe_duration_s}")


def _plan_channels(path: Path, task_cls: type[Task], params: BehaviourParams
                   ) -> tuple[dict[str, ChannelInfo], dict[str, str], int, float,
                              dict[str, str], list[str]]:
    """The file's channels, the TDMS key of each task channel, their length and rate, the
    channels not resampled (and why) and the keys resampled to 1 kHz (task channels first, then
    every other channel of the same length and rate; none without ``write_channels``)."""
    channels = list_channels(path)
    task_keys = _resolve_keys(task_cls, channels, path)
    n_in, rate_hz = _check_shapes(path, task_keys, channels)
    extra = [k for k, info in channels.items()
             if k not in task_keys.values() and info.n_samples == n_in and info.rate_hz == rate_hz]
    skipped = {k: f"{info.n_samples} samples at {info.rate_hz} Hz; the task channels have "
                  f"{n_in} at {rate_hz} Hz"
               for k, info in channels.items()
               if k not in task_keys.values() and k not in extra}
    for k, why in skipped.items():
        log.info("%s: channel %r not resampled (%s)", path, k, why)
    resample_keys = list(task_keys.values()) + extra if params.write_channels else []
    return channels, task_keys, n_in, rate_hz, skipped, resample_keys


def _edge_detectors(path: Path, task_cls: type[Task], task_keys: dict[str, str],
                    channels: dict[str, ChannelInfo], params: BehaviourParams
                    ) -> tuple[dict[str, EdgeDetector], dict[str, dict[str, Any]]]:
    """Thresholds and an edge detector for every task channel with events (by group):
    :func:`pixbin.edges.ttl_detector` with the declared thresholds, or "auto": from 64 windows of
    4096 samples spread over the file (1st / 99th percentiles)."""
    detectors: dict[str, EdgeDetector] = {}
    thresholds: dict[str, dict[str, Any]] = {}
    for ch in task_cls.channels:
        if ch.group not in task_keys or (ch.rising is None and ch.falling is None):
            continue
        key = task_keys[ch.group]
        declared = params.thresholds_v.get(ch.group, ch.thresholds_v)
        declared = None if declared == _AUTO else declared
        try:
            # analog (float) channels: sub-sample crossing; digital (integer) ones: first sample
            # max_between: thresholds that most samples fall between are noise levels (a sparse
            # channel whose pulses miss the percentiles): refuse rather than make false edges
            det, _ = ttl_detector(channels[key], declared=declared, percentiles=(1.0, 99.0),
                                  windows=(64, 4096), debounce_s=params.debounce_s,
                                  interpolate="auto", max_between=AUTO_MAX_BETWEEN)
        except ValueError as exc:
            raise BehaviourError(
                f"{path}: cannot set thresholds for channel {key!r} from the data ({exc}); "
                "declare them (BehaviourParams.thresholds_v or the task's Channel.thresholds_v)"
            ) from None
        thresholds[ch.group] = {"low": det.low, "high": det.high,
                                "source": "auto" if declared is None else "declared"}
        detectors[ch.group] = det
    return detectors, thresholds


def _probe_grid(path: Path, clock_map: InvertibleClockMapLike, probe_duration_s: float, n_in: int,
                rate_hz: float, segments: list[tuple[int, int]] | None, resample_keys: list[str],
                params: BehaviourParams
                ) -> tuple[int, np.ndarray, Resampler1kHz | PiecewiseResampler1kHz | None]:
    """The 1 kHz grid on the probe clock (length, times) and the resampler of ``resample_keys``
    onto its positions in behaviour samples (None when there are none): one for the whole file,
    or one per segment (``segments``, :func:`_segment_samples`) of a recording that paused (grid
    times inside a pause have no position)."""
    n_out = int(math.floor(probe_duration_s * LABEL_RATE_HZ))
    probe_t = np.arange(n_out) / LABEL_RATE_HZ
    positions = StreamClock(rate_hz, clock_map).to_samples(probe_t)
    placed = positions if segments is None else positions[np.isfinite(positions)]
    if n_out and not (np.isfinite(placed).all() and (np.diff(placed) > 0).all()):
        raise BehaviourError(
            f"{path}: the clock map does not give increasing behaviour times for the probe's "
            "1 kHz grid; check sync.json"
        )
    resampler: Resampler1kHz | PiecewiseResampler1kHz | None = None
    if resample_keys and segments is None:
        resampler = Resampler1kHz(rate_hz=rate_hz, n_in=n_in, positions=positions,
                                  n_channels=len(resample_keys), lowpass_hz=params.lowpass_hz)
    elif resample_keys:
        resampler = PiecewiseResampler1kHz(rate_hz=rate_hz, n_in=n_in, positions=positions,
                                           n_channels=len(resample_keys), segments=segments,
                                           lowpass_hz=params.lowpass_hz)
    return n_out, probe_t, resampler


def _segment_samples(clock_map: ClockMapLike, rate_hz: float, n_in: int
                     ) -> list[tuple[int, int]] | None:
    """The ``(first, stop)`` behaviour samples of each segment of a map that paused (the first
    from sample 0, the last to the file's end; the samples between two segments, where the pause
    lies, in none); None for a map that does not pause."""
    if not isinstance(clock_map, PiecewiseClockMap):
        return None
    return [(a, b) for a, b in clock_map.segment_samples(rate_hz, n_in) if b > a]


def _pauses(clock_map: ClockMapLike) -> list[dict[str, list[float]]]:
    """Where a recording that paused has no behaviour time: per pause, ``probe_s`` (from one
    segment's end to the next one's start, probe clock) and ``behaviour_s`` (the unplaced
    behaviour interval that holds it); [] for a map that does not pause."""
    if not isinstance(clock_map, PiecewiseClockMap):
        return []
    probe, stream = clock_map.probe_ranges_s, clock_map.stream_ranges_s
    return [{"probe_s": [probe[j][1], probe[j + 1][0]],
             "behaviour_s": [stream[j][1], stream[j + 1][0]]} for j in range(len(probe) - 1)]


def _not_recorded_flag(path: Path, task_cls: type[Task]) -> int:
    """The flag that marks the 1 kHz samples inside a pause in both columns of
    ``action_labels``: the top bit of the task's ``labels_dtype``, which its flags must leave
    free."""
    dtype = np.dtype(task_cls.labels_dtype)
    flag = 1 << (8 * dtype.itemsize - 1)
    used = [n for n, v in {**task_cls.Events.__members__, **task_cls.Actions.__members__}.items()
            if int(v) & flag]
    if used:
        raise BehaviourError(
            f"{path}: the behaviour recording paused; pauses are marked in action_labels with "
            f"the top bit of labels_dtype {dtype.name} ({flag}), which task {task_cls.name!r} "
            f"uses for {used}; declare a wider labels_dtype for the task"
        )
    return flag


def _near_pause(start_s: np.ndarray, pauses: list[dict[str, list[float]]], scan_s: float
                ) -> np.ndarray:
    """Index of the first pause within ``scan_s`` of each start (its probe interval meets
    ``(start - scan_s, start + scan_s)``), -1 where none: the rules look back (a push's cue) and
    ahead (alignment, outcome) about that far."""
    near = np.full(np.shape(start_s), -1, np.int64)
    for j in reversed(range(len(pauses))):
        a, b = pauses[j]["probe_s"]
        near[(start_s - scan_s < b) & (start_s + scan_s > a)] = j
    return near


def _read_pass(path: Path, params: BehaviourParams, task_keys: dict[str, str],
               detectors: dict[str, EdgeDetector],
               resampler: Resampler1kHz | PiecewiseResampler1kHz | None,
               resample_keys: list[str]) -> np.ndarray | None:
    """The one pass over the file: every chunk to the edge detectors and the resampler; the
    1 kHz channels (None without a resampler)."""
    read_keys = list(dict.fromkeys([task_keys[g] for g in detectors] + resample_keys))
    if read_keys:
        for start, chunk in iter_chunks(path, read_keys, chunk_samples=int(params.chunk_samples)):
            _check_finite(path, chunk, start)
            for group, det in detectors.items():
                det.feed(chunk[task_keys[group]], start)
            if resampler is not None:
                resampler.feed([chunk[k] for k in resample_keys])
    return resampler.finish() if resampler is not None else None


def _check_finite(path: Path, chunk: dict[str, np.ndarray], start: int) -> None:
    """Refuse NaN/Inf samples (a DAQ fault or a broken file): they would make spurious events
    and events at time NaN."""
    for key, x in chunk.items():
        bad = ~np.isfinite(x)
        if bad.any():
            where = np.flatnonzero(bad)
            raise BehaviourError(
                f"{path} channel {key}: {where.size} non-finite sample(s) (NaN/Inf) in samples "
                f"{start + int(where[0])}..{start + int(where[-1])} of this chunk; the channel "
                "cannot be turned into events. Check the rig file (a DAQ fault?) or exclude "
                "the channel from the task"
            )


def _probe_events(task_cls: type[Task], detectors: dict[str, EdgeDetector],
                  clock_map: ClockMapLike, rate_hz: float, n_out: int,
                  segments: list[tuple[int, int]] | None
                  ) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """The events table on the probe clock (sorted by time, then name; ``in_recording``), the
    raw pulse count of each channel, and the events the clock map gives no probe time (in the
    unplaced interval of a pause: ``behaviour_s``, ``event``, ``channel``), left out of the
    table. Pulse trains are merged within each of the ``segments`` of a recording that paused
    (a train never spans a pause)."""
    frames = []
    unplaced = []
    raw_counts: dict[str, int] = {}
    for ch in task_cls.channels:
        if ch.group not in detectors:
            continue
        edges = detectors[ch.group].result()
        raw_counts[ch.group] = int(edges.rising.size)
        if ch.merge_gap_s > 0:
            edges = _merge_within_segments(edges, ch.merge_gap_s * rate_hz, segments)
        for name, pos in ((ch.rising, edges.rising), (ch.falling, edges.falling)):
            if name is None or pos.size == 0:
                continue
            t_probe = np.asarray(clock_map.to_probe(pos / rate_hz), np.float64)
            placed = np.isfinite(t_probe)
            if not placed.all():
                unplaced.append(pd.DataFrame({"behaviour_s": pos[~placed] / rate_hz,
                                              "event": name, "channel": ch.group}))
                t_probe = t_probe[placed]
            frames.append(pd.DataFrame({"time_s": t_probe, "event": name, "channel": ch.group}))
    events = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame({"time_s": np.empty(0), "event": [], "channel": []}))
    events = events.astype({"time_s": np.float64, "event": str, "channel": str})
    events = events.sort_values(["time_s", "event"], kind="stable").reset_index(drop=True)
    ev_sample = label_sample(events["time_s"].to_numpy())
    events["in_recording"] = (ev_sample >= 0) & (ev_sample < n_out)
    unplaced_events = (pd.concat(unplaced, ignore_index=True).sort_values("behaviour_s")
                       .reset_index(drop=True) if unplaced
                       else pd.DataFrame({"behaviour_s": np.empty(0), "event": [], "channel": []}))
    return events, raw_counts, unplaced_events


def _merge_within_segments(edges: Edges, gap_samples: float,
                           segments: list[tuple[int, int]] | None) -> Edges:
    """:func:`merge_trains` on the whole recording, or separately on each segment of a recording
    that paused and on each stretch between two segments (where the pause lies)."""
    if segments is None:
        return merge_trains(edges, gap_samples)
    bounds = np.array([v for (_, stop), (first, _) in zip(segments[:-1], segments[1:])
                       for v in (stop, first)], np.float64)
    rise_part = np.searchsorted(bounds, edges.rising, side="right")
    fall_part = np.searchsorted(bounds, edges.falling, side="right")
    merged = [merge_trains(Edges(edges.rising[rise_part == k], edges.falling[fall_part == k]),
                           gap_samples) for k in range(bounds.size + 1)]
    return Edges(np.concatenate([m.rising for m in merged]),
                 np.concatenate([m.falling for m in merged]))


def _warn_unplaced(path: Path, unplaced: pd.DataFrame) -> None:
    """Log the events left out because the clock map gives them no probe time."""
    if len(unplaced):
        log.warning("%s: %d event(s) at behaviour times %s s lie in the unplaced interval of a "
                    "pause (between two clock segments, docs/SYNC.md); they have no probe time "
                    "and are left out of the events table: %s", path, len(unplaced),
                    ", ".join(f"{t:.4f}" for t in unplaced["behaviour_s"]),
                    ", ".join(unplaced["event"]))


def _label_trials(path: Path, task_cls: type[Task], events: pd.DataFrame, scan_s: float,
                  n_out: int, pauses: list[dict[str, list[float]]]) -> tuple[pd.DataFrame, list]:
    """The task's trials, completed (:func:`_complete_trials`), and the events it left
    unlabelled (each logged)."""
    task_obj = task_cls()
    raw_trials = task_obj.trials(events[["time_s", "event", "channel"]].copy())
    unlabelled = list(raw_trials.attrs.get("unlabelled", []))
    for item in unlabelled:
        log.warning("%s: %s at %.4f s not labelled: %s", path, item.get("event"),
                    item.get("time_s", float("nan")), item.get("reason"))
    trials = _complete_trials(raw_trials, events, task_cls, scan_s, n_out, pauses)
    return trials, unlabelled


def _action_labels(task_cls: type[Task], events: pd.DataFrame, trials: pd.DataFrame,
                   n_out: int, pauses: list[dict[str, list[float]]], scan_s: float,
                   not_recorded: int) -> np.ndarray:
    """The (n_out, 2) label array: action flags on each trial's start sample (not for trials
    near a pause, whose action may be wrong), event flags on each event's sample (in the
    recording), and ``not_recorded`` in both columns of every millisecond wholly inside a
    pause."""
    ev_sample = label_sample(events["time_s"].to_numpy())
    dtype = np.dtype(task_cls.labels_dtype)
    labels = np.zeros((n_out, 2), dtype=dtype)
    in_rec = events["in_recording"].to_numpy()
    ev_flags = np.array([int(task_cls.Events[e]) for e in events["event"]], dtype=np.uint64)
    np.bitwise_or.at(labels[:, 1], ev_sample[in_rec], ev_flags[in_rec].astype(dtype))
    tr_sample = label_sample(trials["start_s"].to_numpy())
    tr_in = (tr_sample >= 0) & (tr_sample < n_out)
    if pauses:
        tr_in &= _near_pause(trials["start_s"].to_numpy(np.float64), pauses, scan_s) < 0
    tr_flags = np.array([int(task_cls.Actions[a]) for a in trials["action"]], dtype=np.uint64)
    np.bitwise_or.at(labels[:, 0], tr_sample[tr_in], tr_flags[tr_in].astype(dtype))
    for pause in pauses:
        a, b = pause["probe_s"]
        first = max(int(math.floor(a * LABEL_RATE_HZ)) + 1, 0)  # k > a * 1000
        stop = min(int(math.floor(b * LABEL_RATE_HZ)), n_out)  # k + 1 <= b * 1000
        labels[first:stop] |= dtype.type(not_recorded)
    return labels


def _record(path: Path, task_cls: type[Task], params: BehaviourParams, rate_hz: float,
            n_in: int, task_keys: dict[str, str], thresholds: dict[str, dict[str, Any]],
            pauses: list[dict[str, list[float]]]) -> dict[str, Any]:
    """The metadata written beside every output: task, parameters, source, thresholds, clock
    (and its pauses, for a recording that paused) and provenance."""
    record = {
        "task": task_cls.name,
        "task_declaration": task_cls.describe(),
        "parameters": params.to_dict(),
        "source": {"file": path.name, "rate_hz": rate_hz, "n_samples": n_in,
                   "channels": task_keys},
        "thresholds": thresholds,
        "clock": "imec0 AP, seconds",
    }
    if pauses:
        record["pauses"] = pauses
    return {**record, PROVENANCE_KEY: provenance(params.to_dict())}


def _write_tables(out_dir: Path, path: Path, params: BehaviourParams, task_cls: type[Task],
                  meta: dict[str, Any], labels: np.ndarray, events: pd.DataFrame,
                  trials: pd.DataFrame, scan_s: float, not_recorded: int) -> dict[str, str]:
    """Write the action labels (+ their .json; with ``not_recorded``, the flag of the samples
    inside a pause), events and trials; their file names."""
    rec = params.recording(path.name)
    files = layout.Processed(out_dir)
    dtype = labels.dtype
    outputs: dict[str, str] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_path = files.action_labels(rec)
    write_npy(labels_path, labels)
    write_json(files.action_labels_json(rec), {
        **meta,
        "shape": list(labels.shape), "dtype": dtype.name,
        "columns": ["actions (bit flags on the trial-start sample)",
                    "events (bit flags on each event sample)"],
        "sample": "floor(time_s * 1000): the millisecond [k, k+1) on the probe clock",
        "actions": {k: int(v) for k, v in task_cls.Actions.__members__.items()},
        "events": {k: int(v) for k, v in task_cls.Events.__members__.items()},
        **({"not_recorded": not_recorded,
            "not_recorded_means": "set in both columns of every millisecond wholly inside a "
                                  "pause of the behaviour recording (see pauses); test flags "
                                  "with &, not != 0"} if not_recorded else {}),
    })
    outputs["action_labels"] = labels_path.name
    write_parquet(files.events, events, metadata=meta)
    outputs["events"] = files.events.name
    write_parquet(files.trials, trials, metadata={**meta, "scan_window_s": scan_s})
    outputs["trials"] = files.trials.name
    return outputs


def _summary(*, path: Path, task_cls: type[Task], clock_map: ClockMapLike, rate_hz: float,
             n_in: int, n_out: int, events: pd.DataFrame, raw_counts: dict[str, int],
             trials: pd.DataFrame, unlabelled: list, thresholds: dict[str, dict[str, Any]],
             resample_keys: list[str], skipped: dict[str, str], outputs: dict[str, str],
             seconds: dict[str, float], pauses: list[dict[str, list[float]]],
             unplaced: pd.DataFrame) -> dict[str, Any]:
    """The summary :func:`run_behaviour` returns (``pauses`` and ``events_unplaced`` only for
    a recording that paused or events without a probe time)."""
    invalid = trials.loc[~trials["valid"], "reason"].value_counts().to_dict()
    paused = {}
    if pauses or len(unplaced):
        paused = {"pauses": pauses, "events_unplaced": {
            "count": int(len(unplaced)),
            "events": {k: int(v) for k, v in unplaced["event"].value_counts().sort_index().items()},
            "behaviour_s": [float(t) for t in unplaced["behaviour_s"]],
        }}
    return {
        "task": task_cls.name,
        "source": path.name,
        "rate_hz": rate_hz,
        "n_samples": n_in,
        "behaviour_span_probe_s": [float(v) for v in clock_map.to_probe(
            np.array([0.0, (n_in - 1) / rate_hz]))],
        "n_samples_1khz": n_out,
        "events": {k: int(v) for k, v in events["event"].value_counts().sort_index().items()},
        "events_outside_recording": int((~events["in_recording"]).sum()),
        "raw_pulses": raw_counts,
        "actions": {k: int(v) for k, v in trials["action"].value_counts().sort_index().items()},
        "trials": int(len(trials)),
        "trials_valid": int(trials["valid"].sum()),
        "trials_invalid": {str(k): int(v) for k, v in invalid.items()},
        "unlabelled": unlabelled,
        "thresholds": thresholds,
        "channels_1khz": resample_keys,
        "channels_skipped": skipped,
        "outputs": outputs,
        "seconds": seconds,
        **paused,
    }


def _complete_trials(raw: pd.DataFrame, events: pd.DataFrame, task: type[Task], scan_s: float,
                     n_out: int, pauses: list[dict[str, list[float]]]) -> pd.DataFrame:
    """Add trial ids, alignment columns, validity and reasons to the task's trials (a trial
    within ``scan_s`` of a pause is invalid: events its rules need may be missing)."""
    for col in ("action", "start_s", "outcome"):
        if col not in raw.columns:
            raise BehaviourError(
                f"task {task.name!r}: trials() must return column {col!r}; got {list(raw.columns)}"
            )
    unknown = sorted(set(raw["action"]) - set(task.Actions.__members__))
    if unknown:
        raise BehaviourError(f"task {task.name!r}: trials() returned unknown actions {unknown}")
    order = np.lexsort((raw["action"].map(lambda a: int(task.Actions[a])).to_numpy(np.int64),
                        raw["start_s"].to_numpy(np.float64)))
    raw = raw.iloc[order].reset_index(drop=True)
    n = len(raw)
    start = raw["start_s"].to_numpy(np.float64)
    out = pd.DataFrame({
        "trial_id": np.arange(n, dtype=np.int64),
        "action": raw["action"].astype(str).to_numpy(),
        "start_s": start,
        "align_event": [task.default_align(a) for a in raw["action"]],
    })
    align_cols: dict[str, np.ndarray] = {}
    for ev in task.alignment_events():
        times = np.sort(events.loc[events["event"] == ev, "time_s"].to_numpy(np.float64))
        i = np.searchsorted(times, start, side="left")
        found = np.full(n, np.nan)
        ok = i < times.size
        found[ok] = times[i[ok]]
        found[~(found < start + scan_s)] = np.nan
        declared = np.array([ev in task.actions[a].align for a in out["action"]], dtype=bool)
        found[~declared] = np.nan
        align_cols[ev] = found
    default = out["align_event"].to_numpy()
    align_time = np.array([align_cols[e][k] for k, e in enumerate(default)], dtype=np.float64)
    out["align_time_s"] = align_time
    for ev, values in align_cols.items():
        out[f"{ev}_s"] = values
    out["outcome"] = raw["outcome"].astype(str).to_numpy()
    end_s = n_out / LABEL_RATE_HZ
    near = _near_pause(start, pauses, scan_s)
    reasons = []
    for s, a, e, j in zip(start, align_time, default, near):
        if not (0 <= s < end_s):
            reasons.append(f"start {s:.3f} s is outside the probe recording [0, {end_s:.3f}) s")
        elif j >= 0:
            p0, p1 = pauses[j]["probe_s"]
            reasons.append(f"within {scan_s:g} s of a pause of the behaviour recording "
                           f"({p0:.3f}–{p1:.3f} s): events its rules need may be unrecorded")
        elif not np.isfinite(a):
            reasons.append(f"no {e} within {scan_s:g} s")
        elif not (0 <= a < end_s):
            reasons.append(f"{e} at {a:.3f} s is outside the probe recording")
        else:
            reasons.append("")
    out["valid"] = np.array([r == "" for r in reasons], dtype=bool)
    out["reason"] = reasons
    return out


def _write_channels(path: Path, data: np.ndarray, keys: list[str],
                    channels: dict[str, ChannelInfo], probe_t: np.ndarray,
                    resampler: Resampler1kHz | PiecewiseResampler1kHz,
                    meta: dict[str, Any]) -> None:
    import json

    import xarray as xr

    variables = {}
    for row, key in zip(data, keys):
        info = channels[key]
        variables[key.replace("/", "_")] = xr.Variable(
            ("time",), row,
            attrs={"units": info.unit or "", "source_rate_hz": float(info.rate_hz),
                   "tdms_group": info.group, "tdms_channel": info.channel},
        )
    ds = xr.Dataset(variables, coords={"time": ("time", probe_t,
                                                {"units": "s", "clock": "imec0 AP"})})
    ds.attrs.update({
        "task": meta["task"],
        "source_file": meta["source"]["file"],
        "sampling": "1 kHz on the probe clock, t = k / 1000 s; NaN where the behaviour "
                    "recording does not cover t" + (" (also inside each pause)"
                                                    if "pauses" in meta else ""),
        "filter": json.dumps(resampler.describe()),
        "pixbin": to_json({k: v for k, v in meta.items() if k != PROVENANCE_KEY}),
        PROVENANCE_KEY: to_json(meta[PROVENANCE_KEY]),
    })
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
