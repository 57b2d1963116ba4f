"""Spikes stage: real Kilosort/phy folders, their quirks, metrics, areas, presets, the stage's
files, and (slow) the default CPU sorter against the simulator's ground truth."""

from __future__ import annotations

import os

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pixbin.errors import ConfigError, PixbinError, SortingError
from pixbin.phy import read_cluster_labels, read_phy_folder, read_phy_params
from pixbin.sorting import (
    compute_unit_metrics,
    create_unit_analyzer,
    export_phy_folder,
    read_ap_recording,
    spike_train_metrics,
)
from pixbin.readers import read_spikes, read_units
from pixbin.spikes import ProbeInput, SpikesParams, run_spikes
from pixbin.units import UNIT_PRESETS, assign_areas, read_areas_table, select_units

PHY = "kilosort-phy"
TEMPLATE = f"{PHY}/phy-data-template"
KS25 = f"{PHY}/ks25-phy-example/phy_example_0"
CLUSTER_INFO = f"{PHY}/phy-cluster-info"


def _copy(realdata: Path, rel: str, tmp_path: Path) -> Path:
    dst = tmp_path / Path(rel).name
    shutil.copytree(realdata / rel, dst)
    for path in dst.rglob("*"):  # realdata is read-only; the copy must be writable
        path.chmod(0o644 if path.is_file() else 0o755)
    dst.chmod(0o755)
    return dst


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


# ------------------------------------------------------------------------- real phy folders


@pytest.mark.parametrize("rel", [TEMPLATE, KS25])
def test_every_real_phy_folder_imports(realdata, rel):
    folder = realdata / rel
    phy = read_phy_folder(folder)
    raw_times = np.load(folder / "spike_times.npy")
    raw_clusters = np.load(folder / "spike_clusters.npy")
    assert phy.spike_times_samples.dtype == np.int64 and phy.spike_times_samples.ndim == 1
    assert phy.spike_clusters.dtype == np.int64 and phy.spike_clusters.ndim == 1
    np.testing.assert_array_equal(phy.spike_times_samples, raw_times.ravel().astype(np.int64))
    np.testing.assert_array_equal(phy.spike_clusters, raw_clusters.ravel().astype(np.int64))
    np.testing.assert_array_equal(phy.unit_ids, np.unique(raw_clusters))
    assert phy.clusters["n_spikes"].sum() == raw_times.size
    assert isinstance(phy.sampling_frequency_hz, float)
    # peak channels are values of the channel map; depth is that channel's y position
    cmap = np.load(folder / "channel_map.npy").ravel()
    pos = np.load(folder / "channel_positions.npy")
    assert set(phy.clusters["channel"]) <= set(cmap.tolist())
    rows = [int(np.flatnonzero(cmap == c)[0]) for c in phy.clusters["channel"]]
    np.testing.assert_array_equal(phy.clusters["depth_um"], pos[rows, 1])
    # round trip through SpikeInterface
    sorting = phy.to_spikeinterface()
    assert list(sorting.unit_ids) == list(phy.unit_ids)
    first = phy.unit_ids[0]
    np.testing.assert_array_equal(sorting.get_unit_spike_train(first),
                                  raw_times.ravel()[raw_clusters.ravel() == first])
    assert list(sorting.get_property("label")) == list(phy.clusters["label"])


def test_phy_template_labels_equal_tsv_and_unlisted_are_unsorted(realdata):
    folder = realdata / TEMPLATE
    phy = read_phy_folder(folder)
    tsv = _tsv(folder / "cluster_group.tsv")
    assert list(tsv.columns) == ["cluster_id", "group"]
    listed = dict(zip(tsv["cluster_id"].astype(int), tsv["group"]))
    labels = dict(zip(phy.clusters["cluster_id"], phy.clusters["label"]))
    for cid, label in labels.items():
        assert label == listed.get(cid, "unsorted")
    assert sum(v == "unsorted" for v in labels.values()) == len(labels) - len(listed)
    assert phy.sampling_frequency_hz == 25000.0
    assert np.load(folder / "channel_map.npy").shape == (32, 1)
    assert phy.n_samples is None  # dat_path 'sim_binary.dat' is not in the folder


def test_ks25_kslabel_header_and_row_channel_map(realdata):
    folder = realdata / KS25
    assert np.load(folder / "channel_map.npy").shape == (1, 32)
    phy = read_phy_folder(folder)
    tsv = _tsv(folder / "cluster_group.tsv")
    assert list(tsv.columns) == ["cluster_id", "KSLabel"]
    expected = dict(zip(tsv["cluster_id"].astype(int), tsv["KSLabel"]))
    assert dict(zip(phy.clusters["cluster_id"], phy.clusters["label"])) == expected
    assert dict(zip(phy.clusters["cluster_id"], phy.clusters["ks_label"])) == expected
    assert phy.sampling_frequency_hz == 32000.0
    assert {"Amplitude", "ContamPct"} <= set(phy.clusters.columns)


def test_peak_channel_is_largest_unwhitened_template_ptp(realdata):
    folder = realdata / KS25
    phy = read_phy_folder(folder)
    templates = np.load(folder / "templates.npy") @ np.load(folder / "whitening_mat_inv.npy")
    spike_templates = np.load(folder / "spike_templates.npy").ravel()
    clusters = np.load(folder / "spike_clusters.npy").ravel()
    cmap = np.load(folder / "channel_map.npy").ravel()
    for cid, channel in zip(phy.clusters["cluster_id"], phy.clusters["channel"]):
        template = pd.Series(spike_templates[clusters == cid]).mode().min()
        ptp = templates[template].max(axis=0) - templates[template].min(axis=0)
        assert channel == cmap[int(np.argmax(ptp))]


def test_cluster_info_group_overrides_kslabel(realdata):
    folder = realdata / CLUSTER_INFO
    labels = read_cluster_labels(folder)
    info = _tsv(folder / "cluster_info.tsv")
    group = _tsv(folder / "cluster_group.tsv")
    assert len(labels) == len(info) == 671
    assert (info["group"] != info["KSLabel"]).sum() > 300  # curation changed many labels
    expected = dict(zip(info["cluster_id"].astype(int), info["group"]))
    assert dict(zip(labels["cluster_id"], labels["label"])) == expected
    assert dict(zip(group["cluster_id"].astype(int), group["group"])) == expected
    assert labels["label"].value_counts().to_dict() == info["group"].value_counts().to_dict()
    assert dict(zip(labels["cluster_id"], labels["ks_label"])) == dict(
        zip(info["cluster_id"].astype(int), info["KSLabel"]))
    assert {"ch", "depth", "sh", "fr"} <= set(labels.columns)


def test_empty_group_falls_back_to_kslabel(realdata, tmp_path):
    folder = _copy(realdata, CLUSTER_INFO, tmp_path)
    (folder / "cluster_group.tsv").unlink()
    info = pd.read_csv(folder / "cluster_info.tsv", sep="\t")
    info["group"] = info["group"].astype(object)
    info.loc[:9, "group"] = np.nan
    info.loc[10:19, "group"] = ""
    info.to_csv(folder / "cluster_info.tsv", sep="\t", index=False)
    labels = read_cluster_labels(folder).set_index("cluster_id")["label"]
    original = _tsv(realdata / CLUSTER_INFO / "cluster_info.tsv")
    original["cluster_id"] = original["cluster_id"].astype(int)
    for i, row in original.iterrows():
        want = row["KSLabel"] if i < 20 else row["group"]
        assert labels[row["cluster_id"]] == want


def test_tsv_only_folder_is_refused_naming_spike_times(realdata):
    with pytest.raises(SortingError, match="spike_times.npy") as err:
        read_phy_folder(realdata / CLUSTER_INFO)
    assert str(realdata / CLUSTER_INFO) in str(err.value)


def test_truncated_spike_clusters_refused_with_both_lengths(realdata, tmp_path):
    folder = _copy(realdata, TEMPLATE, tmp_path)
    clusters = np.load(folder / "spike_clusters.npy")
    np.save(folder / "spike_clusters.npy", clusters[:-7])
    with pytest.raises(SortingError) as err:
        read_phy_folder(folder)
    message = str(err.value)
    assert str(folder) in message and "314" in message and "307" in message


def test_labels_come_only_from_the_spike_folder(realdata, tmp_path):
    # a curated cluster_info.tsv one level up must not leak into the folder's labels
    parent = tmp_path / "session"
    parent.mkdir()
    folder = _copy(realdata, KS25, parent)
    shutil.copy(realdata / CLUSTER_INFO / "cluster_info.tsv", parent / "cluster_info.tsv")
    phy = read_phy_folder(folder)
    assert dict(zip(phy.clusters["cluster_id"], phy.clusters["label"])) == dict(
        zip(*_tsv(folder / "cluster_group.tsv").astype({"cluster_id": int}).values.T))


@pytest.mark.parametrize("shape", ["column", "flat", "row"])
def test_channel_map_shapes_and_noncontiguous_values(realdata, tmp_path, shape):
    folder = _copy(realdata, KS25, tmp_path)
    reference = read_phy_folder(realdata / KS25)
    values = np.arange(32, dtype=np.int32) * 3 + 100  # channels 100, 103, ... (non-contiguous)
    arr = {"column": values[:, None], "flat": values, "row": values[None, :]}[shape]
    np.save(folder / "channel_map.npy", arr)
    phy = read_phy_folder(folder)
    np.testing.assert_array_equal(phy.channel_map, values)
    np.testing.assert_array_equal(phy.clusters["channel"], reference.clusters["channel"] * 3 + 100)
    np.testing.assert_array_equal(phy.clusters["depth_um"], reference.clusters["depth_um"])


def test_channel_map_positions_mismatch_refused(realdata, tmp_path):
    folder = _copy(realdata, KS25, tmp_path)
    np.save(folder / "channel_map.npy", np.arange(30))
    with pytest.raises(SortingError, match="30"):
        read_phy_folder(folder)


def test_params_py_parsed_without_executing(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "params.py").write_text(
        "import os\n"
        f"dat_path = os.path.join('a', 'b.bin')\n"
        "n_channels_dat = 385\n"
        "dtype = 'int16'\n"
        "offset = 0\n"
        "sample_rate = 29999.941586\n"
        "hp_filtered = False\n"
        f"open({str(marker)!r}, 'w').write('x')\n"
    )
    params = read_phy_params(tmp_path / "params.py")
    assert params["sample_rate"] == 29999.941586 and isinstance(params["sample_rate"], float)
    assert params["dat_path"] is None and params["n_channels_dat"] == 385
    assert not marker.exists()
    (tmp_path / "bad.py").write_text("sample_rate = = 3\n")
    with pytest.raises(SortingError, match="bad.py"):
        read_phy_params(tmp_path / "bad.py")


def test_float_sample_rate_and_dat_path_give_duration(realdata, tmp_path):
    folder = _copy(realdata, TEMPLATE, tmp_path)
    (folder / "params.py").write_text(
        "dat_path = ['rec.bin']\nn_channels_dat = 34\ndtype = 'int16'\noffset = 0\n"
        "sample_rate = 29999.941586\nhp_filtered = False\n")
    (folder / "rec.bin").write_bytes(b"\0" * (34 * 2 * 300_000))
    phy = read_phy_folder(folder)
    assert phy.sampling_frequency_hz == 29999.941586
    assert phy.n_samples == 300_000
    np.testing.assert_allclose(phy.spike_times_s, phy.spike_times_samples / 29999.941586)
    # the AP meta's calibrated rate wins over params.py
    assert read_phy_folder(folder, sampling_frequency_hz=30000.0301).sampling_frequency_hz == 30000.0301
    (folder / "params.py").write_text("dtype = 'int16'\n")
    with pytest.raises(SortingError, match="sample_rate"):
        read_phy_folder(folder)


# ------------------------------------------------------------------------- metrics


def test_spike_train_metrics_against_hand_counts():
    fs = 30000.0
    n_samples = int(300 * fs)  # 5 min -> five 60 s bins
    # unit 1: 100 spikes spread over 4 of 5 bins, two ISIs of 1 ms (violations)
    base = np.linspace(1, 230, 98)
    t1 = np.sort(np.r_[base, base[[40, 80]] + 0.001])
    # unit 2: regular 1 Hz for the whole recording
    t2 = np.arange(0.5, 300, 1.0)
    times = np.r_[t1, t2]
    ids = np.r_[np.full(t1.size, 1), np.full(t2.size, 2)]
    samples = np.round(times * fs).astype(np.int64)
    m = spike_train_metrics(samples, ids, np.array([1, 2, 3]), sampling_frequency_hz=fs,
                            n_samples=n_samples).set_index("unit_id")
    assert m.loc[1, "num_spikes"] == 100 and m.loc[2, "num_spikes"] == 300 and m.loc[3, "num_spikes"] == 0
    assert m.loc[1, "firing_rate_hz"] == pytest.approx(100 / 300)
    assert m.loc[1, "presence_ratio"] == pytest.approx(4 / 5)
    assert m.loc[2, "presence_ratio"] == pytest.approx(1.0)
    assert m.loc[1, "isi_violations_count"] == 2
    # Hill et al.: ratio = (violations / (2 N (thr - min))) / (N / T)
    assert m.loc[1, "isi_violations_ratio"] == pytest.approx((2 / (2 * 100 * 0.0015)) / (100 / 300))
    assert m.loc[2, "isi_violations_ratio"] == 0
    assert np.isnan(m.loc[3, "firing_rate_hz"])
    assert m[["amplitude_cutoff", "snr"]].isna().all().all()
    assert (m["metrics_from"] == "spike_times").all()


# ------------------------------------------------------------------------- presets


def _units_for_presets() -> pd.DataFrame:
    return pd.DataFrame({
        "unit_id": [0, 1, 2, 3, 4],
        "label": ["good", "mua", "noise", "good", "unsorted"],
        "isi_violations_ratio": [0.001, 0.2, 0.0, 0.005, np.nan],
        "amplitude_cutoff": [0.005, 0.05, 0.0, 0.02, np.nan],
        "presence_ratio": [1.0, 0.95, 1.0, 0.99, np.nan],
        "snr": [5.0, 4.0, 10.0, 3.5, np.nan],
    })


def test_presets():
    units = _units_for_presets()
    assert select_units(units, "allen")["unit_id"].tolist() == [0, 2]
    assert select_units(units, "allen_sdk")["unit_id"].tolist() == [0, 1, 2, 3]
    assert select_units(units, "phy_good")["unit_id"].tolist() == [0, 3]
    assert select_units(units, "all")["unit_id"].tolist() == [0, 1, 3, 4]
    assert set(UNIT_PRESETS) >= {"allen", "phy_good", "all"}
    with pytest.raises(ConfigError) as err:
        select_units(units, "allen-strict")
    for name in UNIT_PRESETS:
        assert name in str(err.value)
    with pytest.raises(SortingError, match="snr"):
        select_units(units.drop(columns="snr"), "allen")


# ------------------------------------------------------------------------- areas


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_areas_from_depth_ranges_known_truth(tmp_path):
    table = read_areas_table(_write(tmp_path / "areas.csv",
        "probe,area,depth_min_um,depth_max_um\n"
        "imec0,LSr,0,800\nimec0,CP,800,2200\nimec0,MOs,2200,3400\nimec1,VISp,100,900\n"))
    depths = [0.0, 799.9, 800.0, 2199.0, 2200.0, 3399.99, 3400.0, 3800.0, np.nan, 50.0, 100.0, 900.0]
    probes = ["imec0"] * 9 + ["imec1"] * 3
    units = pd.DataFrame({"unit_id": range(len(depths)), "probe": probes, "depth_um": depths})
    out = assign_areas(units, table)
    assert out["area"].tolist() == ["LSr", "LSr", "CP", "CP", "MOs", "MOs", "unassigned",
                                    "unassigned", "unassigned", "unassigned", "VISp", "unassigned"]
    assert "area" not in units.columns  # input not mutated
    # a probe absent from the table, and no table at all -> the probe name
    other = units.assign(probe="imec2")
    assert set(assign_areas(other, table)["area"]) == {"imec2"}
    assert assign_areas(units, None)["area"].tolist() == probes


def test_areas_from_histology_channel_table(tmp_path):
    table = read_areas_table(_write(tmp_path / "histology.tsv",
        "probe\tchannel\tarea\nimec0\t0\tCA1\nimec0\t1\tCA1\nimec0\t2\tDG\n"))
    assert table.kind == "channel"
    units = pd.DataFrame({"unit_id": [5, 6, 7, 8], "probe": "imec0", "channel": [2, 0, 1, 300],
                          "depth_um": np.nan})
    assert assign_areas(units, table)["area"].tolist() == ["DG", "CA1", "CA1", "unassigned"]


@pytest.mark.parametrize("text, match", [
    ("probe,area,depth_min_um,depth_max_um\nimec0,A,0,500\nimec0,B,400,900\n", "overlapping"),
    ("probe,area,depth_min_um,depth_max_um\nimec0,A,500,500\n", "depth_min_um < depth_max_um"),
    ("probe,channel,area\nimec0,3,A\nimec0,3,B\n", "more than once"),
    ("probe,region,top\nimec0,A,1\n", "expected columns"),
])
def test_bad_areas_tables_refused(tmp_path, text, match):
    path = _write(tmp_path / "areas.csv", text)
    with pytest.raises(SortingError, match=match) as err:
        read_areas_table(path)
    assert str(path) in str(err.value)


def test_adjacent_ranges_are_not_overlapping(tmp_path):
    path = _write(tmp_path / "areas.csv",
                  "probe,area,depth_min_um,depth_max_um\nimec0,B,500,900\nimec0,A,0,500\nimec1,C,0,900\n")
    assert read_areas_table(path).kind == "depth"


# ------------------------------------------------------------------------- stage files


def test_params_refuse_unknown_keys():
    assert SpikesParams.from_dict({"sorter": "tridesclous2", "n_jobs": 1}).sorter == "tridesclous2"
    with pytest.raises(ConfigError) as err:
        SpikesParams.from_dict({"sorter": "auto", "likelihood": 0.9})
    assert "likelihood" in str(err.value) and "presence_ratio_bin_s" in str(err.value)
    with pytest.raises(ConfigError):
        ProbeInput()


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_run_spikes_import_two_probes_round_trip(realdata, tmp_path):
    out = tmp_path / "processed" / "240101_SIM01"
    areas = _write(tmp_path / "areas.csv",
                   "probe,area,depth_min_um,depth_max_um\nimec0,CTX,0,300\nimec1,HPF,-200,0\n")
    probes = {
        "imec0": ProbeInput(phy_folder=realdata / TEMPLATE, areas_table=areas, insertion_depth_um=1000.0),
        "imec1": ProbeInput(phy_folder=realdata / KS25, areas_table=areas),
    }
    paths = run_spikes(probes=probes, out_dir=out, params=SpikesParams(presence_ratio_bin_s=1.0))
    assert paths == {"units": out / "units.parquet", "spikes": out / "spikes.h5", "failed_probes": {}}
    assert _no_temp_files(out)

    units = read_units(out)
    assert units["unit_id"].dtype == np.int64 and units["channel"].dtype == np.int64
    assert units["depth_um"].dtype == np.float64
    for column in ("unit_id", "probe", "label", "channel", "depth_um", "area", "firing_rate_hz",
                   "num_spikes", "presence_ratio", "isi_violations_ratio", "amplitude_cutoff", "snr"):
        assert column in units.columns
    assert not units.duplicated(["probe", "unit_id"]).any()
    meta = units.attrs["pixbin"]
    prov = meta["provenance"]
    assert prov["parameters"]["presence_ratio_bin_s"] == 1.0 and "spikeinterface" in prov["versions"]
    assert [p["probe"] for p in meta["probes"]] == ["imec0", "imec1"]

    spikes = read_spikes(out)
    assert sorted(spikes) == ["imec0", "imec1"]
    for probe, rel, rate in (("imec0", TEMPLATE, 25000.0), ("imec1", KS25, 32000.0)):
        times, ids = spikes[probe]
        assert times.dtype == np.float64 and ids.dtype == np.int64
        assert np.all(np.diff(times) >= 0)
        raw_t = np.load(realdata / rel / "spike_times.npy").ravel() / rate
        raw_c = np.load(realdata / rel / "spike_clusters.npy").ravel()
        got = sorted(zip(times.tolist(), ids.tolist()))
        assert got == sorted(zip(raw_t.tolist(), raw_c.astype(np.int64).tolist()))
        sub = units[units["probe"] == probe].set_index("unit_id")
        counts = pd.Series(ids).value_counts()
        assert (sub["num_spikes"] == counts.reindex(sub.index)).all()
        assert (sub["metrics_from"] == "spike_times").all()
        assert sub["snr"].isna().all()

    u0 = units[units["probe"] == "imec0"]
    expected = np.where((u0["depth_um"] >= 0) & (u0["depth_um"] < 300), "CTX", "unassigned")
    assert u0["area"].tolist() == expected.tolist()
    np.testing.assert_allclose(u0["depth_below_surface_um"], 1000.0 - u0["depth_um"])
    u1 = units[units["probe"] == "imec1"]
    assert u1["area"].tolist() == np.where(u1["depth_um"] < 0, "HPF", "unassigned").tolist()
    assert u1["depth_below_surface_um"].isna().all()
    assert u1.set_index("unit_id").loc[9, "label"] == "good"
    good = select_units(units, "phy_good")
    assert sorted(zip(good["probe"], good["unit_id"])) == [("imec0", 4), ("imec1", 9), ("imec1", 10),
                                                          ("imec1", 11)]
    assert select_units(units, "allen").empty  # no snr / amplitude_cutoff without a recording


def test_failed_run_leaves_previous_outputs_and_no_temp_files(realdata, tmp_path):
    out = tmp_path / "out"
    run_spikes(probes={"imec0": ProbeInput(phy_folder=realdata / KS25)}, out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = _copy(realdata, TEMPLATE, tmp_path)
    np.save(bad / "spike_clusters.npy", np.load(bad / "spike_clusters.npy")[:10])
    with pytest.raises(PixbinError):  # every probe fails: nothing is written
        run_spikes(probes={"imec1": ProbeInput(phy_folder=bad)}, out_dir=out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before and _no_temp_files(out)
    # one probe failing does not stop the other: recorded, its units absent
    summary = run_spikes(probes={"imec0": ProbeInput(phy_folder=realdata / KS25),
                                 "imec1": ProbeInput(phy_folder=bad)}, out_dir=out)
    assert list(summary["failed_probes"]) == ["imec1"]
    assert set(read_units(out)["probe"]) == {"imec0"} and _no_temp_files(out)


def test_units_and_spikes_appear_together_or_not_at_all(realdata, tmp_path, monkeypatch):
    import h5py

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py, "File", disk_full)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        run_spikes(probes={"imec0": ProbeInput(phy_folder=realdata / KS25)}, out_dir=out)
    assert not out.exists() or not list(out.iterdir())


# ------------------------------------------------------------------------- simulated recording


@pytest.fixture(scope="module")
def sim_session(tmp_path_factory) -> dict:
    """A short simulated SpikeGLX session (AP band) with its ground truth."""
    from pixbin.simulate import load_ground_truth, simulate_session

    root = tmp_path_factory.mktemp("spikes_sim")
    raw = simulate_session(root, session_id="240101_SIM01", duration_s=10.0, seed=7, n_units=10,
                           compress=False)
    ap = next(raw.glob("*.imec0.ap.bin"))
    # the first 4 s only, for the waveform passes (SpikeGLX readers count samples from the file size)
    short = root / "short"
    short.mkdir()
    n_bytes = 4 * 30000 * 385 * 2
    (short / ap.name).write_bytes(ap.read_bytes()[:n_bytes])
    shutil.copy(ap.with_suffix(".meta"), short / ap.with_suffix(".meta").name)
    return {"raw": raw, "truth": load_ground_truth(raw), "ap": ap, "ap_short": short / ap.name,
            "n_short": n_bytes // (385 * 2)}


def test_imported_truth_gets_waveform_metrics_and_areas(sim_session, tmp_path):
    """A hand-written phy folder holding the true spike trains, imported with the recording: the
    meta's calibrated rate wins over params.py, waveform metrics are computed, areas match."""
    truth = sim_session["truth"]
    ap = sim_session["ap_short"]
    meta_rate = float(next(line.split("=", 1)[1] for line in ap.with_suffix(".meta")
                           .read_text().splitlines() if line.startswith("imSampRate=")))
    recording = read_ap_recording(ap)
    assert recording.sampling_frequency == meta_rate
    assert recording.get_num_samples() == sim_session["n_short"]
    samples = np.round(truth["arrays"]["spike_times_s"] * meta_rate).astype(np.int64)
    ids = truth["arrays"]["spike_unit_ids"]
    keep = samples < sim_session["n_short"] - 90
    samples, ids = samples[keep], ids[keep]
    true_units = pd.DataFrame(truth["units"]).set_index("unit_id").loc[np.unique(ids)]
    true_units["n_spikes"] = pd.Series(ids).value_counts().sort_index().to_numpy()
    phy = tmp_path / "phy"
    phy.mkdir()
    np.save(phy / "spike_times.npy", samples.astype(np.uint64)[:, None])
    np.save(phy / "spike_clusters.npy", ids.astype(np.uint32))
    (phy / "params.py").write_text("dat_path = 'elsewhere.bin'\nn_channels_dat = 385\ndtype = 'int16'\n"
                                   "offset = 0\nsample_rate = 30000.\nhp_filtered = False\n")
    info = pd.DataFrame({"cluster_id": true_units.index, "KSLabel": "good",
                         "group": ["noise"] + [""] * (len(true_units) - 1),
                         "ch": true_units["channel"], "depth": true_units["depth_um"]})
    info.to_csv(phy / "cluster_info.tsv", sep="\t", index=False)
    out = tmp_path / "processed"
    run_spikes(probes={"imec0": ProbeInput(ap_bin=ap, phy_folder=phy,
                                           areas_table=sim_session["raw"] / "areas.csv")},
               out_dir=out, params=SpikesParams(n_jobs=1, presence_ratio_bin_s=2.0, noise_chunks=4))
    units = read_units(out).set_index("unit_id")
    assert list(units.index) == list(true_units.index)
    assert units["label"].tolist() == ["noise"] + ["good"] * (len(true_units) - 1)
    assert (units["metrics_from"] == "recording").all()
    assert units["snr"].gt(3).all()  # simulated spikes are 70-220 uV over 7 uV noise
    big = units["num_spikes"] >= 500  # amplitude_cutoff needs 5 spikes per histogram bin
    assert units.loc[big, "amplitude_cutoff"].notna().all() and units.loc[~big, "amplitude_cutoff"].isna().all()
    np.testing.assert_array_equal(units["num_spikes"], true_units["n_spikes"])
    np.testing.assert_array_equal(units["channel"], true_units["channel"])
    assert units["area"].tolist() == true_units["area"].tolist()
    assert units.attrs["pixbin"]["probes"][0]["sampling_frequency_hz"] == meta_rate
    times, spike_ids = read_spikes(out)["imec0"]
    order = np.argsort(samples, kind="stable")
    np.testing.assert_array_equal(times, samples[order] / meta_rate)
    np.testing.assert_array_equal(spike_ids, ids[order])


def test_phy_with_meta_only_uses_meta_rate_and_duration(sim_session, realdata, tmp_path):
    meta = sim_session["ap"].with_suffix(".meta")
    lines = dict(line.split("=", 1) for line in meta.read_text().splitlines() if "=" in line)
    rate = float(lines["imSampRate"])
    n_samples = sim_session["ap"].stat().st_size // (2 * int(lines["nSavedChans"]))
    areas = sim_session["raw"] / "areas.csv"
    out = tmp_path / "out"
    run_spikes(probes={"imec0": ProbeInput(phy_folder=realdata / TEMPLATE, ap_meta=meta)}, out_dir=out,
               areas_table=areas, params=SpikesParams(presence_ratio_bin_s=1.0))
    units = read_units(out)
    record = units.attrs["pixbin"]["probes"][0]
    assert record["sampling_frequency_hz"] == rate and record["n_samples"] == n_samples
    assert record["areas_table"] == os.path.relpath(areas, out)  # no machine path in data/
    assert (units["metrics_from"] == "spike_times").all()
    np.testing.assert_allclose(units["firing_rate_hz"], units["num_spikes"] / (n_samples / rate))
    assert set(units["area"]) <= {"LSr", "unassigned"}  # the template probe spans 0-460 um
    times, _ = read_spikes(out)["imec0"]
    raw = np.sort(np.load(realdata / TEMPLATE / "spike_times.npy").ravel())
    np.testing.assert_array_equal(times, raw / rate)
    # a phy folder with spikes past the end of the recording belongs to another recording
    with pytest.raises(SortingError, match="samples"):
        run_spikes(probes={"imec0": ProbeInput(phy_folder=realdata / KS25, ap_meta=meta)},
                   out_dir=tmp_path / "other")


def test_export_phy_folder_round_trip(tmp_path, monkeypatch):
    """A sorting exported to phy reads back with the same spikes, ids and peak channels."""
    import spikeinterface.postprocessing.template_similarity as similarity
    from spikeinterface.core import generate_ground_truth_recording

    # the numba kernel of similar_templates.npy takes ~30 s to compile on 2 cores; same result
    monkeypatch.setattr(similarity, "_compute_similarity_matrix", similarity._compute_similarity_matrix_numpy)

    recording, sorting = generate_ground_truth_recording(durations=[5.0], num_channels=16, num_units=5,
                                                         sampling_frequency=30000.0, seed=2)
    sorting = sorting.rename_units(np.arange(5))
    analyzer = create_unit_analyzer(sorting, recording, n_jobs=1, max_spikes_per_unit=100)
    folder = export_phy_folder(analyzer, tmp_path / "phy", n_jobs=1)
    assert _no_temp_files(tmp_path)
    phy = read_phy_folder(folder)
    assert phy.sampling_frequency_hz == 30000.0
    np.testing.assert_array_equal(phy.unit_ids, np.arange(5))
    for unit in range(5):
        np.testing.assert_array_equal(phy.spike_times_samples[phy.spike_clusters == unit],
                                      sorting.get_unit_spike_train(unit))
    main = analyzer.get_main_channels(outputs="index")
    np.testing.assert_array_equal(phy.clusters["channel"], main)
    np.testing.assert_array_equal(phy.clusters["depth_um"], recording.get_channel_locations()[main, 1])
    assert set(phy.clusters["label"]) == {"unsorted"}
    m = compute_unit_metrics(analyzer, presence_ratio_bin_s=1.0, n_jobs=1).set_index("unit_id")
    assert m["presence_ratio"].between(0, 1).all() and m["snr"].gt(0).all()
    np.testing.assert_array_equal(m["num_spikes"], [len(sorting.get_unit_spike_train(u)) for u in range(5)])


@pytest.mark.slow
def test_default_cpu_sorter_recovers_simulated_units(tmp_path_factory):
    """Sort a 60 s simulated session with the default CPU sorter; compare to ground truth (no
    drift: motion correction off here, tested with drift in tests/test_drift.py)."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    from pixbin.simulate import load_ground_truth, simulate_session

    root = tmp_path_factory.mktemp("sort_sim")
    raw = simulate_session(root, session_id="240101_SIM02", duration_s=60.0, seed=11, n_units=24,
                           compress=False)
    truth = load_ground_truth(raw)
    ap = next(raw.glob("*.imec0.ap.bin"))
    out = root / "processed"
    run_spikes(probes={"imec0": ProbeInput(ap_bin=ap, areas_table=raw / "areas.csv")}, out_dir=out,
               params=SpikesParams(sorter="auto", presence_ratio_bin_s=10.0, motion_correction=False))
    units = read_units(out)
    assert (units["metrics_from"] == "recording").all()
    assert units["presence_ratio"].between(0, 1).all() and units["snr"].gt(3).all()
    times, ids = read_spikes(out)["imec0"]
    rate = read_ap_recording(ap).sampling_frequency
    found = NumpySorting.from_samples_and_labels([np.round(times * rate).astype(np.int64)], [ids], rate)
    gt_samples = np.round(truth["arrays"]["spike_times_s"] * rate).astype(np.int64)
    gt = NumpySorting.from_samples_and_labels([gt_samples], [truth["arrays"]["spike_unit_ids"]], rate)
    cmp = compare_sorter_to_ground_truth(gt, found, exhaustive_gt=True)
    perf = cmp.get_performance()
    assert cmp.count_well_detected_units(well_detected_score=0.8) >= 0.6 * gt.get_num_units()
    assert perf["accuracy"].median() >= 0.8
    # matched units sit in the simulated area
    match = cmp.hungarian_match_12
    true_area = {u["unit_id"]: u["area"] for u in truth["units"]}
    found_area = units.set_index("unit_id")["area"]
    pairs = [(true_area[g], found_area[f]) for g, f in match.items() if f != -1]
    assert sum(a == b for a, b in pairs) >= 0.8 * len(pairs)
    # the exported phy folder re-imports to the same units (the curate-in-phy round trip)
    phy = out / "sorting" / "imec0" / "phy"
    again = tmp_path_factory.mktemp("reimport")
    run_spikes(probes={"imec0": ProbeInput(phy_folder=phy, ap_meta=ap.with_suffix(".meta"))}, out_dir=again)
    reimported = read_units(again)
    assert reimported["unit_id"].tolist() == units["unit_id"].tolist()
    assert reimported["num_spikes"].tolist() == units["num_spikes"].tolist()
    assert reimported["channel"].tolist() == units["channel"].tolist()
    np.testing.assert_array_equal(read_spikes(again)["imec0"][0], times)


def test_cluster_info_with_phy_columns_imports(realdata, tmp_path):
    """A real phy cluster_info.tsv carries n_spikes, ch and depth: the arrays' count wins."""
    folder = tmp_path / "phy"
    shutil.copytree(realdata / "kilosort-phy" / "phy-data-template", folder)
    ids, counts = np.unique(np.load(folder / "spike_clusters.npy"), return_counts=True)
    pd.DataFrame({"cluster_id": ids, "ch": 0, "depth": 0.0, "group": "good",
                  "n_spikes": 1}).to_csv(folder / "cluster_info.tsv", sep="\t", index=False)
    sorting = read_phy_folder(folder)
    table = sorting.clusters.set_index("cluster_id")
    np.testing.assert_array_equal(table.loc[ids, "n_spikes"], counts)
    assert list(sorting.clusters.columns).count("n_spikes") == 1


@pytest.mark.parametrize(("given", "expected"), [({}, 0), ({"seed": 7}, 7)])
def test_sorters_with_a_random_default_seed_get_a_fixed_one(tmp_path, monkeypatch, given, expected):
    """tridesclous2's own default is a new random seed per run (different units each time);
    pixbin passes SORTER_SEED unless the sorter parameters name one."""
    import spikeinterface.sorters as ss
    from spikeinterface.core import generate_recording

    from pixbin.sorting import SORTER_SEED, run_sorter_on_recording

    assert ss.get_default_sorter_params("tridesclous2")["seed"] is None and SORTER_SEED == 0
    seen = {}

    def capture(name, recording, **kwargs):
        seen.update(kwargs, name=name)
        raise RuntimeError("stop before sorting")

    monkeypatch.setattr(ss, "run_sorter", capture)
    recording = generate_recording(num_channels=4, durations=[1.0])
    with pytest.raises(SortingError, match="stop before sorting"):
        run_sorter_on_recording(recording, tmp_path, sorter="tridesclous2", params=given)
    assert seen["name"] == "tridesclous2" and seen["seed"] == expected
