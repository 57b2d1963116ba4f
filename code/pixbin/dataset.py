"""Build, combine and read the binned dataset: processed sessions -> per-action DataTrees.

The on-disk contract is docs/FORMAT.md. In short, ``out_dir/<action>.h5`` holds one group
``/session_<id>/<area>/`` per session and brain area with the Datasets ``spike_data``,
``behaviour``, ``pose``, ``lfp`` (optional) and ``trials``; ``out_dir/sessions/session_<id>/
<action>.h5`` holds the same groups for one session, and ``out_dir/manifest.json`` lists what
was built. Spikes are binned by :mod:`pixbin.binning`; this module only selects, aligns, labels
and stores.

The per-action file is combined from the per-session files by copying HDF5 groups (raw chunks,
no decompression, memory independent of the number of sessions). ``h5py``'s copy does not update
the object references of netCDF-4 dimension scales across files, so they are re-attached after
the copy (:func:`_copy_group`); no library does this.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import pandas as pd
import xarray as xr

from pixbin.binning import bin_spikes, signal_windows, values_at_bin_centres
from pixbin.errors import ConfigError, DatasetError, SessionError, SortingError
from pixbin.fileio import atomic_path, provenance, read_json, sha256_file, write_json, write_npy
from pixbin.params import check_keys, field_names
from pixbin.session import parse_session_id

__all__ = [
    "ActionSpec",
    "SplitConfig",
    "CompressionConfig",
    "DatasetConfig",
    "FORMAT_VERSION",
    "assign_splits",
    "session_unit_ids",
    "build_session",
    "combine_action",
    "build_dataset",
    "open_action",
    "export_npy",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1.0"
#: Session-unique unit id = probe number * UNIT_ID_STRIDE + the probe's cluster id.
UNIT_ID_STRIDE = 100_000
SPLIT_NAMES = ("train", "val", "test")
NO_SPLIT = "none"
DATA_GROUPS = ("spike_data", "behaviour", "pose", "lfp", "trials")

_BEHAVIOUR_GLOB = "NeuropixelBehaviour(*)_processed.h5"
_POSE_SUFFIX = "_pose.h5"
_LFP_SUFFIX = ".lf_processed.h5"
_PROBE_RE = re.compile(r"^imec(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_CLOCK_TOLERANCE_S = 1e-6


# --------------------------------------------------------------------------------------------
# configuration


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number; found {value!r}")
    return float(value)


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false; found {value!r}")
    return value


@dataclass(frozen=True)
class ActionSpec:
    """One action to bin: trials of ``name`` aligned to ``align_event``, window ``window_s``."""

    name: str
    align_event: str
    window_s: tuple[float, float]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ActionSpec:
        check_keys(d, field_names(cls), what="key", where=where)
        missing = [k for k in field_names(cls) if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing}")
        name, event = d["name"], d["align_event"]
        for key, value in (("name", name), ("align_event", event)):
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise ConfigError(
                    f"{where}.{key}: expected a name of letters, digits, '_', '.', '-'; "
                    f"found {value!r}"
                )
        window = d["window_s"]
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise ConfigError(f"{where}.window_s: expected [pre, post]; found {window!r}")
        pre, post = (_number(v, f"{where}.window_s") for v in window)
        if not pre < post:
            raise ConfigError(f"{where}.window_s: expected pre < post; found {window!r}")
        return cls(name, event, (pre, post))


@dataclass(frozen=True)
class SplitConfig:
    """Train/val/test assignment of trials: seed, fractions (train, val, test), stratum column."""

    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    stratify_by: str | None = "outcome"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> SplitConfig:
        check_keys(d, field_names(cls), what="key", where=where)
        seed = d.get("seed", cls.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{where}.seed: expected an integer >= 0; found {seed!r}")
        fractions: Any = d.get("fractions", dict(zip(SPLIT_NAMES, cls.fractions)))
        check_keys(fractions, SPLIT_NAMES, what="key", where=f"{where}.fractions")
        if set(fractions) != set(SPLIT_NAMES):
            raise ConfigError(
                f"{where}.fractions: expected all of {list(SPLIT_NAMES)}; found {sorted(fractions)}"
            )
        values = tuple(_number(fractions[k], f"{where}.fractions.{k}") for k in SPLIT_NAMES)
        if min(values) < 0 or abs(sum(values) - 1.0) > 1e-9:
            raise ConfigError(
                f"{where}.fractions: expected fractions >= 0 summing to 1; found {fractions!r}"
            )
        stratify_by = d.get("stratify_by", cls.stratify_by)
        if stratify_by is not None and not isinstance(stratify_by, str):
            raise ConfigError(f"{where}.stratify_by: expected a column name or null; found {stratify_by!r}")
        return cls(seed, values, stratify_by)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "fractions": dict(zip(SPLIT_NAMES, self.fractions)),
                "stratify_by": self.stratify_by}


@dataclass(frozen=True)
class CompressionConfig:
    """HDF5 filter and chunking of the data variables (see docs/FORMAT.md, "Storage")."""

    codec: Literal["gzip", "lzf", "none"] = "gzip"
    level: int = 4
    shuffle: bool = True
    chunk_kib: int = 256

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> CompressionConfig:
        check_keys(d, field_names(cls), what="key", where=where)
        codec = d.get("codec", cls.codec)
        if codec not in ("gzip", "lzf", "none"):
            raise ConfigError(f"{where}.codec: expected gzip, lzf or none; found {codec!r}")
        level = d.get("level", cls.level)
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise ConfigError(f"{where}.level: expected an integer 1-9; found {level!r}")
        chunk_kib = d.get("chunk_kib", cls.chunk_kib)
        if isinstance(chunk_kib, bool) or not isinstance(chunk_kib, int) or chunk_kib < 1:
            raise ConfigError(f"{where}.chunk_kib: expected an integer >= 1; found {chunk_kib!r}")
        shuffle = _boolean(d.get("shuffle", cls.shuffle), f"{where}.shuffle")
        return cls(codec, level, shuffle, chunk_kib)

    def encoding(self, shape: tuple[int, ...], itemsize: int) -> dict[str, Any]:
        """h5netcdf encoding of a (trial, ...) variable: whole trials per chunk, about
        ``chunk_kib`` KiB (at least one trial)."""
        per_trial = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
        n_trials = max(1, int(min(shape[0], max(1, self.chunk_kib * 1024 // per_trial))))
        enc: dict[str, Any] = {"chunksizes": (n_trials, *(max(1, n) for n in shape[1:]))}
        if self.codec == "gzip":
            enc.update(compression="gzip", compression_opts=self.level)
        elif self.codec == "lzf":
            enc.update(compression="lzf")
        if self.codec != "none" and self.shuffle and itemsize > 1:
            enc["shuffle"] = True
        return enc


@dataclass(frozen=True)
class DatasetConfig:
    """Parameters of the binned dataset; see ``code/pixbin/default_dataset.yaml``.

    Build it with :meth:`default`, :meth:`from_yaml` or :meth:`from_dict`; unknown keys raise
    :class:`ConfigError` listing the valid ones.
    """

    task: str
    bin_size_s: float
    actions: tuple[ActionSpec, ...]
    unit_preset: str = "all"
    store_counts: bool = True
    include_behaviour: bool = True
    include_pose: bool = True
    include_lfp: bool = False
    pose_likelihood_threshold: float | None = None
    split: SplitConfig = SplitConfig()
    compression: CompressionConfig = CompressionConfig()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> DatasetConfig:
        """Validate a complete parameter mapping (as in the default YAML)."""
        check_keys(d, field_names(cls), what="key", where=source)
        missing = [k for k in ("task", "bin_size_s", "actions") if k not in d]
        if missing:
            raise ConfigError(f"{source}: missing key(s) {missing}")
        task = d["task"]
        if not isinstance(task, str) or not task:
            raise ConfigError(f"{source}.task: expected a task name; found {task!r}")
        bin_size_s = _number(d["bin_size_s"], f"{source}.bin_size_s")
        if bin_size_s <= 0:
            raise ConfigError(f"{source}.bin_size_s: expected > 0; found {bin_size_s!r}")
        raw_actions = d["actions"]
        if not isinstance(raw_actions, (list, tuple)) or not raw_actions:
            raise ConfigError(f"{source}.actions: expected a non-empty list; found {raw_actions!r}")
        actions = tuple(
            ActionSpec.from_dict(a, f"{source}.actions[{i}]") for i, a in enumerate(raw_actions)
        )
        names = [a.name for a in actions]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}.actions: action names must be unique; found {names}")
        for a in actions:
            n_bins = (a.window_s[1] - a.window_s[0]) / bin_size_s
            if abs(n_bins - round(n_bins)) > 1e-9 * n_bins:
                raise ConfigError(
                    f"{source}.actions[{a.name}]: window {list(a.window_s)} s is not a whole "
                    f"number of {bin_size_s} s bins ({n_bins!r})"
                )
        preset = d.get("unit_preset", cls.unit_preset)
        if not isinstance(preset, str):
            raise ConfigError(f"{source}.unit_preset: expected a preset name; found {preset!r}")
        threshold = d.get("pose_likelihood_threshold")
        if threshold is not None:
            threshold = _number(threshold, f"{source}.pose_likelihood_threshold")
        return cls(
            task=task,
            bin_size_s=bin_size_s,
            actions=actions,
            unit_preset=preset,
            store_counts=_boolean(d.get("store_counts", True), f"{source}.store_counts"),
            include_behaviour=_boolean(d.get("include_behaviour", True), f"{source}.include_behaviour"),
            include_pose=_boolean(d.get("include_pose", True), f"{source}.include_pose"),
            include_lfp=_boolean(d.get("include_lfp", False), f"{source}.include_lfp"),
            pose_likelihood_threshold=threshold,
            split=SplitConfig.from_dict(d.get("split", {}), f"{source}.split"),
            compression=CompressionConfig.from_dict(d.get("compression", {}), f"{source}.compression"),
        )

    @classmethod
    def default(cls) -> DatasetConfig:
        """The defaults in the package file ``default_dataset.yaml``."""
        return cls.from_dict(_default_mapping(), "pixbin/default_dataset.yaml")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DatasetConfig:
        """Load a YAML file; its keys override the defaults (``split`` and ``compression``
        key by key, ``actions`` as a whole)."""
        import yaml

        path = Path(path)
        try:
            given = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the dataset configuration: {e}") from e
        check_keys(given, field_names(cls), what="key", where=str(path))
        merged = _default_mapping()
        for key, value in given.items():
            if key in ("split", "compression") and isinstance(value, Mapping):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
        return cls.from_dict(merged, str(path))

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :meth:`from_dict` accepts (recorded in files as JSON)."""
        d = dataclasses.asdict(self)
        d["actions"] = [
            {"name": a.name, "align_event": a.align_event, "window_s": list(a.window_s)}
            for a in self.actions
        ]
        d["split"] = self.split.to_dict()
        return d

    def action(self, name: str) -> ActionSpec:
        """The action called ``name``."""
        for a in self.actions:
            if a.name == name:
                return a
        raise ConfigError(f"no action {name!r} in the configuration; actions: {[a.name for a in self.actions]}")


def _default_mapping() -> dict[str, Any]:
    from importlib.resources import files

    import yaml

    return yaml.safe_load(files("pixbin").joinpath("default_dataset.yaml").read_text())


# --------------------------------------------------------------------------------------------
# inputs


@dataclass
class _Inputs:
    """What build_session reads from one processed session folder."""

    processed_dir: Path
    session_id: str
    units: pd.DataFrame  # selected units + session_unit_id, sorted by it
    trials: pd.DataFrame
    splits: pd.Series  # trial_id -> split
    recording_end_s: float
    recording_end_source: str
    source: dict[str, str]  # file name -> sha256
    attrs: dict[str, Any]  # session group attrs


def _read_parquet(path: Path, required: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; expected the spikes/behaviour stage output")
    frame = pd.read_parquet(path)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {missing}; expected {list(required)}; "
            f"found {list(frame.columns)}"
        )
    return frame


def _probe_number(probe: str, where: Path) -> int:
    match = _PROBE_RE.match(str(probe))
    if not match:
        raise DatasetError(f"{where}: probe name {probe!r} is not 'imecN'")
    return int(match.group(1))


def session_unit_ids(probes: Sequence[str], cluster_ids: Sequence[int], *, where: str | Path = "units") -> np.ndarray:
    """Session-unique unit ids: ``N * 100000 + cluster_id`` for probe ``imecN``.

    On a one-probe (imec0) session the unit id equals the sorter's cluster id.
    """
    cluster = np.asarray(cluster_ids, dtype=np.int64)
    if cluster.size and (cluster.min() < 0 or cluster.max() >= UNIT_ID_STRIDE):
        raise DatasetError(
            f"{where}: cluster ids must lie in [0, {UNIT_ID_STRIDE}) to form session unit ids; "
            f"found {cluster.min()} .. {cluster.max()}"
        )
    number = np.array([_probe_number(p, Path(str(where))) for p in probes], dtype=np.int64)
    return number * UNIT_ID_STRIDE + cluster


def _select_units(units: pd.DataFrame, preset: str, path: Path) -> pd.DataFrame:
    """Units kept by :func:`pixbin.spikes.select_units` (presets all / phy_good / allen / ...)."""
    from pixbin.spikes import select_units  # the spikes stage; not needed to read the dataset

    try:
        kept = select_units(units, preset)
    except SortingError as e:
        raise DatasetError(f"{path}: unit preset {preset!r} cannot be applied: {e}") from e
    return kept.reset_index(drop=True)


def _group_name(value: Any) -> str:
    """An area or variable name usable as an HDF5 name ('/' -> '_'; empty -> 'unassigned')."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return "unassigned"
    return str(value).strip().replace("/", "_")


def _regular_clock(time: np.ndarray, path: Path) -> tuple[float, float]:
    """(t0_s, rate_hz) of a regularly sampled time coordinate; DatasetError if irregular."""
    if time.ndim != 1 or time.size < 2:
        raise DatasetError(f"{path}: time coordinate must be 1-D with >= 2 samples; found shape {time.shape}")
    t0 = float(time[0])
    rate = (time.size - 1) / (float(time[-1]) - t0)
    err = np.max(np.abs(time - (t0 + np.arange(time.size) / rate)))
    if not math.isfinite(rate) or rate <= 0 or err > _CLOCK_TOLERANCE_S:
        raise DatasetError(
            f"{path}: time coordinate is not regularly sampled (rate {rate!r} Hz, max deviation "
            f"{err!r} s > {_CLOCK_TOLERANCE_S} s); expected t = k / 1000 s on the probe clock"
        )
    return t0, rate


def _sync_summary(value: Any, depth: int = 0) -> Any:
    """Scalars and short lists of sync.json (the QC numbers), without the long edge tables."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            s = _sync_summary(v, depth + 1)
            if s is not None:
                out[str(k)] = s
        return out or None
    if isinstance(value, list):
        if len(value) > 8 or depth > 6:
            return None
        items = [_sync_summary(v, depth + 1) for v in value]
        return [v for v in items if v is not None] or None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def _behaviour_file(processed_dir: Path) -> Path | None:
    found = sorted(processed_dir.glob(_BEHAVIOUR_GLOB))
    if len(found) > 1:
        raise DatasetError(
            f"{processed_dir}: expected at most one {_BEHAVIOUR_GLOB}; found {[p.name for p in found]}"
        )
    return found[0] if found else None


def _pose_files(processed_dir: Path) -> list[Path]:
    return sorted(p for p in processed_dir.glob(f"*{_POSE_SUFFIX}") if not p.name.startswith("."))


def _lfp_file(processed_dir: Path, probe: str) -> Path | None:
    path = processed_dir / f"{probe}{_LFP_SUFFIX}"
    return path if path.is_file() else None


def _read_inputs(processed_dir: Path, session_id: str, config: DatasetConfig) -> _Inputs:
    try:
        date, mouse, extra = parse_session_id(session_id)
    except SessionError as e:
        raise DatasetError(f"{processed_dir}: {e}") from e
    if not processed_dir.is_dir():
        raise DatasetError(f"{processed_dir}: processed session folder not found")

    units_path = processed_dir / "units.parquet"
    units = _read_parquet(units_path, ("unit_id", "probe", "label", "area", "depth_um", "channel"))
    if units.duplicated(["probe", "unit_id"]).any():
        dup = units.loc[units.duplicated(["probe", "unit_id"]), ["probe", "unit_id"]].head(5)
        raise DatasetError(f"{units_path}: (probe, unit_id) must be unique; repeated: {dup.values.tolist()}")
    units = _select_units(units, config.unit_preset, units_path)
    units = units.assign(
        session_unit_id=session_unit_ids(units["probe"].astype(str).tolist(),
                                         units["unit_id"].to_numpy(), where=units_path)
    ).sort_values("session_unit_id", kind="stable").reset_index(drop=True)

    trials_path = processed_dir / "trials.parquet"
    trials = _read_parquet(trials_path, ("trial_id", "action"))
    if trials["trial_id"].duplicated().any():
        raise DatasetError(
            f"{trials_path}: trial_id must be unique; repeated: "
            f"{trials.loc[trials['trial_id'].duplicated(), 'trial_id'].head(10).tolist()}"
        )
    trials = trials.sort_values("trial_id", kind="stable").reset_index(drop=True)
    splits = assign_splits(trials, session_id, config.split, source=trials_path)

    spikes_path = processed_dir / "spikes.h5"
    if not spikes_path.is_file():
        raise DatasetError(f"{spikes_path}: file not found; expected the spikes stage output")
    probes = sorted(set(units["probe"].astype(str)))

    used = [units_path, trials_path, spikes_path]
    behaviour = _behaviour_file(processed_dir) if config.include_behaviour else None
    pose = _pose_files(processed_dir) if config.include_pose else []
    lfp = [p for p in (_lfp_file(processed_dir, probe) for probe in probes) if p] if config.include_lfp else []
    ends: list[tuple[float, str]] = []
    for path in [p for p in [behaviour, *pose, *lfp] if p is not None]:
        used.append(path)
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if "time" not in ds.coords:
                raise DatasetError(f"{path}: no 'time' coordinate; found coords {list(ds.coords)}")
            t0, rate = _regular_clock(ds["time"].to_numpy(), path)
            # rounded to 1 ns: the float coordinate's rate is exact only to ~1e-13
            ends.append((round(t0 + ds.sizes["time"] / rate, 9), path.name))
    if ends:
        recording_end, end_source = min(ends)
    else:
        recording_end, end_source = _last_spike_time(spikes_path), "last spike (no 1 kHz file)"
        logger.warning("%s: no 1 kHz file; the recording is taken to end at the last spike, %.3f s",
                       processed_dir, recording_end)

    attrs: dict[str, Any] = {
        "session_id": session_id,
        "mouse": mouse,
        "date": date.isoformat(),
        "probes": ",".join(probes),
        "recording_end_s": float(recording_end),
        "recording_end_source": end_source,
        "unit_id_rule": f"probe number N of imecN * {UNIT_ID_STRIDE} + cluster_id",
    }
    if extra:
        attrs["extra"] = extra
    for name in ("sync.json", "lag.json"):
        path = processed_dir / name
        if path.is_file():
            used.append(path)
            content = read_json(path)
            key = "sync_qc" if name == "sync.json" else "lag"
            summary = _sync_summary(content) if name == "sync.json" else content
            attrs[key] = json.dumps(summary, sort_keys=True)
    source = {p.name: sha256_file(p) for p in used}
    attrs["source"] = json.dumps(source, sort_keys=True)
    return _Inputs(processed_dir, session_id, units, trials, splits, float(recording_end),
                   end_source, source, attrs)


def _last_spike_time(spikes_path: Path) -> float:
    last = 0.0
    with h5py.File(spikes_path, "r") as f:
        for probe in f:
            times = f[probe].get("spike_times_s")
            if times is not None and times.shape[0]:
                last = max(last, float(times[-1]))
    return last


def _read_spikes(spikes_path: Path, probe: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(spikes_path, "r") as f:
        if probe not in f:
            raise DatasetError(
                f"{spikes_path}: no group /{probe}; units.parquet names it; found {sorted(f)}"
            )
        g = f[probe]
        for name in ("spike_times_s", "spike_unit_ids"):
            if name not in g:
                raise DatasetError(f"{spikes_path}: /{probe} has no dataset {name!r}; found {sorted(g)}")
        return g["spike_times_s"][()].astype(np.float64), g["spike_unit_ids"][()].astype(np.int64)


# --------------------------------------------------------------------------------------------
# trials


def assign_splits(
    trials: pd.DataFrame, session_id: str, split: SplitConfig, *, source: str | Path = "trials"
) -> pd.Series:
    """Deterministic, stratified train/val/test labels for the trials of one session.

    The pool is every trial with ``valid`` true (all trials if there is no ``valid`` column),
    whatever its action; other trials get ``"none"``. Within each stratum (value of
    ``split.stratify_by``), trials are ordered by ``blake2b(seed, session_id, stratum, trial_id)``
    and the first ``round(f_train * n)`` become train, the next ``round(f_val * n)`` val, the rest
    test (largest-remainder rounding). The label of a trial depends only on those inputs, so it
    is the same in every action file of the session.

    Returns
    -------
    pd.Series
        split label (str) indexed by trial_id.
    """
    labels = pd.Series(NO_SPLIT, index=pd.Index(trials["trial_id"].to_numpy(np.int64), name="trial_id"),
                       dtype=object)
    pool = trials
    if "valid" in trials.columns:
        pool = trials[trials["valid"].fillna(False).astype(bool).to_numpy()]
    if split.stratify_by is None:
        strata = pd.Series("all", index=pool.index)
    else:
        if split.stratify_by not in trials.columns:
            raise DatasetError(
                f"{source}: split.stratify_by column {split.stratify_by!r} not found; "
                f"found {list(trials.columns)}"
            )
        strata = pool[split.stratify_by].astype(object).where(pool[split.stratify_by].notna(), "nan").astype(str)
    for stratum in sorted(set(strata)):
        ids = pool.loc[strata == stratum, "trial_id"].to_numpy(np.int64)
        keys = [
            hashlib.blake2b(f"{split.seed}|{session_id}|{stratum}|{t}".encode(), digest_size=8).digest()
            for t in ids.tolist()
        ]
        ordered = ids[np.argsort(np.array(keys, dtype="S8"), kind="stable")]
        counts = _allocate(ordered.size, split.fractions)
        labels.loc[ordered] = np.repeat(np.array(SPLIT_NAMES, dtype=object), counts)
    return labels


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n into parts proportional to fractions (largest remainder, ties to the first)."""
    exact = [f * n for f in fractions]
    counts = [int(math.floor(x)) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class _ActionTrials:
    trials: pd.DataFrame  # included rows, sorted by trial_id
    align_s: np.ndarray
    excluded: list[dict[str, Any]]


def _action_trials(inputs: _Inputs, spec: ActionSpec) -> _ActionTrials:
    path = inputs.processed_dir / "trials.parquet"
    trials = inputs.trials[inputs.trials["action"].astype(str) == spec.name]
    if trials.empty:
        logger.warning("%s: no trials of action %r; actions found: %s", path, spec.name,
                       sorted(set(inputs.trials["action"].astype(str))))
    column = f"{spec.align_event}_s"
    if column in trials.columns:
        align = trials[column].to_numpy(np.float64)
    elif {"align_event", "align_time_s"} <= set(trials.columns) and (
        trials["align_event"].dropna().astype(str) == spec.align_event
    ).all():
        align = trials["align_time_s"].to_numpy(np.float64)
    else:
        raise DatasetError(
            f"{path}: action {spec.name!r} is aligned to {spec.align_event!r}, but there is no "
            f"column {column!r} (nor align_time_s with align_event == {spec.align_event!r}); "
            f"found columns {list(inputs.trials.columns)}"
        )
    pre, post = spec.window_s
    keep = np.ones(align.size, dtype=bool)
    excluded = []
    for i, (trial_id, a) in enumerate(zip(trials["trial_id"].tolist(), align.tolist())):
        reason = None
        if not math.isfinite(a):
            reason = f"no {spec.align_event} (alignment event absent)"
        elif a + pre < 0:
            reason = (f"window [{a + pre:.6f}, {a + post:.6f}) s starts before the recording "
                      "(0 s)")
        elif a + post > inputs.recording_end_s:
            reason = (f"window [{a + pre:.6f}, {a + post:.6f}) s ends after the recording end "
                      f"({inputs.recording_end_s:.6f} s, {inputs.recording_end_source})")
        if reason:
            keep[i] = False
            excluded.append({"trial_id": int(trial_id), "reason": reason})
    return _ActionTrials(trials[keep].reset_index(drop=True), align[keep], excluded)


def _trials_dataset(inputs: _Inputs, at: _ActionTrials, spec: ActionSpec) -> xr.Dataset:
    t = at.trials
    pre, post = spec.window_s
    data: dict[str, Any] = {
        "start_time": ("trial_id", at.align_s + pre, {"units": "s", "long_name": "window start, probe clock"}),
        "align_time": ("trial_id", at.align_s, {"units": "s", "long_name": f"{spec.align_event}, probe clock"}),
        "stop_time": ("trial_id", at.align_s + post, {"units": "s", "long_name": "window stop (excluded), probe clock"}),
    }
    for column in t.columns:
        if column in ("trial_id", "start_time", "align_time", "stop_time", "split"):
            continue
        values = t[column]
        if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
            arr = values.astype(object).where(values.notna(), "").astype(str).to_numpy()
        elif values.dtype == bool:
            arr = values.to_numpy(bool)
        else:
            arr = values.to_numpy()
        data[column] = ("trial_id", arr)
    data["split"] = ("trial_id", inputs.splits.loc[t["trial_id"].to_numpy(np.int64)].astype(str).to_numpy())
    ds = xr.Dataset(data, coords={"trial_id": t["trial_id"].to_numpy(np.int64)})
    if "start_s" in ds:
        ds["start_s"].attrs.update(units="s", long_name="trial start (task definition), probe clock")
    return ds


# --------------------------------------------------------------------------------------------
# continuous signals


def _behaviour_dataset(path: Path, align: np.ndarray, time_s: np.ndarray, trial_ids: np.ndarray) -> xr.Dataset:
    out: dict[str, Any] = {}
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        t0, rate = _regular_clock(ds["time"].to_numpy(), path)
        for name, var in ds.data_vars.items():
            if var.dims != ("time",):
                logger.info("%s: variable %s has dims %s, not (time,); skipped", path, name, var.dims)
                continue
            values = values_at_bin_centres(var.to_numpy(), rate, align, time_s, t0_s=t0)
            attrs = {k: v for k, v in var.attrs.items() if isinstance(v, (str, int, float))}
            out[_group_name(name)] = (("trial_id", "time"), values, attrs)
    return xr.Dataset(out, coords={"trial_id": trial_ids, "time": time_s},
                      attrs={"source_file": path.name, "sampling": "linear interpolation at bin centres"})


def _pose_dataset(paths: list[Path], align: np.ndarray, time_s: np.ndarray, trial_ids: np.ndarray,
                  threshold: float | None) -> xr.Dataset:
    parts: dict[str, list[np.ndarray]] = {"x": [], "y": [], "likelihood": []}
    keypoints: list[str] = []
    cameras: list[str] = []
    for path in paths:
        camera = path.name[: -len(_POSE_SUFFIX)]
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            missing = [v for v in parts if v not in ds]
            if missing or "keypoint" not in ds.dims:
                raise DatasetError(
                    f"{path}: expected variables x, y, likelihood with dims (time, keypoint); "
                    f"found variables {list(ds.data_vars)}, dims {dict(ds.sizes)}"
                )
            t0, rate = _regular_clock(ds["time"].to_numpy(), path)
            likelihood = ds["likelihood"].transpose("time", "keypoint").to_numpy()
            for name in parts:
                values = ds[name].transpose("time", "keypoint").to_numpy()
                if threshold is not None and name != "likelihood":
                    values = np.where(likelihood >= threshold, values, np.nan)
                parts[name].append(values_at_bin_centres(values, rate, align, time_s, t0_s=t0))
            names = [str(k) for k in ds["keypoint"].to_numpy()]
        keypoints += [f"{camera}.{k}" for k in names] if len(paths) > 1 else names
        cameras += [camera] * len(names)
    data = {name: (("trial_id", "time", "keypoint"), np.concatenate(v, axis=2)) for name, v in parts.items()}
    ds = xr.Dataset(data, coords={"trial_id": trial_ids, "time": time_s, "keypoint": keypoints,
                                  "camera": ("keypoint", cameras)})
    ds.attrs.update(sampling="linear interpolation at bin centres",
                    likelihood_threshold=float(threshold) if threshold is not None else "none (mask of the pose file)")
    return ds


def _lfp_dataset(processed_dir: Path, area_units: pd.DataFrame, align: np.ndarray, spec: ActionSpec,
                 trial_ids: np.ndarray) -> xr.Dataset | None:
    """LFP windows at 1 kHz of the channels whose depth (y_um) lies in the depth range of the
    area's units on each probe (the nearest channel to each unit when none does)."""
    windows, coords = [], {"probe": [], "probe_channel": [], "y_um": [], "x_um": []}
    lfp_time = None
    for probe, units in area_units.groupby(area_units["probe"].astype(str), sort=True):
        path = _lfp_file(processed_dir, probe)
        if path is None:
            continue
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if "lfp" not in ds or "y_um" not in ds.coords:
                raise DatasetError(f"{path}: expected variable lfp (time, channel) with coord y_um; "
                                   f"found {list(ds.variables)}")
            t0, rate = _regular_clock(ds["time"].to_numpy(), path)
            y = ds["y_um"].to_numpy()
            lo, hi = units["depth_um"].min(), units["depth_um"].max()
            idx = np.flatnonzero((y >= lo) & (y <= hi))
            if idx.size == 0:
                idx = np.unique([int(np.argmin(np.abs(y - d))) for d in units["depth_um"]])
            lfp = ds["lfp"].transpose("time", "channel").isel(channel=idx)
            w, lfp_time = signal_windows(lfp, rate, align, spec.window_s, t0_s=t0)
            windows.append(w)
            coords["probe"] += [probe] * idx.size
            coords["probe_channel"] += ds["channel"].to_numpy()[idx].astype(np.int64).tolist()
            coords["y_um"] += y[idx].astype(np.float64).tolist()
            x = ds["x_um"].to_numpy()[idx] if "x_um" in ds.coords else np.full(idx.size, np.nan)
            coords["x_um"] += x.astype(np.float64).tolist()
    if not windows:
        return None
    channel = session_unit_ids(coords["probe"], coords["probe_channel"], where=processed_dir)
    return xr.Dataset(
        {"lfp": (("trial_id", "lfp_time", "channel"), np.concatenate(windows, axis=2), {"units": "uV"})},
        coords={"trial_id": trial_ids, "lfp_time": ("lfp_time", lfp_time, {"units": "s"}), "channel": channel,
                **{k: ("channel", np.asarray(v)) for k, v in coords.items()}},
        attrs={"channel_rule": "channels with y_um inside the depth range of the area's units"},
    )


# --------------------------------------------------------------------------------------------
# writing one session


def _unit_coords(units: pd.DataFrame) -> dict[str, Any]:
    coords: dict[str, Any] = {"cluster_id": ("unit_id", units["unit_id"].to_numpy(np.int64))}
    for column in units.columns:
        if column in ("unit_id", "session_unit_id", "area"):
            continue
        values = units[column]
        if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
            arr = values.astype(object).where(values.notna(), "").astype(str).to_numpy()
        else:
            arr = values.to_numpy()
        coords[column] = ("unit_id", arr)
    return coords


def _root_attrs(spec: ActionSpec, config: DatasetConfig, source: dict[str, Any]) -> dict[str, Any]:
    from pixbin import __version__

    return {
        "format": "pixbin binned dataset",
        "format_version": FORMAT_VERSION,
        "action": spec.name,
        "align_event": spec.align_event,
        "window_s": np.array(spec.window_s, dtype=np.float64),
        "bin_size_s": float(config.bin_size_s),
        "bin_edges": "left-closed [t, t+Δ)",
        "time_reference": "bin centre",
        "binarized": np.int8(1),
        "clock": "imec0 AP, seconds",
        "task": config.task,
        "pixbin_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "parameters": json.dumps(config.to_dict(), sort_keys=True),
        "source": json.dumps(source, sort_keys=True),
    }


def build_session(
    processed_dir: str | os.PathLike,
    session_id: str,
    config: DatasetConfig,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Bin one processed session and write ``out_dir/sessions/session_<id>/<action>.h5`` per action.

    Parameters
    ----------
    processed_dir
        ``data/processed/<session_id>`` (units.parquet, spikes.h5, trials.parquet, ...).
    session_id
        The session folder name ``YYMMDD_mouseID[_extra]``.
    config
        Dataset parameters.
    out_dir
        Root of the binned dataset (``data/binned``).

    Returns
    -------
    dict
        The session summary, also written as ``out_dir/sessions/session_<id>/manifest.json``:
        areas and unit counts, and per action the file, its size and sha256, the included trial
        count and the excluded trials with their reasons.
    """
    processed_dir = Path(processed_dir)
    out_dir = Path(out_dir)
    group = f"session_{session_id}"
    session_dir = out_dir / "sessions" / group
    inputs = _read_inputs(processed_dir, session_id, config)
    units = inputs.units
    area_of = units["area"].map(_group_name)
    areas = sorted(set(area_of))
    behaviour_path = _behaviour_file(processed_dir) if config.include_behaviour else None
    pose_paths = _pose_files(processed_dir) if config.include_pose else []
    spikes = {p: _read_spikes(processed_dir / "spikes.h5", p) for p in sorted(set(units["probe"].astype(str)))}

    probes_list = sorted(set(units["probe"].astype(str)))
    summary: dict[str, Any] = {
        "session_id": session_id,
        "group": group,
        "mouse": inputs.attrs["mouse"],
        "date": inputs.attrs["date"],
        "probes": probes_list,
        "recording_end_s": inputs.recording_end_s,
        "recording_end_source": inputs.recording_end_source,
        "unit_preset": config.unit_preset,
        "areas": {a: int((area_of == a).sum()) for a in areas},
        "split_counts": {k: int(v) for k, v in inputs.splits.value_counts().sort_index().items()},
        "source": inputs.source,
        "actions": {},
    }
    for spec in config.actions:
        at = _action_trials(inputs, spec)
        trial_ids = at.trials["trial_id"].to_numpy(np.int64)
        root = _root_attrs(spec, config, {session_id: inputs.source})
        session_attrs = {**inputs.attrs, "n_trials": int(trial_ids.size), "n_trials_excluded": len(at.excluded)}
        tree: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=root), f"/{group}": xr.Dataset(attrs=session_attrs)}
        encoding: dict[str, dict[str, Any]] = {}
        n_saturated = 0
        if trial_ids.size and len(units):
            binned, losses = {}, {}
            for probe, (times, ids) in spikes.items():
                cluster = units.loc[units["probe"].astype(str) == probe, "unit_id"].to_numpy(np.int64)
                binned[probe] = bin_spikes(times, ids, cluster, at.align_s, spec.window_s, config.bin_size_s)
                losses[probe] = binned[probe].binarize_loss()
                n_saturated += binned[probe].n_saturated
            time_s = next(iter(binned.values())).time_s
            shared: dict[str, xr.Dataset] = {"trials": _trials_dataset(inputs, at, spec)}
            if behaviour_path is not None:
                shared["behaviour"] = _behaviour_dataset(behaviour_path, at.align_s, time_s, trial_ids)
            if pose_paths:
                shared["pose"] = _pose_dataset(pose_paths, at.align_s, time_s, trial_ids,
                                               config.pose_likelihood_threshold)
            for area in areas:
                sel = units[(area_of == area).to_numpy()]
                counts = []
                for probe, rows in sel.groupby(sel["probe"].astype(str), sort=True):
                    b = binned[probe]
                    col = {int(u): i for i, u in enumerate(b.unit_ids)}
                    cols = [col[int(u)] for u in rows["unit_id"]]
                    counts.append((rows["session_unit_id"].to_numpy(), b.counts[:, :, cols], losses[probe][cols]))
                uid = np.concatenate([c[0] for c in counts])
                order = np.argsort(uid, kind="stable")
                tensor = np.concatenate([c[1] for c in counts], axis=2)[:, :, order]
                sel = sel.set_index("session_unit_id").loc[uid[order]].reset_index()
                data = {"spike_data": (("trial_id", "time", "unit_id"), tensor > 0,
                                       {"long_name": "spike_counts > 0"})}
                if config.store_counts:
                    data["spike_counts"] = (("trial_id", "time", "unit_id"), tensor,
                                            {"long_name": "spikes per bin, saturating at 255"})
                coords = {"trial_id": trial_ids,
                          "time": ("time", time_s, {"units": "s", "long_name": f"bin centre relative to {spec.align_event}"}),
                          "unit_id": sel["session_unit_id"].to_numpy(np.int64),
                          **_unit_coords(sel),
                          "binarize_loss": ("unit_id", np.concatenate([c[2] for c in counts])[order])}
                base = f"/{group}/{area}"
                tree[base] = xr.Dataset(attrs={"area": str(sel["area"].iloc[0]), "n_units": int(len(sel))})
                tree[f"{base}/spike_data"] = xr.Dataset(data, coords=coords)
                datasets = dict(shared)
                if config.include_lfp:
                    lfp = _lfp_dataset(processed_dir, sel, at.align_s, spec, trial_ids)
                    if lfp is not None:
                        datasets["lfp"] = lfp
                for name in ("behaviour", "pose", "lfp", "trials"):
                    if name in datasets:
                        tree[f"{base}/{name}"] = datasets[name]
                for name in ("spike_data", "behaviour", "pose", "lfp"):
                    if f"{base}/{name}" in tree:
                        encoding[f"{base}/{name}"] = _encoding(tree[f"{base}/{name}"], config.compression)
        if n_saturated:
            logger.warning("%s %s: %d bins hold >= 255 spikes (spike_counts saturated)", session_id,
                           spec.name, n_saturated)
        path = session_dir / f"{spec.name}.h5"
        with atomic_path(path) as tmp:
            xr.DataTree.from_dict(tree).to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
        logger.info("%s: wrote %s (%d trials, %d excluded)", session_id, path, trial_ids.size, len(at.excluded))
        summary["actions"][spec.name] = {
            "file": path.relative_to(out_dir).as_posix(),
            "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "align_event": spec.align_event,
            "window_s": list(spec.window_s),
            "n_trials": int(trial_ids.size),
            "areas": [a for a in areas if trial_ids.size],
            "n_saturated": int(n_saturated),
            "excluded": at.excluded,
        }
    write_json(session_dir / "manifest.json", summary)
    return summary


def _encoding(ds: xr.Dataset, compression: CompressionConfig) -> dict[str, dict[str, Any]]:
    enc = {}
    for name, var in ds.data_vars.items():
        if var.ndim and var.dims[0] == "trial_id" and var.size:
            itemsize = 1 if var.dtype == bool else var.dtype.itemsize
            enc[name] = compression.encoding(var.shape, itemsize)
    return enc


# --------------------------------------------------------------------------------------------
# combining sessions


def _copy_group(src: h5py.File, path: str, dst: h5py.File, dimid_offset: int) -> int:
    """Copy ``src[path]`` to ``dst[path]`` and re-attach its netCDF-4 dimension scales.

    h5py/HDF5 copy the DIMENSION_LIST / REFERENCE_LIST attributes verbatim, so their object
    references would still point into ``src``; they are deleted and rebuilt with
    ``dims[i].attach_scale`` on the copies. ``_Netcdf4Dimid`` values are shifted by
    ``dimid_offset`` so they stay unique in the file. Returns the next free dimension id.
    """
    src.copy(src[path], dst, name=path)
    g_src, g_dst = src[path], dst[path]
    names: list[str] = []
    g_src.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    top = dimid_offset
    for n in names:
        attrs = g_dst[n].attrs
        for a in ("DIMENSION_LIST", "REFERENCE_LIST"):
            if a in attrs:
                del attrs[a]
        if "_Netcdf4Dimid" in attrs:
            value = int(attrs["_Netcdf4Dimid"]) + dimid_offset
            attrs["_Netcdf4Dimid"] = np.int32(value)
            top = max(top, value + 1)
        if "_Netcdf4Coordinates" in attrs:
            attrs["_Netcdf4Coordinates"] = (np.asarray(attrs["_Netcdf4Coordinates"]) + dimid_offset).astype(np.int32)
    prefix = g_src.name.rstrip("/") + "/"
    for n in names:
        s = g_src[n]
        if "DIMENSION_LIST" not in s.attrs:
            continue
        for axis, refs in enumerate(s.attrs["DIMENSION_LIST"]):
            for ref in refs:
                scale = src[ref].name
                if not scale.startswith(prefix):
                    raise DatasetError(
                        f"{src.filename}: {s.name} uses dimension {scale} outside {path}; "
                        "expected self-contained session groups (docs/FORMAT.md)"
                    )
                g_dst[n].dims[axis].attach_scale(g_dst[scale[len(prefix):]])
    return top


def combine_action(out_dir: str | os.PathLike, action: str, session_ids: Sequence[str]) -> Path:
    """Combine ``out_dir/sessions/session_<id>/<action>.h5`` into ``out_dir/<action>.h5``.

    Groups are copied with h5py (compressed chunks as they are; memory does not grow with the
    number of sessions). Root attributes come from the first session file, with ``source``
    merged over all sessions and ``created`` renewed. The result is opened with
    ``xr.open_datatree`` before it replaces any previous file.
    """
    out_dir = Path(out_dir)
    files = [out_dir / "sessions" / f"session_{s}" / f"{action}.h5" for s in session_ids]
    missing = [str(p) for p in files if not p.is_file()]
    if not files or missing:
        raise DatasetError(f"combine {action!r}: per-session files not found: {missing or 'no sessions given'}")
    source: dict[str, Any] = {}
    for p in files:
        with xr.open_dataset(p, engine="h5netcdf") as root:
            if p == files[0]:
                attrs = dict(root.attrs)
            source.update(json.loads(root.attrs["source"]))
    attrs["source"] = json.dumps(source, sort_keys=True)
    attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    final = out_dir / f"{action}.h5"
    with atomic_path(final) as tmp:
        xr.Dataset(attrs=attrs).to_netcdf(tmp, engine="h5netcdf")
        dimid = 0
        with h5py.File(tmp, "r+") as dst:
            for session_id, p in zip(session_ids, files):
                with h5py.File(p, "r") as src:
                    for name in src:
                        if name in dst:
                            raise DatasetError(f"combine {action!r}: group /{name} of {p} is already in the file")
                        dimid = _copy_group(src, name, dst, dimid)
        with xr.open_datatree(tmp, engine="h5netcdf") as dt:
            found = sorted(dt.children)
        expected = sorted(f"session_{s}" for s in session_ids)
        if found != expected:
            raise DatasetError(f"{final}: combined file holds groups {found}; expected {expected}")
    return final


def build_dataset(
    processed_root: str | os.PathLike,
    sessions: Iterable[str],
    out_dir: str | os.PathLike,
    config: DatasetConfig,
) -> dict[str, Any]:
    """Build every session, combine per action, and write ``out_dir/manifest.json``.

    Parameters
    ----------
    processed_root
        ``data/processed`` (one folder per session).
    sessions
        Session ids (folder names) to include.
    out_dir
        ``data/binned``.
    config
        Dataset parameters.

    Returns
    -------
    dict
        The manifest (also written to ``out_dir/manifest.json``).
    """
    from pixbin import __version__

    processed_root, out_dir = Path(processed_root), Path(out_dir)
    session_ids = sorted(dict.fromkeys(sessions))
    if not session_ids:
        raise DatasetError(f"build_dataset: no sessions given for {processed_root}")
    summaries = {s: build_session(processed_root / s, s, config, out_dir) for s in session_ids}
    actions = {}
    for spec in config.actions:
        path = combine_action(out_dir, spec.name, session_ids)
        actions[spec.name] = {
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "align_event": spec.align_event,
            "window_s": list(spec.window_s),
            "sessions": session_ids,
            "n_trials": sum(summaries[s]["actions"][spec.name]["n_trials"] for s in session_ids),
            "n_units": sum(sum(summaries[s]["areas"].values()) for s in session_ids
                           if summaries[s]["actions"][spec.name]["n_trials"]),
            "areas": sorted({a for s in session_ids for a in summaries[s]["actions"][spec.name]["areas"]}),
        }
    record = provenance(config.to_dict())
    manifest = {
        "format": "pixbin binned dataset",
        "format_version": FORMAT_VERSION,
        "pixbin_version": __version__,
        "created": record["created"],
        "versions": record["versions"],
        "parameters": record["parameters"],
        "actions": actions,
        "sessions": summaries,
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# reading


def open_action(path: str | os.PathLike) -> xr.DataTree:
    """Open a binned ``<action>.h5`` lazily (dask-backed variables).

    Examples
    --------
    >>> dt = open_action("data/binned/rewarded_push.h5")  # doctest: +SKIP
    >>> dt["session_211024_VR46/MOs/spike_data"].spike_data  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: binned action file not found")
    return xr.open_datatree(path, engine="h5netcdf", chunks={})


def export_npy(
    action: str,
    area: str,
    out_path: str | os.PathLike,
    data: str = "spike_data",
    in_path: str | os.PathLike = "data/binned",
    sessions: Sequence[str] | None = None,
) -> list[Path]:
    """Save one area's data of every session as ``session_<id>-<action>-<area>-<data>.npy``.

    The Allen ``access_stimulus_structure`` habit: ``spike_data`` / ``spike_counts`` are saved as
    (unit_id, trial_id, time); ``behaviour`` as (trial_id, time, variable), ``pose`` as
    (trial_id, time, keypoint, variable), ``lfp`` as (trial_id, lfp_time, channel); one variable
    of a group with ``data="<group>/<variable>"`` (e.g. ``behaviour/Back_Sensor``) as
    (trial_id, time[, ...]); ``trials`` as a structured array (trial_id,). Beside each ``.npy``
    a ``.json`` sidecar holds dims, shape, dtype and coordinates.

    Parameters
    ----------
    action, area
        e.g. ``"rewarded_push"``, ``"MOs"``.
    out_path
        Folder for the output files (created).
    data
        What to export (see above).
    in_path
        The binned dataset folder: ``<action>.h5`` is read, or, when absent, the per-session
        files ``sessions/session_<id>/<action>.h5``.
    sessions
        Session ids (with or without ``session_``); all when None.

    Returns
    -------
    list[Path]
        The ``.npy`` files written.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    variable: str | None
    if "/" in data:
        group, variable = data.split("/", 1)
    elif data in ("spike_data", "spike_counts"):
        group, variable = "spike_data", data
    else:
        group, variable = data, None
    if group not in DATA_GROUPS:
        raise DatasetError(f"data {data!r}: expected one of {['spike_counts', *DATA_GROUPS]} "
                           "or '<group>/<variable>'")
    wanted = None if sessions is None else {s if s.startswith("session_") else f"session_{s}" for s in sessions}
    combined = in_path / f"{action}.h5"
    if combined.is_file():
        files = [combined]
    else:
        files = sorted(in_path.glob(f"sessions/session_*/{action}.h5"))
        if wanted is not None:
            files = [f for f in files if f.parent.name in wanted]
        if not files:
            raise DatasetError(f"{combined}: not found, and no per-session files "
                               f"{in_path}/sessions/session_*/{action}.h5")
    written: list[Path] = []
    seen_areas: set[str] = set()
    for file in files:
        # list groups with h5py and open only the one Dataset needed: opening a whole combined
        # file as a DataTree reads the metadata of every session
        with h5py.File(file, "r") as f:
            layout = {name: {a: set(f[name][a]) for a in f[name]} for name in f if name.startswith("session_")}
        with xr.open_dataset(file, engine="h5netcdf") as root:
            root_attrs = {k: _jsonable(root.attrs[k]) for k in
                          ("align_event", "window_s", "bin_size_s", "bin_edges", "time_reference") if k in root.attrs}
        for name in sorted(layout):
            if wanted is not None and name not in wanted:
                continue
            seen_areas.update(layout[name])
            if area not in layout[name]:
                continue
            if group not in layout[name][area]:
                logger.warning("%s: /%s/%s has no %s group; skipped", file, name, area, group)
                continue
            where = f"/{name}/{area}/{group}"
            with xr.open_dataset(file, group=where, engine="h5netcdf") as ds:
                array, meta = _export_array(ds, group, variable, f"{file}:{where}")
            stem = f"{name}-{action}-{area}-{data.replace('/', '.')}"
            meta.update(file=str(file), group=where, session=name[len("session_"):], action=action,
                        area=area, data=data, **root_attrs)
            written.append(write_npy(out_path / f"{stem}.npy", array))
            write_json(out_path / f"{stem}.json", meta)
    if not written:
        raise DatasetError(f"{files[0] if len(files) == 1 else in_path}: no session has area {area!r} "
                           f"with {group!r}; areas found: {sorted(seen_areas)}")
    return written


def _export_array(ds: xr.Dataset, group: str, variable: str | None, where: str) -> tuple[np.ndarray, dict[str, Any]]:
    if group == "trials":
        frame = ds.to_dataframe().reset_index()
        fields = []
        for column in frame.columns:
            values = frame[column].to_numpy()
            if values.dtype == object:
                values = values.astype(str)
            fields.append((column, values))
        array = np.rec.fromarrays([v for _, v in fields], names=[n for n, _ in fields]).view(np.ndarray)
        return array, {"dims": ["trial_id"], "shape": list(array.shape), "dtype": str(array.dtype),
                       "fields": [n for n, _ in fields],
                       "coords": {"trial_id": {"dim": "trial_id", "values": _jsonable(ds["trial_id"].values)}}}
    if variable is None and len(ds.data_vars) == 1:
        variable = next(iter(ds.data_vars))
    if variable is not None:
        if variable not in ds.data_vars:
            raise DatasetError(f"{where}: no variable {variable!r}; found {list(ds.data_vars)}")
        var = ds[variable]
        if group == "spike_data":
            var = var.transpose("unit_id", "trial_id", "time")
        array, dims, variables = var.to_numpy(), list(var.dims), None
    else:
        names = list(ds.data_vars)
        stacked = xr.concat([ds[n] for n in names], dim="variable")
        stacked = stacked.transpose(*ds[names[0]].dims, "variable")
        array, dims, variables = stacked.to_numpy(), list(stacked.dims), names
    coords = {}
    for name, coord in ds.coords.items():
        if len(coord.dims) == 1 and coord.dims[0] in dims:
            coords[name] = {"dim": coord.dims[0], "values": _jsonable(coord.values)}
    meta: dict[str, Any] = {"dims": dims, "shape": list(array.shape), "dtype": str(array.dtype), "coords": coords}
    if variables is not None:
        meta["variables"] = variables
    return array, meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return [None if not math.isfinite(v) else float(v) for v in value.ravel().tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
