"""pixbin.nwb (NWB export) and pixbin.bridge (pynapple): a simulated session processed and binned,
exported, validated (pynwb, nwbinspector with the DANDI config), read back (pynwb, pynapple) and
compared value for value with the processed files and the binned tensors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pynwb")
pytest.importorskip("ndx_pose")
pytest.importorskip("ndx_binned_spikes")
nap = pytest.importorskip("pynapple")

import pixbin  # noqa: E402
from pixbin import readers  # noqa: E402
from pixbin.binned_read import open_action  # noqa: E402
from pixbin.bridge import half_open  # noqa: E402
from pixbin.dataset import DatasetConfig, build_dataset  # noqa: E402
from pixbin.errors import ConfigError, DatasetError  # noqa: E402
from pixbin.nwb import export_nwb, read_session_metadata  # noqa: E402
from pixbin.pipeline import PipelineConfig, process_sessions  # noqa: E402
from pixbin.simulate import SIMULATED_RIG_CONFIG, simulate_session, write_ground_truth_dlc, write_ground_truth_phy  # noqa: E402

SID = "240101_SIM01"
SESSION_YAML = """\
timezone: Europe/London
subject_id: SIM01
sex: F
age: P90D
strain: C57BL/6J
session_description: simulated lever-push session
experiment_description: lever push for a water reward, cued by a tone
experimenter: "Doe, Jane"
institution: Example University
lab: Example Lab
keywords: [Neuropixels, lever push]
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 20 s simulated session: processed (truth phy + DLC), binned, exported with LFP."""
    root = tmp_path_factory.mktemp("nwb")
    raw = simulate_session(root, session_id=SID, duration_s=20, seed=7, n_units=12,
                           write_ap=False, compress=True)
    with open(raw / "areas.csv", "a") as f:  # every channel in a CCF area: no 'unknown' location
        f.write("imec0,MOs,3400.0,4000.0\n")
    (raw / "session.yaml").write_text(SESSION_YAML)
    config = PipelineConfig.from_dict({
        **SIMULATED_RIG_CONFIG,
        "spikes": {"phy_folders": {"imec0": str(write_ground_truth_phy(raw, root / "phy"))}},
        "pose": {"dlc_output": str(write_ground_truth_dlc(raw, root / "USB_CameraDLC_resnet50_sim.csv"))}})
    results = process_sessions(root, [SID], config, scheduler="serial")
    assert {v["status"] for v in results[SID].values()} == {"done"}
    d = DatasetConfig.default().to_dict()
    d["actions"] = [a for a in d["actions"] if a["name"] in ("rewarded_push", "missed_tone")]
    build_dataset(root / "processed", [SID], root / "binned", DatasetConfig.from_dict(d))
    path = export_nwb(root, SID, root / "out" / f"{SID}.nwb", include_lfp=True)
    return {"root": root, "raw": raw, "processed": root / "processed" / SID, "path": path}


@pytest.fixture(scope="module")
def nwb(exported):
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(exported["path"]), "r") as io:
        yield io.read()


def test_file_is_valid_nwb_and_passes_nwbinspector(exported):
    from nwbinspector import Importance, inspect_nwbfile, load_config
    from pynwb import validate

    assert not list(exported["path"].parent.glob(".*"))  # written atomically, nothing left over
    assert validate(path=str(exported["path"])) == []
    messages = list(inspect_nwbfile(nwbfile_path=str(exported["path"]), config=load_config("dandi")))
    serious = [(m.check_function_name, m.message) for m in messages
               if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)]
    assert serious == []


def test_session_and_subject_metadata(exported, nwb):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from pixbin.spikeglx import read_meta

    meta = read_meta(exported["root"] / "interim" / SID / "SIM01_g0_t0.imec0.ap.meta")
    start = dt.datetime.fromisoformat(meta["fileCreateTime"]).replace(tzinfo=ZoneInfo("Europe/London"))
    assert nwb.session_start_time == start
    assert nwb.session_id == SID and nwb.lab == "Example Lab" and nwb.experimenter == ("Doe, Jane",)
    assert nwb.session_description == "simulated lever-push session"
    s = nwb.subject
    assert (s.subject_id, s.species, s.sex, s.age, s.strain) == ("SIM01", "Mus musculus", "F", "P90D", "C57BL/6J")
    assert json.loads(nwb.notes.removeprefix("pixbin provenance: "))["source"]


def test_electrodes_from_probe_geometry_with_areas(exported, nwb):
    from pixbin.spikeglx import read_probe

    probe = read_probe(exported["root"] / "interim" / SID / "SIM01_g0_t0.imec0.ap.meta")
    table = nwb.electrodes.to_dataframe()
    assert len(table) == 384 and list(table["channel"]) == list(range(384))
    np.testing.assert_array_equal(table[["rel_x", "rel_y"]].to_numpy(), probe.contact_positions)
    areas = pd.read_csv(exported["raw"] / "areas.csv")
    for row in areas.itertuples():
        inside = (table["rel_y"] >= row.depth_min_um) & (table["rel_y"] < row.depth_max_um)
        assert set(table.loc[inside, "location"]) == {row.area}
    assert nwb.devices["imec0"].model.manufacturer == "imec"
    assert nwb.devices["imec0"].model.model_number == probe.annotations["part_number"]


def test_units_spike_times_and_metadata(exported, nwb):
    units = readers.read_units(exported["processed"]).set_index("unit_id")
    times, ids = readers.read_spikes(exported["processed"])["imec0"]
    table = nwb.units.to_dataframe()
    assert list(table.index) == sorted(units.index)
    for unit_id, row in table.iterrows():
        np.testing.assert_array_equal(row["spike_times"], times[ids == unit_id])
        assert row["area"] == units.loc[unit_id, "area"] and row["label"] == units.loc[unit_id, "label"]
        assert row["firing_rate_hz"] == units.loc[unit_id, "firing_rate_hz"]
        assert nwb.electrodes["channel"][row["electrodes"].index[0]] == units.loc[unit_id, "channel"]


def test_trials_events_behaviour_pose_lfp(exported, nwb):
    processed = exported["processed"]
    trials = readers.read_trials(processed)
    table = nwb.trials.to_dataframe()
    assert list(table.index) == list(trials["trial_id"])
    np.testing.assert_array_equal(table["start_time"], trials["start_s"])
    np.testing.assert_array_equal(table["stop_time"].to_numpy()[:-1], trials["start_s"].to_numpy()[1:])
    assert list(table["action"]) == list(trials["action"]) and list(table["valid"]) == list(trials["valid"])
    np.testing.assert_array_equal(table["align_time_s"], trials["align_time_s"])

    events = readers.read_events(processed)
    assert sorted(nwb.events) == sorted(events["event"].unique())
    for name, rows in events.groupby("event"):
        np.testing.assert_array_equal(nwb.events[name]["timestamp"].data[:], np.sort(rows["time_s"]))

    channels = readers.read_behaviour_channels(processed)
    series = nwb.processing["behavior"]["BehaviourChannels"]
    for name in channels.data_vars:
        np.testing.assert_array_equal(series[name].data[:], channels[name].to_numpy())
        assert series[name].rate == 1000.0 and series[name].starting_time == 0.0

    pose = readers.read_pose(processed, "USB_Camera")
    marker = nwb.processing["behavior"]["PoseEstimation_USB_Camera"].pose_estimation_series["marker"]
    np.testing.assert_array_equal(marker.data[:], np.stack([pose["x"][:, 0], pose["y"][:, 0]], axis=1))
    np.testing.assert_array_equal(marker.confidence[:], pose["likelihood"][:, 0])

    with readers.read_lfp(processed) as lfp:
        series = nwb.processing["ecephys"]["LFP"]["LFP_imec0"]
        np.testing.assert_array_equal(series.data[:], lfp["lfp"].to_numpy())
        assert series.conversion == 1e-6 and series.rate == 1000.0
        assert list(series.electrodes.to_dataframe()["channel"]) == list(lfp["channel"].to_numpy())


def test_binned_tensors_equal_the_binned_files(exported, nwb):
    exported_actions = []
    for action in ("rewarded_push", "missed_tone"):
        with open_action(exported["root"] / "binned" / f"{action}.h5") as tree:
            areas = list(tree[f"session_{SID}"].children.values())
            name = f"BinnedAlignedSpikes_{action}"
            if not areas:  # no trial of this action in the session: nothing to export
                assert name not in nwb.processing["ecephys"].data_interfaces
                continue
            exported_actions.append(action)
            binned = nwb.processing["ecephys"][name]
            counts = {int(u): area["spike_data"]["spike_counts"].sel(unit_id=u).to_numpy()
                      for area in areas for u in area["spike_data"]["unit_id"].to_numpy()}
            trials = areas[0]["trials"].to_dataset()
            align = trials["align_time"].to_numpy()
            window, bin_s = tree.attrs["window_s"], float(np.ravel(tree.attrs["bin_size_s"])[0])
        order = np.argsort(align, kind="stable")
        np.testing.assert_array_equal(binned.event_timestamps[:], align[order])
        assert binned.bin_width_in_ms == bin_s * 1000 and binned.event_to_bin_offset_in_ms == window[0] * 1000
        unit_ids = binned.units_region.to_dataframe().index.to_numpy()
        assert sorted(unit_ids) == sorted(counts)
        for k, unit_id in enumerate(unit_ids):
            np.testing.assert_array_equal(binned.data[k], counts[int(unit_id)][order])
    assert "rewarded_push" in exported_actions


def test_pynapple_reads_the_file_back(exported):
    data = nap.load_file(str(exported["path"]))
    units = data["units"]
    times, ids = readers.read_spikes(exported["processed"])["imec0"]
    assert isinstance(units, nap.TsGroup) and sorted(units.keys()) == sorted(np.unique(ids).tolist())
    for unit_id in units.keys():
        np.testing.assert_array_equal(units[unit_id].t, times[ids == unit_id])
    assert list(units.get_info("area")) == list(readers.read_units(exported["processed"])
                                                 .sort_values("unit_id")["area"])
    assert isinstance(data["trials"], nap.IntervalSet)
    assert len(data["trials"]) == len(readers.read_trials(exported["processed"]))


def test_load_session_counts_equal_the_binned_tensors(exported):
    session = pixbin.load_session(exported["root"], SID)
    n_checked = 0
    for action in ("rewarded_push", "missed_tone"):
        with open_action(exported["root"] / "binned" / f"{action}.h5") as tree:
            for area in tree[f"session_{SID}"].children.values():
                spikes = area["spike_data"].to_dataset().load()
                trials = area["trials"].to_dataset().load()
                for j in range(trials.sizes["trial_id"]):
                    window = half_open(trials["start_time"].values[j], trials["stop_time"].values[j])
                    got = session.units[spikes["unit_id"].values.tolist()].count(ep=window)
                    np.testing.assert_array_equal(
                        got.values[0], spikes["spike_counts"].isel(trial_id=j).sum("time").values)
                    n_checked += int(got.values.sum())
    assert n_checked > 100


def test_load_session_objects(exported):
    processed = exported["processed"]
    session = pixbin.load_session(exported["root"], SID)
    units = readers.read_units(processed)
    assert session.units.get_info("label").tolist() == units.sort_values("unit_id")["label"].tolist()
    trials = readers.read_trials(processed)
    np.testing.assert_array_equal(session.trials.start, trials["start_s"])
    np.testing.assert_array_equal(session.trials.end[:-1], np.nextafter(trials["start_s"].to_numpy()[1:], -np.inf))
    assert session.trials.get_info("action").tolist() == trials["action"].tolist()
    events = readers.read_events(processed)
    np.testing.assert_array_equal(session.events["tone_onset"].t,
                                  np.sort(events.loc[events["event"] == "tone_onset", "time_s"]))
    channels = readers.read_behaviour_channels(processed)
    np.testing.assert_array_equal(session.behaviour["Back_Sensor"].values, channels["Back_Sensor"].to_numpy())
    pose = readers.read_pose(processed, "USB_Camera")
    np.testing.assert_array_equal(session.pose["USB_Camera"]["marker_x"].values, pose["x"][:, 0].to_numpy())


def test_session_yaml_is_checked(tmp_path):
    assert read_session_metadata(tmp_path).species == "Mus musculus"
    assert read_session_metadata(tmp_path).sex == "U" and read_session_metadata(tmp_path).timezone is None
    cases = {"timezone: Mars/Olympus\n": "not an IANA time zone",
             "age: 90 days\n": "ISO 8601 duration",
             "sex: female\n": "expected one of",
             "mouse: VR46\n": "unknown key(s) ['mouse']",
             "date_of_birth: yesterday\n": "expected a date"}
    for text, message in cases.items():
        (tmp_path / "session.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            read_session_metadata(tmp_path)


def test_refusals_and_defaults(exported, tmp_path):
    root = exported["root"]
    yaml_path = exported["raw"] / "session.yaml"
    saved = yaml_path.read_text()
    try:
        yaml_path.unlink()
        with pytest.raises(ConfigError, match="has no time zone.*add 'timezone: <IANA name>'"):
            export_nwb(root, SID, tmp_path / "x.nwb")
        yaml_path.write_text("timezone: UTC\n")
        path = export_nwb(root, SID, tmp_path / "default.nwb")  # defaults, no LFP
        from pynwb import NWBHDF5IO

        with NWBHDF5IO(str(path), "r") as io:
            f = io.read()
            assert f.subject.subject_id == "SIM01" and f.subject.sex == "U" and f.subject.age is None
            assert "LFP" not in f.processing["ecephys"].data_interfaces
            assert "BinnedAlignedSpikes_rewarded_push" in f.processing["ecephys"].data_interfaces
    finally:
        yaml_path.write_text(saved)
    # binned files built from other processed outputs are refused
    stale = tmp_path / "data"
    shutil.copytree(root / "processed", stale / "processed")
    shutil.copytree(root / "binned", stale / "binned")
    shutil.copytree(exported["raw"].parent, stale / "raw")
    shutil.copytree(root / "interim", stale / "interim")
    trials = pd.read_parquet(stale / "processed" / SID / "trials.parquet")
    trials.assign(reason=trials["reason"] + " ").to_parquet(stale / "processed" / SID / "trials.parquet")
    with pytest.raises(DatasetError, match=r"built from other versions of \['trials.parquet'\]"):
        export_nwb(stale, SID, tmp_path / "stale.nwb")
    assert not (tmp_path / "stale.nwb").exists()
    assert export_nwb(stale, SID, tmp_path / "stale.nwb", include_binned=False).is_file()


def test_the_command_writes_the_default_file(exported, capsys):
    from pixbin.cli import main

    assert main(["export-nwb", SID, "--data", str(exported["root"])]) == 0
    path = exported["root"] / "exports" / "nwb" / f"{SID}.nwb"
    assert capsys.readouterr().out.strip() == str(path) and path.is_file()
