"""pixbin.dataset: processed sessions with known spikes/trials -> the binned DataTrees of FORMAT.md.

Every tensor is checked against an independent plain-numpy reference computed one trial at a time
from the spike times the fixture wrote, and every continuous signal against ``np.interp`` of the
1 kHz arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pixbin.binned_inputs import session_unit_ids
from pixbin.binned_read import open_action
from pixbin.binned_trials import assign_splits
from pixbin.binned_write import combine_action
from pixbin.dataset import DatasetConfig, build_dataset, build_session
from pixbin.errors import ConfigError, DatasetError
from pixbin.fileio import PROVENANCE_KEY, sha256_file

DURATION_S = 40.0
RATE_HZ = 1000.0
BIN_S = 0.02
WINDOW = (-1.0, 1.0)
SESSION_A = "211024_VR46"
SESSION_B = "211025_VR47_rec2"

# (probe, cluster id, area, label, depth_um); cluster ids deliberately out of order
UNITS_A = [
    ("imec0", 7, "MOs", "good", 1500.0),
    ("imec0", 3, "MOs", "mua", 1400.0),
    ("imec0", 12, "CA1", "good", 800.0),
    ("imec0", 5, "MOs", "good", 1450.0),
    ("imec0", 20, "VISp", "noise", 2500.0),
]
UNITS_B = [
    ("imec0", 3, "MOs", "good", 1450.0),
    ("imec0", 9, "CA1", "good", 700.0),
    ("imec1", 3, "MOs", "good", 1300.0),  # same cluster id on another probe
    ("imec1", 4, "CA1", "mua", 600.0),
]
EXPECTED_AREAS = {"MOs", "CA1"}  # VISp holds only a noise unit: absent


# --------------------------------------------------------------------------------------------
# fabricated processed/ session


def _trial_table(rng: np.random.Generator) -> pd.DataFrame:
    """Trials of the three lever-push actions with sub-ms alignment times, overlapping windows,
    one trial too early, one too late and one without its alignment event."""
    rows = []

    def add(action: str, align: float, *, back: float = np.nan, tone: float = np.nan, valid: bool = True,
            reason: str = "", outcome: str) -> None:
        event = "tone_onset" if action == "missed_tone" else "back_sensor_open"
        rows.append({"action": action, "start_s": (align if np.isfinite(align) else tone) - 0.3,
                     "align_event": event, "align_time_s": align,
                     "back_sensor_open_s": back, "tone_onset_s": tone,
                     "outcome": outcome, "valid": valid, "reason": reason})

    jitter = lambda: float(rng.uniform(0.0001, 0.0009))  # noqa: E731
    for a in [0.6, 3.0, 3.5, 6.0, 8.2, 10.0, 12.7, 15.1, 20.0, 24.4, 27.0, 30.3, 39.4]:
        a += jitter()
        add("rewarded_push", a, back=a, tone=a - 0.5, outcome="rewarded")
    tone = 33.0
    add("rewarded_push", np.nan, tone=tone, valid=False, reason="no back_sensor_open within 10 s",
        outcome="rewarded")
    for a in [2.0, 5.0, 9.1, 14.0, 18.0, 22.2, 26.0, 35.0]:
        a += jitter()
        add("missed_tone", a, tone=a, outcome="missed")
    for a in [4.2, 11.0, 16.5, 21.0, 29.0, 36.0, 39.2]:
        a += jitter()
        add("uncued_push", a, back=a, outcome="uncued")
    frame = pd.DataFrame(rows).sort_values("start_s", kind="stable").reset_index(drop=True)
    frame.insert(0, "trial_id", np.arange(len(frame), dtype=np.int64) + 100)
    return frame


def make_processed_session(root: Path, session_id: str, units_spec: list[tuple], *, seed: int = 0,
                           lfp: bool = True) -> dict[str, Any]:
    """Write processed/<session_id>/ with known spikes, trials, behaviour, pose (and LFP);
    return the truth."""
    rng = np.random.default_rng(seed)
    folder = root / session_id
    folder.mkdir(parents=True)
    trials = _trial_table(rng)
    trials.to_parquet(folder / "trials.parquet")

    units = pd.DataFrame({
        "unit_id": np.array([u[1] for u in units_spec], dtype=np.int64),
        "probe": [u[0] for u in units_spec],
        "label": [u[3] for u in units_spec],
        "channel": np.array([int(u[4] // 20) for u in units_spec]),
        "depth_um": np.array([u[4] for u in units_spec]),
        "area": [u[2] for u in units_spec],
        "firing_rate_hz": rng.uniform(1, 20, len(units_spec)),
        "num_spikes": rng.integers(100, 1000, len(units_spec)),
        "presence_ratio": rng.uniform(0.8, 1.0, len(units_spec)),
        "isi_violations_ratio": rng.uniform(0, 1, len(units_spec)),
        "amplitude_cutoff": rng.uniform(0, 0.2, len(units_spec)),
        "snr": np.r_[np.nan, rng.uniform(1, 10, len(units_spec) - 1)],
    })
    units.to_parquet(folder / "units.parquet")

    edges = WINDOW[0] + np.arange(int(round((WINDOW[1] - WINDOW[0]) / BIN_S)) + 1) * BIN_S
    rewarded = trials.loc[trials["action"] == "rewarded_push", "back_sensor_open_s"].dropna().to_numpy()
    spikes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for probe in sorted({u[0] for u in units_spec}):
        times, ids = [], []
        for u in [u for u in units_spec if u[0] == probe]:
            t = rng.uniform(0.0, DURATION_S, int(rng.integers(400, 900)))
            t = np.r_[t, t[:50] + 0.004]  # close pairs: counts of 2 in a bin
            times.append(t)
            ids.append(np.full(t.size, u[1]))
        first = units_spec[[u[0] for u in units_spec].index(probe)][1]
        # spikes exactly on the bin edges of two overlapping rewarded trials, and just before
        for a in rewarded[1:3]:
            on_edges = a + edges
            times.append(np.r_[on_edges, np.nextafter(on_edges[0], -np.inf)])
            ids.append(np.full(on_edges.size + 1, first))
        # a burst of 300 spikes in one bin: saturates spike_counts at 255
        times.append(rewarded[4] + 0.0051 + np.arange(300) * 1e-5)
        ids.append(np.full(300, first))
        # spikes of a cluster not in units.parquet: ignored
        times.append(rng.uniform(0.0, DURATION_S, 100))
        ids.append(np.full(100, 999))
        t, i = np.concatenate(times), np.concatenate(ids).astype(np.int64)
        order = np.argsort(t, kind="stable")
        spikes[probe] = (t[order], i[order])
    with h5py.File(folder / "spikes.h5", "w") as f:
        for probe, (t, i) in spikes.items():
            f.create_dataset(f"{probe}/spike_times_s", data=t)
            f.create_dataset(f"{probe}/spike_unit_ids", data=i)

    n = int(DURATION_S * RATE_HZ)
    t_1k = np.arange(n) / RATE_HZ
    behaviour = {
        "Back_Sensor": (2 * np.sin(2 * np.pi * 0.37 * t_1k) + t_1k / 100).astype(np.float32),
        "Tone_Signal": rng.normal(size=n).astype(np.float32),
    }
    xr.Dataset({k: ("time", v, {"units": "V"}) for k, v in behaviour.items()},
               coords={"time": t_1k}).to_netcdf(folder / "NeuropixelBehaviour(0)_processed.h5", engine="h5netcdf")
    pose_x = np.stack([100 + 10 * np.sin(t_1k), 50 + 5 * np.cos(3 * t_1k)], axis=1).astype(np.float32)
    pose_y = np.stack([20 + t_1k, 30 - t_1k / 2], axis=1).astype(np.float32)
    likelihood = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    masked = (t_1k >= 19.9) & (t_1k < 20.3)
    pose_x[masked, 0] = np.nan
    pose_y[masked, 0] = np.nan
    xr.Dataset({"x": (("time", "keypoint"), pose_x), "y": (("time", "keypoint"), pose_y),
                "likelihood": (("time", "keypoint"), likelihood)},
               coords={"time": t_1k, "keypoint": ["paw", "nose"]}).to_netcdf(
        folder / "USB_Camera_pose.h5", engine="h5netcdf")
    lfp_values = None
    if lfp:
        y_um = np.arange(16) * 100.0
        lfp_values = rng.normal(size=(n, 16)).astype(np.float32)
        xr.Dataset({"lfp": (("time", "channel"), lfp_values)},
                   coords={"time": t_1k, "channel": np.arange(16), "x_um": ("channel", np.full(16, 16.0)),
                           "y_um": ("channel", y_um)}).to_netcdf(folder / "imec0.lf_processed.h5", engine="h5netcdf")
    (folder / "sync.json").write_text(json.dumps({
        "behaviour": {"model": {"offset_s": 0.25, "rate_ratio": 1.000012, "ppm": 12.0},
                      "edges_matched": 40, "edges_missing": 0, "residual_median_us": 3.1,
                      "pass": True, "pairs": [[k, k + 0.25] for k in range(40)]}}))
    (folder / "lag.json").write_text(json.dumps([{"lag_start": 250, "lag_end": -30}]))
    return {"folder": folder, "units": units, "trials": trials, "spikes": spikes, "t_1k": t_1k,
            "behaviour": behaviour, "pose": {"x": pose_x, "y": pose_y, "likelihood": likelihood},
            "lfp": lfp_values}


def reference_counts(times: np.ndarray, ids: np.ndarray, unit_ids: list[int], aligns: np.ndarray) -> np.ndarray:
    """Plain numpy, one trial and one unit at a time: count spikes with a+e_k <= t < a+e_(k+1)."""
    n_bins = int(round((WINDOW[1] - WINDOW[0]) / BIN_S))
    edges = WINDOW[0] + np.arange(n_bins + 1) * BIN_S
    out = np.zeros((aligns.size, n_bins, len(unit_ids)), dtype=np.int64)
    for j, a in enumerate(aligns):
        abs_edges = a + edges
        for c, u in enumerate(unit_ids):
            t = times[ids == u]
            out[j, :, c] = ((t[:, None] >= abs_edges[None, :-1]) & (t[:, None] < abs_edges[None, 1:])).sum(axis=0)
    return np.minimum(out, 255).astype(np.uint8)


def expected_included(truth: dict[str, Any], action: str, event: str) -> pd.DataFrame:
    t = truth["trials"]
    t = t[t["action"] == action]
    a = t[f"{event}_s"]
    ok = a.notna() & (a + WINDOW[0] >= 0) & (a + WINDOW[1] <= DURATION_S)
    return t[ok.to_numpy()].sort_values("trial_id")


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("processed")
    out = tmp_path_factory.mktemp("binned")
    truth = {SESSION_A: make_processed_session(root, SESSION_A, UNITS_A, seed=1),
             SESSION_B: make_processed_session(root, SESSION_B, UNITS_B, seed=2, lfp=False)}
    config = DatasetConfig.default()
    manifest = build_dataset(root, [SESSION_B, SESSION_A], out, config)
    return {"root": root, "out": out, "truth": truth, "config": config, "manifest": manifest}


# --------------------------------------------------------------------------------------------
# configuration


def test_default_config_round_trips() -> None:
    config = DatasetConfig.default()
    assert config.bin_size_s == 0.02
    assert [a.name for a in config.actions] == ["rewarded_push", "missed_tone", "uncued_push"]
    assert config.action("missed_tone").align_event == "tone_onset"
    assert config.action("uncued_push").window_s == (-1.0, 1.0)
    assert config.unit_preset == "all" and config.store_counts and not config.include_lfp
    assert config.split.fractions == (0.7, 0.15, 0.15) and config.split.stratify_by == "outcome"
    assert DatasetConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bin_size": 0.02}, "unknown key(s) ['bin_size']"),
        ({"actions": [{"name": "a", "align_event": "e", "window_s": [-1, 1], "win": 1}]}, "unknown key(s) ['win']"),
        ({"split": {"seed": 1, "strata": "outcome"}}, "unknown key(s) ['strata']"),
        ({"compression": {"codec": "gzip", "lvl": 4}}, "unknown key(s) ['lvl']"),
        ({"actions": [{"name": "a", "align_event": "e", "window_s": [-1, 1.01]}]}, "whole number"),
        ({"split": {"fractions": {"train": 0.5, "val": 0.2, "test": 0.2}}}, "summing to 1"),
        ({"compression": {"codec": "zstd"}}, "compression: codec: expected one of 'gzip', 'lzf', 'none'"),
        ({"bin_size_s": "20 ms"}, "cfg.yaml: bin_size_s: expected a finite number (float); found '20 ms'"),
        ({"store_counts": "yes"}, "true or false"),
    ],
)
def test_bad_config_is_refused(change: dict, message: str) -> None:
    d = DatasetConfig.default().to_dict()
    for key, value in change.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) and isinstance(d.get(key), dict) else value
    with pytest.raises(ConfigError) as info:
        DatasetConfig.from_dict(d, "cfg.yaml")
    assert message in str(info.value)
    if "unknown" in message:
        assert "valid keys" in str(info.value)


def test_yaml_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text("bin_size_s: 0.01\nsplit: {seed: 3}\nactions:\n"
                    "  - {name: rewarded_push, align_event: back_sensor_open, window_s: [-0.5, 1.5]}\n")
    config = DatasetConfig.from_yaml(path)
    assert config.bin_size_s == 0.01 and config.split.seed == 3
    assert config.split.fractions == (0.7, 0.15, 0.15)
    assert [a.name for a in config.actions] == ["rewarded_push"]
    path.write_text("bin_sizes: 0.01\n")
    with pytest.raises(ConfigError, match=r"dataset.yaml: unknown key\(s\) \['bin_sizes'\]; valid keys"):
        DatasetConfig.from_yaml(path)


# --------------------------------------------------------------------------------------------
# tensors


@pytest.mark.parametrize("session", [SESSION_A, SESSION_B])
def test_spike_tensors_equal_plain_numpy_reference(built: dict[str, Any], session: str) -> None:
    truth = built["truth"][session]
    units = truth["units"][truth["units"]["label"] != "noise"]  # preset "all"
    for spec in built["config"].actions:
        path = built["out"] / "sessions" / f"session_{session}" / f"{spec.name}.h5"
        expected = expected_included(truth, spec.name, spec.align_event)
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            node = dt[f"session_{session}"]
            assert set(node.children) == set(units["area"]) == EXPECTED_AREAS
            for area in node.children:
                ds = node[f"{area}/spike_data"].to_dataset()
                np.testing.assert_array_equal(ds["trial_id"], expected["trial_id"])
                rows = units[units["area"] == area]
                uid = session_unit_ids(rows["probe"].tolist(), rows["unit_id"].to_numpy())
                order = np.argsort(uid)
                np.testing.assert_array_equal(ds["unit_id"], uid[order])
                np.testing.assert_array_equal(ds["cluster_id"], rows["unit_id"].to_numpy()[order])
                np.testing.assert_array_equal(ds["global_unit_id"], [f"{session}/{u}" for u in uid[order]])
                np.testing.assert_array_equal(ds["probe"], rows["probe"].to_numpy()[order])
                np.testing.assert_array_equal(ds["depth_um"], rows["depth_um"].to_numpy()[order])
                ref = np.concatenate([
                    reference_counts(*truth["spikes"][p], [c], expected[f"{spec.align_event}_s"].to_numpy())
                    for p, c in zip(rows["probe"].to_numpy()[order], rows["unit_id"].to_numpy()[order])
                ], axis=2)
                assert ds["spike_counts"].dtype == np.uint8 and ds["spike_data"].dtype == bool
                np.testing.assert_array_equal(ds["spike_counts"].values, ref)
                np.testing.assert_array_equal(ds["spike_data"].values, ref > 0)
                np.testing.assert_allclose(ds["time"], WINDOW[0] + BIN_S / 2 + np.arange(100) * BIN_S, atol=1e-12)
                assert ds["binarize_loss"].dims == ("unit_id",)
                assert np.all((ds["binarize_loss"] >= 0) & (ds["binarize_loss"] < 1))


def test_edge_spikes_and_saturation_are_visible(built: dict[str, Any]) -> None:
    """The fixture's on-edge spikes give exactly one count per bin; the 300-spike burst gives 255."""
    truth = built["truth"][SESSION_A]
    expected = expected_included(truth, "rewarded_push", "back_sensor_open")
    with xr.open_datatree(built["out"] / "rewarded_push.h5", engine="h5netcdf") as dt:
        ds = dt[f"session_{SESSION_A}/MOs/spike_data"].to_dataset()
        counts = ds["spike_counts"].sel(unit_id=7).values
        assert counts.max() == 255
        assert ds["binarize_loss"].sel(unit_id=7) > 0.2
        rewarded = truth["trials"].query("action == 'rewarded_push'")["back_sensor_open_s"].dropna().to_numpy()
        j = list(expected["back_sensor_open_s"]).index(rewarded[1])
        assert (counts[j] >= 1).all()


def test_trials_outside_recording_or_without_event_are_excluded(built: dict[str, Any]) -> None:
    summary = json.loads((built["out"] / "sessions" / f"session_{SESSION_A}" / "manifest.json").read_text())
    assert summary == json.loads(json.dumps(built["manifest"]["sessions"][SESSION_A]))
    excluded = {e["trial_id"]: e["reason"] for e in summary["actions"]["rewarded_push"]["excluded"]}
    trials = built["truth"][SESSION_A]["trials"]
    rp = trials[trials["action"] == "rewarded_push"].set_index("back_sensor_open_s")
    early = int(rp.loc[[a for a in rp.index if a < 1.0], "trial_id"].iloc[0])
    late = int(rp.loc[[a for a in rp.index if a > 39.0], "trial_id"].iloc[0])
    missing = int(trials.loc[(trials["action"] == "rewarded_push") & trials["back_sensor_open_s"].isna(), "trial_id"].iloc[0])
    assert set(excluded) == {early, late, missing}
    assert "before the recording" in excluded[early]
    assert "after the recording end" in excluded[late] and "40.000000" in excluded[late]
    assert "no back_sensor_open" in excluded[missing]
    assert summary["actions"]["uncued_push"]["excluded"][0]["reason"].startswith("window")
    assert summary["recording_end_s"] == DURATION_S


def test_areas_follow_the_unit_preset(built: dict[str, Any], tmp_path: Path) -> None:
    d = DatasetConfig.default().to_dict()
    d.update(unit_preset="phy_good", actions=[a for a in d["actions"] if a["name"] == "missed_tone"])
    config = DatasetConfig.from_dict(d)
    summary = build_session(built["root"] / SESSION_A, SESSION_A, config, tmp_path)
    assert summary["areas"] == {"CA1": 1, "MOs": 2}  # VISp held only a noise unit
    with xr.open_datatree(tmp_path / "sessions" / f"session_{SESSION_A}" / "missed_tone.h5", engine="h5netcdf") as dt:
        node = dt[f"session_{SESSION_A}"]
        assert sorted(node.children) == ["CA1", "MOs"]
        np.testing.assert_array_equal(node["MOs/spike_data"]["unit_id"], [5, 7])
        assert set(node["MOs"].children) == {"spike_data", "behaviour", "pose", "trials"}


def test_attrs(built: dict[str, Any]) -> None:
    with xr.open_datatree(built["out"] / "missed_tone.h5", engine="h5netcdf") as dt:
        root = dt.attrs
        for key in ("action", "align_event", "window_s", "bin_size_s", "bin_edges", "time_reference",
                    "binarized", "clock", "task", "pixbin_version", "created", "parameters", "source"):
            assert key in root, key
        assert root["action"] == "missed_tone" and root["align_event"] == "tone_onset"
        assert list(root["window_s"]) == [-1.0, 1.0] and root["bin_size_s"] == 0.02
        assert root["bin_edges"] == "left-closed [t, t+Δ)" and root["time_reference"] == "bin centre"
        assert root["clock"] == "imec0 AP, seconds" and root["binarized"] == 1
        assert DatasetConfig.from_dict(json.loads(root["parameters"])) == built["config"]
        assert root["parameters"] == json.dumps(built["config"].to_dict(), sort_keys=True)
        record = json.loads(root[PROVENANCE_KEY])
        assert set(record) == {"created", "versions", "parameters"} and record["created"] == root["created"]
        assert record["parameters"] == built["config"].to_dict() and "xarray" in record["versions"]
        source = json.loads(root["source"])
        assert set(source) == {SESSION_A, SESSION_B}
        assert {"units.parquet", "spikes.h5", "trials.parquet", "sync.json"} <= set(source[SESSION_A])
        sa = dt[f"session_{SESSION_A}"].attrs
        assert sa["mouse"] == "VR46" and sa["date"] == "2021-10-24" and sa["probes"] == "imec0"
        assert json.loads(sa["sync_qc"])["behaviour"]["model"]["ppm"] == 12.0
        assert "pairs" not in json.loads(sa["sync_qc"])["behaviour"]
        sb = dt[f"session_{SESSION_B}"].attrs
        assert sb["mouse"] == "VR47" and sb["extra"] == "rec2" and sb["probes"] == "imec0,imec1"
        ds = dt[f"session_{SESSION_A}/MOs/spike_data"]
        assert ds["time"].attrs["units"] == "s"


def test_multi_probe_unit_ids(built: dict[str, Any]) -> None:
    with xr.open_datatree(built["out"] / "uncued_push.h5", engine="h5netcdf") as dt:
        ds = dt[f"session_{SESSION_B}/MOs/spike_data"]
        np.testing.assert_array_equal(ds["unit_id"], [3, 100003])
        np.testing.assert_array_equal(ds["cluster_id"], [3, 3])
        np.testing.assert_array_equal(ds["probe"], ["imec0", "imec1"])


def test_behaviour_and_pose_equal_np_interp(built: dict[str, Any]) -> None:
    truth = built["truth"][SESSION_A]
    t_1k = truth["t_1k"]
    for spec in built["config"].actions:
        expected = expected_included(truth, spec.name, spec.align_event)
        path = built["out"] / "sessions" / f"session_{SESSION_A}" / f"{spec.name}.h5"
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            area = dt[f"session_{SESSION_A}/CA1"]
            beh = area["behaviour"].to_dataset()
            times = expected[f"{spec.align_event}_s"].to_numpy()[:, None] + beh["time"].values[None, :]
            for name, signal in truth["behaviour"].items():
                assert beh[name].dtype == np.float32 and beh[name].dims == ("trial_id", "time")
                ref = np.interp(times, t_1k, signal.astype(np.float64)).astype(np.float32)
                np.testing.assert_allclose(beh[name].values, ref, rtol=1e-6, atol=1e-6)
            pose = area["pose"].to_dataset()
            assert pose["x"].dims == ("trial_id", "time", "keypoint")
            assert list(pose["keypoint"].values) == ["paw", "nose"]
            for var in ("x", "y", "likelihood"):
                for k in range(2):
                    ref = np.interp(times, t_1k, truth["pose"][var][:, k].astype(np.float64)).astype(np.float32)
                    np.testing.assert_allclose(pose[var].values[:, :, k], ref, rtol=1e-6, atol=1e-5)
            if spec.name == "rewarded_push":
                assert np.isnan(pose["x"].values[:, :, 0]).any()
            np.testing.assert_array_equal(area["trials"]["trial_id"], expected["trial_id"])


def test_pose_threshold_and_lfp(built: dict[str, Any], tmp_path: Path) -> None:
    d = DatasetConfig.default().to_dict()
    d.update(pose_likelihood_threshold=0.5, include_lfp=True,
             actions=[{"name": "missed_tone", "align_event": "tone_onset", "window_s": [-0.5, 0.5]}])
    config = DatasetConfig.from_dict(d)
    truth = built["truth"][SESSION_A]
    build_session(built["root"] / SESSION_A, SESSION_A, config, tmp_path)
    expected = expected_included(truth, "missed_tone", "tone_onset")
    aligns = expected["tone_onset_s"].to_numpy()
    with xr.open_datatree(tmp_path / "sessions" / f"session_{SESSION_A}" / "missed_tone.h5", engine="h5netcdf") as dt:
        pose = dt[f"session_{SESSION_A}/MOs/pose"].to_dataset()
        times = aligns[:, None] + pose["time"].values[None, :]
        x = np.where(truth["pose"]["likelihood"][:, 1] >= 0.5, truth["pose"]["x"][:, 1], np.nan)
        ref = np.interp(times, truth["t_1k"], x.astype(np.float64)).astype(np.float32)
        np.testing.assert_allclose(pose["x"].values[:, :, 1], ref, rtol=1e-6, atol=1e-5)
        assert np.isnan(pose["x"].values[:, :, 1]).mean() > 0.5
        lfp = dt[f"session_{SESSION_A}/MOs/lfp"].to_dataset()
        assert lfp["lfp"].dims == ("trial_id", "lfp_time", "channel")
        np.testing.assert_array_equal(lfp["probe_channel"], [14, 15])  # y_um 1400, 1500: MOs depths
        starts = np.floor((aligns - 0.5) * RATE_HZ + 0.5).astype(int)
        ref = np.stack([truth["lfp"][s:s + 1000, 14:16] for s in starts])
        np.testing.assert_array_equal(lfp["lfp"].values, ref)
        np.testing.assert_allclose(lfp["lfp_time"], -0.5 + np.arange(1000) / RATE_HZ, atol=1e-12)
        np.testing.assert_array_equal(dt[f"session_{SESSION_A}/CA1/lfp"]["probe_channel"], [8])


# --------------------------------------------------------------------------------------------
# the files


def test_lazy_open_gives_dask_arrays(built: dict[str, Any]) -> None:
    dt = open_action(built["out"] / "rewarded_push.h5")
    try:
        import dask.array as da

        for node in dt.subtree:
            for var in node.data_vars.values():
                assert isinstance(var.data, da.Array), (node.path, var.name)
        assert len(list(dt.subtree)) > 5
    finally:
        dt.close()
    with pytest.raises(DatasetError, match="not found"):
        open_action(built["out"] / "nope.h5")


def test_every_file_opens_with_open_datatree(built: dict[str, Any]) -> None:
    files = sorted(built["out"].rglob("*.h5"))
    assert len(files) == 3 + 3 * 2
    for path in files:
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            assert dt.attrs["action"] == path.stem


def test_h5py_only_reader_sees_documented_layout(built: dict[str, Any]) -> None:
    with h5py.File(built["out"] / "rewarded_push.h5", "r") as f:
        assert sorted(f) == [f"session_{SESSION_A}", f"session_{SESSION_B}"]
        assert f.attrs["action"] == "rewarded_push"
        area = f[f"session_{SESSION_A}/MOs"]
        assert set(area) == {"spike_data", "behaviour", "pose", "trials"}
        d = area["spike_data/spike_data"]
        assert d.dtype == np.int8 and d.attrs["dtype"] == "bool"
        assert set(np.unique(d[()])) <= {0, 1}
        assert d.chunks[1:] == d.shape[1:] and d.compression == "gzip"
        assert area["spike_data/spike_counts"].dtype == np.uint8
        assert list(area["spike_data/unit_id"][()]) == [3, 5, 7]
        trial_ids = area["spike_data/trial_id"][()]
        np.testing.assert_array_equal(trial_ids, area["trials/trial_id"][()])
        split = [s.decode() if isinstance(s, bytes) else s for s in area["trials/split"][()]]
        assert set(split) <= {"train", "val", "test"}
        assert area["behaviour/Back_Sensor"].dtype == np.float32


def _h5_content(group: h5py.Group) -> dict[str, Any]:
    """Every dataset's values and every non-reference attribute below ``group`` (h5py only)."""
    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        attrs = {k: v for k, v in obj.attrs.items() if k not in ("DIMENSION_LIST", "REFERENCE_LIST", "_Netcdf4Dimid", "_Netcdf4Coordinates")}
        found[name] = (obj[()] if isinstance(obj, h5py.Dataset) else None, attrs)

    group.visititems(visit)
    return found


def _assert_same_content(a: dict[str, Any], b: dict[str, Any], where: str) -> None:
    assert sorted(a) == sorted(b), where
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0], err_msg=f"{where}:{name}")
        assert sorted(a[name][1]) == sorted(b[name][1]), f"{where}:{name}"
        for key in a[name][1]:
            np.testing.assert_array_equal(a[name][1][key], b[name][1][key], err_msg=f"{where}:{name}@{key}")


def test_combined_file_equals_session_files(built: dict[str, Any]) -> None:
    out = built["out"]
    for spec in built["config"].actions:
        with h5py.File(out / f"{spec.name}.h5", "r") as combined:
            assert sorted(combined) == [f"session_{SESSION_A}", f"session_{SESSION_B}"]
            for session in (SESSION_A, SESSION_B):
                group = f"session_{session}"
                with h5py.File(out / "sessions" / group / f"{spec.name}.h5", "r") as single:
                    _assert_same_content(_h5_content(combined[group]), _h5_content(single[group]), spec.name)
    # and through xarray, for one action: every group identical (values, coords, attrs)
    with xr.open_datatree(out / "missed_tone.h5", engine="h5netcdf") as combined:
        for session in (SESSION_A, SESSION_B):
            path = out / "sessions" / f"session_{session}" / "missed_tone.h5"
            with xr.open_datatree(path, engine="h5netcdf") as single:
                group = f"session_{session}"
                assert dict(combined[group].attrs) == dict(single[group].attrs)
                leaves = [n.path for n in single[group].subtree if n.has_data]
                assert len(leaves) == 8
                for leaf in leaves:
                    assert combined[leaf].to_dataset().identical(single[leaf].to_dataset()), leaf
        ids = [combined[n.path]["global_unit_id"].values for n in combined.subtree
               if n.name == "spike_data"]
        ids = np.concatenate(ids)
        assert ids.size == np.unique(ids).size  # unique across the sessions of one file
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(built["manifest"]))
    entry = manifest["actions"]["rewarded_push"]
    assert entry["sessions"] == [SESSION_A, SESSION_B]
    assert entry["size_bytes"] == (out / "rewarded_push.h5").stat().st_size
    assert set(entry["areas"]) == EXPECTED_AREAS
    assert manifest["parameters"] == built["config"].to_dict()
    assert "xarray" in manifest["versions"]
    for record in [manifest[PROVENANCE_KEY], *(m[PROVENANCE_KEY] for m in manifest["sessions"].values())]:
        assert set(record) == {"created", "versions", "parameters"}
        assert record["parameters"] == manifest["parameters"] and record["versions"] == manifest["versions"]
    assert manifest[PROVENANCE_KEY]["created"] == manifest["created"]
    with xr.open_dataset(out / "rewarded_push.h5", engine="h5netcdf") as root:
        assert json.loads(root.attrs[PROVENANCE_KEY])["created"] == root.attrs["created"]


def test_rebuild_gives_identical_tensors(built: dict[str, Any], tmp_path: Path) -> None:
    d = built["config"].to_dict()
    d["actions"] = d["actions"][:1]
    build_dataset(built["root"], [SESSION_A, SESSION_B], tmp_path, DatasetConfig.from_dict(d))
    paths = [Path("rewarded_push.h5")] + [Path("sessions") / f"session_{s}" / "rewarded_push.h5"
                                          for s in (SESSION_A, SESSION_B)]
    for rel in paths:
        with h5py.File(built["out"] / rel, "r") as f, h5py.File(tmp_path / rel, "r") as g:
            for session in f:
                _assert_same_content(_h5_content(f[session]), _h5_content(g[session]), str(rel))


def test_action_without_trials_gives_an_empty_session_group(built: dict[str, Any], tmp_path: Path) -> None:
    d = DatasetConfig.default().to_dict()
    d["actions"] = [{"name": "laser_push", "align_event": "back_sensor_open", "window_s": [-1, 1]}]
    manifest = build_dataset(built["root"], [SESSION_A], tmp_path, DatasetConfig.from_dict(d))
    assert manifest["actions"]["laser_push"]["n_trials"] == 0
    with xr.open_datatree(tmp_path / "laser_push.h5", engine="h5netcdf") as dt:
        assert list(dt.children) == [f"session_{SESSION_A}"]
        assert not dt[f"session_{SESSION_A}"].children
        assert dt[f"session_{SESSION_A}"].attrs["n_trials"] == 0


def test_combine_refuses_missing_session(built: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="per-session files not found"):
        combine_action(built["out"], "rewarded_push", [SESSION_A, "211026_VR48"])


# --------------------------------------------------------------------------------------------
# a build appears whole or not at all


def _config(bin_size_s: float) -> DatasetConfig:
    d = DatasetConfig.default().to_dict()
    d["actions"], d["bin_size_s"] = d["actions"][:2], bin_size_s
    d["include_behaviour"] = d["include_pose"] = False  # faster; not what these tests are about
    return DatasetConfig.from_dict(d)


def _complete_build(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder``, after checking it is one whole build: every file the manifests
    list has their sha256, each session manifest is the one in manifest.json, and no temporary."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {e["file"]: e["sha256"] for e in manifest["actions"].values()}
    for session, summary in manifest["sessions"].items():
        assert json.loads((folder / "sessions" / f"session_{session}" / "manifest.json").read_text()) == summary
        listed.update({e["file"]: e["sha256"] for e in summary["actions"].values()})
    assert {rel: sha256_file(folder / rel) for rel in listed} == listed
    for entry in manifest["actions"].values():
        with h5py.File(folder / entry["file"], "r") as f:
            assert sorted(f) == [f"session_{s}" for s in entry["sessions"]]
    assert not [p for p in folder.rglob(".*")]
    return manifest


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def previous(built: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete build of both sessions at 20 ms bins, copied by each test below."""
    out = tmp_path_factory.mktemp("previous") / "binned"
    build_dataset(built["root"], [SESSION_A, SESSION_B], out, _config(0.02))
    return out


def test_a_failed_build_leaves_the_previous_build(built: dict[str, Any], previous: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "binned"
    shutil.copytree(previous, out)
    before = _digests(out)
    calls: list[str] = []

    def combine(out_dir: Path, action: str, session_ids: list[str]) -> Path:
        calls.append(action)
        if len(calls) == 2:
            raise OSError("disk full")
        return combine_action(out_dir, action, session_ids)

    monkeypatch.setattr("pixbin.dataset.combine_action", combine)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(built["root"], [SESSION_A, SESSION_B], out, _config(0.01))
    assert _digests(out) == before
    assert _complete_build(out)["parameters"]["bin_size_s"] == 0.02
    assert [p.name for p in tmp_path.iterdir()] == ["binned"]  # the staging folder is gone


_KILLS = {
    # the process dies ... (SIGKILL: no clean-up runs)
    "combining the second action": """
        combine = ds.combine_action
        def combined(*args):
            calls.append(args)
            if len(calls) == 2:
                die()
            return combine(*args)
        ds.combine_action = combined""",
    "before the swap": """
        bw._swap = lambda *args: die()""",
    "between the two renames where there is no exchange": """
        bw._exchange = lambda *args: False
        rename = os.rename
        def renamed(src, dst):
            rename(src, dst)
            if str(dst).endswith(".old"):
                die()
        bw.os.rename = renamed""",
    "after the swap, before the old build is deleted": """
        swap = bw._swap
        def swapped(*args):
            swap(*args)
            die()
        bw._swap = swapped""",
}


@pytest.mark.parametrize("when", list(_KILLS))
def test_a_killed_build_leaves_one_complete_build(built: dict[str, Any], previous: Path, tmp_path: Path,
                                                  when: str) -> None:
    """SIGKILL at each step of a build of session B at 10 ms bins over the build of A and B at
    20 ms: binned/ holds one complete build (its manifests match its files); the next build
    removes (or undoes) what the killed one left; A's files, not rebuilt, stay as they were."""
    out = tmp_path / "binned"
    shutil.copytree(previous, out)
    kept = {k: v for k, v in _digests(out).items() if k.startswith(f"sessions/session_{SESSION_A}/")}
    config = _config(0.01)
    script = textwrap.dedent("""
        import json, os, signal, sys
        import pixbin.binned_write as bw
        import pixbin.dataset as ds
        calls = []
        def die():
            os.kill(os.getpid(), signal.SIGKILL)
    """) + textwrap.dedent(_KILLS[when]) + textwrap.dedent(f"""
        ds.build_dataset({str(built["root"])!r}, [{SESSION_B!r}], {str(out)!r},
                         ds.DatasetConfig.from_dict(json.loads({json.dumps(config.to_dict())!r})))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "binned")
    assert left and all(name.startswith(".binned.tmp-") for name in left), left
    if when.startswith("between"):  # binned/ renamed aside, the new build not yet in place
        assert not out.exists() and left[1].endswith(".old")
        assert _complete_build(tmp_path / left[1])["parameters"]["bin_size_s"] == 0.02
    else:
        manifest = _complete_build(out)
        new = when.startswith("after")
        assert manifest["parameters"]["bin_size_s"] == (0.01 if new else 0.02)
        assert sorted(manifest["sessions"]) == ([SESSION_B] if new else [SESSION_A, SESSION_B])

    manifest = build_dataset(built["root"], [SESSION_B], out, config)
    assert [p.name for p in tmp_path.iterdir()] == ["binned"]
    assert _complete_build(out) == json.loads(json.dumps(manifest))
    assert manifest["parameters"]["bin_size_s"] == 0.01 and list(manifest["sessions"]) == [SESSION_B]
    # a build of a subset of the sessions keeps the other sessions' files as they were
    assert {k: v for k, v in _digests(out).items() if k.startswith(f"sessions/session_{SESSION_A}/")} == kept


def test_only_leftovers_of_finished_processes_are_removed(tmp_path: Path) -> None:
    from pixbin.binned_write import staged_dir

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "binned"
    (out / "sessions").mkdir(parents=True)
    (out / "a.h5").write_text("previous")
    live, dead = (tmp_path / f".binned.tmp-{pid}-0123abcd" for pid in (os.getpid(), gone.pid))
    live.mkdir()
    (dead / "sessions").mkdir(parents=True)
    with staged_dir(out) as staging:
        assert (staging / "a.h5").read_text() == "previous" and (staging / "sessions").is_dir()
        (staging / "b.h5").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "binned"]
    assert sorted(p.name for p in out.iterdir()) == ["a.h5", "b.h5", "sessions"]


# --------------------------------------------------------------------------------------------
# splits


def test_split_is_deterministic_and_stratified() -> None:
    trials = pd.DataFrame({
        "trial_id": np.arange(150, dtype=np.int64),
        "outcome": ["rewarded"] * 100 + ["missed"] * 40 + ["rewarded"] * 10,
        "valid": [True] * 140 + [False] * 10,
    })
    config = DatasetConfig.default().split
    split = assign_splits(trials, SESSION_A, config)
    assert split.equals(assign_splits(trials.sample(frac=1, random_state=3), SESSION_A, config).sort_index())
    by_outcome = pd.crosstab(trials.set_index("trial_id")["outcome"], split)
    assert by_outcome.loc["rewarded", ["train", "val", "test"]].tolist() == [70, 15, 15]
    assert by_outcome.loc["missed", ["train", "val", "test"]].tolist() == [28, 6, 6]
    assert (split.iloc[140:] == "none").all()
    other_seed = assign_splits(trials, SESSION_A, type(config)(seed=1))
    other_session = assign_splits(trials, SESSION_B, config)
    assert not split.equals(other_seed) and not split.equals(other_session)
    # a trial's label does not depend on the other actions' trials
    sub = assign_splits(trials.iloc[:100], SESSION_A, config)
    assert sub.equals(split.iloc[:100])


def test_split_in_files_matches_session_split(built: dict[str, Any]) -> None:
    truth = built["truth"][SESSION_A]
    expected = assign_splits(truth["trials"], SESSION_A, built["config"].split)
    seen = 0
    for spec in built["config"].actions:
        path = built["out"] / "sessions" / f"session_{SESSION_A}" / f"{spec.name}.h5"
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            for area in ("MOs", "CA1"):
                tr = dt[f"session_{SESSION_A}/{area}/trials"].to_dataset()
                np.testing.assert_array_equal(tr["split"].values, expected.loc[tr["trial_id"].values].values)
                assert tr["valid"].dtype == bool and tr["outcome"].dtype.kind == "U"
                np.testing.assert_allclose(tr["stop_time"] - tr["start_time"], 2.0)
                np.testing.assert_array_equal(tr["duration"], tr["stop_time"] - tr["start_time"])
                np.testing.assert_array_equal(tr["align_time"], tr[f"{spec.align_event}_s"])
            seen += tr.sizes["trial_id"]
    assert seen > 20
