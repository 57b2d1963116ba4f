"""A sorting that can be reopened: the SortingAnalyzer on disk (with its recording, from a moved
data/, and without interim/), a phy folder phylib's TemplateModel opens with traces, waveforms and
features, curated labels and clusters read back on a re-run without re-sorting, metric labels for
fresh sorts, and no machine path in the outputs."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pixbin import spikes as spikes_module
from pixbin.errors import SortingError
from pixbin.phy import phy_curation, read_cluster_labels
from pixbin.readers import read_spikes, read_units
from pixbin.sorting import ANALYZER_FOLDER, load_unit_analyzer, read_ap_recording
from pixbin.spikes import ProbeInput, SpikesParams, run_spikes
from pixbin.units import apply_metric_labels, label_from_metrics, select_units

SESSION = "240101_SIM04"
PARAMS = dict(sorter="simple", n_jobs=1, presence_ratio_bin_s=3.0, noise_chunks=4)


@pytest.fixture(scope="module")
def sorted_session(tmp_path_factory) -> dict:
    """A 15 s simulated session laid out as data/{raw,interim,processed}, sorted once by the
    spikes stage (SpikeInterface's 'simple' sorter: the reopening does not depend on the sorter)."""
    import spikeinterface.postprocessing.template_similarity as similarity

    from pixbin.simulate import load_ground_truth, simulate_session

    data = tmp_path_factory.mktemp("reopen") / "data"
    raw = simulate_session(data, session_id=SESSION, duration_s=15.0, seed=5, n_units=12, compress=False)
    interim = data / "interim" / SESSION
    interim.mkdir(parents=True)
    for path in raw.glob("*.imec0.ap.*"):
        shutil.move(path, interim / path.name)
    ap = next(interim.glob("*.ap.bin"))
    out = data / "processed" / SESSION
    with pytest.MonkeyPatch.context() as mp:
        # the numba kernel of similar_templates.npy takes ~30 s to compile on 2 cores; same result
        mp.setattr(similarity, "_compute_similarity_matrix", similarity._compute_similarity_matrix_numpy)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_spikes(probes={"imec0": ProbeInput(ap_bin=ap)}, out_dir=out, params=SpikesParams(**PARAMS))
    sort_dir = out / "sorting" / "imec0"
    return {"data": data, "ap": ap, "out": out, "sort_dir": sort_dir, "phy": sort_dir / "phy",
            "truth": load_ground_truth(raw), "warnings": [str(w.message) for w in caught]}


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_saving_the_sort_causes_no_spikeinterface_warning(sorted_session):
    caught = sorted_session["warnings"]
    assert not [m for m in caught if "registered to this sorting" in m]
    # one provenance warning is the 'simple' sorter's own (it saves its in-memory result itself)
    assert sum("provenance will not be saved" in m for m in caught) <= 1, caught


def _forbid_sorting(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the spikes stage sorted again")

    monkeypatch.setattr(spikes_module, "run_sorter_on_recording", fail)


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_fresh_sort_units_are_labelled_by_the_metric_rule(sorted_session):
    units = read_units(sorted_session["out"])
    assert len(units) > 0
    assert (units["label_source"] == "metrics").all()  # 'simple' writes no KSLabel, nobody curated
    assert set(units["label"]) <= {"good", "mua", "noise"}
    assert units["label"].tolist() == label_from_metrics(units).tolist() == units["metrics_label"].tolist()
    # the rule: noise below SNR 2; good needs every AllenSDK criterion, NaN failing
    assert (units.loc[units["label"] == "noise", "snr"] < 2).all()
    assert units.loc[units["amplitude_cutoff"].isna(), "label"].ne("good").all()
    assert select_units(units, "all")["label"].ne("noise").all()


def test_metric_rule_and_human_labels_win():
    units = pd.DataFrame({
        "label": ["unsorted", "unsorted", "unsorted", "noise", "unsorted"],
        "label_source": ["none", "none", "none", "curated", "none"],
        "snr": [8.0, 1.5, 6.0, 9.0, np.nan],
        "isi_violations_ratio": [0.1, 0.0, 0.9, 0.0, 0.0],
        "amplitude_cutoff": [0.02, 0.0, 0.01, 0.0, np.nan],
        "presence_ratio": [0.99, 1.0, 1.0, 1.0, 1.0],
    })
    labelled = apply_metric_labels(units)
    assert labelled["metrics_label"].tolist() == ["good", "noise", "mua", "good", None]
    assert labelled["label"].tolist() == ["good", "noise", "mua", "noise", "unsorted"]
    assert labelled["label_source"].tolist() == ["metrics", "metrics", "metrics", "curated", "none"]
    assert select_units(labelled, "phy_good").index.tolist() == [0]
    assert select_units(labelled, "curated_good").empty


def test_unsorted_group_is_no_curation(tmp_path):
    """phy's 'unsorted' means undecided: the Kilosort label then stands, and the source says so."""
    pd.DataFrame({"cluster_id": [0, 1, 2], "group": ["good", "unsorted", ""]}).to_csv(
        tmp_path / "cluster_group.tsv", sep="\t", index=False)
    pd.DataFrame({"cluster_id": [0, 1, 2, 3], "KSLabel": ["mua", "good", "mua", None]}).to_csv(
        tmp_path / "cluster_KSLabel.tsv", sep="\t", index=False)
    labels = read_cluster_labels(tmp_path)
    assert labels["label"].tolist() == ["good", "good", "mua", "unsorted"]
    assert labels["label_source"].tolist() == ["curated", "sorter", "sorter", "none"]


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_analyzer_on_disk_has_the_extensions_and_the_units(sorted_session):
    analyzer = load_unit_analyzer(sorted_session["sort_dir"] / ANALYZER_FOLDER)
    assert analyzer.has_recording()
    for name in ("random_spikes", "waveforms", "templates", "noise_levels", "spike_amplitudes",
                 "principal_components", "quality_metrics"):
        assert analyzer.has_extension(name), name
    units = read_units(sorted_session["out"]).set_index("unit_id")
    np.testing.assert_array_equal(np.asarray(analyzer.unit_ids), units.index)
    metrics = analyzer.get_extension("quality_metrics").get_data()
    np.testing.assert_allclose(metrics["snr"].to_numpy(), units["snr"].to_numpy())


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_moved_data_reopens_with_recording_and_without_interim(sorted_session):
    """The analyzer's recording and phy's dat_path are relative: a moved data/ keeps both; with
    interim/ gone the analyzer still loads, without its recording."""
    from phylib.io.model import load_model
    from spikeinterface.core import load_sorting_analyzer

    data = sorted_session["data"]
    moved = data.with_name("moved_data")
    data.rename(moved)
    try:
        folder = moved / "processed" / SESSION / "sorting" / "imec0"
        analyzer = load_sorting_analyzer(folder / ANALYZER_FOLDER)
        assert analyzer.has_recording()
        assert analyzer.recording.get_traces(start_frame=0, end_frame=100).shape == (100, 384)
        model = load_model(folder / "phy" / "params.py")
        assert model.traces is not None and model.traces.shape[0] == analyzer.get_num_samples()
        (moved / "interim").rename(moved / "interim_gone")
        try:
            analyzer = load_unit_analyzer(folder / ANALYZER_FOLDER)
            assert not analyzer.has_recording()
            assert analyzer.get_extension("templates").get_data().shape[0] == analyzer.get_num_units()
            assert analyzer.get_extension("principal_components") is not None
        finally:
            (moved / "interim_gone").rename(moved / "interim")
    finally:
        moved.rename(data)


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_phylib_template_model_loads_traces_waveforms_and_features(sorted_session):
    from phylib.io.model import load_model

    phy = sorted_session["phy"]
    model = load_model(phy / "params.py")
    recording = read_ap_recording(sorted_session["ap"])
    assert model.n_channels_dat == 385  # the SY word is saved as the 385th channel
    assert model.n_channels == recording.get_num_channels() == 384
    # params.py reads the raw file: phy's channels are the recording's, sample for sample
    raw = recording.get_traces(start_frame=3000, end_frame=3200)
    np.testing.assert_array_equal(np.asarray(model.traces[3000:3200])[:, model.channel_mapping], raw)
    units = read_units(sorted_session["out"]).set_index("unit_id")
    unit = int(units["num_spikes"].idxmax())
    spike_ids = np.flatnonzero(model.spike_clusters == unit)[:50]
    template = model.get_template(unit)
    assert units.loc[unit, "channel"] in template.channel_ids[:3]
    channels = template.channel_ids[:4]
    waveforms = model.get_waveforms(spike_ids, channels)
    assert waveforms.shape == (spike_ids.size, model.n_samples_waveforms, channels.size)
    # the raw snippets (centred on the spike) are the unit's spike: their mean follows the
    # template (SpikeInterface's, `nbefore` samples before the spike)
    analyzer = load_unit_analyzer(sorted_session["sort_dir"] / ANALYZER_FOLDER)
    nbefore = analyzer.get_extension("templates").nbefore
    lag = model.n_samples_waveforms // 2 - nbefore
    mean = waveforms[:, lag:, 0].mean(axis=0)
    tmpl = template.template[: mean.size, 0]
    assert np.corrcoef(mean, tmpl)[0, 1] > 0.9
    features = model.get_features(spike_ids, channels)
    assert features.shape == (spike_ids.size, channels.size, 5)
    assert np.isfinite(features).all() and np.abs(features[:, 0]).sum() > 0


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_no_machine_path_in_the_outputs(sorted_session):
    import h5py

    data, out, sort_dir = sorted_session["data"], sorted_session["out"], sorted_session["sort_dir"]
    root = str(data.parent)
    meta = read_units(out).attrs["pixbin"]
    assert root not in json.dumps(meta)
    assert meta["probes"][0]["phy_folder"] == "sorting/imec0/phy"
    with h5py.File(out / "spikes.h5") as h5:
        texts = [str(v) for v in h5.attrs.values()] + [str(v) for v in h5["imec0"].attrs.values()]
    assert not any(root in t for t in texts)
    params_py = (sort_dir / "phy" / "params.py").read_text()
    assert f"dat_path = '../../../../../interim/{SESSION}/" in params_py and root not in params_py
    assert root not in (sort_dir / ANALYZER_FOLDER / "recording.json").read_text()


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_rerun_keeps_the_sort_and_its_analyzer(sorted_session, monkeypatch):
    """A re-run (e.g. other metric parameters) reuses the kept sort and analyzer: no sorting,
    no waveform pass; the units stay."""
    before = read_units(sorted_session["out"])
    _forbid_sorting(monkeypatch)

    def no_analyzer(*args, **kwargs):
        raise AssertionError("the analyzer was rebuilt")

    monkeypatch.setattr(spikes_module, "create_unit_analyzer", no_analyzer)
    run_spikes(probes={"imec0": ProbeInput(ap_bin=sorted_session["ap"])}, out_dir=sorted_session["out"],
               params=SpikesParams(**{**PARAMS, "presence_ratio_bin_s": 5.0}))
    after = read_units(sorted_session["out"])
    assert after["unit_id"].tolist() == before["unit_id"].tolist()
    np.testing.assert_array_equal(after["num_spikes"], before["num_spikes"])
    record = after.attrs["pixbin"]["probes"][0]
    assert record["sort_reused"] is True and record["curated_in_phy"] == {"labels": False, "clusters": False}


@pytest.mark.slow  # the module\'s one sort takes ~1 min on 2 cores
def test_curation_in_phy_is_read_back_without_sorting_again(sorted_session, monkeypatch):
    """Label and merge as phy saves them (cluster_group.tsv; spike_clusters.npy with a new id for
    the merge): the re-run takes them, keeps the sort, and metric labels fill only the rest."""
    phy, out = sorted_session["phy"], sorted_session["out"]
    saved = {name: (phy / name).read_bytes() for name in ("spike_clusters.npy",)}
    sorting_mtime = (sorted_session["sort_dir"] / "sorting").stat().st_mtime_ns
    try:
        before = read_units(out).set_index("unit_id")
        a, b, c = before["num_spikes"].nlargest(3).index.tolist()
        clusters = np.load(phy / "spike_clusters.npy").ravel().astype(np.int64)
        merged = int(clusters.max()) + 1
        clusters[np.isin(clusters, [a, b])] = merged
        np.save(phy / "spike_clusters.npy", clusters)
        pd.DataFrame({"cluster_id": [merged, c], "group": ["good", "noise"]}).to_csv(
            phy / "cluster_group.tsv", sep="\t", index=False)
        assert phy_curation(phy) == {"labels": True, "clusters": True}

        _forbid_sorting(monkeypatch)
        run_spikes(probes={"imec0": ProbeInput(ap_bin=sorted_session["ap"])}, out_dir=out,
                   params=SpikesParams(**PARAMS))
        units = read_units(out).set_index("unit_id")
        assert a not in units.index and b not in units.index
        assert units.loc[merged, "num_spikes"] == before.loc[a, "num_spikes"] + before.loc[b, "num_spikes"]
        assert (units.loc[merged, "label"], units.loc[merged, "label_source"]) == ("good", "curated")
        assert (units.loc[c, "label"], units.loc[c, "label_source"]) == ("noise", "curated")
        rest = units.drop(index=[merged, c])
        assert (rest["label_source"] == "metrics").all()
        assert select_units(units.reset_index(), "curated_good")["unit_id"].tolist() == [merged]
        _, ids = read_spikes(out)["imec0"]
        assert (ids == merged).sum() == units.loc[merged, "num_spikes"]
        assert (sorted_session["sort_dir"] / "sorting").stat().st_mtime_ns == sorting_mtime
        # a changed sort would lose the curation: refused, naming the folder
        with pytest.raises(SortingError, match="curated in phy"):
            run_spikes(probes={"imec0": ProbeInput(ap_bin=sorted_session["ap"])}, out_dir=out,
                       params=SpikesParams(**{**PARAMS, "phase_shift": True}))
    finally:
        for name, content in saved.items():
            (phy / name).write_bytes(content)
        (phy / "cluster_group.tsv").unlink(missing_ok=True)
