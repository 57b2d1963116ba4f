"""Read Kilosort/phy output folders: spike times, cluster ids, curation labels, peak channels.

The phy folder is the one interchange format of the spikes stage: a folder curated in phy is
imported with :func:`read_phy_folder`, and a sorter's result is exported to a phy folder and read
back through the same function, so ``unit_id`` is always the phy ``cluster_id``.
The phy reader is written here rather than taken from ``spikeinterface.extractors.read_phy``
because that reader keeps only the clusters listed in ``cluster_group.tsv`` (1 of the 62 clusters in
phy's own template dataset) and cannot tell a ``KSLabel`` header from a curated ``group``.
"""

from __future__ import annotations

import ast
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pixbin.errors import SortingError

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    from spikeinterface.core import BaseSorting

__all__ = [
    "PhySorting",
    "read_phy_folder",
    "read_phy_params",
    "read_cluster_labels",
    "phy_curation",
    "LABEL_CURATED",
    "LABEL_SORTER",
    "LABEL_NONE",
]

logger = logging.getLogger(__name__)

_LABEL_UNSORTED = "unsorted"

#: Where a cluster's ``label`` came from (``label_source``): a human in phy (``group``), the
#: sorter (Kilosort's ``KSLabel``), or nowhere yet ("unsorted"; the spikes stage may then label it
#: from its quality metrics, :func:`pixbin.units.label_from_metrics`).
LABEL_CURATED, LABEL_SORTER, LABEL_NONE = "curated", "sorter", "none"


@dataclass(frozen=True, eq=False)
class PhySorting:
    """Spikes and curation of one Kilosort/phy folder.

    Attributes
    ----------
    folder : Path
        The phy folder everything was read from (labels never come from another folder).
    spike_times_samples, spike_clusters : ndarray of int64, shape (n_spikes,)
        Spike sample indices (sample 0 = first sample of the sorted file) and cluster ids.
    sampling_frequency_hz : float
        Rate that converts samples to seconds (the AP ``imSampRate`` when given, else params.py).
    clusters : DataFrame
        One row per cluster that has spikes, sorted by ``cluster_id``: ``cluster_id``, ``label``
        (curated phy group, else Kilosort label, else "unsorted"), ``label_source`` ("curated",
        "sorter" or "none"), ``ks_label``, ``channel``
        (peak channel, a value of ``channel_map``; -1 if unknown), ``x_um``, ``depth_um`` (y of
        that channel in ``channel_positions``), ``n_spikes``, then the other cluster_*.tsv /
        cluster_info.tsv columns as phy wrote them.
    channel_map : ndarray of int64, shape (n_channels,) or None
    channel_positions : ndarray of float64, shape (n_channels, 2) or None
    params : dict
        The literal assignments of params.py.
    n_samples : int or None
        Samples in the sorted binary when params.py's ``dat_path`` points to an existing file.
    """

    folder: Path
    spike_times_samples: np.ndarray
    spike_clusters: np.ndarray
    sampling_frequency_hz: float
    clusters: pd.DataFrame
    channel_map: np.ndarray | None = None
    channel_positions: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    n_samples: int | None = None

    @property
    def unit_ids(self) -> np.ndarray:
        """Cluster ids that have at least one spike, ascending (int64)."""
        return self.clusters["cluster_id"].to_numpy(dtype=np.int64)

    @property
    def spike_times_s(self) -> np.ndarray:
        """Spike times in seconds (samples / sampling_frequency_hz), float64."""
        return self.spike_times_samples / self.sampling_frequency_hz

    def to_spikeinterface(self) -> BaseSorting:
        """A ``spikeinterface`` NumpySorting with unit ids = cluster ids and properties
        ``label``, ``ks_label``, ``channel``, ``depth_um``."""
        from spikeinterface.core import NumpySorting

        sorting = NumpySorting.from_samples_and_labels(
            [self.spike_times_samples], [self.spike_clusters], self.sampling_frequency_hz,
            unit_ids=self.unit_ids,
        )
        for column in ("label", "ks_label", "channel", "depth_um"):
            values = self.clusters[column].to_numpy()
            if values.dtype.kind not in "iuf":
                values = values.astype(str)
            sorting.set_property(column, values)
        return sorting


def read_phy_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read a phy ``params.py`` without executing it.

    Each top-level ``name = value`` is evaluated with :func:`ast.literal_eval`; a value that is
    not a literal (e.g. ``os.path.join(...)``) is kept as ``None`` with a warning.

    Raises
    ------
    SortingError
        If the file cannot be parsed as Python.
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, ValueError) as exc:
        raise SortingError(f"{path}: expected a phy params.py of `name = value` lines, "
                           f"found unparsable Python ({exc})") from exc
    params: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            try:
                params[name] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                logger.warning("%s: %s is not a literal; ignored", path, name)
                params[name] = None
    return params


def _read_tsv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype={"group": object, "KSLabel": object})
    if "cluster_id" not in frame.columns and "id" in frame.columns:  # phy < 2.0b1 cluster_info
        frame = frame.rename(columns={"id": "cluster_id"})
    if "cluster_id" not in frame.columns:
        raise SortingError(f"{path}: expected a `cluster_id` column, found {list(frame.columns)}")
    if frame["cluster_id"].duplicated().any():
        dup = frame.loc[frame["cluster_id"].duplicated(), "cluster_id"].tolist()[:5]
        raise SortingError(f"{path}: expected one row per cluster_id, found duplicates {dup}")
    frame["cluster_id"] = frame["cluster_id"].astype(np.int64)
    return frame


def _clean_labels(values: pd.Series) -> pd.Series:
    """Strings stripped; empty strings and NaN become missing (object dtype, None)."""
    def clean(value: Any) -> str | None:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return None
        value = str(value).strip()
        return value or None

    return pd.Series([clean(v) for v in values], index=values.index, dtype=object)


def read_cluster_labels(folder: str | os.PathLike) -> pd.DataFrame:
    """Labels and per-cluster columns from the phy TSVs of one folder.

    Reads ``cluster_info.tsv``, ``cluster_group.tsv`` (header ``group`` = curation, or
    ``KSLabel`` as Kilosort 2.5 writes it), ``cluster_KSLabel.tsv`` and any other
    ``cluster_<name>.tsv``. ``label`` = the curated group (cluster_group.tsv, else
    cluster_info.tsv ``group``) where it is not empty nor "unsorted" (phy's "not decided"), else
    the Kilosort label, else "unsorted"; ``label_source`` says which.

    Returns
    -------
    DataFrame
        ``cluster_id`` (int64), ``label``, ``label_source``, ``ks_label`` (None where absent),
        then the other columns; one row per cluster named in any TSV, sorted by ``cluster_id``. Empty (with those
        three columns) when the folder has no TSV.
    """
    folder = Path(folder)
    curated: list[pd.Series] = []
    ks: list[pd.Series] = []
    extra: list[pd.DataFrame] = []
    ids: set[int] = set()

    info_path = folder / "cluster_info.tsv"
    group_path = folder / "cluster_group.tsv"
    if group_path.exists():
        frame = _read_tsv(group_path)
        ids.update(frame["cluster_id"].tolist())
        if "group" in frame.columns:
            curated.append(_clean_labels(frame.set_index("cluster_id")["group"]))
        elif "KSLabel" in frame.columns:
            ks.append(_clean_labels(frame.set_index("cluster_id")["KSLabel"]))
        else:
            raise SortingError(f"{group_path}: expected a `group` or `KSLabel` column, found {list(frame.columns)}")
    if info_path.exists():
        frame = _read_tsv(info_path)
        ids.update(frame["cluster_id"].tolist())
        frame = frame.set_index("cluster_id")
        if "group" in frame.columns:
            curated.append(_clean_labels(frame.pop("group")))
        if "KSLabel" in frame.columns:
            ks.append(_clean_labels(frame.pop("KSLabel")))
        extra.append(frame)
    for path in sorted(folder.glob("cluster_*.tsv")):
        if path in (info_path, group_path):
            continue
        frame = _read_tsv(path).set_index("cluster_id")
        ids.update(frame.index.tolist())
        if "KSLabel" in frame.columns:
            ks.append(_clean_labels(frame.pop("KSLabel")))
        if "group" in frame.columns:
            curated.append(_clean_labels(frame.pop("group")))
        extra.append(frame)

    index = pd.Index(sorted(ids), dtype=np.int64, name="cluster_id")
    result = pd.DataFrame(index=index)

    def first_present(series_list: list[pd.Series]) -> pd.Series:
        merged = pd.Series([None] * len(index), index=index, dtype=object)
        for series in reversed(series_list):  # earlier files win
            series = series.reindex(index)
            merged = series.where(series.notna(), merged).astype(object)
        return merged.where(merged.notna(), None)

    if len(curated) == 2:
        a, b = (s.reindex(index) for s in curated)
        both = a.notna() & b.notna()
        if (a[both] != b[both]).any():
            logger.warning("%s: cluster_group.tsv and cluster_info.tsv disagree on %d clusters; "
                           "using cluster_group.tsv", folder, int((a[both] != b[both]).sum()))
    group = first_present(curated)
    group = group.where(group.notna() & (group != _LABEL_UNSORTED), None)
    ks_label = first_present(ks)
    label = group.where(group.notna(), ks_label)
    result["label"] = label.where(label.notna(), _LABEL_UNSORTED).astype(object)
    result["label_source"] = np.where(group.notna(), LABEL_CURATED,
                                      np.where(ks_label.notna(), LABEL_SORTER, LABEL_NONE)).astype(object)
    result["ks_label"] = ks_label
    for frame in extra:
        for column in frame.columns:
            if column not in result.columns:
                result[column] = frame[column].reindex(index)
    return result.reset_index()


def phy_curation(folder: str | os.PathLike) -> dict[str, bool]:
    """What a human changed in phy in a folder exported from a sort (spike_templates.npy = the
    sorter's units, which phy never rewrites): ``labels`` (a curated group in cluster_group.tsv or
    cluster_info.tsv) and ``clusters`` (merges or splits: spike_clusters.npy differs)."""
    folder = Path(folder)
    labels = read_cluster_labels(folder)
    _, spike_clusters, spike_templates = _read_spike_arrays(folder)
    reclustered = spike_templates is None or not np.array_equal(spike_clusters, spike_templates)
    return {"labels": bool((labels["label_source"] == LABEL_CURATED).any()), "clusters": bool(reclustered)}


def _load_npy(folder: Path, name: str, required: bool = True) -> np.ndarray | None:
    path = folder / name
    if not path.exists():
        if required:
            raise SortingError(f"{folder}: expected {name} in a Kilosort/phy folder, found no such file "
                               f"(files present: {sorted(p.name for p in folder.iterdir())[:20]})")
        return None
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, EOFError, OSError) as exc:  # EOFError: an empty or cut-short file
        raise SortingError(f"{path}: expected a numeric .npy array, found an unreadable file ({exc})") from exc


def _as_vector(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """(n,), (n, 1) or (1, n) -> (n,) int64."""
    array = np.asarray(array)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise SortingError(f"{path}: expected {what} of shape (n,), (n, 1) or (1, n), found {array.shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise SortingError(f"{path}: expected integer {what}, found non-integer floats")
    elif array.dtype.kind not in "iu":
        raise SortingError(f"{path}: expected integer {what}, found dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise SortingError(f"{path}: {what} exceed int64")
    return array.astype(np.int64)


def _dat_samples(folder: Path, params: dict[str, Any]) -> int | None:
    """Samples in params.py's binary (dat_path, n_channels_dat, dtype, offset), None if not found."""
    dat = params.get("dat_path")
    if isinstance(dat, (list, tuple)):
        dat = dat[0] if len(dat) == 1 else None
    if not isinstance(dat, str) or dat in ("", "None"):
        return None
    path = Path(dat) if Path(dat).is_absolute() else folder / dat
    try:
        n_channels = int(params["n_channels_dat"])
        itemsize = np.dtype(params.get("dtype", "int16")).itemsize
        offset = int(params.get("offset", 0) or 0)
        size = path.stat().st_size
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return max(size - offset, 0) // (n_channels * itemsize)


def _peak_channels_from_templates(
    folder: Path, spike_templates: np.ndarray, spike_clusters: np.ndarray, cluster_ids: np.ndarray,
) -> np.ndarray | None:
    """Row of channel_map holding each cluster's peak, from its most frequent template.

    Peak = channel with the largest peak-to-peak of the (unwhitened when whitening_mat_inv.npy fits)
    template; sparse templates are mapped through template_ind.npy / templates_ind.npy.
    """
    templates = _load_npy(folder, "templates.npy", required=False)
    if templates is None or templates.ndim != 3:
        return None
    templates = np.asarray(templates, dtype=np.float64)
    n_templates, _, n_template_channels = templates.shape
    winv = _load_npy(folder, "whitening_mat_inv.npy", required=False)
    if winv is not None and winv.shape == (n_template_channels, n_template_channels):
        templates = templates @ np.asarray(winv, dtype=np.float64)
    best = np.ptp(templates, axis=1).argmax(axis=1)  # (n_templates,)
    ind = None
    for name in ("template_ind.npy", "templates_ind.npy"):
        ind = _load_npy(folder, name, required=False)
        if ind is not None:
            break
    if ind is not None and ind.shape == (n_templates, n_template_channels):
        best = np.asarray(ind)[np.arange(n_templates), best].astype(np.int64)
    if spike_templates.size == 0 or spike_templates.max() >= n_templates or spike_templates.min() < 0:
        logger.warning("%s: spike_templates out of range of templates.npy (%d); no peak channels",
                       folder, n_templates)
        return None
    # most frequent template per cluster
    key = spike_clusters * np.int64(n_templates) + spike_templates
    pairs, counts = np.unique(key, return_counts=True)
    pair_cluster, pair_template = np.divmod(pairs, n_templates)
    order = np.lexsort((-counts, pair_cluster))
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair_cluster[order][1:] != pair_cluster[order][:-1]
    dominant = pd.Series(pair_template[order][first], index=pair_cluster[order][first])
    template_of_cluster = dominant.reindex(cluster_ids).to_numpy()
    return best[template_of_cluster.astype(np.int64)]


def _read_spike_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """spike_times, spike_clusters (else spike_templates) and spike_templates (None if absent) of a
    phy folder, as int64 vectors of equal length."""
    times_raw = _load_npy(folder, "spike_times.npy")
    spike_times = _as_vector(times_raw, folder / "spike_times.npy", "spike times")

    clusters_raw = _load_npy(folder, "spike_clusters.npy", required=False)
    templates_raw = _load_npy(folder, "spike_templates.npy", required=False)
    if clusters_raw is None and templates_raw is None:
        raise SortingError(f"{folder}: expected spike_clusters.npy or spike_templates.npy, found neither")
    if clusters_raw is None:
        logger.info("%s: no spike_clusters.npy; clusters = spike_templates.npy (uncurated Kilosort)", folder)
        clusters_raw = templates_raw
    spike_clusters = _as_vector(clusters_raw, folder / "spike_clusters.npy", "spike clusters")
    if spike_clusters.size != spike_times.size:
        raise SortingError(
            f"{folder}: spike_times.npy has {spike_times.size} spikes but spike_clusters.npy has "
            f"{spike_clusters.size}; expected equal lengths (files from different runs?)")
    spike_templates = None
    if templates_raw is not None:
        spike_templates = _as_vector(templates_raw, folder / "spike_templates.npy", "spike templates")
        if spike_templates.size != spike_times.size:
            raise SortingError(
                f"{folder}: spike_times.npy has {spike_times.size} spikes but spike_templates.npy has "
                f"{spike_templates.size}; expected equal lengths")
    if spike_times.size and spike_times.min() < 0:
        raise SortingError(f"{folder}: expected spike_times.npy >= 0, found {spike_times.min()}")
    return spike_times, spike_clusters, spike_templates


def _sample_rate(folder: Path, params: dict[str, Any], sampling_frequency_hz: float | None) -> float:
    """The AP rate when given, else params.py ``sample_rate``; refused unless finite and positive."""
    rate = params.get("sample_rate")
    if sampling_frequency_hz is not None:
        sampling_frequency_hz = float(sampling_frequency_hz)
        if rate is not None and abs(float(rate) - sampling_frequency_hz) > 1e-6 * sampling_frequency_hz:
            logger.info("%s: params.py sample_rate %r differs from the AP rate %r; using the AP rate",
                        folder, rate, sampling_frequency_hz)
    elif rate is not None:
        sampling_frequency_hz = float(rate)
    else:
        raise SortingError(f"{folder}: expected `sample_rate` in params.py or a sampling_frequency_hz "
                           f"argument, found neither")
    if not (math.isfinite(sampling_frequency_hz) and sampling_frequency_hz > 0):
        raise SortingError(f"{folder}: expected a positive sample rate, found {sampling_frequency_hz}")
    return sampling_frequency_hz


def _read_channel_geometry(folder: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """channel_map.npy (int64 vector) and channel_positions.npy (float64, (n, 2)), None where absent."""
    channel_map = _load_npy(folder, "channel_map.npy", required=False)
    if channel_map is not None:
        channel_map = _as_vector(channel_map, folder / "channel_map.npy", "channel map")
    positions = _load_npy(folder, "channel_positions.npy", required=False)
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] < 2:
            raise SortingError(f"{folder / 'channel_positions.npy'}: expected shape (n, 2), found {positions.shape}")
        if channel_map is not None and positions.shape[0] != channel_map.size:
            raise SortingError(f"{folder}: channel_positions.npy has {positions.shape[0]} rows but "
                               f"channel_map.npy has {channel_map.size} channels; expected equal")
    return channel_map, positions


def _cluster_table(folder: Path, cluster_ids: np.ndarray) -> pd.DataFrame:
    """One row per cluster with spikes: ``cluster_id``, ``label``, ``label_source``, ``ks_label``,
    then the TSV columns."""
    labels = read_cluster_labels(folder)
    unknown = np.setdiff1d(labels["cluster_id"].to_numpy(), cluster_ids)
    if unknown.size:
        logger.info("%s: %d clusters in the TSVs have no spikes (merged or split away); dropped",
                    folder, unknown.size)
    table = pd.DataFrame({"cluster_id": cluster_ids.astype(np.int64)})
    table = table.merge(labels, on="cluster_id", how="left")
    table["label"] = table["label"].where(table["label"].notna(), _LABEL_UNSORTED).astype(object)
    table["label_source"] = table["label_source"].where(table["label_source"].notna(), LABEL_NONE).astype(object)
    table["ks_label"] = table["ks_label"].astype(object).where(table["ks_label"].notna(), None)
    return table


def _peak_channels(
    folder: Path, table: pd.DataFrame, spike_templates: np.ndarray | None, spike_clusters: np.ndarray,
    cluster_ids: np.ndarray, channel_map: np.ndarray | None, positions: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peak ``channel`` (-1 unknown), ``x_um`` and ``depth_um`` (NaN unknown) of each cluster: from
    the templates, else from cluster_info.tsv ``ch``/``depth``."""
    rows = None
    if spike_templates is not None:
        rows = _peak_channels_from_templates(folder, spike_templates, spike_clusters, cluster_ids)
    channel = np.full(cluster_ids.size, -1, dtype=np.int64)
    x_um = np.full(cluster_ids.size, np.nan)
    depth_um = np.full(cluster_ids.size, np.nan)
    if rows is not None and positions is not None and rows.max(initial=-1) < positions.shape[0]:
        ok = rows >= 0  # -1: padding of a sparse template_ind
        channel[ok] = channel_map[rows[ok]] if channel_map is not None else rows[ok]
        x_um[ok], depth_um[ok] = positions[rows[ok], 0], positions[rows[ok], 1]
    elif "ch" in table.columns and table["ch"].notna().all():
        logger.info("%s: peak channel and depth from cluster_info.tsv (no usable templates)", folder)
        channel = table["ch"].to_numpy(dtype=np.int64)
        if "depth" in table.columns:
            depth_um = table["depth"].to_numpy(dtype=np.float64)
    return channel, x_um, depth_um


def read_phy_folder(
    folder: str | os.PathLike, *, sampling_frequency_hz: float | None = None,
) -> PhySorting:
    """Read a Kilosort or phy output folder.

    Parameters
    ----------
    folder : path
        Folder with ``spike_times.npy``, ``spike_clusters.npy`` (else ``spike_templates.npy``),
        ``params.py`` and optionally channel_map/channel_positions/templates and phy TSVs.
    sampling_frequency_hz : float, optional
        The AP stream's calibrated ``imSampRate``; overrides params.py ``sample_rate``.

    Returns
    -------
    PhySorting

    Raises
    ------
    SortingError
        Missing spike times, arrays of different lengths, unreadable params.py, no sample rate.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SortingError(f"{folder}: expected a Kilosort/phy folder, found no such directory")
    spike_times, spike_clusters, spike_templates = _read_spike_arrays(folder)

    params_path = folder / "params.py"
    params = read_phy_params(params_path) if params_path.exists() else {}
    sampling_frequency_hz = _sample_rate(folder, params, sampling_frequency_hz)

    channel_map, positions = _read_channel_geometry(folder)

    cluster_ids, n_spikes = np.unique(spike_clusters, return_counts=True)
    table = _cluster_table(folder, cluster_ids)

    channel, x_um, depth_um = _peak_channels(
        folder, table, spike_templates, spike_clusters, cluster_ids, channel_map, positions)
    # phy's cluster_info.tsv has its own n_spikes (same meaning): the count from the arrays wins
    table = table.drop(columns=[c for c in ("channel", "x_um", "depth_um", "n_spikes")
                                if c in table.columns])
    table.insert(4, "channel", channel)
    table.insert(5, "x_um", x_um)
    table.insert(6, "depth_um", depth_um)
    table.insert(7, "n_spikes", n_spikes.astype(np.int64))

    return PhySorting(
        folder=folder, spike_times_samples=spike_times, spike_clusters=spike_clusters,
        sampling_frequency_hz=float(sampling_frequency_hz), clusters=table,
        channel_map=channel_map, channel_positions=positions, params=params,
        n_samples=_dat_samples(folder, params),
    )
