"""Several probes on the one clock: a simulated NP1.0 + NP2.0 + NP1.0 session whose probes run on
their own clocks (start offsets, drifts of opposite sign), processed end to end.

Spikes come from the ground-truth phy import of each probe (in that probe's own samples), so
every spike time in processed/ can be checked against the truth on the imec0 clock.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pixbin.clock import ClockMap
from pixbin.dataset import DatasetConfig, build_dataset
from pixbin.errors import SyncError
from pixbin.pipeline import PipelineConfig, build_blockers, process_sessions, status_table
from pixbin.readers import read_spikes
from pixbin.simulate import SIMULATED_RIG_CONFIG, load_ground_truth, simulate_session, write_ground_truth_phy
from pixbin.sync import SyncParams
from pixbin.sync_probes import offset_window

SID = "240101_MULTI"
PROBES = ("imec0", "imec1", "imec2")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprobe")
    raw = simulate_session(root, session_id=SID, duration_s=30, seed=5, n_units=8,
                           probes=("NP1.0", "NP2.0", "NP1.0"), probe_drift_ppm=(-40.0, 35.0),
                           probe_start_s=(0.004, -0.007), drift_ppm=20.0)
    phy = {p: str(write_ground_truth_phy(raw, root / f"phy_{p}", p)) for p in PROBES}
    config = PipelineConfig.from_dict({**SIMULATED_RIG_CONFIG, "spikes": {"phy_folders": phy}})
    results = process_sessions(root, [SID], config, scheduler="serial")[SID]
    return {"root": root, "raw": raw, "results": results, "truth": load_ground_truth(raw),
            "out": root / "processed" / SID}


def _true_times(truth, probe):
    key = "spike_times_s" if probe == "imec0" else f"spike_times_s_{probe}"
    return truth["arrays"][key]


def test_every_stage_done(session):
    assert {k: v["status"] for k, v in session["results"].items()} == {
        s: "done" for s in ["extract", "sync", "behaviour", "spikes", "lfp", "pose"]}


def test_each_probe_is_mapped_onto_imec0(session):
    doc = json.loads((session["out"] / "sync.json").read_text())
    for probe in ("imec1", "imec2"):
        truth = session["truth"]["other_probes"][probe]["map_to_imec0"]
        fitted = ClockMap.load(session["out"], f"{probe}.ap")
        t = np.linspace(0, 30, 61)
        err = fitted.to_probe(t) - (truth["offset_s"] + truth["rate"] * t)
        assert np.abs(err).max() < 2e-5, probe
        assert doc["streams"][f"{probe}.ap"]["decided_by"].startswith("firstSample")
    assert "imec1.lf" not in doc["streams"]  # NP2.0: no LF band
    lf = ClockMap.load(session["out"], "imec2.lf")  # NP1.0: LF seconds → imec0 seconds
    ap = ClockMap.load(session["out"], "imec2.ap")
    assert lf.rate == ap.rate and lf.offset_s == ap.offset_s  # LF and AP files start together


def test_spike_times_of_every_probe_are_on_the_imec0_clock(session):
    spikes = read_spikes(session["out"])
    assert sorted(spikes) == list(PROBES)
    for probe in PROBES:
        times = np.sort(spikes[probe][0])
        true = np.sort(_true_times(session["truth"], probe))
        assert len(times) == len(true) > 100
        # one AP sample is 33 µs: rounding to samples plus the fitted map
        assert np.abs(times - true).max() < 1e-4, probe
    with h5py.File(session["out"] / "spikes.h5") as f:
        assert f["imec1"].attrs["clock"].startswith("imec0 AP seconds")


def test_lfp_for_every_probe(session):
    """LF band of the NP1.0 probes, the AP band of the NP2.0 one; 1 kHz on the imec0 clock."""
    out = session["out"]
    for probe, stream in (("imec0", "imec0.lf"), ("imec1", "imec1.ap"), ("imec2", "imec2.lf")):
        with xr.open_dataset(out / f"{probe}.lf_processed.h5", engine="h5netcdf") as ds:
            assert ds.attrs["rate_hz"] == 1000.0
            assert json.loads(ds.attrs["clock_map"])["stream"] == stream
            assert ds.sizes["time"] == 29999  # the imec0 recording's span at 1 kHz
            assert ds.attrs["source_rate_hz"] == pytest.approx(30000 if probe == "imec1" else 2500,
                                                               rel=1e-4)


def test_binned_tensors_hold_every_probe(session):
    root = session["root"]
    config = DatasetConfig.default()
    build_dataset(root / "processed", [SID], root / "binned", config)
    trials = pd.read_parquet(session["out"] / "trials.parquet")
    true_trials = session["truth"]["trials"]
    spikes = read_spikes(session["out"])
    spec = config.action("rewarded_push")
    tree = xr.open_datatree(root / "binned" / "rewarded_push.h5", engine="h5netcdf")
    seen_probes = set()
    for area in ("CP", "MOs"):
        node = tree[f"session_{SID}/{area}/spike_data"].to_dataset()
        counts = node["spike_counts"].values
        align = trials.set_index("trial_id").loc[node["trial_id"].values, "align_time_s"].values
        edges = spec.window_s[0] + np.arange(counts.shape[1] + 1) * config.bin_size_s
        for j, unit in enumerate(node["unit_id"].values):
            probe = f"imec{int(unit) // 100000}"
            seen_probes.add(probe)
            times, ids = spikes[probe]
            t = times[ids == int(unit) % 100000]
            for i, a in enumerate(align):
                ref = np.histogram(t, bins=a + edges)[0]
                np.testing.assert_array_equal(counts[i, :, j], np.minimum(ref, 255))
    assert seen_probes == set(PROBES)
    # ... aligned to the true push times on the imec0 clock
    for column in ("back_sensor_open_s", "tone_onset_s"):
        true = np.sort([t[column] for t in true_trials if column in t])
        got = np.sort(trials[column].dropna().to_numpy())
        assert len(got) == len(true) >= 2, column
        assert np.abs(got - true).max() < 1e-4, column


def test_offset_window_refuses_what_it_cannot_decide():
    ref = SimpleNamespace(first_sample=0, rate_hz=30000.0)
    late = SimpleNamespace(first_sample=30000 * 3600 * 3, rate_hz=30000.0)  # 3 h into the run
    lo, hi = offset_window(ref, SimpleNamespace(first_sample=0, rate_hz=30000.0), SyncParams())
    assert (lo, hi) == (-0.1, 0.1)
    lo, hi = offset_window(ref, late, SyncParams())
    assert hi - lo > 1.0  # 200 ppm over 3 h: more than a sync period


def test_a_probe_without_sync_pulses_is_refused_for_that_probe(tmp_path):
    raw = simulate_session(tmp_path, session_id="240101_NOSY", duration_s=12, seed=2, n_units=2,
                           probes=("NP1.0", "NP2.0"), offset_s=-1.0, behaviour_tail_s=1.0,
                           compress=False)
    ap = next(raw.glob("*.imec1.ap.bin"))
    data = np.memmap(ap, dtype=np.int16, mode="r+").reshape(-1, 385)
    data[:, 384] = 0  # the SY word of imec1 carries nothing
    data.flush()
    del data
    phy = {p: str(write_ground_truth_phy(raw, tmp_path / f"phy_{p}", p)) for p in ("imec0", "imec1")}
    config = PipelineConfig.from_dict({**SIMULATED_RIG_CONFIG, "spikes": {"phy_folders": phy}})
    results = process_sessions(tmp_path, ["240101_NOSY"], config, scheduler="serial",
                               stages=["extract", "sync", "behaviour", "spikes"])["240101_NOSY"]
    assert results["sync"]["status"] == "done" and results["behaviour"]["status"] == "done"
    doc = json.loads((tmp_path / "processed" / "240101_NOSY" / "sync.json").read_text())
    assert doc["streams"]["imec1.ap"]["pass"] is False
    assert any(w.startswith("imec1: no clock map") and "sync edge" in w for w in doc["warnings"])
    # the other probe goes on; the session says which probe failed and is not binned
    assert results["spikes"]["status"] == "done"
    assert "imec1.ap" in results["spikes"]["summary"]["failed_probes"]["imec1"]
    assert sorted(read_spikes(tmp_path / "processed" / "240101_NOSY")) == ["imec0"]
    row = status_table(tmp_path).set_index("session").loc["240101_NOSY"]
    assert row["spikes"].startswith("done except imec1: ")
    assert "spikes" in build_blockers(row)
    with pytest.raises(SyncError, match="imec1.ap"):
        ClockMap.load(tmp_path / "processed" / "240101_NOSY", "imec1.ap")


def test_no_machine_path_in_the_outputs(session):
    """Records aside, nothing written under data/ holds a machine path of its raw, interim or
    processed folders (the config's own paths, e.g. phy_folders, are kept as given)."""
    folders = [str((session["root"] / sub).resolve()).encode() for sub in ("raw", "interim", "processed")]
    for path in [*session["out"].glob("*"), *(session["root"] / "interim").rglob("manifest.json")]:
        if path.is_file() and path.suffix in (".json", ".h5", ".parquet"):
            content = path.read_bytes()
            assert not any(f in content for f in folders), path
