"""Which units to use and where they are: named unit presets (:func:`select_units`) and brain
areas along a probe (:func:`read_areas_table`, :func:`assign_areas`).

Kept apart from the spikes stage so that the dataset stage can select units without importing it.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pixbin.errors import ConfigError, SortingError

__all__ = [
    "UnitPreset",
    "UNIT_PRESETS",
    "select_units",
    "METRIC_LABEL_RULE",
    "label_from_metrics",
    "apply_metric_labels",
    "AREA_UNASSIGNED",
    "AreasTable",
    "read_areas_table",
    "assign_areas",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Unit selection
# --------------------------------------------------------------------------------------------

_OPS = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True)
class UnitPreset:
    """A named unit filter: every ``(column, operator, value)`` criterion must hold; NaN fails."""

    description: str
    criteria: tuple[tuple[str, str, Any], ...]

    def mask(self, units: pd.DataFrame) -> pd.Series:
        """Boolean Series over ``units`` rows."""
        keep = pd.Series(True, index=units.index)
        for column, op, value in self.criteria:
            values = units[column]
            if not isinstance(value, str):
                values = values.astype(np.float64)
            keep &= _OPS[op](values, value).fillna(False).astype(bool)
        return keep


#: Named unit selections for :func:`select_units`. "allen" uses the strict values the issue
#: states; the AllenSDK's own default filter is "allen_sdk" (see docs/SORTING.md).
UNIT_PRESETS: Mapping[str, UnitPreset] = {
    "allen": UnitPreset(
        "strict Allen-style criteria as the issue states them",
        (("isi_violations_ratio", "<", 0.01), ("amplitude_cutoff", "<", 0.01),
         ("presence_ratio", ">=", 0.99), ("snr", ">", 3.0)),
    ),
    "allen_sdk": UnitPreset(
        "AllenSDK EcephysSession default unit filter",
        (("isi_violations_ratio", "<", 0.5), ("amplitude_cutoff", "<", 0.1), ("presence_ratio", ">", 0.9)),
    ),
    "phy_good": UnitPreset("label 'good': curated in phy, else Kilosort's, else the metric rule",
                           (("label", "==", "good"),)),
    "curated_good": UnitPreset("label 'good' given by a human in phy",
                               (("label", "==", "good"), ("label_source", "==", "curated"))),
    "all": UnitPreset("every unit except label 'noise'", (("label", "!=", "noise"),)),
}


def select_units(units: pd.DataFrame, preset: str) -> pd.DataFrame:
    """Rows of ``units`` that pass the named preset of :data:`UNIT_PRESETS`.

    Raises
    ------
    ConfigError
        Unknown preset (the message lists the valid ones).
    SortingError
        ``units`` lacks a column the preset needs.
    """
    if preset not in UNIT_PRESETS:
        raise ConfigError(f"unknown unit preset {preset!r}; expected one of {sorted(UNIT_PRESETS)}")
    spec = UNIT_PRESETS[preset]
    missing = [c for c, _, _ in spec.criteria if c not in units.columns]
    if missing:
        raise SortingError(f"unit preset {preset!r} needs columns {missing}; found {list(units.columns)}")
    for column, _, value in spec.criteria:
        if not isinstance(value, str) and len(units) and units[column].isna().all():
            logger.warning("unit preset %r: column %s is NaN for every unit (no recording?); "
                           "no unit passes", preset, column)
    return units.loc[spec.mask(units)].copy()


# --------------------------------------------------------------------------------------------
# Labels from quality metrics
# --------------------------------------------------------------------------------------------

#: The metric label rule (docs/SORTING.md, "Reopening a sorting and unit labels"): "noise" when
#: the waveform is not above the noise, "good" when every AllenSDK default criterion holds, else
#: "mua". A NaN metric fails its criterion; without an SNR (no recording) there is no label.
METRIC_LABEL_RULE: Mapping[str, UnitPreset] = {
    "noise": UnitPreset("waveform at the noise level", (("snr", "<", 2.0),)),
    "good": UnitPreset("AllenSDK default unit filter", UNIT_PRESETS["allen_sdk"].criteria),
}


def label_from_metrics(units: pd.DataFrame) -> pd.Series:
    """"good" / "mua" / "noise" per row of ``units`` by :data:`METRIC_LABEL_RULE`; None where
    ``snr`` is NaN (metrics from spike times only)."""
    label = pd.Series("mua", index=units.index, dtype=object)
    label[METRIC_LABEL_RULE["good"].mask(units)] = "good"
    label[METRIC_LABEL_RULE["noise"].mask(units)] = "noise"
    return label.where(units["snr"].notna(), None)


def apply_metric_labels(units: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``units`` with ``metrics_label`` (:func:`label_from_metrics`) and, for units that
    neither a human nor the sorter labelled (``label_source`` "none"), ``label`` = that label and
    ``label_source`` = "metrics". Human (and sorter) labels are never replaced."""
    out = units.copy()
    out["metrics_label"] = label_from_metrics(out)
    fill = (out["label_source"] == "none") & out["metrics_label"].notna()
    out.loc[fill, "label"] = out.loc[fill, "metrics_label"]
    out.loc[fill, "label_source"] = "metrics"
    return out


# --------------------------------------------------------------------------------------------
# Brain areas
# --------------------------------------------------------------------------------------------

AREA_UNASSIGNED = "unassigned"


@dataclass(frozen=True, eq=False)
class AreasTable:
    """Brain areas along a probe: depth ranges (``kind="depth"``: probe, area, depth_min_um,
    depth_max_um, half-open [min, max), µm from the tip) or channels (``kind="channel"``: probe,
    channel, area)."""

    kind: Literal["depth", "channel"]
    table: pd.DataFrame
    path: Path | None = None


def _areas_from_frame(frame: pd.DataFrame, path: Path | None) -> AreasTable:
    where = str(path) if path else "areas table"
    columns = set(frame.columns)
    if frame.empty and len(columns) > 1:
        raise SortingError(f"{where}: no rows under the header {list(frame.columns)}; add one "
                           "row per area, or delete the file")
    if {"probe", "area", "depth_min_um", "depth_max_um"} <= columns:
        table = frame[["probe", "area", "depth_min_um", "depth_max_um"]].copy()
        table["probe"] = table["probe"].astype(str)
        table["area"] = table["area"].astype(str)
        for col in ("depth_min_um", "depth_max_um"):
            number = pd.to_numeric(table[col], errors="coerce").astype(np.float64)
            bad = table.loc[number.isna(), col]
            if len(bad):
                raise SortingError(f"{where}: {col}: expected numbers (µm from the tip), found "
                                   f"{bad.tolist()[:5]} for area(s) {table.loc[bad.index, 'area'].tolist()[:5]}")
            table[col] = number
        bad = table[~(table["depth_min_um"] < table["depth_max_um"])]
        if len(bad):
            row = bad.iloc[0]
            raise SortingError(f"{where}: expected depth_min_um < depth_max_um, found "
                               f"[{row.depth_min_um}, {row.depth_max_um}) for {row.probe}/{row.area}")
        for probe, rows in table.groupby("probe", sort=False):
            rows = rows.sort_values("depth_min_um")
            lo, hi = rows["depth_min_um"].to_numpy(), rows["depth_max_um"].to_numpy()
            overlap = np.flatnonzero(lo[1:] < hi[:-1])
            if overlap.size:
                i = overlap[0]
                a, b = rows.iloc[i], rows.iloc[i + 1]
                raise SortingError(
                    f"{where}: probe {probe}: expected non-overlapping depth ranges, found "
                    f"{a.area} [{a.depth_min_um}, {a.depth_max_um}) and {b.area} "
                    f"[{b.depth_min_um}, {b.depth_max_um})")
        return AreasTable("depth", table.reset_index(drop=True), path)
    if {"probe", "channel", "area"} <= columns:
        table = frame[["probe", "channel", "area"]].copy()
        table["probe"] = table["probe"].astype(str)
        table["area"] = table["area"].astype(str)
        channel = pd.to_numeric(table["channel"], errors="coerce")
        if channel.isna().any() or (channel != channel.round()).any():
            raise SortingError(f"{where}: expected integer channels, found {table['channel'][channel.isna()].tolist()[:5]}")
        table["channel"] = channel.astype(np.int64)
        dup = table.duplicated(["probe", "channel"])
        if dup.any():
            row = table[dup].iloc[0]
            raise SortingError(f"{where}: expected one area per (probe, channel), found channel "
                               f"{row.channel} of {row.probe} more than once")
        return AreasTable("channel", table.reset_index(drop=True), path)
    raise SortingError(f"{where}: expected columns probe,area,depth_min_um,depth_max_um or "
                       f"probe,channel,area; found {list(frame.columns)}")


def read_areas_table(path: str | os.PathLike) -> AreasTable:
    """Read ``areas.csv`` (depth ranges) or a histology channel table (``.csv`` or ``.tsv``).

    Raises
    ------
    SortingError
        Missing or empty file, a header without rows, unknown columns, ranges that are not
        numbers, empty or inverted ranges, overlapping ranges on one probe, a channel listed twice.
    """
    path = Path(path)
    if not path.exists():
        raise SortingError(f"{path}: expected an areas table, found no such file")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        frame = pd.read_csv(path, sep=sep, comment="#", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise SortingError(f"{path}: empty file; expected an areas table with columns "
                           "probe,area,depth_min_um,depth_max_um (or probe,channel,area); "
                           "fill it in or delete it") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SortingError(f"{path}: cannot read as a table ({e})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return _areas_from_frame(frame, path)


def assign_areas(units: pd.DataFrame, areas: AreasTable | None) -> pd.DataFrame:
    """Copy of ``units`` (columns ``probe`` and ``depth_um`` or ``channel``) with a column ``area``.

    Depth ranges are half-open [min, max) in µm from the tip; channel tables map peak channels.
    A unit outside every range, or with unknown depth/channel, gets "unassigned". Without a
    table, or for a probe the table does not mention, ``area`` is the probe name (e.g. "imec0").
    """
    out = units.copy()
    probes = out["probe"].astype(str).to_numpy()
    area = probes.astype(object).copy()
    if areas is None or len(out) == 0:
        out["area"] = area
        return out
    known = set(areas.table["probe"])
    for probe in np.unique(probes):
        sel = probes == probe
        if probe not in known:
            logger.warning("%s: no rows for probe %s; its units get area %r",
                           areas.path or "areas table", probe, probe)
            continue
        rows = areas.table[areas.table["probe"] == probe]
        if areas.kind == "depth":
            depth = out.loc[sel, "depth_um"].to_numpy(dtype=np.float64)
            result = np.full(depth.size, AREA_UNASSIGNED, dtype=object)
            for row in rows.itertuples(index=False):
                hit = (depth >= row.depth_min_um) & (depth < row.depth_max_um)
                result[hit] = row.area
        else:
            lookup = dict(zip(rows["channel"].to_numpy(), rows["area"].to_numpy()))
            result = np.array([lookup.get(int(c), AREA_UNASSIGNED) for c in out.loc[sel, "channel"]],
                              dtype=object)
        area[sel] = result
    out["area"] = area
    return out
