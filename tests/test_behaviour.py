"""pixbin.behaviour: events, trials, labels and 1 kHz channels against the simulator's truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
from nptdms import ChannelObject, GroupObject, RootObject, TdmsWriter

from pixbin.behaviour import (
    BehaviourParams,
    label_sample,
    merge_trains,
    run_behaviour,
)
from pixbin.clock import ClockMap
from pixbin.edges import EdgeDetector, Edges
from pixbin.errors import BehaviourError, ConfigError, TdmsError
from pixbin.readers import read_action_labels
from pixbin.resample import Resampler1kHz
from pixbin.simulate import load_ground_truth, simulate_session
from pixbin.tasks.leverpush import Actions, Events, LeverPush
from pixbin.tdms import iter_chunks, list_channels

TDMS = "NeuropixelBehaviour(0).tdms"
H5 = "NeuropixelBehaviour(0)_processed.h5"
TOL_S = 1e-4  # edges are timed to a fraction of a 40 µs sample; the contract asks for 1 ms


class TruthClock:
    """Behaviour ↔ probe clock from the simulator's truth (not the sync stage's fit)."""

    def __init__(self, gt: dict) -> None:
        b = gt["behaviour"]
        self.offset_s = b["offset_s"]
        self.scale = b["rate_nominal_hz"] / b["rate_true_hz"]

    def to_probe(self, t):
        return self.offset_s + np.asarray(t, np.float64) * self.scale

    def from_probe(self, t):
        return (np.asarray(t, np.float64) - self.offset_s) / self.scale


def _session(root: Path, **kw) -> tuple[Path, dict]:
    raw = simulate_session(root, compress=False, write_ap=False, n_units=4, dropped_frames=0, **kw)
    return raw, load_ground_truth(raw)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """40 s, no opto; behaviour starts 3 s before the probe, clock +50 ppm."""
    root = tmp_path_factory.mktemp("plain")
    raw, gt = _session(root, duration_s=40, seed=3, drift_ppm=50.0, offset_s=-3.0)
    out = root / "processed"
    summary = run_behaviour(behaviour_tdms=raw / TDMS, clock_map=TruthClock(gt),
                            probe_duration_s=gt["probe"]["duration_s"], out_dir=out)
    return raw, gt, out, summary


@pytest.fixture(scope="module")
def opto(tmp_path_factory):
    """60 s with opto (every opto action occurs for seed 2); behaviour starts 3 s after the probe
    and stops 1 s before it, clock −50 ppm."""
    root = tmp_path_factory.mktemp("opto")
    raw, gt = _session(root, duration_s=60, seed=2, drift_ppm=-50.0, offset_s=3.0,
                       behaviour_tail_s=-1.0, opto=True)
    out = root / "processed"
    summary = run_behaviour(behaviour_tdms=raw / TDMS, clock_map=TruthClock(gt),
                            probe_duration_s=gt["probe"]["duration_s"], out_dir=out)
    return raw, gt, out, summary


# ------------------------------------------------------------------------------- truth helpers
def truth_events(gt: dict, merge_gap_s: float = 0.2) -> pd.DataFrame:
    """Ground-truth events, laser/shutter pulse trains merged as the task declares."""
    ev = pd.DataFrame(gt["events"])
    parts = [ev[~ev["channel"].isin(["Shutter_Signal", "Laser_Signal"])]]
    for channel, kind in (("Shutter_Signal", "shutter"), ("Laser_Signal", "laser")):
        on = np.sort(ev.loc[ev["event"] == f"{kind}_onset", "time_s"].to_numpy())
        off = np.sort(ev.loc[ev["event"] == f"{kind}_offset", "time_s"].to_numpy())
        if on.size == 0:
            continue
        starts = on[np.r_[True, np.diff(on) > merge_gap_s]]
        ends = np.r_[starts[1:], np.inf]
        last_off = [off[(off > a) & (off < b)][-1] for a, b in zip(starts, ends)]
        parts.append(pd.DataFrame({"time_s": starts, "event": f"{kind}_onset", "channel": channel}))
        parts.append(pd.DataFrame({"time_s": last_off, "event": f"{kind}_offset", "channel": channel}))
    return pd.concat(parts, ignore_index=True).sort_values(["event", "time_s"]).reset_index(drop=True)


def truth_trials(gt: dict) -> pd.DataFrame:
    rows = [dict(t) for t in gt["trials"]]
    for o in gt["opto"]:
        for action in o["actions"]:
            rows.append({"action": action, "start_s": o["trial_start_s"], "outcome": o["outcome"]})
    df = pd.DataFrame(rows)
    return df.sort_values(["start_s", "action"]).reset_index(drop=True)


def assert_events_match(out: Path, gt: dict, tol_s: float = TOL_S) -> None:
    got = pd.read_parquet(out / "events.parquet")
    want = truth_events(gt)
    assert got["time_s"].is_monotonic_increasing
    g = got.sort_values(["event", "time_s"]).reset_index(drop=True)
    assert g["event"].value_counts().to_dict() == want["event"].value_counts().to_dict()
    assert (g["channel"] == want["channel"]).all()
    err = np.abs(g["time_s"].to_numpy() - want["time_s"].to_numpy())
    assert err.max() < tol_s, f"max event time error {err.max() * 1e6:.1f} µs"


def assert_trials_match(out: Path, gt: dict, tol_s: float = TOL_S) -> None:
    got = pd.read_parquet(out / "trials.parquet")
    want = truth_trials(gt)
    got = got.sort_values(["start_s", "action"]).reset_index(drop=True)
    assert got["action"].tolist() == want["action"].tolist()
    assert got["outcome"].tolist() == want["outcome"].tolist()
    assert np.abs(got["start_s"] - want["start_s"]).max() < tol_s
    for col in ("tone_onset_s", "back_sensor_open_s", "reward_signal_s"):
        if col not in want:
            continue
        for i in np.flatnonzero(want[col].notna()):
            if col[:-2] in LeverPush.actions[got.at[i, "action"]].align:
                assert abs(got.at[i, col] - want.at[i, col]) < tol_s, (i, col)


# ------------------------------------------------------------------------------- edges
def test_merge_trains():
    e = Edges(rising=[0, 50, 100, 1000, 1300], falling=[-5, 10, 60, 110, 1010, 1310])
    m = merge_trains(e, 200)
    np.testing.assert_array_equal(m.rising, [0, 1000, 1300])
    np.testing.assert_array_equal(m.falling, [-5, 110, 1010, 1310])
    assert merge_trains(e, 0) is e


# ------------------------------------------------------------------------------- 1 kHz
def _resample(x: list[np.ndarray], rate: float, pos: np.ndarray, chunk: int) -> np.ndarray:
    n = x[0].size
    r = Resampler1kHz(rate_hz=rate, n_in=n, positions=pos, n_channels=len(x))
    for s in range(0, n, chunk):
        r.feed([c[s:s + chunk] for c in x])
    return r.finish()


def test_resampler_passband_stopband_and_chunking():
    rate, n = 25000.0, 200_000
    k = np.arange(n)
    pos = np.arange(7900) * 25 * (1 + 50e-6) - 120.4  # 1 kHz, drifting, starts before sample 0
    inner = (pos > 600) & (pos < n - 600)
    for f, expect in ((5, 1.0), (100, 1.0), (250, 1.0)):
        out = _resample([np.sin(2 * np.pi * f * k / rate)], rate, pos, 50_000)[0]
        truth = expect * np.sin(2 * np.pi * f * pos / rate)
        assert np.abs(out[inner] - truth[inner]).max() < 3e-3, f
    for f in (500, 900, 2400, 4990, 11000):  # would alias into 0-500 Hz: removed (< -60 dB)
        out = _resample([np.sin(2 * np.pi * f * k / rate)], rate, pos, 50_000)[0]
        assert np.abs(out[inner]).max() < 1e-3, f
    x = [np.random.default_rng(0).normal(size=n), ((k // 2500) % 2) * 5.0]
    a = _resample(x, rate, pos, 1024)
    b = _resample(x, rate, pos, n)
    np.testing.assert_array_equal(a, b)  # no chunk-border artefacts
    late = pos + 30_000  # the first outputs lie several chunks into the input
    np.testing.assert_array_equal(_resample(x, rate, late, 1024), _resample(x, rate, late, n))
    assert a.dtype == np.float32
    outside = (pos < 0) | (pos > n - 1)
    assert np.isnan(a[:, outside]).all() and not np.isnan(a[:, ~outside]).any()
    # square wave: exact levels away from its edges
    r = pos % 2500
    far = (np.minimum(r, 2500 - r) > 300) & ~outside
    np.testing.assert_allclose(a[1, far], np.where((pos[far] // 2500) % 2, 5.0, 0.0), atol=1e-5)


def test_resampler_numba_and_numpy_kernels_agree(monkeypatch):
    import pixbin.resample as rs

    rate, n = 25000.0, 60_000
    x = [np.random.default_rng(3).normal(size=n), np.random.default_rng(4).normal(size=n)]
    pos = np.arange(2300) * 25.001 + 17.3
    fast = _resample(x, rate, pos, 9_999)
    monkeypatch.setattr(rs, "_KERNELS", {"decimate": rs._decimate_numpy,
                                         "interp": rs._interp_numpy})
    slow = _resample(x, rate, pos, 9_999)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5)


def test_filter_design_matches_scipy():
    from scipy.signal import firwin, kaiser_beta, kaiserord

    from pixbin.resample import _kaiser_taps, _lowpass

    for atten, width, fs in ((60, 1500, 25000), (60, 200, 2500), (40, 300, 3000)):
        numtaps, beta = kaiserord(atten, width / (fs / 2))
        assert _kaiser_taps(atten, width, fs) == (numtaps, pytest.approx(beta))
        assert _kaiser_taps(atten, width, fs)[1] == pytest.approx(kaiser_beta(atten))
        np.testing.assert_allclose(_lowpass(numtaps, fs / 10, fs, beta),
                                   firwin(numtaps, fs / 10, window=("kaiser", beta), fs=fs),
                                   atol=1e-15)


def test_resampler_other_rates_need_no_constant():
    """Rates come from the file: a 2 kHz and a 30 kHz input both land on the 1 kHz grid."""
    for rate in (2000.0, 29999.94):
        n = int(rate * 4)
        k = np.arange(n)
        pos = np.arange(3500) * rate / 1000 + 0.3
        out = _resample([np.sin(2 * np.pi * 40 * k / rate)], rate, pos, 7777)[0]
        inner = (pos > 0.02 * rate) & (pos < n - 0.02 * rate)  # the ends are extended by a constant
        np.testing.assert_allclose(out[inner], np.sin(2 * np.pi * 40 * pos[inner] / rate), atol=3e-3)


# ------------------------------------------------------------------------------- stage on simulated sessions
def test_events_match_ground_truth(plain):
    raw, gt, out, summary = plain
    assert_events_match(out, gt)
    assert summary["events_outside_recording"] == 0
    assert summary["rate_hz"] == pytest.approx(gt["behaviour"]["rate_nominal_hz"])


def test_trials_match_ground_truth(plain):
    raw, gt, out, summary = plain
    assert_trials_match(out, gt)
    trials = pd.read_parquet(out / "trials.parquet")
    assert set(trials["action"]) == {t["action"] for t in gt["trials"]}
    assert {"rewarded_push", "missed_tone", "uncued_push"} <= set(trials["action"])
    assert trials["valid"].all() and (trials["reason"] == "").all()
    assert trials["trial_id"].tolist() == list(range(len(trials)))


def test_opto_session_every_action(opto):
    raw, gt, out, summary = opto
    assert_events_match(out, gt)
    assert_trials_match(out, gt)
    assert set(summary["actions"]) == set(Actions.__members__)  # all 15 actions occur
    assert summary["raw_pulses"]["Laser_Signal"] == 10 * len(gt["opto"])
    assert summary["unlabelled"] == []


def test_trials_table_contract(plain):
    _, _, out, _ = plain
    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials.columns[:5]) == ["trial_id", "action", "start_s", "align_event",
                                        "align_time_s"]
    assert {"tone_onset_s", "back_sensor_open_s", "reward_signal_s", "shutter_onset_s", "laser_onset_s",
            "outcome", "valid", "reason"} <= set(trials.columns)
    assert trials["trial_id"].dtype == np.int64 and trials["valid"].dtype == bool
    assert trials["start_s"].dtype == np.float64 and trials["align_time_s"].dtype == np.float64
    rp = trials[trials["action"] == "rewarded_push"]
    assert (rp["align_event"] == "back_sensor_open").all()
    np.testing.assert_array_equal(rp["align_time_s"], rp["back_sensor_open_s"])
    assert (rp["reward_signal_s"] > rp["back_sensor_open_s"]).all()
    mt = trials[trials["action"] == "missed_tone"]
    assert mt["back_sensor_open_s"].isna().all()  # not an alignment event of missed_tone
    meta = json.loads(pq.read_schema(out / "trials.parquet").metadata[b"pixbin"])
    assert meta["task"] == "leverpush" and meta["parameters"]["debounce_s"] == 0.001
    assert meta["scan_window_s"] == 10.0
    assert "versions" in meta["provenance"] and "created" in meta["provenance"]
    events = pd.read_parquet(out / "events.parquet")
    assert list(events.columns) == ["time_s", "event", "channel", "in_recording"]
    assert json.loads(pq.read_schema(out / "events.parquet").metadata[b"pixbin"])["task"] == "leverpush"


def test_action_labels_round_trip(plain):
    _, gt, out, summary = plain
    labels, info = read_action_labels(out, 0)
    n = int(np.floor(gt["probe"]["duration_s"] * 1000))
    assert labels.shape == (n, 2) and labels.dtype == np.uint32
    assert info["dtype"] == "uint32" and info["events"]["tone_onset"] == int(Events.tone_onset)
    events = pd.read_parquet(out / "events.parquet")
    trials = pd.read_parquet(out / "trials.parquet")
    for col, table, names, flags in ((1, events, "event", Events), (0, trials, "action", Actions)):
        want: set[tuple[int, int]] = set()
        for t, name in zip(table.iloc[:, 0 if col == 1 else 2], table[names]):
            want.add((int(label_sample(t)), int(flags[name])))
        got = {(int(s), 1 << b) for s in np.flatnonzero(labels[:, col])
               for b in range(32) if labels[s, col] >> b & 1}
        assert got == want
    # the lab's way of finding a trial: the first align event within 10 s of the flag
    starts = np.flatnonzero(labels[:, 0] & Actions.rewarded_push)
    hits = [s + np.flatnonzero(labels[s:s + 10_000, 1] & Events.back_sensor_open)[0] for s in starts]
    rp = trials[trials["action"] == "rewarded_push"]
    np.testing.assert_array_equal(hits, label_sample(rp["back_sensor_open_s"].to_numpy()))


def _level_truth(gt: dict, channel: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Truth level (0/5 V) of a channel at probe times t and the distance to its nearest edge."""
    ev = pd.DataFrame(gt["events"])
    ev = ev[ev["channel"] == channel]
    names = sorted(set(ev["event"]))
    on = np.sort(ev.loc[ev["event"] == names[-1 if channel == "Back_Sensor" else 0], "time_s"])
    off = np.sort(ev.loc[ev["event"] != names[-1 if channel == "Back_Sensor" else 0], "time_s"])
    level = np.zeros(t.size)
    for a, b in zip(on, off):
        level[(t >= a) & (t < b)] = 5.0
    edges = np.sort(np.r_[on, off])
    i = np.clip(np.searchsorted(edges, t), 1, edges.size - 1)
    dist = np.minimum(np.abs(t - edges[i - 1]), np.abs(t - edges[i]))
    return level, dist


def test_channels_1khz(plain):
    raw, gt, out, summary = plain
    n = summary["n_samples_1khz"]
    with xr.open_dataset(out / H5, engine="h5netcdf") as ds:
        assert set(ds.data_vars) == {"Back_Sensor", "Front_Sensor", "Reward_Signal", "Reset_Signal",
                                     "Tone_Signal", "NpxlSync_Signal", "CamFrames"}
        np.testing.assert_array_equal(ds["time"].to_numpy(), np.arange(n) / 1000)
        back = ds["Back_Sensor"]
        assert back.dtype == np.float32 and back.attrs["units"] == "V"
        assert back.attrs["source_rate_hz"] == pytest.approx(25000.0)
        assert ds.attrs["task"] == "leverpush"
        t = ds["time"].to_numpy()
        level, dist = _level_truth(gt, "Back_Sensor", t)
        far = dist > 0.02
        assert np.abs(back.to_numpy()[far] - level[far]).max() < 0.1  # analog, not binarised
        # the sync square wave (probe clock) checks the drift-corrected grid over the session
        rising = gt["arrays"]["sync_rising_s"]
        rising = rising[~np.isin(np.round(rising, 6),
                                 np.round(gt["sync"]["dropped_behaviour_pulse_times_s"], 6))]
        i = np.searchsorted(rising, t, side="right") - 1
        since = np.where(i >= 0, t - rising[np.maximum(i, 0)], np.inf)
        high = since < 0.5
        far = (np.abs(since - 0.25) < 0.23) | ((since > 0.52) & (since < 0.98))
        sync = ds["NpxlSync_Signal"].to_numpy()
        assert np.abs(sync[far & high] - 5).max() < 0.1 and np.abs(sync[far & ~high]).max() < 0.1


def test_channels_nan_outside_behaviour(opto):
    raw, gt, out, summary = opto
    b = gt["behaviour"]
    with xr.open_dataset(out / H5, engine="h5netcdf") as ds:
        assert {"Shutter_Signal", "Laser_Signal"} <= set(ds.data_vars)
        t = ds["time"].to_numpy()
        x = ds["Back_Sensor"].to_numpy()
    end = b["offset_s"] + (b["n_samples"] - 1) / b["rate_true_hz"]
    inside = (t >= b["offset_s"] + 1e-6) & (t <= end - 1e-6)
    assert np.isfinite(x[inside]).all()
    assert np.isnan(x[(t < b["offset_s"] - 1e-6) | (t > end + 1e-6)]).all()
    assert np.isnan(x[:2990]).all() and np.isnan(x[-990:]).all()


def test_outside_probe_recording_reported(plain, tmp_path):
    """A shorter probe: later events leave the arrays (counted), later trials are invalid."""
    raw, gt, _, _ = plain
    cut = 20.0
    s = run_behaviour(behaviour_tdms=raw / TDMS, clock_map=TruthClock(gt), probe_duration_s=cut,
                      out_dir=tmp_path, params=BehaviourParams(write_channels=False))
    want = truth_events(gt)
    assert s["events_outside_recording"] == int((want["time_s"] >= cut).sum()) > 0
    labels = np.load(tmp_path / "action_labels_0.npy")
    assert labels.shape == (20_000, 2) and not (tmp_path / H5).exists()
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    late = trials["start_s"] >= cut
    assert late.any() and not trials.loc[late, "valid"].any()
    assert trials.loc[late, "reason"].str.contains("outside the probe recording").all()
    straddle = (~late) & (trials["align_time_s"] >= cut)
    assert trials.loc[straddle, "reason"].str.contains("outside the probe recording").all()
    assert s["trials_valid"] == int(trials["valid"].sum())


def test_chunking_and_auto_thresholds_do_not_change_results(plain, tmp_path):
    raw, gt, out, _ = plain
    params = BehaviourParams(chunk_samples=65_536, thresholds_v={"Tone_Signal": "auto"})
    s = run_behaviour(behaviour_tdms=raw / TDMS, clock_map=TruthClock(gt),
                      probe_duration_s=gt["probe"]["duration_s"], out_dir=tmp_path, params=params)
    assert s["thresholds"]["Tone_Signal"]["source"] == "auto"
    a = pd.read_parquet(out / "events.parquet")
    b = pd.read_parquet(tmp_path / "events.parquet")
    assert (a["event"] == b["event"]).all()
    tone = a["channel"] == "Tone_Signal"  # other thresholds: the crossing moves by < 1 sample
    np.testing.assert_allclose(b["time_s"][~tone], a["time_s"][~tone], rtol=0, atol=1e-9)
    np.testing.assert_allclose(b["time_s"][tone], a["time_s"][tone], rtol=0, atol=4e-5)
    with xr.open_dataset(out / H5, engine="h5netcdf") as x, \
            xr.open_dataset(tmp_path / H5, engine="h5netcdf") as y:
        np.testing.assert_allclose(x["Back_Sensor"], y["Back_Sensor"], atol=1e-6)


def test_with_real_sync_stage(plain, tmp_path):
    """The sync stage's own clock map (sync.json) gives the same events within 1 ms."""
    sync = pytest.importorskip("pixbin.sync")
    raw, gt, _, _ = plain
    stem = next(raw.glob("*.imec0.lf.bin")).name[: -len(".lf.bin")]
    sync.run_sync(ap_meta=raw / f"{stem}.ap.meta", lf_meta=raw / f"{stem}.lf.meta",
                  lf_bin=raw / f"{stem}.lf.bin", behaviour_tdms=raw / TDMS, out_dir=tmp_path,
                  params=sync.SyncParams(figure=False, train_within_probe=True))
    clock = ClockMap.load(tmp_path, "behaviour")
    run_behaviour(behaviour_tdms=raw / TDMS, clock_map=clock,
                  probe_duration_s=gt["probe"]["duration_s"], out_dir=tmp_path,
                  params=BehaviourParams(write_channels=False))
    assert_events_match(tmp_path, gt, tol_s=1e-3)
    assert_trials_match(tmp_path, gt, tol_s=1e-3)


# ------------------------------------------------------------------------------- bad input
def write_rig(path: Path, signals: dict[str, np.ndarray], rate: float = 25000.0,
              props: dict | None = None) -> Path:
    with TdmsWriter(path) as w:
        objs = [RootObject({"name": "rig"})]
        for name, x in signals.items():
            p = {"wf_increment": 1.0 / rate, "unit_string": "V"}
            if props and name in props:
                p = props[name]
            objs += [GroupObject(name), ChannelObject(name, "0", x, properties=p)]
        w.write_segment(objs)
    return path


RIG = ("Back_Sensor", "Front_Sensor", "Reward_Signal", "Reset_Signal", "Tone_Signal",
       "NpxlSync_Signal")


def _run(path: Path, out: Path, **kw):
    return run_behaviour(behaviour_tdms=path, clock_map=TruthClock(
        {"behaviour": {"offset_s": 0.0, "rate_nominal_hz": 1.0, "rate_true_hz": 1.0}}),
        probe_duration_s=0.2, out_dir=out, **kw)


def test_missing_required_channel(tmp_path):
    sig = {g: np.zeros(5000) for g in RIG if g != "Reward_Signal"}
    path = write_rig(tmp_path / TDMS, sig)
    with pytest.raises(BehaviourError) as err:
        _run(path, tmp_path / "out")
    msg = str(err.value)
    assert "Reward_Signal" in msg and str(path) in msg and "leverpush" in msg
    assert "Back_Sensor" in msg  # what the file holds
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_mis_sized_channel(tmp_path):
    sig = {g: np.zeros(5000) for g in RIG}
    sig["Tone_Signal"] = np.zeros(4000)
    path = write_rig(tmp_path / TDMS, sig)
    with pytest.raises(TdmsError, match=r"'Tone_Signal' holds 4000 samples; expected 5000") as err:
        _run(path, tmp_path / "out")
    assert str(path) in str(err.value)


def test_missing_rate_and_flat_auto_channel(tmp_path):
    sig = {g: np.zeros(5000) for g in RIG}
    path = write_rig(tmp_path / TDMS, sig, props={"Tone_Signal": {"unit_string": "V"}})
    with pytest.raises(TdmsError, match="Tone_Signal.*wf_increment"):
        _run(path, tmp_path / "out")
    path = write_rig(tmp_path / "b.tdms", sig)
    with pytest.raises(BehaviourError, match="cannot set thresholds for channel 'Reset_Signal'"):
        _run(path, tmp_path / "out",
             params=BehaviourParams(thresholds_v={"Reset_Signal": "auto"}))


def test_params_refuse_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown behaviour parameter"):
        BehaviourParams.from_dict({"debounce": 1})
    with pytest.raises(ConfigError, match="low < high"):
        BehaviourParams(thresholds_v={"Back_Sensor": (3, 1)})
    path = write_rig(tmp_path / TDMS, {g: np.zeros(5000) for g in RIG})
    with pytest.raises(ConfigError, match="does not read"):
        _run(path, tmp_path / "out", params=BehaviourParams(thresholds_v={"Nope": (1, 2)}))


def test_small_rig_file_with_no_events(tmp_path):
    """Flat channels: no events, no trials, labels all zero, channels written."""
    path = write_rig(tmp_path / TDMS, {g: np.zeros(5000) for g in RIG}, rate=10_000.0)
    s = _run(path, tmp_path / "out")
    assert s["trials"] == 0 and s["events"] == {}
    assert not np.load(tmp_path / "out" / "action_labels_0.npy").any()
    assert pd.read_parquet(tmp_path / "out" / "trials.parquet").empty


def test_probe_longer_than_behaviour(tmp_path):
    """The 1 kHz grid extends past the behaviour recording: NaN there."""
    x = np.zeros(5000)
    x[1000:2000] = 5.0
    sig = {g: x.copy() for g in RIG}
    path = write_rig(tmp_path / TDMS, sig, rate=10_000.0)  # 0.5 s of behaviour
    clock = TruthClock({"behaviour": {"offset_s": 1.0, "rate_nominal_hz": 1.0,
                                      "rate_true_hz": 1.0}})
    s = run_behaviour(behaviour_tdms=path, clock_map=clock, probe_duration_s=30.0,
                      out_dir=tmp_path / "out")
    assert s["n_samples_1khz"] == 30_000 and s["events"]["back_sensor_open"] == 1
    events = pd.read_parquet(tmp_path / "out" / "events.parquet")
    t = events.loc[events["event"] == "back_sensor_open", "time_s"].iloc[0]
    assert t == pytest.approx(1.0 + (999 + 1.4 / 5) / 10_000)  # mid level 1.4 V crossed on 0→5 V
    with xr.open_dataset(tmp_path / "out" / H5, engine="h5netcdf") as ds:
        b = ds["Back_Sensor"].to_numpy()
    assert np.isnan(b[:1000]).all() and np.isnan(b[1500:]).all() and np.isfinite(b[1000:1500]).all()
    np.testing.assert_allclose(b[1120:1180], 5.0, atol=1e-5)


# ------------------------------------------------------------------------------- real files
def _real_files(realdata: Path) -> list[Path]:
    return sorted((realdata / "tdms").glob("*.tdms"))


def test_real_tdms_stream_through_detector_and_resampler(realdata):
    """Real LabVIEW files (none rig-shaped) go through the reader path this stage uses:
    list_channels → iter_chunks, each chunk fed to the edge detector and the resampler."""
    from nptdms import TdmsFile

    checked = 0
    for path in _real_files(realdata):
        info = list_channels(path)
        assert info
        groups: dict[tuple[int, float], list[str]] = {}
        for key, ch in info.items():
            if "/" in ch.group:  # tdms.iter_chunks splits keys at '/': see test below
                continue
            if np.isfinite(ch.rate_hz) and ch.n_samples > 4:
                groups.setdefault((ch.n_samples, ch.rate_hz), []).append(f"{ch.group}/{ch.channel}")
        with TdmsFile.read(path) as whole:
            for (n, rate), keys in groups.items():
                det = {k: EdgeDetector(low=0.3, high=0.7) for k in keys}
                pos = np.arange(int((n - 1) / rate * 1000)) * rate / 1000
                res = Resampler1kHz(rate_hz=rate, n_in=n, positions=pos, n_channels=len(keys))
                seen = {k: [] for k in keys}
                for start, chunk in iter_chunks(path, keys, chunk_samples=997):
                    for k in keys:
                        x = np.asarray(chunk[k], np.float64)
                        det[k].feed(x, start)
                        seen[k].append(x)
                    res.feed([chunk[k] for k in keys])
                out = res.finish()
                assert out.shape == (len(keys), pos.size)
                for k in keys:
                    group, channel = k.split("/", 1)
                    np.testing.assert_array_equal(np.concatenate(seen[k]), whole[group][channel][:])
                    det[k].result()
                checked += 1
    assert checked >= 3


def test_real_tdms_group_name_with_slash_streams(realdata):
    path = realdata / "tdms" / "Digital_Input.tdms"
    info = list_channels(path)
    key = next(k for k, ch in info.items() if ch.n_samples == 20000)
    n = sum(len(c[key]) for _, c in iter_chunks(path, [key], channel=info[key].channel))
    assert n == 20000


def test_real_tdms_without_rig_channels_is_refused(realdata):
    path = realdata / "tdms" / "raw1.tdms"
    with pytest.raises(BehaviourError, match=r"raw1\.tdms.*needs TDMS channel\(s\)"):
        _run(path, Path("/nonexistent-out"))


def test_nan_in_an_analog_channel_is_refused_naming_channel_and_samples(tmp_path):
    sig = {g: np.zeros(5000) for g in RIG}
    sig["Tone_Signal"][1200:1210] = np.nan
    sig["Tone_Signal"][3000] = np.inf
    path = write_rig(tmp_path / TDMS, sig)
    with pytest.raises(BehaviourError) as err:
        _run(path, tmp_path / "out")
    msg = str(err.value)
    assert TDMS in msg and "Tone_Signal" in msg and "11 non-finite" in msg
    assert "1200..3000" in msg
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_auto_thresholds_refuse_a_channel_too_sparse_to_set_levels_from(tmp_path):
    """Two 2 ms pulses in 20 s: the 1st and 99th percentiles are both noise, so 'auto' would put
    the thresholds inside the noise and make hundreds of false edges. Refused instead."""
    rng = np.random.default_rng(0)
    n = 200_000  # 20 s at 10 kHz
    sig = {g: rng.normal(0, 0.02, n) for g in RIG}
    for start in (50_000, 150_000):
        sig["Reset_Signal"][start:start + 20] = 5.0
    path = write_rig(tmp_path / TDMS, sig, rate=10_000.0)
    with pytest.raises(BehaviourError, match=r"Reset_Signal.*declare them"):
        run_behaviour(behaviour_tdms=path, clock_map=TruthClock(
            {"behaviour": {"offset_s": 0.0, "rate_nominal_hz": 1.0, "rate_true_hz": 1.0}}),
            probe_duration_s=20.0, out_dir=tmp_path / "out",
            params=BehaviourParams(thresholds_v={"Reset_Signal": "auto"}))
    declared = run_behaviour(behaviour_tdms=path, clock_map=TruthClock(
        {"behaviour": {"offset_s": 0.0, "rate_nominal_hz": 1.0, "rate_true_hz": 1.0}}),
        probe_duration_s=20.0, out_dir=tmp_path / "ok")
    assert declared["events"]["reset_signal"] == 2
