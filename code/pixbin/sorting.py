"""Sort with SpikeInterface and measure unit quality: read a SpikeGLX AP recording, choose and run
a sorter, build a SortingAnalyzer, export it as a phy folder, and compute unit quality metrics
(with a recording, or from spike times alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pixbin.errors import ConfigError, SortingError
from pixbin.fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    from spikeinterface.core import BaseRecording, BaseSorting

__all__ = [
    "read_ap_recording",
    "choose_sorter",
    "CPU_DEFAULT_SORTER",
    "SORTER_SEED",
    "run_sorter_on_recording",
    "DEFAULT_MOTION_PRESET",
    "MOTION_FOLDER",
    "MOTION_MIN_SPAN_UM",
    "MOTION_SORTERS",
    "resolve_motion",
    "load_motion",
    "unit_displacements",
    "export_phy_folder",
    "ANALYZER_FOLDER",
    "save_unit_analyzer",
    "load_unit_analyzer",
    "preprocess_for_metrics",
    "create_unit_analyzer",
    "compute_unit_metrics",
    "spike_train_metrics",
    "METRIC_COLUMNS",
]

logger = logging.getLogger(__name__)

#: CPU sorter used by ``sorter="auto"`` when Kilosort 4 cannot run on a GPU; chosen by the
#: measurement in docs/SORTING.md (accuracy against ground truth and wall time on 2 cores).
CPU_DEFAULT_SORTER = "tridesclous2"

#: Folder of the saved SortingAnalyzer beside ``sorting/`` and ``phy/`` (``processed/<S>/sorting/<probe>/``).
ANALYZER_FOLDER = "analyzer"

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


#: Folder of the motion estimate beside ``sorting/`` (SpikeInterface's motion-info format:
#: ``parameters.json``, ``run_times.json``, ``peaks.npy``, ``peak_locations.npy``, ``motion/``).
MOTION_FOLDER = "motion"

#: ``motion_correction="auto"`` corrects motion only when the probe's sites span at least this
#: much depth (two of the decentralized estimate's 200 µm blocks, one DREDGE window); a shorter
#: probe has too few sites along the shank to register depth against time.
MOTION_MIN_SPAN_UM = 400.0

#: SpikeInterface ``correct_motion`` preset of the sorters' motion correction: grid-convolution
#: peak localisation and the decentralized non-rigid estimate (needs no torch, unlike the DREDGE
#: presets); chosen by the measurement in docs/SORTING.md.
DEFAULT_MOTION_PRESET = "nonrigid_fast_and_accurate"

#: Sorters whose own motion correction (SpikeInterface's ``correct_motion``, saved in their
#: output folder) pixbin switches on or off: name -> sorter parameters for (apply, preset).
MOTION_SORTERS = {
    "tridesclous2": lambda apply, preset: {"apply_motion_correction": apply,
                                           "motion_correction_preset": preset},
    "spykingcircus2": lambda apply, preset: {"apply_motion_correction": apply,
                                             "motion_correction": {"preset": preset}},
}


# --------------------------------------------------------------------------------------------
# Recording and sorting
# --------------------------------------------------------------------------------------------


#: Seed given to sorters whose own default is a new random seed each run (tridesclous2,
#: spykingcircus2): a re-run of the same recording then gives the same units.
SORTER_SEED = 0

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


def _torch_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


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


def resolve_motion(
    sorter: str, recording: BaseRecording, motion_correction: bool | str = "auto",
    preset: str = DEFAULT_MOTION_PRESET,
) -> dict[str, Any]:
    """Whether ``sorter`` corrects motion on ``recording``: ``{"apply", "preset", "reason"}``.

    ``motion_correction``: True, False, ``"auto"`` (pixbin's default, chosen from the accuracy
    table in docs/SORTING.md: on when the sorter's correction is driven by pixbin, see
    :data:`MOTION_SORTERS`, and the sites span at least :data:`MOTION_MIN_SPAN_UM` in depth) or
    ``"sorter"`` (each sorter as SpikeInterface configures it — tridesclous2 without,
    spykingcircus2 with its own, Kilosort 4 with its own). Kilosort 4 keeps its own drift correction (not stored) unless ``False``
    (``nblocks=0``). True for a sorter without a motion option raises ConfigError.
    """
    from spikeinterface.preprocessing.motion import motion_options_preset

    if preset not in motion_options_preset or not preset:
        raise ConfigError(f"spikes.motion_preset {preset!r}: expected one of "
                          f"{sorted(p for p in motion_options_preset if p)} (SpikeInterface correct_motion presets)")
    method = motion_options_preset[preset]["estimate_motion_kwargs"].get("method", "")
    if motion_correction not in (False, "sorter") and method.startswith("dredge") and not _torch_importable():
        raise ConfigError(f"spikes.motion_preset {preset!r} estimates motion with {method}, which needs torch "
                          f"(not installed); expected a preset without it ({DEFAULT_MOTION_PRESET!r}), "
                          f"or `pip install torch`")
    span = float(np.ptp(recording.get_channel_locations()[:, 1])) if recording.get_num_channels() else 0.0
    if sorter == "kilosort4":
        apply = motion_correction is not False
        return {"apply": apply, "preset": "kilosort4 (own drift correction, not stored)" if apply else None,
                "reason": "Kilosort 4 corrects drift itself" if apply else "motion_correction false: nblocks=0",
                "span_um": span}
    if motion_correction == "sorter" and sorter in MOTION_SORTERS:
        from spikeinterface.sorters import get_default_sorter_params

        defaults = get_default_sorter_params(sorter)
        apply = bool(defaults["apply_motion_correction"])
        own = defaults.get("motion_correction_preset") or (defaults.get("motion_correction") or {}).get("preset")
        return {"apply": apply, "preset": own if apply else None, "span_um": span, "sorter_default": True,
                "reason": f"motion_correction 'sorter': {sorter}'s own default, "
                          f"{'on' if apply else 'off'}"}
    if sorter not in MOTION_SORTERS:
        if motion_correction is True:
            raise ConfigError(f"spikes.motion_correction true: sorter {sorter!r} has no motion option pixbin "
                              f"drives; expected one of {sorted(MOTION_SORTERS)} or kilosort4, "
                              f"or motion_correction false/auto")
        return {"apply": False, "preset": None, "reason": f"{sorter} has no motion option", "span_um": span}
    if motion_correction == "auto":
        apply = span >= MOTION_MIN_SPAN_UM
        reason = (f"auto: sites span {span:.0f} um " + (">=" if apply else "<") + f" {MOTION_MIN_SPAN_UM:.0f} um")
    else:
        apply, reason = bool(motion_correction), f"motion_correction {str(bool(motion_correction)).lower()}"
    return {"apply": apply, "preset": preset if apply else None, "reason": reason, "span_um": span}


def _motion_sorter_params(sorter: str, motion: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sorter parameters that carry a :func:`resolve_motion` decision (empty: sorter default)."""
    if motion is None:
        return {}
    if motion.get("sorter_default"):
        return {}
    if sorter == "kilosort4":
        return {} if motion["apply"] else {"nblocks": 0}
    if sorter in MOTION_SORTERS:
        return MOTION_SORTERS[sorter](bool(motion["apply"]), motion["preset"] or DEFAULT_MOTION_PRESET)
    return {}


def load_motion(folder: str | os.PathLike) -> dict[str, Any]:
    """A stored motion estimate (SpikeInterface's ``load_motion_info``: ``motion`` (a ``Motion``),
    ``peaks``, ``peak_locations``, ``parameters``, ``run_times``)."""
    from spikeinterface.preprocessing.motion import load_motion_info

    folder = Path(folder)
    if not (folder / "parameters.json").is_file():
        raise SortingError(f"{folder}: expected a motion estimate (parameters.json, motion/), found none; "
                           f"re-run the spikes stage")
    return load_motion_info(folder)


def unit_displacements(
    motion: Any, spike_times_s: np.ndarray, spike_clusters: np.ndarray, unit_ids: np.ndarray,
    depths_um: np.ndarray,
) -> np.ndarray:
    """Mean estimated displacement (µm) over each unit's spikes at the unit's depth (NaN for a
    unit without spikes or depth): ``depth_um - displacement`` is its depth in the motion's
    reference frame."""
    unit_ids = np.asarray(unit_ids, dtype=np.int64)
    depths = dict(zip(unit_ids.tolist(), np.asarray(depths_um, dtype=np.float64)))
    clusters = np.asarray(spike_clusters, dtype=np.int64)
    out = np.full(unit_ids.size, np.nan)
    for i, unit in enumerate(unit_ids):
        times = np.asarray(spike_times_s, dtype=np.float64)[clusters == unit]
        if times.size and np.isfinite(depths[int(unit)]):
            locations = np.full(times.size, depths[int(unit)])
            out[i] = float(np.mean(motion.get_displacement_at_time_and_depth(times, locations)))
    return out


def _job_kwargs(n_jobs: int, chunk_duration_s: float) -> dict[str, Any]:
    """SpikeInterface job arguments; its progress bars show on a terminal (a sort takes minutes),
    not in logs or CI."""
    interactive = sys.stderr.isatty() and not os.environ.get("CI")
    return {"n_jobs": n_jobs, "chunk_duration": f"{chunk_duration_s}s", "progress_bar": interactive}


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
    motion: Mapping[str, Any] | None = None,
) -> BaseSorting:
    """Sort one probe's AP recording with SpikeInterface and keep the result under ``output_folder``.

    Parameters
    ----------
    recording : BaseRecording or path
        A recording, or an AP ``.bin``/``.meta`` path (read with :func:`read_ap_recording`).
    output_folder : path
        Receives ``<sorter>_run/`` (the sorter's working folder and log), ``sorting/`` (the
        SpikeInterface-saved sorting) and, with ``export_phy``, ``phy/`` (a phy folder that
        :func:`pixbin.phy.read_phy_folder` reads and phy opens; its cluster ids are the returned unit
        ids) and ``analyzer/`` (the SortingAnalyzer, see :func:`save_unit_analyzer`).
    sorter : str
        A SpikeInterface sorter name, or "auto" (see :func:`choose_sorter`).
    params : mapping, optional
        Sorter parameters; unknown ones are refused by SpikeInterface.
    phase_shift : bool
        Correct the Neuropixels ADC multiplexing delay before sorting (costs a resampling pass).
    motion : mapping, optional
        A :func:`resolve_motion` decision, passed to the sorter as its own parameters (None: the
        sorter's defaults). The estimate the sorter saved is kept as ``output_folder/motion/``
        (:data:`MOTION_FOLDER`); an older one there is removed first.

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
    sorter_params = {**extra, **_motion_sorter_params(name, motion), **dict(params or {})}
    job_kwargs = _job_kwargs(n_jobs, chunk_duration_s)
    defaults = ss.get_default_sorter_params(name)
    if "job_kwargs" in defaults:
        sorter_params.setdefault("job_kwargs", job_kwargs)
    if "seed" in defaults and defaults["seed"] is None:
        sorter_params.setdefault("seed", SORTER_SEED)  # reproducible: the same units every run
    to_sort = recording
    if phase_shift and "inter_sample_shift" in recording.get_property_keys():
        to_sort = spre.phase_shift(recording)
    run_folder = output_folder / f"{name}_run"
    logger.info("sorting %s with %s into %s", recording, name, run_folder)
    t0 = time.perf_counter()
    motion_folder = output_folder / MOTION_FOLDER
    if motion_folder.exists():
        shutil.rmtree(motion_folder)
    try:
        with _global_job_kwargs(job_kwargs):  # tridesclous2's correct_motion reads the global ones
            sorting = ss.run_sorter(name, to_sort, folder=run_folder, remove_existing_folder=True,
                                    verbose=False, **sorter_params)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        last = (lines[-1] if lines else "")[:300]  # sorters put their whole log in the message
        raise SortingError(f"{run_folder}: {name} failed ({type(exc).__name__}: {last}); "
                           f"the full log is spikeinterface_log.json there") from exc
    logger.info("%s finished in %.1f s with %d units", name, time.perf_counter() - t0,
                sorting.get_num_units())
    if (run_folder / "sorter_output" / MOTION_FOLDER / "parameters.json").is_file():
        from spikeinterface.preprocessing.motion import save_motion_info

        with atomic_path(motion_folder) as tmp:
            save_motion_info(load_motion(run_folder / "sorter_output" / MOTION_FOLDER), tmp)
    sorting = sorting.remove_empty_units()
    old_ids = np.asarray(sorting.unit_ids)
    sorting = sorting.rename_units(np.arange(old_ids.size, dtype=np.int64))
    sorting.set_property("sorter_unit_id", old_ids.astype(str))
    with atomic_path(output_folder / "sorting") as tmp, _saving_a_sorting():
        sorting.save(folder=tmp)
    sorting = load(output_folder / "sorting")
    if export_phy:
        analyzer = create_unit_analyzer(sorting, recording, n_jobs=n_jobs,
                                        chunk_duration_s=chunk_duration_s, phase_shift=phase_shift)
        export_phy_folder(analyzer, output_folder / "phy", n_jobs=n_jobs, chunk_duration_s=chunk_duration_s)
        save_unit_analyzer(analyzer, output_folder / ANALYZER_FOLDER)
    return sorting


@contextlib.contextmanager
def _global_job_kwargs(job_kwargs: Mapping[str, Any]) -> Iterator[None]:
    """SpikeInterface's global job arguments set to ``job_kwargs`` for the block, then restored."""
    import spikeinterface.core as sc

    before = sc.get_global_job_kwargs()
    sc.set_global_job_kwargs(**job_kwargs)
    try:
        yield
    finally:
        sc.set_global_job_kwargs(**before)


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


def _spikeglx_bin(recording: BaseRecording) -> Path | None:
    """The SpikeGLX ``.bin`` under a (preprocessed) recording, or None if it reads no such file."""
    from spikeinterface.extractors.neoextractors.spikeglx import SpikeGLXRecordingExtractor

    while recording is not None and not isinstance(recording, SpikeGLXRecordingExtractor):
        recording = recording.get_parent() if hasattr(recording, "get_parent") else None
    if recording is None:
        return None
    kwargs = recording._kwargs
    found = sorted(Path(kwargs["folder_path"]).glob(f"*.{kwargs['stream_id']}.bin"))
    return found[0] if len(found) == 1 else None


def _phy_params_text(ap_bin: Path, folder: Path, sampling_frequency_hz: float) -> str:
    """params.py of a phy folder reading the raw SpikeGLX file: every saved channel (the SY word
    included) as int16, no header, not filtered; ``dat_path`` relative to ``folder`` (phylib
    joins a relative path to the params.py folder)."""
    from pixbin.spikeglx import stream_info

    stream = stream_info(ap_bin.with_suffix(".meta"), ap_bin)
    dat_path = Path(os.path.relpath(ap_bin.resolve(), folder.resolve())).as_posix()
    return (f"dat_path = {dat_path!r}\nn_channels_dat = {stream.n_saved_chans}\ndtype = 'int16'\n"
            f"offset = 0\nsample_rate = {float(sampling_frequency_hz)!r}\nhp_filtered = False\n")


def export_phy_folder(
    analyzer: Any, folder: str | os.PathLike, *, n_jobs: int = 2, chunk_duration_s: float = 1.0,
) -> Path:
    """Write an analyzer's sorting as a phy folder (templates, amplitudes, PC features), atomically.

    Unit ids must be 0..n-1 (as :func:`run_sorter_on_recording` returns them) so that phy's
    ``cluster_id`` equals the unit id. A ``KSLabel`` property becomes ``cluster_KSLabel.tsv``.
    When the analyzer's recording reads a SpikeGLX ``.bin``, ``params.py`` points phy at it
    (relative path, ``n_channels_dat`` = the saved channels, raw int16, ``hp_filtered = False``) so
    phy shows traces and extracts waveforms. SpikeInterface's ``cluster_group.tsv`` (every cluster
    "unsorted") is not kept: that file holds the curation, and phy writes it on the first save.
    Computes the analyzer's ``principal_components`` (5 per channel) if missing.
    """
    from spikeinterface.exporters import export_to_phy

    folder = Path(folder)
    sorting = analyzer.sorting
    ids = np.asarray(sorting.unit_ids)
    if not np.array_equal(ids, np.arange(ids.size)):
        raise SortingError(f"{folder}: expected unit ids 0..{ids.size - 1} to export to phy, found {ids[:10]}")
    extra = [p for p in ("KSLabel",) if p in sorting.get_property_keys()]
    ap_bin = _spikeglx_bin(analyzer.recording) if analyzer.has_recording() else None
    with atomic_path(folder) as tmp:
        export_to_phy(analyzer, tmp, compute_pc_features=True, compute_amplitudes=True,
                      copy_binary=False, add_quality_metrics=False, add_template_metrics=False,
                      additional_properties=extra or None, verbose=False,
                      **_job_kwargs(n_jobs, chunk_duration_s))
        (tmp / "cluster_group.tsv").unlink()
        if ap_bin is not None:
            (tmp / "params.py").write_text(_phy_params_text(ap_bin, folder, analyzer.sampling_frequency))
    return folder


def save_unit_analyzer(analyzer: Any, folder: str | os.PathLike) -> Path:
    """Save an analyzer and its extensions as a SpikeInterface ``binary_folder``, atomically.

    The recording is stored as SpikeInterface's provenance with paths relative to ``folder``
    (``../../../../../interim/<S>/...`` for a pixbin session), so a moved or cloned ``data/``
    reopens it with its recording; without interim/ it loads without one (see
    :func:`load_unit_analyzer`).
    """
    folder = Path(folder)
    with atomic_path(folder) as tmp, _saving_a_sorting():  # beside folder: relative paths stay valid
        analyzer.save_as(format="binary_folder", folder=tmp)
    return folder


@contextlib.contextmanager
def _saving_a_sorting() -> Iterator[None]:
    """Silence the two SpikeInterface warnings that saving pixbin's sortings always gives, as
    they describe what pixbin intends: the sorting is stored without its recording (analyzer/
    links the recording), and a sorting held in memory has no SpikeInterface provenance to write
    (sort.json records how it was made)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The recording registered to this sorting object "
                                "will not be saved", category=UserWarning)
        warnings.filterwarnings("ignore", message="The extractor is not serializable to file. The "
                                "provenance will not be saved", category=UserWarning)
        yield


def load_unit_analyzer(folder: str | os.PathLike) -> Any:
    """The analyzer saved by :func:`save_unit_analyzer`, with its recording when the files it
    reads exist, else without (extensions still load; waveform re-extraction then fails)."""
    from spikeinterface.core import load_sorting_analyzer

    folder = Path(folder)
    if not (folder / "spikeinterface_info.json").is_file():
        raise SortingError(f"{folder}: expected a saved SortingAnalyzer, found none; re-run the spikes stage")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*recording.*")
        return load_sorting_analyzer(folder, load_extensions=True)


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
