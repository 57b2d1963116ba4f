"""The simulator checked against its own ground truth, as a reviewer would, and against real
SpikeGLX metas read by the same code."""

from __future__ import annotations

import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from pixbin.errors import ConfigError
from pixbin.simulate import SimulationParams, load_ground_truth, simulate_session


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> dict:
    """A 20 s uncompressed session and its ground truth."""
    root = tmp_path_factory.mktemp("sim")
    raw = simulate_session(root, duration_s=20, seed=3, n_units=12, compress=False,
                           offset_s=-1.2, drift_ppm=40.0, dropped_pulses=2)
    return {"raw": raw, "truth": load_ground_truth(raw)}


def _meta(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_meta_carries_every_key_of_a_real_np1_meta(sim, realdata):
    real = realdata / "spikeglx/Noise4Sam_g0/Noise4Sam_g0_imec0/Noise4Sam_g0_t0.imec0.ap.meta"
    ours = next(sim["raw"].glob("*.ap.meta"))
    missing = set(_meta(real)) - set(_meta(ours))
    # fileSHA1 is written by SpikeGLX after the run; the others must all be there.
    assert missing <= {"fileSHA1"}, missing
    meta = _meta(ours)
    rate = float(meta["imSampRate"])
    assert rate != int(rate), "calibrated rates are not integers"
    assert int(meta["nSavedChans"]) == 385
    bin_size = next(sim["raw"].glob("*.ap.bin")).stat().st_size
    assert int(meta["fileSizeBytes"]) == bin_size


def test_spikeinterface_and_probeinterface_read_simulated_like_real(sim, realdata):
    import probeinterface
    import spikeinterface.extractors as se

    real_meta = realdata / "spikeglx/Noise4Sam_g0/Noise4Sam_g0_imec0/Noise4Sam_g0_t0.imec0.ap.meta"
    ours = next(sim["raw"].glob("*.ap.meta"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real_probe = probeinterface.read_spikeglx(real_meta)
        our_probe = probeinterface.read_spikeglx(ours)
        rec = se.read_spikeglx(sim["raw"], stream_id="imec0.ap")
        lf = se.read_spikeglx(sim["raw"], stream_id="imec0.lf")
    # same probe model and bank-0 layout → identical geometry
    assert our_probe.model_name == real_probe.model_name
    np.testing.assert_array_equal(our_probe.contact_positions, real_probe.contact_positions)
    assert rec.get_num_channels() == 384 and lf.get_num_channels() == 384
    assert rec.get_sampling_frequency() == pytest.approx(sim["truth"]["probe"]["ap_rate_hz"])
    assert rec.get_num_samples() == sim["truth"]["probe"]["n_samples_ap"]
    assert lf.get_num_samples() == sim["truth"]["probe"]["n_samples_lf"]


def test_spikes_are_visible_at_the_stated_channels(sim):
    import spikeinterface.extractors as se

    truth = sim["truth"]
    rec = se.read_spikeglx(sim["raw"], stream_id="imec0.ap")
    fs = rec.get_sampling_frequency()
    traces = rec.get_traces(return_in_uV=True)
    times, ids = truth["arrays"]["spike_times_s"], truth["arrays"]["spike_unit_ids"]
    for unit in truth["units"][:6]:
        samples = np.round(times[ids == unit["unit_id"]] * fs).astype(int)
        samples = samples[(samples > 50) & (samples < traces.shape[0] - 50)]
        trough = traces[samples, unit["channel"]].mean()
        noise = np.median(np.abs(traces[:, unit["channel"]])) / 0.6745
        assert trough < -0.5 * unit["amplitude_uv"]
        assert -trough > 4 * noise, f"unit {unit['unit_id']} not detectable"
        far = (unit["channel"] + 200) % 384
        assert abs(traces[samples, far].mean()) < 0.2 * unit["amplitude_uv"]


def test_units_refractory_and_areas(sim):
    truth = sim["truth"]
    times, ids = truth["arrays"]["spike_times_s"], truth["arrays"]["spike_unit_ids"]
    ranges = {a["area"]: (a["depth_min_um"], a["depth_max_um"]) for a in truth["areas"]}
    for unit in truth["units"]:
        t = times[ids == unit["unit_id"]]
        assert np.all(np.diff(t) >= 0.0015)
        lo, hi = ranges[unit["area"]]
        assert lo <= unit["depth_um"] < hi
    control = [u for u in truth["units"] if u["area"] == "LSr"]
    assert all(not u["modulation_gains"] for u in control)


def test_sync_edges_where_stated(sim):
    truth = sim["truth"]
    raw = np.fromfile(next(sim["raw"].glob("*.lf.bin")), dtype=np.int16).reshape(-1, 385)
    sy = (raw[:, 384] >> 6) & 1
    rising = np.flatnonzero(np.diff(sy) == 1) + 1
    rate = truth["probe"]["lf_rate_hz"]
    expected = truth["arrays"]["sync_rising_s"]
    np.testing.assert_allclose(rising / rate, expected[: rising.size], atol=1 / rate)
    assert abs(rising.size - expected.size) <= 1


def test_behaviour_tdms_channels_rates_and_events(sim):
    from nptdms import TdmsFile

    truth = sim["truth"]
    path = sim["raw"] / "NeuropixelBehaviour(0).tdms"
    with TdmsFile.open(path) as tdms:
        names = {g.name for g in tdms.groups()}
        assert {"Back_Sensor", "Front_Sensor", "Reset_Signal", "Reward_Signal", "Tone_Signal",
                "NpxlSync_Signal", "CamFrames"} <= names
        channel = tdms["Tone_Signal"]["0"]
        assert channel.properties["wf_increment"] == pytest.approx(1 / 25000)
        assert "wf_start_time" in channel.properties
        tone = channel[:]
        assert len(tone) == truth["behaviour"]["n_samples"]
    # tone onsets where the ground truth says, on the probe clock
    b = truth["behaviour"]
    onsets = np.flatnonzero((tone[1:] > 2.5) & (tone[:-1] <= 2.5)) + 1
    probe_t = b["offset_s"] + onsets / b["rate_true_hz"]
    expected = [e["time_s"] for e in truth["events"] if e["event"] == "tone_onset"]
    np.testing.assert_allclose(probe_t, expected, atol=1 / b["rate_true_hz"] + 1e-9)


def test_camera_frames_and_dropped(sim):
    from nptdms import TdmsFile

    truth = sim["truth"]["camera"]
    with TdmsFile.open(sim["raw"] / "USB_Camerameta.tdms") as meta:
        skipped = meta["frames"]["ind_skipped"][:]
        n_stamps = len(meta["keys"]["IMAQdxTimestampLow"])
    with TdmsFile.open(sim["raw"] / "USB_Camera.tdms") as video:
        n_pixels = len(video["Image"]["Image"])
    assert skipped.tolist() == truth["dropped_frame_indices"]
    assert n_stamps == truth["n_saved"] == truth["n_exposures"] - len(skipped)
    assert n_pixels == truth["n_saved"] * truth["width"] * truth["height"]


def test_packed_files_are_safe_single_members(tmp_path):
    raw = simulate_session(tmp_path, duration_s=10, seed=1, n_units=3, write_ap=False)
    archives = sorted(raw.glob("*.tar.gz"))
    assert {a.name for a in archives} >= {"NeuropixelBehaviour(0).tdms.tar.gz",
                                          "USB_Camera.tdms.tar.gz"}
    for archive in archives:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
        assert len(members) == 1 and members[0].isfile()
        assert members[0].name == archive.name[: -len(".tar.gz")]
    assert (raw / "extra").is_dir() and (raw / "areas.csv").exists()


def test_session_yaml_names_the_clock_of_the_metas(tmp_path):
    from pixbin.nwb import read_session_metadata

    raw = simulate_session(tmp_path, duration_s=10, seed=1, n_units=2, write_ap=False, compress=False)
    meta = read_session_metadata(raw)
    assert (meta.timezone, meta.subject_id, meta.sex, meta.age) == ("UTC", "SIM01", "U", "P90D")
    created = next(line for line in (raw / "SIM01_g0_t0.imec0.lf.meta").read_text().splitlines()
                   if line.startswith("fileCreateTime="))
    assert created == "fileCreateTime=2024-01-01T10:30:00"  # 10:30 UTC, the simulator's start


def test_deterministic_for_a_seed(tmp_path):
    kwargs = dict(duration_s=10, seed=7, n_units=4, compress=False, write_ap=False)
    a = simulate_session(tmp_path / "a", **kwargs)
    b = simulate_session(tmp_path / "b", **kwargs)
    for name in ["NeuropixelBehaviour(0).tdms", "USB_Camera.tdms"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert next(a.glob("*.lf.bin")).read_bytes() == next(b.glob("*.lf.bin")).read_bytes()
    ta, tb = json.loads((a / "ground_truth.json").read_text()), json.loads(
        (b / "ground_truth.json").read_text())
    assert ta == tb


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="YYMMDD"):
        simulate_session(tmp_path, session_id="mouse1")
    with pytest.raises(ConfigError, match="unknown"):
        SimulationParams.from_dict({"duration": 5})
