"""Spikes stage: sort or import a Kilosort/phy folder per probe, compute unit quality metrics,
assign brain areas, and write ``units.parquet`` + ``spikes.h5`` (docs/PIPELINE.md, docs/SORTING.md).

The phy folder is the one interchange format: a folder curated in phy is imported with
:func:`read_phy_folder`; a sorter run by :func:`run_sorter_on_recording` is exported to a phy
folder and read back through the same function, so ``unit_id`` is always the phy ``cluster_id``.
The phy reader is written here rather than taken from ``spikeinterface.extractors.read_phy``
because that reader keeps only the clusters listed in ``cluster_group.tsv`` (1 of the 62 clusters in
phy's own template dataset) and cannot tell a ``KSLabel`` header from a curated ``group``.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import math
import operator
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from pixbin.params import params_from_dict
from pixbin.errors import ConfigError, SortingError
from pixbin.fileio import atomic_path, provenance, write_parquet

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    from spikeinterface.core import BaseRecording, BaseSorting

__all__ = [
    "PhySorting",
    "read_phy_folder",
    "read_phy_params",
    "read_cluster_labels",
    "read_ap_recording",
    "choose_sorter",
    "CPU_DEFAULT_SORTER",
    "run_sorter_on_recording",
    "export_phy_folder",
    "preprocess_for_metrics",
    "create_unit_analyzer",
    "compute_unit_metrics",
    "spike_train_metrics",
    "METRIC_COLUMNS",
    "UnitPreset",
    "UNIT_PRESETS",
    "select_units",
    "AreasTable",
    "read_areas_table",
    "assign_areas",
    "ProbeInput",
    "SpikesParams",
    "run_spikes",
    "read_spikes",
    "read_units",
    "UNITS_FILE",
    "SPIKES_FILE",
]

logger = logging.getLogger(__name__)

UNITS_FILE = "units.parquet"
SPIKES_FILE = "spikes.h5"

#: CPU sorter used by ``sorter="auto"`` when Kilosort 4 cannot run on a GPU; chosen by the
#: measurement in docs/SORTING.md (accuracy against ground truth and wall time on 2 cores).
CPU_DEFAULT_SORTER = "tridesclous2"

#: Metric columns of ``units.parquet`` (NaN where a metric could not be computed).
METRIC_COLUMNS = (
    "firing_rate_hz",
    "num_spikes",
    "presence_ratio",
    "isi_violations_ratio",
    "isi_violations_count",
    "amplitude_cutoff",
    "snr",
)

_LABEL_UNSORTED = "unsorted"
_PHY_REQUIRED = ("spike_times.npy",)


# --------------------------------------------------------------------------------------------
# phy / Kilosort folders
# --------------------------------------------------------------------------------------------


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
        (curated phy group, else Kilosort label, else "unsorted"), ``ks_label``, ``channel``
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
    cluster_info.tsv ``group``) where it is not empty, else the Kilosort label, else "unsorted".

    Returns
    -------
    DataFrame
        ``cluster_id`` (int64), ``label``, ``ks_label`` (None where absent), then the other
        columns; one row per cluster named in any TSV, sorted by ``cluster_id``. Empty (with those
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
    ks_label = first_present(ks)
    label = group.where(group.notna(), ks_label)
    result["label"] = label.where(label.notna(), _LABEL_UNSORTED).astype(object)
    result["ks_label"] = ks_label
    for frame in extra:
        for column in frame.columns:
            if column not in result.columns:
                result[column] = frame[column].reindex(index)
    return result.reset_index()


def _load_npy(folder: Path, name: str, required: bool = True) -> np.ndarray | None:
    path = folder / name
    if not path.exists():
        if required:
            raise SortingError(f"{folder}: expected {name} in a Kilosort/phy folder, found no such file "
                               f"(files present: {sorted(p.name for p in folder.iterdir())[:20]})")
        return None
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as exc:
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

    params_path = folder / "params.py"
    params = read_phy_params(params_path) if params_path.exists() else {}
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

    cluster_ids, n_spikes = np.unique(spike_clusters, return_counts=True)
    labels = read_cluster_labels(folder)
    unknown = np.setdiff1d(labels["cluster_id"].to_numpy(), cluster_ids)
    if unknown.size:
        logger.info("%s: %d clusters in the TSVs have no spikes (merged or split away); dropped",
                    folder, unknown.size)
    table = pd.DataFrame({"cluster_id": cluster_ids.astype(np.int64)})
    table = table.merge(labels, on="cluster_id", how="left")
    table["label"] = table["label"].where(table["label"].notna(), _LABEL_UNSORTED).astype(object)
    table["ks_label"] = table["ks_label"].astype(object).where(table["ks_label"].notna(), None)

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
    # phy's cluster_info.tsv has its own n_spikes (same meaning): the count from the arrays wins
    table = table.drop(columns=[c for c in ("channel", "x_um", "depth_um", "n_spikes")
                                if c in table.columns])
    table.insert(3, "channel", channel)
    table.insert(4, "x_um", x_um)
    table.insert(5, "depth_um", depth_um)
    table.insert(6, "n_spikes", n_spikes.astype(np.int64))

    return PhySorting(
        folder=folder, spike_times_samples=spike_times, spike_clusters=spike_clusters,
        sampling_frequency_hz=float(sampling_frequency_hz), clusters=table,
        channel_map=channel_map, channel_positions=positions, params=params,
        n_samples=_dat_samples(folder, params),
    )


# --------------------------------------------------------------------------------------------
# Recording and sorting
# --------------------------------------------------------------------------------------------


def read_ap_recording(path: str | os.PathLike) -> BaseRecording:
    """The AP stream of a SpikeGLX file (``*.ap.bin``, ``*.ap.meta`` or the folder holding one),
    with the probe geometry from the meta and the meta's calibrated ``imSampRate``."""
    import spikeinterface.extractors as se

    path = Path(path)
    if path.is_dir():
        metas = sorted(path.glob("*.ap.meta"))
        if len(metas) != 1:
            raise SortingError(f"{path}: expected exactly one *.ap.meta, found {[m.name for m in metas]}")
        path = metas[0]
    name = path.name
    if not (name.endswith(".ap.bin") or name.endswith(".ap.meta")):
        raise SortingError(f"{path}: expected a SpikeGLX *.ap.bin or *.ap.meta file")
    stream_id = name.rsplit(".", 3)[-3] + ".ap" if name.count(".") >= 3 else "imec0.ap"
    for suffix in (".bin", ".meta"):
        if not path.with_suffix(suffix).exists():
            raise SortingError(f"{path.with_suffix(suffix)}: expected the AP {suffix} file, found none")
    try:
        return se.read_spikeglx(path.parent, stream_id=stream_id)
    except Exception as exc:  # neo raises many types
        raise SortingError(f"{path}: SpikeGLX stream {stream_id!r} could not be read ({exc})") from exc


def _kilosort_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("kilosort") is not None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_sorter(sorter: str = "auto") -> tuple[str, dict[str, Any]]:
    """Resolve ``sorter`` to an installed SpikeInterface sorter name and its extra parameters.

    ``"auto"``: Kilosort 4 on the GPU when ``kilosort`` imports and CUDA is available, else
    :data:`CPU_DEFAULT_SORTER` (Kilosort 4 on a CPU was measured slower and less accurate, see
    docs/SORTING.md; ask for ``"kilosort4"`` explicitly to run it on a CPU anyway).
    """
    import spikeinterface.sorters as ss

    if sorter == "auto":
        if _kilosort_importable() and _cuda_available():
            return "kilosort4", {"torch_device": "cuda"}
        sorter = CPU_DEFAULT_SORTER
    installed = ss.installed_sorters()
    if sorter not in installed:
        raise SortingError(f"sorter {sorter!r} is not installed; expected one of {sorted(installed)} "
                           f"(or 'auto'); Kilosort 4 needs `pip install pixbin[sort]`")
    extra: dict[str, Any] = {}
    if sorter == "kilosort4":
        extra["torch_device"] = "cuda" if _cuda_available() else "cpu"
    return sorter, extra


def _job_kwargs(n_jobs: int, chunk_duration_s: float) -> dict[str, Any]:
    return {"n_jobs": n_jobs, "chunk_duration": f"{chunk_duration_s}s", "progress_bar": False}


def preprocess_for_metrics(recording: BaseRecording, *, phase_shift: bool = False) -> BaseRecording:
    """300–6000 Hz bandpass and global median reference (after the Neuropixels ADC phase shift
    when ``phase_shift`` and the meta gives ``inter_sample_shift``), for waveform metrics."""
    import spikeinterface.preprocessing as spre

    if phase_shift and "inter_sample_shift" in recording.get_property_keys():
        recording = spre.phase_shift(recording)
    high = min(6000.0, 0.45 * recording.sampling_frequency)
    recording = spre.bandpass_filter(recording, freq_min=300.0, freq_max=high)
    return spre.common_reference(recording, reference="global", operator="median")


def run_sorter_on_recording(
    recording: BaseRecording | str | os.PathLike,
    output_folder: str | os.PathLike,
    *,
    sorter: str = "auto",
    params: Mapping[str, Any] | None = None,
    n_jobs: int = 2,
    chunk_duration_s: float = 1.0,
    phase_shift: bool = False,
    export_phy: bool = True,
) -> BaseSorting:
    """Sort one probe's AP recording with SpikeInterface and keep the result under ``output_folder``.

    Parameters
    ----------
    recording : BaseRecording or path
        A recording, or an AP ``.bin``/``.meta`` path (read with :func:`read_ap_recording`).
    output_folder : path
        Receives ``<sorter>_run/`` (the sorter's working folder and log), ``sorting/`` (the
        SpikeInterface-saved sorting) and, with ``export_phy``, ``phy/`` (a phy folder that
        :func:`read_phy_folder` reads and phy opens; its cluster ids are the returned unit ids).
    sorter : str
        A SpikeInterface sorter name, or "auto" (see :func:`choose_sorter`).
    params : mapping, optional
        Sorter parameters; unknown ones are refused by SpikeInterface.
    phase_shift : bool
        Correct the Neuropixels ADC multiplexing delay before sorting (costs a resampling pass).

    Returns
    -------
    BaseSorting
        Empty units removed; unit ids renumbered 0..n-1 (property ``sorter_unit_id`` keeps the
        sorter's own ids).

    Notes
    -----
    Every sorter used here (Kilosort 4, tridesclous2, spykingcircus2, lupin) filters and
    references the raw recording itself, so nothing else is applied beforehand.
    """
    import spikeinterface.preprocessing as spre
    import spikeinterface.sorters as ss
    from spikeinterface.core import load

    if not hasattr(recording, "get_traces"):
        recording = read_ap_recording(recording)
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    name, extra = choose_sorter(sorter)
    sorter_params = {**extra, **dict(params or {})}
    job_kwargs = _job_kwargs(n_jobs, chunk_duration_s)
    if "job_kwargs" in ss.get_default_sorter_params(name):
        sorter_params.setdefault("job_kwargs", job_kwargs)
    to_sort = recording
    if phase_shift and "inter_sample_shift" in recording.get_property_keys():
        to_sort = spre.phase_shift(recording)
    run_folder = output_folder / f"{name}_run"
    logger.info("sorting %s with %s into %s", recording, name, run_folder)
    t0 = time.perf_counter()
    try:
        sorting = ss.run_sorter(name, to_sort, folder=run_folder, remove_existing_folder=True,
                                verbose=False, **sorter_params)
    except Exception as exc:
        raise SortingError(f"{run_folder}: {name} failed ({type(exc).__name__}: {exc}); "
                           f"see spikeinterface_log.json there") from exc
    logger.info("%s finished in %.1f s with %d units", name, time.perf_counter() - t0,
                sorting.get_num_units())
    sorting = sorting.remove_empty_units()
    old_ids = np.asarray(sorting.unit_ids)
    sorting = sorting.rename_units(np.arange(old_ids.size, dtype=np.int64))
    sorting.set_property("sorter_unit_id", old_ids.astype(str))
    with atomic_path(output_folder / "sorting") as tmp:
        sorting.save(folder=tmp)
    sorting = load(output_folder / "sorting")
    if export_phy:
        analyzer = create_unit_analyzer(sorting, recording, n_jobs=n_jobs,
                                        chunk_duration_s=chunk_duration_s, phase_shift=phase_shift)
        export_phy_folder(analyzer, output_folder / "phy", n_jobs=n_jobs, chunk_duration_s=chunk_duration_s)
    return sorting


def create_unit_analyzer(
    sorting: BaseSorting,
    recording: BaseRecording,
    *,
    main_channel_indices: np.ndarray | None = None,
    max_spikes_per_unit: int = 500,
    noise_chunks: int = 20,
    sparsity_radius_um: float = 100.0,
    phase_shift: bool = False,
    n_jobs: int = 2,
    chunk_duration_s: float = 1.0,
) -> Any:
    """An in-memory SpikeInterface SortingAnalyzer on the filtered recording with the extensions
    random_spikes, waveforms, templates, noise_levels and spike_amplitudes.

    Reads the recording twice (waveforms of up to ``max_spikes_per_unit`` random spikes per unit,
    then every spike's amplitude) plus ``noise_chunks`` random 0.5 s chunks for the noise.
    ``main_channel_indices`` (e.g. the phy peak channels) spares the extra read SpikeInterface
    otherwise makes to find them; sparsity is a ``sparsity_radius_um`` disc around them.
    """
    from spikeinterface.core import create_sorting_analyzer

    job_kwargs = _job_kwargs(n_jobs, chunk_duration_s)
    filtered = preprocess_for_metrics(recording, phase_shift=phase_shift)
    kwargs: dict[str, Any] = {}
    if main_channel_indices is not None:
        kwargs["main_channel_indices"] = np.asarray(main_channel_indices, dtype=np.int64)
    analyzer = create_sorting_analyzer(
        sorting, filtered, format="memory", sparse=True, job_kwargs=job_kwargs,
        sparsity_kwargs={"method": "radius", "radius_um": sparsity_radius_um}, **kwargs)
    analyzer.compute("random_spikes", max_spikes_per_unit=max_spikes_per_unit, seed=0)
    analyzer.compute(["waveforms", "templates"], **job_kwargs)
    analyzer.compute("noise_levels", random_slices_kwargs={
        "num_chunks_per_segment": noise_chunks, "chunk_duration": "500ms", "seed": 0}, **job_kwargs)
    analyzer.compute("spike_amplitudes", **job_kwargs)
    return analyzer


def export_phy_folder(
    analyzer: Any, folder: str | os.PathLike, *, n_jobs: int = 2, chunk_duration_s: float = 1.0,
) -> Path:
    """Write an analyzer's sorting as a phy folder (templates, amplitudes, no PCs), atomically.

    Unit ids must be 0..n-1 (as :func:`run_sorter_on_recording` returns them) so that phy's
    ``cluster_id`` equals the unit id. A ``KSLabel`` property becomes ``cluster_KSLabel.tsv``.
    """
    from spikeinterface.exporters import export_to_phy

    folder = Path(folder)
    sorting = analyzer.sorting
    ids = np.asarray(sorting.unit_ids)
    if not np.array_equal(ids, np.arange(ids.size)):
        raise SortingError(f"{folder}: expected unit ids 0..{ids.size - 1} to export to phy, found {ids[:10]}")
    extra = [p for p in ("KSLabel",) if p in sorting.get_property_keys()]
    with atomic_path(folder) as tmp:
        export_to_phy(analyzer, tmp, compute_pc_features=False, compute_amplitudes=True,
                      copy_binary=False, add_quality_metrics=False, add_template_metrics=False,
                      additional_properties=extra or None, verbose=False,
                      **_job_kwargs(n_jobs, chunk_duration_s))
    return folder


# --------------------------------------------------------------------------------------------
# Quality metrics
# --------------------------------------------------------------------------------------------

#: SpikeInterface's amplitude_cutoff defaults (Allen ecephys_spike_sorting's formula).
_AMPLITUDE_CUTOFF_KWARGS = {"num_histogram_bins": 100, "histogram_smoothing_value": 3,
                            "amplitudes_bins_min_ratio": 5}


def spike_train_metrics(
    spike_times_samples: np.ndarray,
    spike_unit_ids: np.ndarray,
    unit_ids: np.ndarray,
    *,
    sampling_frequency_hz: float,
    n_samples: int,
    presence_ratio_bin_s: float = 60.0,
    isi_threshold_ms: float = 1.5,
    min_isi_ms: float = 0.0,
) -> pd.DataFrame:
    """Metrics that need only spike times, with SpikeInterface's per-unit formulas.

    ``firing_rate_hz`` = spikes / duration; ``presence_ratio`` = fraction of whole
    ``presence_ratio_bin_s`` bins with at least one spike (NaN when the recording is shorter than
    one bin); ``isi_violations_ratio`` (Hill et al. 2011, as SpikeInterface/Allen). Waveform
    metrics (``amplitude_cutoff``, ``snr``) are NaN.
    """
    from spikeinterface.metrics.quality.misc_metrics import isi_violations, presence_ratio

    unit_ids = np.asarray(unit_ids, dtype=np.int64)
    spike_times_samples = np.asarray(spike_times_samples, dtype=np.int64)
    spike_unit_ids = np.asarray(spike_unit_ids, dtype=np.int64)
    duration_s = n_samples / sampling_frequency_hz
    bin_samples = int(presence_ratio_bin_s * sampling_frequency_hz)
    edges = np.arange(0, n_samples // bin_samples * bin_samples + 1, bin_samples) if bin_samples else None
    order = np.argsort(spike_unit_ids, kind="stable")
    sorted_ids = spike_unit_ids[order]
    starts = np.searchsorted(sorted_ids, unit_ids, side="left")
    stops = np.searchsorted(sorted_ids, unit_ids, side="right")
    rows = []
    for unit, a, b in zip(unit_ids, starts, stops):
        train = np.sort(spike_times_samples[order[a:b]])
        n = int(b - a)
        row = {"unit_id": unit, "num_spikes": n, "firing_rate_hz": n / duration_s if n else np.nan}
        if n == 0 or edges is None or edges.size < 2:
            row["presence_ratio"] = np.nan
        else:
            row["presence_ratio"] = float(presence_ratio(train, bin_edges=edges))
        ratio, _rate, count = isi_violations([train / sampling_frequency_hz], duration_s,
                                             isi_threshold_s=isi_threshold_ms / 1000,
                                             min_isi_s=min_isi_ms / 1000)
        row["isi_violations_ratio"] = float(ratio)
        row["isi_violations_count"] = float(count)
        row["amplitude_cutoff"] = np.nan
        row["snr"] = np.nan
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["unit_id", *METRIC_COLUMNS])
    frame["unit_id"] = frame["unit_id"].astype(np.int64)
    frame["num_spikes"] = frame["num_spikes"].astype(np.int64)
    frame["metrics_from"] = "spike_times"
    frame.attrs["metrics_from"] = ("spike times only (no recording): amplitude_cutoff and snr are NaN; "
                                   f"duration {duration_s:.3f} s")
    return frame


def compute_unit_metrics(
    analyzer: Any,
    *,
    presence_ratio_bin_s: float = 60.0,
    isi_threshold_ms: float = 1.5,
    min_isi_ms: float = 0.0,
    n_jobs: int = 2,
    chunk_duration_s: float = 1.0,
) -> pd.DataFrame:
    """Quality metrics of an analyzer from :func:`create_unit_analyzer`.

    SpikeInterface ``quality_metrics`` num_spikes, firing_rate, presence_ratio, isi_violation,
    snr; ``amplitude_cutoff`` with SpikeInterface's function on the ``spike_amplitudes`` (NaN
    for units with too few spikes for the histogram).

    Returns
    -------
    DataFrame
        ``unit_id`` (the analyzer's unit ids, int64), :data:`METRIC_COLUMNS` and
        ``metrics_from`` = "recording".
    """
    import warnings

    from spikeinterface.metrics.quality.misc_metrics import amplitude_cutoff

    metric_params = {
        "presence_ratio": {"bin_duration_s": presence_ratio_bin_s},
        "isi_violation": {"isi_threshold_ms": isi_threshold_ms, "min_isi_ms": min_isi_ms},
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Presence ratios are set to NaN.*")
        ext = analyzer.compute(
            "quality_metrics",
            metric_names=["num_spikes", "firing_rate", "presence_ratio", "isi_violation", "snr"],
            metric_params=metric_params, **_job_kwargs(n_jobs, chunk_duration_s))
    metrics = ext.get_data().rename(columns={"firing_rate": "firing_rate_hz"})
    unit_ids = np.asarray(analyzer.unit_ids)
    frame = pd.DataFrame({"unit_id": unit_ids.astype(np.int64)})
    for column in METRIC_COLUMNS:
        frame[column] = (metrics[column].reindex(unit_ids).to_numpy(dtype=np.float64)
                         if column in metrics else np.nan)
    amplitudes = analyzer.get_extension("spike_amplitudes").get_data(outputs="by_unit", concatenated=True)
    cutoffs = []
    for unit in unit_ids:
        values = np.asarray(amplitudes[unit], dtype=np.float64)
        if values.size and np.median(values) < 0:  # troughs: the formula expects positive values
            values = -values
        cutoffs.append(float(amplitude_cutoff(values, **_AMPLITUDE_CUTOFF_KWARGS)) if values.size else np.nan)
    frame["amplitude_cutoff"] = cutoffs
    frame["num_spikes"] = frame["num_spikes"].astype(np.int64)
    frame["metrics_from"] = "recording"
    return frame


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
    "phy_good": UnitPreset("curated (or Kilosort) label 'good'", (("label", "==", "good"),)),
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
    if {"probe", "area", "depth_min_um", "depth_max_um"} <= columns:
        table = frame[["probe", "area", "depth_min_um", "depth_max_um"]].copy()
        table["probe"] = table["probe"].astype(str)
        table["area"] = table["area"].astype(str)
        for col in ("depth_min_um", "depth_max_um"):
            table[col] = pd.to_numeric(table[col], errors="coerce").astype(np.float64)
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
        Missing file, unknown columns, empty or inverted ranges, overlapping ranges on one probe,
        a channel listed twice.
    """
    path = Path(path)
    if not path.exists():
        raise SortingError(f"{path}: expected an areas table, found no such file")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    frame = pd.read_csv(path, sep=sep, comment="#", skipinitialspace=True)
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


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeInput:
    """What the spikes stage gets for one probe.

    Give ``ap_bin`` (a SpikeGLX ``*.ap.bin``, its ``.meta`` beside it) to sort, ``phy_folder`` to
    import a curated Kilosort/phy folder, or both (import; the recording then gives the calibrated
    sample rate, the duration and the waveform metrics). ``ap_meta`` alone with ``phy_folder``
    gives the rate and duration without waveform metrics. ``areas_table``: see
    :func:`read_areas_table` (overrides the one given to :func:`run_spikes`);
    ``insertion_depth_um``: tip depth below the brain surface, for ``depth_below_surface_um``.
    """

    ap_bin: Path | None = None
    phy_folder: Path | None = None
    ap_meta: Path | None = None
    areas_table: Path | None = None
    insertion_depth_um: float | None = None

    def __post_init__(self) -> None:
        if self.ap_bin is None and self.phy_folder is None:
            raise ConfigError("ProbeInput: expected ap_bin (to sort) or phy_folder (to import), found neither")
        for name in ("ap_bin", "phy_folder", "ap_meta", "areas_table"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))


@dataclass(frozen=True)
class SpikesParams:
    """Parameters of the spikes stage (recorded beside the outputs)."""

    sorter: str = "auto"
    sorter_params: Mapping[str, Any] = field(default_factory=dict)
    n_jobs: int = 2
    chunk_duration_s: float = 1.0
    presence_ratio_bin_s: float = 60.0
    isi_threshold_ms: float = 1.5
    min_isi_ms: float = 0.0
    max_spikes_per_unit: int = 500
    noise_chunks: int = 20
    waveform_metrics: bool = True
    phase_shift: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SpikesParams:
        """Build from a config mapping; unknown keys raise ConfigError listing the valid ones."""
        return params_from_dict(cls, values, what="spikes parameter")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for provenance)."""
        out = dataclasses.asdict(self)
        out["sorter_params"] = dict(self.sorter_params)
        return out


def _main_channel_indices(phy: PhySorting, recording: BaseRecording) -> np.ndarray | None:
    """phy peak channels as recording channel indices, or None (SpikeInterface then finds them)."""
    channels = phy.clusters["channel"].to_numpy(dtype=np.int64)
    if channels.size == 0:
        return None
    if channels.min() < 0 or channels.max() >= recording.get_num_channels():
        return None
    return channels


def _units_for_probe(
    probe: str, inp: ProbeInput, out_dir: Path, params: SpikesParams, areas_table: Path | None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    recording = read_ap_recording(inp.ap_bin) if inp.ap_bin is not None else None
    stream = None
    if recording is None and inp.ap_meta is not None:
        from pixbin.spikeglx import stream_info

        stream = stream_info(inp.ap_meta)
    record: dict[str, Any] = {"probe": probe}
    job = {"n_jobs": params.n_jobs, "chunk_duration_s": params.chunk_duration_s}
    analyzer = None
    if inp.phy_folder is not None:
        phy_folder = inp.phy_folder
        record["source"] = "phy"
    else:
        sort_dir = out_dir / "sorting" / probe
        sorter = choose_sorter(params.sorter)[0]
        sorting = run_sorter_on_recording(recording, sort_dir, sorter=sorter, params=params.sorter_params,
                                          phase_shift=params.phase_shift, export_phy=False, **job)
        analyzer = create_unit_analyzer(sorting, recording, max_spikes_per_unit=params.max_spikes_per_unit,
                                        noise_chunks=params.noise_chunks, phase_shift=params.phase_shift,
                                        **job)
        phy_folder = export_phy_folder(analyzer, sort_dir / "phy", **job)
        record.update(source="sorter", sorter=sorter)
    rate = recording.sampling_frequency if recording is not None else None
    if stream is not None:
        rate = stream.rate_hz
    phy = read_phy_folder(phy_folder, sampling_frequency_hz=rate)
    record.update(phy_folder=str(phy_folder), sampling_frequency_hz=phy.sampling_frequency_hz)
    if recording is not None or stream is not None:
        n_samples = recording.get_num_samples() if recording is not None else stream.n_samples
        source = inp.ap_bin if recording is not None else inp.ap_meta
        record["duration_from"] = ("recording" if recording is not None
                                   else f"{inp.ap_meta.name} ({stream.n_samples_from})")
        if phy.spike_times_samples.size and phy.spike_times_samples.max() >= n_samples:
            raise SortingError(f"{phy_folder}: spike at sample {phy.spike_times_samples.max()} but "
                               f"{source} has {n_samples} samples; expected the phy folder of that recording")
    elif phy.n_samples is not None:
        n_samples = phy.n_samples
        record["duration_from"] = "params.py dat_path"
    else:
        n_samples = int(phy.spike_times_samples.max()) + 1 if phy.spike_times_samples.size else 0
        record["duration_from"] = "last spike (no recording, dat_path not found)"
        logger.warning("%s: recording duration unknown; firing rates use the last spike time", phy_folder)
    record["n_samples"] = int(n_samples)

    if recording is not None and params.waveform_metrics and phy.unit_ids.size:
        if analyzer is None:
            analyzer = create_unit_analyzer(
                phy.to_spikeinterface(), recording, main_channel_indices=_main_channel_indices(phy, recording),
                max_spikes_per_unit=params.max_spikes_per_unit, noise_chunks=params.noise_chunks,
                phase_shift=params.phase_shift, **job)
        if not np.array_equal(np.asarray(analyzer.unit_ids, dtype=np.int64), phy.unit_ids):
            raise SortingError(f"{phy_folder}: cluster ids {phy.unit_ids[:10]} differ from the sorting's "
                               f"unit ids {np.asarray(analyzer.unit_ids)[:10]}; expected the same units")
        metrics = compute_unit_metrics(analyzer, presence_ratio_bin_s=params.presence_ratio_bin_s,
                                       isi_threshold_ms=params.isi_threshold_ms,
                                       min_isi_ms=params.min_isi_ms, **job)
    else:
        metrics = spike_train_metrics(
            phy.spike_times_samples, phy.spike_clusters, phy.unit_ids,
            sampling_frequency_hz=phy.sampling_frequency_hz, n_samples=max(n_samples, 1),
            presence_ratio_bin_s=params.presence_ratio_bin_s, isi_threshold_ms=params.isi_threshold_ms,
            min_isi_ms=params.min_isi_ms)
    record["metrics_from"] = str(metrics["metrics_from"].iloc[0]) if len(metrics) else "none"

    clusters = phy.clusters
    base = pd.DataFrame({
        "unit_id": clusters["cluster_id"].to_numpy(dtype=np.int64),
        "probe": probe,
        "label": clusters["label"].astype(str).to_numpy(),
        "ks_label": clusters["ks_label"].astype(object).to_numpy(),
        "channel": clusters["channel"].to_numpy(dtype=np.int64),
        "x_um": clusters["x_um"].to_numpy(dtype=np.float64),
        "depth_um": clusters["depth_um"].to_numpy(dtype=np.float64),
    })
    base["depth_below_surface_um"] = (float(inp.insertion_depth_um) - base["depth_um"]
                                      if inp.insertion_depth_um is not None else np.nan)
    table_path = inp.areas_table if inp.areas_table is not None else areas_table
    areas = read_areas_table(table_path) if table_path is not None else None
    record["areas_table"] = str(table_path) if table_path is not None else None
    base = assign_areas(base, areas)
    units = base.merge(metrics, on="unit_id", how="left", validate="one_to_one")
    known = {"cluster_id", "label", "ks_label", "channel", "x_um", "depth_um", "n_spikes"}
    for column in clusters.columns:
        if column not in known:
            units[f"phy_{column}"] = clusters[column].to_numpy()
    return units, phy.spike_times_s, phy.spike_clusters, record


def run_spikes(
    *,
    probes: Mapping[str, ProbeInput],
    out_dir: str | os.PathLike,
    params: SpikesParams | None = None,
    areas_table: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Spikes stage: sort or import each probe, then write ``units.parquet`` and ``spikes.h5``.

    Parameters
    ----------
    probes : mapping probe name -> ProbeInput
        e.g. ``{"imec0": ProbeInput(ap_bin=...)}``; one sorting per probe.
    out_dir : path
        ``processed/<session>/``; sorter folders go to ``out_dir/sorting/<probe>/``.
    params : SpikesParams, optional
    areas_table : path, optional
        Areas table for every probe (rows name the probe); a ProbeInput's own table wins.

    Returns
    -------
    dict
        ``{"units": path, "spikes": path}``.
    """
    import h5py

    params = params or SpikesParams()
    out_dir = Path(out_dir)
    if not probes:
        raise ConfigError("run_spikes: expected at least one probe, found none")
    t0 = time.perf_counter()
    tables, trains, records = [], {}, []
    for probe, inp in probes.items():
        units, times_s, unit_ids, record = _units_for_probe(
            str(probe), inp, out_dir, params, Path(areas_table) if areas_table is not None else None)
        order = np.argsort(times_s, kind="stable")
        trains[str(probe)] = (times_s[order].astype(np.float64), unit_ids[order].astype(np.int64))
        tables.append(units)
        records.append(record)
    units = pd.concat(tables, ignore_index=True)
    units = units.sort_values(["probe", "unit_id"], kind="stable").reset_index(drop=True)
    prov = provenance(params.to_dict())
    prov["probes"] = records
    prov["run_time_s"] = time.perf_counter() - t0

    units_path, spikes_path = out_dir / UNITS_FILE, out_dir / SPIKES_FILE
    # both files appear together or not at all
    with atomic_path(units_path) as tmp_units, atomic_path(spikes_path) as tmp_spikes:
        write_parquet(tmp_units, units, metadata=prov)
        with h5py.File(tmp_spikes, "w") as h5:
            h5.attrs["pixbin"] = _json(prov)
            for record in records:
                probe = record["probe"]
                times, ids = trains[probe]
                group = h5.create_group(probe)
                group.create_dataset("spike_times_s", data=times)
                group.create_dataset("spike_unit_ids", data=ids)
                group.attrs["sampling_frequency_hz"] = record["sampling_frequency_hz"]
                group.attrs["clock"] = f"{probe} AP samples / imSampRate, sample 0 = t 0"
                group.attrs["source"] = record["phy_folder"]
    logger.info("spikes: %d units on %d probes in %.1f s", len(units), len(probes), prov["run_time_s"])
    return {"units": units_path, "spikes": spikes_path}


def _json(obj: Any) -> str:
    import json

    def default(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (Path, np.ndarray)):
            return str(value) if isinstance(value, Path) else value.tolist()
        raise TypeError(f"cannot write {type(value).__name__} to JSON")

    return json.dumps(obj, default=default)


def read_spikes(out_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{probe: (spike_times_s float64, spike_unit_ids int64)}`` from ``out_dir/spikes.h5``."""
    import h5py

    path = Path(out_dir) / SPIKES_FILE
    if not path.exists():
        raise SortingError(f"{path}: expected the spikes stage output, found no such file")
    with h5py.File(path, "r") as h5:
        return {name: (group["spike_times_s"][()], group["spike_unit_ids"][()])
                for name, group in h5.items()}


def read_units(out_dir: str | os.PathLike) -> pd.DataFrame:
    """``units.parquet`` of ``out_dir``; ``attrs["pixbin"]`` holds its provenance record."""
    import json

    import pyarrow.parquet as pq

    path = Path(out_dir) / UNITS_FILE
    if not path.exists():
        raise SortingError(f"{path}: expected the spikes stage output, found no such file")
    table = pq.read_table(path)
    frame = table.to_pandas()
    meta = (table.schema.metadata or {}).get(b"pixbin")
    if meta:
        frame.attrs["pixbin"] = json.loads(meta)
    return frame
