"""The whole chain on a simulated session: raw → interim → processed → binned → .npy, checked
against ground truth; serial and dask runs agree; a killed build leaves nothing taken as done."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pixbin.binned_read import export_npy
from pixbin.dataset import DatasetConfig, build_dataset
from pixbin.pipeline import PipelineConfig, process_sessions, status_table
from pixbin.simulate import (
    SIMULATED_RIG_CONFIG,
    load_ground_truth,
    simulate_session,
    write_ground_truth_dlc,
    write_ground_truth_phy,
)

SID = "240101_SIM01"


def _simulate(root):
    raw = simulate_session(root, session_id=SID, duration_s=40, seed=11, n_units=16,
                           write_ap=False, compress=True)
    phy = write_ground_truth_phy(raw, root / "truth_phy")
    dlc = write_ground_truth_dlc(raw, root / "USB_CameraDLC_resnet50_sim.csv")
    return raw, PipelineConfig.from_dict({**SIMULATED_RIG_CONFIG,
                                          "spikes": {"phy_folders": {"imec0": str(phy)}},
                                          "pose": {"dlc_output": str(dlc)}})


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    raw, config = _simulate(root)
    results = process_sessions(root, [SID], config, scheduler="serial")
    return {"root": root, "raw": raw, "config": config, "results": results[SID],
            "truth": load_ground_truth(raw)}


def test_every_stage_done_and_status_table(processed):
    assert {k: v["status"] for k, v in processed["results"].items()} == {
        s: "done" for s in ["extract", "sync", "behaviour", "spikes", "lfp", "pose"]}
    row = status_table(processed["root"], processed["config"]).iloc[0]
    assert set(row.drop("session")) == {"done"}
    again = process_sessions(processed["root"], [SID], processed["config"], scheduler="serial")
    assert {v["status"] for v in again[SID].values()} == {"skipped"}


def test_processed_outputs_match_ground_truth(processed):
    out = processed["root"] / "processed" / SID
    truth = processed["truth"]
    lag = json.loads((out / "lag.json").read_text())
    assert lag == [truth["lag"]]
    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials["action"]) == [t["action"] for t in truth["trials"]]
    expected = [t.get("back_sensor_open_s", t.get("tone_onset_s")) for t in truth["trials"]]
    np.testing.assert_allclose(trials["align_time_s"], expected, atol=1e-3)
    units = pd.read_parquet(out / "units.parquet").set_index("unit_id")
    for unit in truth["units"]:
        assert units.loc[unit["unit_id"], "area"] == unit["area"]
    with h5py.File(out / "spikes.h5") as f:
        times = f["imec0/spike_times_s"][:]
    np.testing.assert_allclose(times, truth["arrays"]["spike_times_s"],
                               atol=1 / truth["probe"]["ap_rate_hz"])
    pose = xr.load_dataset(out / "USB_Camera_pose.h5", engine="h5netcdf")
    frame_t, saved = truth["arrays"]["frame_times_s"], truth["arrays"]["frame_saved"]
    t = pose["time"].values
    inside = (t > frame_t[0] + 0.1) & (t < frame_t[-1] - 0.1)
    expected = np.interp(t[inside], frame_t[saved], truth["arrays"]["marker_x"][saved])
    got = pose["x"].sel(keypoint="marker").values[inside]
    ok = ~np.isnan(got)
    assert ok.mean() > 0.95
    np.testing.assert_allclose(got[ok], expected[ok], atol=0.05)


def test_binned_tensors_equal_a_per_trial_reference(processed):
    root = processed["root"]
    config = DatasetConfig.default()
    manifest = build_dataset(root / "processed", [SID], root / "binned", config)
    assert set(manifest["actions"]) >= {"rewarded_push", "missed_tone"}
    out = root / "processed" / SID
    trials = pd.read_parquet(out / "trials.parquet")
    with h5py.File(out / "spikes.h5") as f:
        times, ids = f["imec0/spike_times_s"][:], f["imec0/spike_unit_ids"][:]
    spec = config.action("rewarded_push")
    tree = xr.open_datatree(root / "binned" / "rewarded_push.h5", engine="h5netcdf")
    node = tree[f"session_{SID}/CP/spike_data"].to_dataset()
    counts = node["spike_counts"].values
    align = trials.set_index("trial_id").loc[node["trial_id"].values, "align_time_s"].values
    edges = spec.window_s[0] + np.arange(counts.shape[1] + 1) * config.bin_size_s
    for i, a in enumerate(align):
        for j, unit in enumerate(node["unit_id"].values):
            t = times[ids == unit]
            ref = [np.sum((t >= a + edges[k]) & (t < a + edges[k + 1]))
                   for k in range(counts.shape[1])]
            np.testing.assert_array_equal(counts[i, :, j], np.minimum(ref, 255))
    np.testing.assert_array_equal(node["spike_data"].values, counts > 0)
    paths = export_npy("rewarded_push", "CP", root / "exports", in_path=root / "binned")
    exported = np.load(paths[0])
    assert exported.shape == (counts.shape[2], counts.shape[0], counts.shape[1])


def test_dask_local_cluster_gives_the_serial_outputs(processed, tmp_path):
    raw, config = _simulate(tmp_path)
    process_sessions(tmp_path, [SID], config, scheduler=None, n_workers=2)
    a, b = processed["root"] / "processed" / SID, tmp_path / "processed" / SID
    for name in ["trials.parquet", "events.parquet", "units.parquet"]:
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))
    np.testing.assert_array_equal(np.load(a / "action_labels_0.npy"),
                                  np.load(b / "action_labels_0.npy"))
    assert json.loads((a / "lag.json").read_text()) == json.loads((b / "lag.json").read_text())
    for name in ["imec0.lf_processed.h5", "NeuropixelBehaviour(0)_processed.h5"]:
        xr.testing.assert_identical(xr.load_dataset(a / name, engine="h5netcdf").drop_attrs(),
                                    xr.load_dataset(b / name, engine="h5netcdf").drop_attrs())


def test_a_killed_build_leaves_nothing_taken_as_complete(processed, tmp_path):
    root = processed["root"]
    out = tmp_path / "binned"
    script = textwrap.dedent(f"""
        import os, signal
        import pixbin.fileio as fileio
        from pixbin.dataset import DatasetConfig, build_dataset
        def killed(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)   # the process dies mid-write
        fileio.os.replace = killed
        build_dataset({str(root / 'processed')!r}, [{SID!r}], {str(out)!r},
                      DatasetConfig.default())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    finals = [p for p in out.rglob("*.h5") if not p.name.startswith(".")]
    assert finals == [], finals
    assert [p.name for p in tmp_path.iterdir()][0].startswith(".binned.tmp-")  # the staging folder
    build_dataset(root / "processed", [SID], out, DatasetConfig.default())
    assert [p.name for p in tmp_path.iterdir()] == ["binned"]  # removed by the next build
    rebuilt = xr.open_datatree(out / "rewarded_push.h5", engine="h5netcdf")
    reference = xr.open_datatree(root / "binned" / "rewarded_push.h5", engine="h5netcdf")
    node = f"session_{SID}/CP/spike_data"
    np.testing.assert_array_equal(rebuilt[node]["spike_data"].values,
                                  reference[node]["spike_data"].values)
    shutil.rmtree(out)


def test_built_dataset_is_cloned_and_one_action_file_fetched(processed, tmp_path):
    """The DataLad round trip a collaborator does: clone data/, get one tensor file."""
    from pixbin.fileio import sha256_file
    from pixbin.versioning import clone, drop, get, save

    root = processed["root"]
    if not (root / "binned" / "rewarded_push.h5").exists():
        build_dataset(root / "processed", [SID], root / "binned", DatasetConfig.default())
    original = sha256_file(root / "binned" / "rewarded_push.h5")
    save(root, ["processed", "binned"], "pixbin build", command=["pixbin", "build"],
         parameters={"sessions": [SID]})
    copy = clone(root, tmp_path / "data")
    target = copy / "binned" / "rewarded_push.h5"
    assert not target.exists()  # a pointer until fetched
    get(copy, ["binned/rewarded_push.h5"])
    assert sha256_file(target) == original
    assert not (copy / "binned" / "missed_tone.h5").exists()  # the rest stays remote
    drop(copy, ["binned/rewarded_push.h5"])
    assert not target.exists()
    get(copy, ["binned/rewarded_push.h5"])
    assert sha256_file(target) == original
