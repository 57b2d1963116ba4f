"""Configure and build the binned dataset: processed sessions -> per-action DataTrees.

The on-disk contract is docs/FORMAT.md. In short, ``out_dir/<action>.h5`` holds one group
``/session_<id>/<area>/`` per session and brain area with the Datasets ``spike_data``,
``behaviour``, ``pose``, ``lfp`` (optional) and ``trials``; ``out_dir/sessions/session_<id>/
<action>.h5`` holds the same groups for one session, and ``out_dir/manifest.json`` lists what
was built; a build appears in ``out_dir`` as a whole or not at all (:func:`build_dataset`). Spikes
are binned by :mod:`pixbin.binning`; this module only selects, aligns, labels and stores, with
the parameters of :class:`DatasetConfig`.

A session's outputs are read by :mod:`pixbin.binned_inputs`, its trials and splits come from
:mod:`pixbin.binned_trials`, behaviour, pose and LFP from :mod:`pixbin.binned_signals`; the
files are written and combined by :mod:`pixbin.binned_write` and read by :mod:`pixbin.binned_read`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from pixbin import layout
from pixbin.binned_inputs import (Inputs, behaviour_file, global_unit_ids, group_name, pose_files,
                                  read_inputs)
from pixbin.binned_signals import behaviour_dataset, lfp_dataset, pose_dataset
from pixbin.binned_trials import SPLIT_NAMES, ActionTrials, action_trials, trials_dataset
from pixbin.binned_write import combine_action, dataset_encoding, staged_dir, write_tree
from pixbin.binning import BinnedSpikes, bin_spikes
from pixbin.errors import ConfigError, DatasetError
from pixbin.fileio import PROVENANCE_KEY, provenance, sha256_file, to_json, write_json
from pixbin.params import check_keys, field_names, params_from_dict
from pixbin.readers import read_spikes

__all__ = [
    "ActionSpec",
    "SplitConfig",
    "CompressionConfig",
    "DatasetConfig",
    "FORMAT_VERSION",
    "build_session",
    "build_dataset",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1.1"  # 1.1: trials `duration`, spike_data `global_unit_id`

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------------------------
# configuration


def _check_name(key: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise ValueError(f"{key}: expected a name of letters, digits, '_', '.', '-'; found {value!r}")


@dataclass(frozen=True)
class ActionSpec:
    """One action to bin: trials of ``name`` aligned to ``align_event``, window ``window_s``."""

    name: str
    align_event: str
    window_s: tuple[float, float]

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        _check_name("align_event", self.align_event)
        if not self.window_s[0] < self.window_s[1]:
            raise ValueError(f"window_s: expected pre < post; found {list(self.window_s)!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ActionSpec:
        return params_from_dict(cls, d, what="key", where=where)


@dataclass(frozen=True)
class SplitConfig:
    """Train/val/test assignment of trials: seed, fractions (train, val, test), stratum column.

    In a config file ``fractions`` is a mapping ``{train: .., val: .., test: ..}``.
    """

    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    stratify_by: str | None = "outcome"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0; found {self.seed!r}")
        if min(self.fractions) < 0 or abs(sum(self.fractions) - 1.0) > 1e-9:
            raise ValueError(f"fractions: expected fractions >= 0 summing to 1; found "
                             f"{dict(zip(SPLIT_NAMES, self.fractions))!r}")

    @classmethod
    def prepare(cls, d: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The config mapping with ``fractions`` as a (train, val, test) list."""
        d = dict(d)
        if "fractions" in d:
            fractions = d["fractions"]
            check_keys(fractions, SPLIT_NAMES, what="key", where=f"{where}: fractions")
            if set(fractions) != set(SPLIT_NAMES):
                raise ConfigError(f"{where}: fractions: expected all of {list(SPLIT_NAMES)}; "
                                  f"found {sorted(fractions)}")
            d["fractions"] = [fractions[k] for k in SPLIT_NAMES]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> SplitConfig:
        return params_from_dict(cls, d, what="key", where=where)

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

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 9:
            raise ValueError(f"level: expected an integer 1-9; found {self.level!r}")
        if self.chunk_kib < 1:
            raise ValueError(f"chunk_kib: expected an integer >= 1; found {self.chunk_kib!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> CompressionConfig:
        return params_from_dict(cls, d, what="key", where=where)

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

    Build it with :meth:`default`, :meth:`from_yaml` or :meth:`from_dict`: the same typed
    parameter mechanism as the stages (:mod:`pixbin.params`), so unknown keys and values of the
    wrong type raise :class:`ConfigError` naming the file and the key.
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

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("task: expected a task name; found ''")
        if self.bin_size_s <= 0:
            raise ValueError(f"bin_size_s: expected > 0; found {self.bin_size_s!r}")
        if not self.actions:
            raise ValueError("actions: expected a non-empty list; found []")
        names = [a.name for a in self.actions]
        if len(set(names)) != len(names):
            raise ValueError(f"actions: action names must be unique; found {names}")
        for a in self.actions:
            n_bins = (a.window_s[1] - a.window_s[0]) / self.bin_size_s
            if abs(n_bins - round(n_bins)) > 1e-9 * n_bins:
                raise ValueError(
                    f"actions[{a.name}]: window {list(a.window_s)} s is not a whole "
                    f"number of {self.bin_size_s} s bins ({n_bins!r})"
                )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> DatasetConfig:
        """Validate a complete parameter mapping (as in the default YAML)."""
        check_keys(d, field_names(cls), what="key", where=source)
        d = dict(d)
        if isinstance(d.get("split"), Mapping):
            d["split"] = SplitConfig.prepare(d["split"], f"{source}: split")
        return params_from_dict(cls, d, what="key", where=source)

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
# building one session


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

    record = provenance(config.to_dict())
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
        "created": record["created"],
        "parameters": to_json(config.to_dict(), sort_keys=True),
        "source": to_json(source, sort_keys=True),
        PROVENANCE_KEY: to_json(record, sort_keys=True),
    }


def _area_spike_data(
    session_id: str,
    sel: pd.DataFrame,
    binned: dict[str, BinnedSpikes],
    losses: dict[str, np.ndarray],
    spec: ActionSpec,
    config: DatasetConfig,
    trial_ids: np.ndarray,
    time_s: np.ndarray,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """The units ``sel`` of one area sorted by session unit id, and the variables and coordinates
    of the area's ``spike_data`` Dataset (those units' columns of the probes' binned counts)."""
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
              "global_unit_id": ("unit_id", global_unit_ids(session_id, sel["session_unit_id"])),
              **_unit_coords(sel),
              "binarize_loss": ("unit_id", np.concatenate([c[2] for c in counts])[order])}
    return sel, data, coords


def _action_tree(
    processed_dir: Path,
    session_id: str,
    group: str,
    inputs: Inputs,
    spec: ActionSpec,
    config: DatasetConfig,
    at: ActionTrials,
    trial_ids: np.ndarray,
    *,
    areas: list[str],
    area_of: pd.Series,
    spikes: dict[str, tuple[np.ndarray, np.ndarray]],
    behaviour_path: Path | None,
    pose_paths: list[Path],
) -> tuple[dict[str, xr.Dataset], dict[str, dict[str, Any]], int]:
    """The groups of one action's session file (path -> Dataset), their encoding, and the
    number of bins whose spike count saturated."""
    units = inputs.units
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
        shared: dict[str, xr.Dataset] = {"trials": trials_dataset(inputs, at, spec)}
        if behaviour_path is not None:
            shared["behaviour"] = behaviour_dataset(behaviour_path, at.align_s, time_s, trial_ids)
        if pose_paths:
            shared["pose"] = pose_dataset(pose_paths, at.align_s, time_s, trial_ids,
                                          config.pose_likelihood_threshold)
        for area in areas:
            sel = units[(area_of == area).to_numpy()]
            sel, data, coords = _area_spike_data(session_id, sel, binned, losses, spec, config, trial_ids, time_s)
            base = f"/{group}/{area}"
            tree[base] = xr.Dataset(attrs={"area": str(sel["area"].iloc[0]), "n_units": int(len(sel))})
            tree[f"{base}/spike_data"] = xr.Dataset(data, coords=coords)
            datasets = dict(shared)
            if config.include_lfp:
                lfp = lfp_dataset(processed_dir, sel, at.align_s, spec, trial_ids)
                if lfp is not None:
                    datasets["lfp"] = lfp
            for name in ("behaviour", "pose", "lfp", "trials"):
                if name in datasets:
                    tree[f"{base}/{name}"] = datasets[name]
            for name in ("spike_data", "behaviour", "pose", "lfp"):
                if f"{base}/{name}" in tree:
                    encoding[f"{base}/{name}"] = dataset_encoding(tree[f"{base}/{name}"], config.compression)
    return tree, encoding, n_saturated


def _session_summary(
    session_id: str, group: str, inputs: Inputs, config: DatasetConfig, area_of: pd.Series, areas: list[str]
) -> dict[str, Any]:
    """The session part of the session manifest (``actions`` is filled by build_session)."""
    probes_list = sorted(set(inputs.units["probe"].astype(str)))
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
    return summary


def _unit_probes_spikes(processed_dir: Path, units: pd.DataFrame
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The spikes of every probe that ``units`` names (DatasetError if spikes.h5 lacks one)."""
    found = read_spikes(processed_dir)
    probes = sorted(set(units["probe"].astype(str)))
    missing = [p for p in probes if p not in found]
    if missing:
        raise DatasetError(f"{layout.Processed(processed_dir).spikes}: no group(s) {missing}; "
                           f"units.parquet names them; found {sorted(found)}")
    return {p: found[p] for p in probes}


def build_session(
    processed_dir: str | os.PathLike,
    session_id: str,
    config: DatasetConfig,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Bin one processed session and write ``out_dir/sessions/session_<id>/<action>.h5`` per action.

    Each file is atomic on its own; :func:`build_dataset` calls this on its staging folder, so
    that the whole build appears at once.

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
        count and the excluded trials with their reasons; ``provenance`` last.
    """
    processed_dir = Path(processed_dir)
    out_dir = Path(out_dir)
    group = f"session_{session_id}"
    binned = layout.Binned(out_dir)
    inputs = read_inputs(processed_dir, session_id, config)
    units = inputs.units
    area_of = units["area"].map(group_name)
    areas = sorted(set(area_of))
    behaviour_path = behaviour_file(processed_dir) if config.include_behaviour else None
    pose_paths = pose_files(processed_dir) if config.include_pose else []
    spikes = _unit_probes_spikes(processed_dir, units)

    summary = _session_summary(session_id, group, inputs, config, area_of, areas)
    for spec in config.actions:
        at = action_trials(inputs, spec)
        trial_ids = at.trials["trial_id"].to_numpy(np.int64)
        tree, encoding, n_saturated = _action_tree(
            processed_dir, session_id, group, inputs, spec, config, at, trial_ids, areas=areas,
            area_of=area_of, spikes=spikes, behaviour_path=behaviour_path, pose_paths=pose_paths,
        )
        if n_saturated:
            logger.warning("%s %s: %d bins hold >= 255 spikes (spike_counts saturated)", session_id,
                           spec.name, n_saturated)
        path = binned.session_action(session_id, spec.name)
        write_tree(path, tree, encoding)
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
    summary[PROVENANCE_KEY] = provenance(config.to_dict())
    write_json(binned.session_manifest(session_id), summary)
    return summary


# --------------------------------------------------------------------------------------------
# building the dataset


def build_dataset(
    processed_root: str | os.PathLike,
    sessions: Iterable[str],
    out_dir: str | os.PathLike,
    config: DatasetConfig,
    left_out: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build every session, combine per action, and write ``out_dir/manifest.json``, all at once.

    The build is made in a staging folder beside ``out_dir`` and swapped into place only when
    complete (:func:`pixbin.binned_write.staged_dir`): ``out_dir`` holds the previous build or this
    one, each with the manifests of its files, at every instant, also when the build fails or is
    killed; what a killed build left is removed by the next one. Files this build does not write
    stay as they were: the per-session files of sessions not in ``sessions``, and those of actions
    no longer configured (``manifest.json`` lists only what this build made).

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
    left_out
        Sessions not built and why (``{session: {stage: state}}``), recorded in the manifest.

    Returns
    -------
    dict
        The manifest (also written to ``out_dir/manifest.json``).
    """
    processed_root, out_dir = Path(processed_root), Path(out_dir)
    session_ids = sorted(dict.fromkeys(sessions))
    if not session_ids:
        raise DatasetError(f"build_dataset: no sessions given for {processed_root}")
    names = layout.Binned(Path())
    rewritten = {names.manifest, *(names.action(a.name) for a in config.actions),
                 *(names.session_manifest(s) for s in session_ids),
                 *(names.session_action(s, a.name) for s in session_ids for a in config.actions)}
    with staged_dir(out_dir, rewritten) as staging:
        return _build_into(processed_root, session_ids, staging, config, left_out)


def _build_into(
    processed_root: Path, session_ids: list[str], out_dir: Path, config: DatasetConfig,
    left_out: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The body of :func:`build_dataset`, writing into the staging folder ``out_dir``."""
    from pixbin import __version__

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
        PROVENANCE_KEY: record,
        "actions": actions,
        "sessions": summaries,
        "left_out": dict(left_out or {}),
    }
    write_json(layout.Binned(out_dir).manifest, manifest)
    return manifest
