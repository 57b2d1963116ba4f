"""Trials of the binned dataset: train/val/test splits, the trials of one action, its trials table.

:func:`assign_splits` labels the trials of a session once (the same label in every action
file); :func:`action_trials` picks an action's trials and leaves out, with a reason, those whose
window is not inside the recording; :func:`trials_dataset` is the ``trials`` Dataset of FORMAT.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from pixbin import layout
from pixbin.errors import DatasetError

if TYPE_CHECKING:
    from pixbin.binned_inputs import Inputs
    from pixbin.dataset import ActionSpec, SplitConfig

__all__ = [
    "SPLIT_NAMES",
    "NO_SPLIT",
    "assign_splits",
    "ActionTrials",
    "action_trials",
    "trials_dataset",
]

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
NO_SPLIT = "none"


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
class ActionTrials:
    """The included trials of one action, their alignment times and the excluded trials."""

    trials: pd.DataFrame  # included rows, sorted by trial_id
    align_s: np.ndarray
    excluded: list[dict[str, Any]]


def action_trials(inputs: Inputs, spec: ActionSpec) -> ActionTrials:
    """The trials of ``spec.name`` whose window lies inside the recording; the others, with why."""
    path = layout.Processed(inputs.processed_dir).trials
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
    return ActionTrials(trials[keep].reset_index(drop=True), align[keep], excluded)


def trials_dataset(inputs: Inputs, at: ActionTrials, spec: ActionSpec) -> xr.Dataset:
    """The ``trials`` Dataset: window times, the trial table's columns and the split."""
    t = at.trials
    pre, post = spec.window_s
    start, stop = at.align_s + pre, at.align_s + post
    data: dict[str, Any] = {
        "start_time": ("trial_id", start, {"units": "s", "long_name": "window start, probe clock"}),
        "align_time": ("trial_id", at.align_s, {"units": "s", "long_name": f"{spec.align_event}, probe clock"}),
        "stop_time": ("trial_id", stop, {"units": "s", "long_name": "window stop (excluded), probe clock"}),
        "duration": ("trial_id", stop - start,
                     {"units": "s", "long_name": "stop_time - start_time (the Allen presentations' duration)"}),
    }
    for column in t.columns:
        if column in ("trial_id", "start_time", "align_time", "stop_time", "duration", "split"):
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
