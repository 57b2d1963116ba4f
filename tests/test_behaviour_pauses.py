"""pixbin.behaviour on a behaviour recording that paused and restarted (issue #15, pauses).

The paused session is a simulated one (pseudo-random sync code, so the sync stage places each
segment) whose behaviour TDMS has the samples of ``PAUSE_S`` cut out at ``PAUSE_AT_S``: the DAQ
stopped there and restarted, its sample count going on as if no time had passed. What happened
during the pause is lost; every other truth time stays known.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
from nptdms import ChannelObject, GroupObject, RootObject, TdmsFile, TdmsWriter

from pixbin.behaviour import label_sample, run_behaviour
from pixbin.clock import ClockMap, PiecewiseClockMap
from pixbin.errors import BehaviourError
from pixbin.readers import read_action_labels
from pixbin.resample import PiecewiseResampler1kHz, Resampler1kHz
from pixbin.simulate import load_ground_truth, simulate_session
from pixbin.simulate_task import EVENT_CHANNELS
from pixbin.sync import SyncParams, run_sync
from pixbin.tasks import ActionSpec, Channel, Task
from pixbin.tasks.leverpush import Actions, Events, LeverPush

TDMS = "NeuropixelBehaviour(0).tdms"
H5 = "NeuropixelBehaviour(0)_processed.h5"
TOL_S = 1e-4
PAUSE_AT_S, PAUSE_S = 27.3, 3.7  # probe clock
MID_V = 1.4  # the lever-push TTL thresholds' mid level


# ------------------------------------------------------------------------------- the session
def cut_pause(path: Path, first: int, n_cut: int) -> dict[str, tuple[bool, bool]]:
    """Rewrite the TDMS without samples ``[first, first + n_cut)``; per channel, whether it was
    high on the last sample before the cut and on the first one after."""
    with TdmsFile.read(path) as f:
        root_props = dict(f.properties)
        data = {g.name: (g["0"][:], dict(g["0"].properties)) for g in f.groups()}
    junction = {name: (bool(x[first - 1] > MID_V), bool(x[first + n_cut] > MID_V))
                for name, (x, _) in data.items()}
    kept = {name: (np.r_[x[:first], x[first + n_cut:]], props)
            for name, (x, props) in data.items()}
    n = len(next(iter(kept.values()))[0])
    step = 100_000
    with TdmsWriter(path) as w:
        for s in range(0, n, step):
            objects = [RootObject(root_props)] if s == 0 else []
            for name, (x, props) in kept.items():
                objects += [GroupObject(name),
                            ChannelObject(name, "0", x[s:s + step], props if s == 0 else {})]
            w.write_segment(objects)
    return junction


@pytest.fixture(scope="module")
def paused(tmp_path_factory):
    """60 s, sync code, behaviour 3 s before the probe, +50 ppm, paused 27.3–31.0 s; run through
    the sync stage and the behaviour stage."""
    root = tmp_path_factory.mktemp("paused")
    raw = simulate_session(root, compress=False, write_ap=False, n_units=4, dropped_frames=0,
                           dropped_pulses=0, duration_s=60, seed=3, sync_code=True,
                           offset_s=-3.0, drift_ppm=50.0)
    gt = load_ground_truth(raw)
    b = gt["behaviour"]
    first = int(np.ceil((PAUSE_AT_S - b["offset_s"]) * b["rate_true_hz"]))
    n_cut = int(round(PAUSE_S * b["rate_true_hz"]))
    junction = cut_pause(raw / TDMS, first, n_cut)
    stem = next(raw.glob("*.imec0.lf.bin")).name[: -len(".lf.bin")]
    out = root / "processed"
    run_sync(ap_meta=raw / f"{stem}.ap.meta", lf_meta=raw / f"{stem}.lf.meta",
             lf_bin=raw / f"{stem}.lf.bin", behaviour_tdms=raw / TDMS, out_dir=out,
             params=SyncParams(figure=False, train_within_probe=True))
    clock = ClockMap.load(out, "behaviour")
    summary = run_behaviour(behaviour_tdms=raw / TDMS, clock_map=clock,
                            probe_duration_s=gt["probe"]["duration_s"], out_dir=out)
    truth = {"first": first, "n_cut": n_cut, "junction": junction,
             "start_s": b["offset_s"] + first / b["rate_true_hz"],
             "end_s": b["offset_s"] + (first + n_cut) / b["rate_true_hz"]}
    return gt, truth, clock, out, summary


def behaviour_s(gt: dict, truth: dict, t: np.ndarray) -> np.ndarray:
    """Behaviour-clock seconds (the TDMS's own) of probe times ``t``; NaN during the pause."""
    b = gt["behaviour"]
    k = (np.asarray(t, np.float64) - b["offset_s"]) * b["rate_true_hz"]
    k = np.where(t >= truth["end_s"], k - truth["n_cut"], k)
    k[(t >= truth["start_s"]) & (t < truth["end_s"])] = np.nan
    return k / b["rate_nominal_hz"]


def truth_events(gt: dict, truth: dict, clock: PiecewiseClockMap) -> tuple[pd.DataFrame, pd.Series]:
    """The recorded truth events the clock map places, and the names of the events the stage
    must leave out: recorded but unplaced, and the level jumps at the junction."""
    ev = pd.DataFrame(gt["events"])
    s = behaviour_s(gt, truth, ev["time_s"].to_numpy())
    recorded = np.isfinite(s)
    placed = recorded & np.isfinite(clock.to_probe(np.nan_to_num(s)))
    jumps = [EVENT_CHANNELS[ch][0 if after else 1]
             for ch, (before, after) in truth["junction"].items()
             if ch in EVENT_CHANNELS and before != after]
    unplaced = pd.concat([ev.loc[recorded & ~placed, "event"],
                          pd.Series([j for j in jumps if j is not None], dtype=object)])
    return ev[placed].sort_values(["event", "time_s"]).reset_index(drop=True), unplaced


def near_gap(start_s: np.ndarray, gap: list[float], window_s: float = 10.0) -> np.ndarray:
    return (np.asarray(start_s) - window_s < gap[1]) & (np.asarray(start_s) + window_s > gap[0])


# ------------------------------------------------------------------------------- the resampler
def _feed(r, x: list[np.ndarray], chunk: int) -> np.ndarray:
    for s in range(0, x[0].size, chunk):
        r.feed([c[s:s + chunk] for c in x])
    return r.finish()


def test_piecewise_resampler_keeps_each_segment_to_itself():
    """Samples of one segment feed only its outputs: a level that jumps just after the first
    segment's end is exact up to that end, where one resampler over the whole file smears it."""
    rate, n, cut, restart = 25_000.0, 150_000, 60_000, 61_000  # unplaced: samples 60000..60999
    x = np.where(np.arange(n) < cut, 0.0, 5.0)
    noise = np.random.default_rng(1).normal(size=n)
    pos_a, pos_b = np.arange(0, cut, 25.0) + 3.3, np.arange(restart, n - 1, 25.0) + 3.3
    pos = np.r_[pos_a, np.full(40, np.nan), pos_b]
    segments = [(0, cut), (restart, n)]
    out = _feed(PiecewiseResampler1kHz(rate_hz=rate, n_in=n, positions=pos, n_channels=2,
                                       segments=segments), [x, noise], 7_777)
    assert out.dtype == np.float32 and out.shape == (2, pos.size)
    a, gap, b = out[:, :pos_a.size], out[:, pos_a.size:-pos_b.size], out[:, -pos_b.size:]
    assert np.isnan(gap).all() and np.isfinite(a).all() and np.isfinite(b).all()
    np.testing.assert_allclose(a[0], 0.0, atol=1e-6)  # up to its last output, 0.9 ms from the jump
    np.testing.assert_allclose(b[0], 5.0, atol=1e-5)
    whole = _feed(Resampler1kHz(rate_hz=rate, n_in=n, positions=pos_a, n_channels=1), [x], n)
    assert abs(whole[0, -1]) > 0.1  # one resampler over the file reaches across (ringing)
    # each segment is exactly a resampler of its own samples, whatever the chunking
    alone = _feed(Resampler1kHz(rate_hz=rate, n_in=n - restart, positions=pos_b - restart,
                                n_channels=2), [x[restart:], noise[restart:]], n)
    np.testing.assert_array_equal(b, alone)
    again = _feed(PiecewiseResampler1kHz(rate_hz=rate, n_in=n, positions=pos, n_channels=2,
                                         segments=segments), [x, noise], n)
    np.testing.assert_array_equal(out, again)
    with pytest.raises(BehaviourError, match="not in order"):
        PiecewiseResampler1kHz(rate_hz=rate, n_in=n, positions=pos, n_channels=1,
                               segments=[(restart, n), (0, cut)])


# ------------------------------------------------------------------------------- the stage
def test_sync_places_the_pause(paused):
    gt, truth, clock, out, summary = paused
    assert isinstance(clock, PiecewiseClockMap)
    (gap,) = [p["probe_s"] for p in summary["pauses"]]
    # the map leaves out at least the true pause, and little more
    assert gap[0] <= truth["start_s"] and gap[1] >= truth["end_s"]
    assert gap[1] - gap[0] < PAUSE_S + 1.5


def test_events_on_the_probe_clock_and_unplaced_left_out(paused):
    gt, truth, clock, out, summary = paused
    want, unplaced = truth_events(gt, truth, clock)
    got = pd.read_parquet(out / "events.parquet")
    assert got["time_s"].is_monotonic_increasing and np.isfinite(got["time_s"]).all()
    assert got["in_recording"].all()
    g = got.sort_values(["event", "time_s"]).reset_index(drop=True)
    assert g["event"].value_counts().to_dict() == want["event"].value_counts().to_dict()
    assert (g["channel"] == want["channel"]).all()
    err = np.abs(g["time_s"].to_numpy() - want["time_s"].to_numpy())
    assert err.max() < TOL_S, f"max event time error {err.max() * 1e6:.1f} µs"
    left = summary["events_unplaced"]
    assert left["count"] == len(unplaced) == len(left["behaviour_s"]) >= 1
    assert left["events"] == unplaced.value_counts().to_dict()
    (gap,) = [p["behaviour_s"] for p in summary["pauses"]]
    assert all(gap[0] < t < gap[1] for t in left["behaviour_s"])
    meta = json.loads(pq.read_schema(out / "events.parquet").metadata[b"pixbin"])
    assert meta["pauses"] == summary["pauses"]


def test_trials_near_the_pause_excluded_with_the_reason(paused):
    gt, truth, clock, out, summary = paused
    (gap,) = [p["probe_s"] for p in summary["pauses"]]
    trials = pd.read_parquet(out / "trials.parquet")
    near = near_gap(trials["start_s"].to_numpy(), gap)
    assert near.any() and (~near).any()
    assert not trials.loc[near, "valid"].any()
    reason = rf"within 10 s of a pause of the behaviour recording \({gap[0]:.3f}–{gap[1]:.3f} s\)"
    assert trials.loc[near, "reason"].str.contains(reason).all()
    assert summary["trials_valid"] == int(trials["valid"].sum())
    # every trial away from the pause is the truth's
    want = pd.DataFrame(gt["trials"])
    want = want[~near_gap(want["start_s"].to_numpy(), gap)].sort_values("start_s")
    kept = trials[~near].sort_values("start_s").reset_index(drop=True)
    want = want.reset_index(drop=True)
    assert kept["valid"].all()
    assert kept["action"].tolist() == want["action"].tolist()
    assert kept["outcome"].tolist() == want["outcome"].tolist()
    assert np.abs(kept["start_s"] - want["start_s"]).max() < TOL_S
    for col in ("tone_onset_s", "back_sensor_open_s", "reward_signal_s"):
        for i in np.flatnonzero(want[col].notna()):
            if col[:-2] in LeverPush.actions[kept.at[i, "action"]].align:
                assert abs(kept.at[i, col] - want.at[i, col]) < TOL_S, (i, col)


def test_action_labels_mark_the_pause_not_recorded(paused):
    gt, truth, clock, out, summary = paused
    (gap,) = [p["probe_s"] for p in summary["pauses"]]
    labels, info = read_action_labels(out, 0)
    flag = info["not_recorded"]
    assert flag == 1 << 31 and labels.dtype == np.uint32
    k = np.arange(labels.shape[0])
    inside = (k / 1000 > gap[0]) & ((k + 1) / 1000 <= gap[1])  # the millisecond wholly inside
    assert inside.sum() == pytest.approx((gap[1] - gap[0]) * 1000, abs=2)
    for col in (0, 1):
        np.testing.assert_array_equal(labels[:, col] & flag != 0, inside)
        assert not (labels[inside, col] & ~np.uint32(flag)).any()
    # events and the trials away from the pause round-trip; the excluded ones carry no flag
    events = pd.read_parquet(out / "events.parquet")
    trials = pd.read_parquet(out / "trials.parquet")
    trials = trials[~near_gap(trials["start_s"].to_numpy(), gap)]
    for col, table, time, name, flags in ((1, events, "time_s", "event", Events),
                                          (0, trials, "start_s", "action", Actions)):
        want = {(int(label_sample(t)), int(flags[n])) for t, n in zip(table[time], table[name])}
        got = {(int(s), 1 << bit) for s in np.flatnonzero(labels[:, col] & ~np.uint32(flag))
               for bit in range(31) if labels[s, col] >> bit & 1}
        assert got == want


def test_channels_nan_in_the_pause_and_placed_after_it(paused):
    gt, truth, clock, out, summary = paused
    (gap,) = [p["probe_s"] for p in summary["pauses"]]
    b = gt["behaviour"]
    with xr.open_dataset(out / H5, engine="h5netcdf") as ds:
        t = ds["time"].to_numpy()
        back = ds["Back_Sensor"].to_numpy()
        assert "inside each pause" in ds.attrs["sampling"]
        assert json.loads(ds.attrs["filter"])["segments_samples"][1][0] > truth["first"]
    assert np.isnan(back[(t > gap[0]) & (t < gap[1])]).all()
    covered = (t >= max(b["offset_s"], 0) + 1e-3) & (t < b["end_s"] - 1e-3)
    covered &= (t < gap[0] - 1e-3) | (t > gap[1] + 1e-3)
    assert np.isfinite(back[covered]).all()
    # the analog level, right up to each end of the pause, away from the truth's edges
    ev = pd.DataFrame(gt["events"])
    on = np.sort(ev.loc[ev["event"] == "back_sensor_open", "time_s"])
    off = np.sort(ev.loc[ev["event"] == "back_sensor_closed", "time_s"])
    level = np.zeros(t.size)
    for a, z in zip(on, off):
        level[(t >= a) & (t < z)] = 5.0
    edges = np.r_[on, off]
    far = covered & (np.abs(t[:, None] - edges[None, :]).min(axis=1) > 0.02)
    assert np.abs(back[far] - level[far]).max() < 0.1
    # each step's 2.5 V crossing on the 1 kHz grid is its truth time: the grid on either side of
    # the pause is placed by its own segment's map
    steps = on[(on > 0.05) & ((on < gap[0] - 0.05) | (on > gap[1] + 0.05))]
    assert (steps < gap[0]).sum() >= 3 and (steps > gap[1]).sum() >= 2
    for edge in steps:
        i = int(np.searchsorted(t, edge))
        x0, x1 = back[i - 1], back[i]
        crossing = t[i - 1] + (2.5 - x0) / (x1 - x0) / 1000
        assert abs(crossing - edge) < 2e-4, edge


# ------------------------------------------------------------------------------- refusals
def test_a_task_using_the_top_bit_cannot_mark_a_pause(tmp_path):
    class Ev(enum.IntFlag):
        on = 1 << 0
        off = 1 << 7

    class Ac(enum.IntFlag):
        go = 1 << 0

    tiny = type("TopBit", (Task,), dict(
        name="topbit", channels=(Channel("Sig", "on", "off", thresholds_v=(0.8, 2.0)),),
        Events=Ev, Actions=Ac,
        actions={"go": ActionSpec(("on",), "done")}, labels_dtype=np.dtype(np.uint8),
        trials=lambda self, events: pd.DataFrame({"action": [], "start_s": [], "outcome": []})))
    path = tmp_path / TDMS
    with TdmsWriter(path) as w:
        w.write_segment([RootObject({}), GroupObject("Sig"), ChannelObject(
            "Sig", "0", np.zeros(5000), properties={"wf_increment": 1e-4, "unit_string": "V"})])
    clock = PiecewiseClockMap("behaviour", (ClockMap("behaviour", 0.0), ClockMap("behaviour", 1.0)),
                              ((0.0, 0.2), (0.3, 0.5)))
    with pytest.raises(BehaviourError, match=r"paused.*top bit of labels_dtype uint8 \(128\).*"
                                             r"'topbit' uses for \['off'\]"):
        run_behaviour(behaviour_tdms=path, clock_map=clock, probe_duration_s=1.0,
                      out_dir=tmp_path / "out", task=tiny)
    assert not (tmp_path / "out").exists()


def test_pulse_trains_are_not_merged_across_a_pause():
    from pixbin.behaviour import _merge_within_segments, merge_trains
    from pixbin.edges import Edges

    # a train of 3 pulses ending 50 samples before segment 0 stops, one starting just after the
    # next segment starts: 100 samples apart on the stream clock, gap 500 would merge them
    edges = Edges([100, 200, 300, 460, 560], [150, 250, 350, 510, 610])
    segments = [(0, 400), (420, 1000)]
    whole = merge_trains(edges, 500)
    assert whole.rising.tolist() == [100] and whole.falling.tolist() == [610]
    split = _merge_within_segments(edges, 500, segments)
    assert split.rising.tolist() == [100, 460] and split.falling.tolist() == [350, 610]
    same = _merge_within_segments(edges, 500, None)
    assert same.rising.tolist() == whole.rising.tolist() and same.falling.tolist() == whole.falling.tolist()


def test_camera_frames_on_a_paused_recording_are_refused_not_guessed(paused, tmp_path):
    """The frames taken during the pause have no TTL pulse in the behaviour TDMS: the pose
    stage refuses (naming the camera file, the TTL channel and the pause) and writes nothing."""
    from pixbin.errors import PoseError
    from pixbin.pose import PoseParams, run_pose

    gt, truth, clock, out, _ = paused
    raw = out.parent / "raw" / gt["session_id"]
    with pytest.raises(PoseError, match=r"USB_Camerameta\.tdms: .*'CamFrames'.* paused between "
                                        r"2\d\.\d+–3\d\.\d+ s \(probe clock\)"):
        run_pose(camera_tdms=raw / "USB_Camera.tdms", camera_meta_tdms=raw / "USB_Camerameta.tdms",
                 behaviour_tdms=raw / TDMS, clock_map=clock,
                 probe_duration_s=gt["probe"]["duration_s"], interim_dir=tmp_path / "interim",
                 out_dir=tmp_path / "out", params=PoseParams(), make_video=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "interim").exists()
