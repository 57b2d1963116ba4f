"""The NIDQ stream on the probe clock: found with its gate's files, its sync line read where its
meta says (digital bit or thresholded analog channel), fitted onto imec0 like another probe.

A simulated session with a NIDQ board on its own clock (start offset, drift) gives the truth; the
real public NIDQ files give the real metas and layouts.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pixbin.clock import ClockMap, StreamClock
from pixbin.errors import MetaError, SyncError
from pixbin.pipeline import PipelineConfig, process_sessions
from pixbin.session import load_session
from pixbin.simulate import SIMULATED_RIG_CONFIG, load_ground_truth, simulate_session
from pixbin.spikeglx import nidq_sync_edges, nidq_sync_line, read_meta, stream_info, sync_edges
from pixbin.stages import STAGES
from pixbin.sync import SyncParams, run_sync
from pixbin.sync_probes import NidqFiles

SID = "240101_NIDQ"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("nidq")
    raw = simulate_session(root, session_id=SID, duration_s=12, seed=3, n_units=2, offset_s=-1.0,
                           behaviour_tail_s=1.0, compress=False, nidq=True, nidq_drift_ppm=30.0,
                           nidq_start_s=-0.008)
    results = process_sessions(root, [SID], PipelineConfig.from_dict(SIMULATED_RIG_CONFIG), scheduler="serial",
                               stages=["extract", "sync"])[SID]
    return {"root": root, "raw": raw, "results": results, "truth": load_ground_truth(raw),
            "out": root / "processed" / SID, "interim": root / "interim" / SID}


def _nidq(folder):
    return next(folder.glob("*.nidq.meta")), next(folder.glob("*.nidq.bin"))


def _with_meta(meta, tmp_path, **changes):
    """A copy of a NIDQ meta (and its .bin) with keys changed (None: removed)."""
    target = tmp_path / meta.name
    lines = [line for line in meta.read_text().splitlines()
             if line.split("=", 1)[0] not in changes]
    lines += [f"{k}={v}" for k, v in changes.items() if v is not None]
    target.write_text("\n".join(lines) + "\n")
    shutil.copy(meta.with_suffix(".bin"), target.with_suffix(".bin"))
    return target


def test_nidq_map_matches_the_truth(session):
    assert {k: v["status"] for k, v in session["results"].items()} == {"extract": "done",
                                                                        "sync": "done"}
    truth = session["truth"]["nidq"]
    fitted = ClockMap.load(session["out"], "nidq")
    t = np.linspace(0, truth["n_samples"] / truth["rate_nominal_hz"], 101)
    true_map = truth["map_to_imec0"]
    assert np.abs(fitted.to_probe(t) - (true_map["offset_s"] + true_map["rate"] * t)).max() < 1e-4
    # the NIDQ's own sync edges, mapped, land on the pulser's true rising edges (imec0 clock)
    meta, _ = _nidq(session["interim"])
    edges = nidq_sync_edges(meta.with_suffix(".bin"), meta)
    mapped = StreamClock(truth["rate_nominal_hz"], fitted).to_probe(edges.rising)
    true_rising = session["truth"]["arrays"]["sync_rising_s"]
    assert len(mapped) == len(true_rising) >= 10
    assert np.abs(mapped - true_rising).max() < 1e-4


def test_nidq_entry_has_the_fields_of_a_probe_entry(session):
    doc = json.loads((session["out"] / "sync.json").read_text())
    entry = doc["streams"]["nidq"]
    assert entry["pass"] is True and "warnings" not in json.dumps(entry)
    assert set(entry) == {"offset_s", "rate", "ppm", "pass", "nidq_meta", "edge_source",
                          "offset_window_s", "decided_by", "matched", "expected_in_overlap",
                          "missing", "residual_us", "falling_minus_rising_us"}
    assert entry["edge_source"] == "nidq digital line 0 (bit 0 of word XD0, column 3)"
    assert entry["missing"] == {"in_stream": 0, "in_probe": 0}
    assert entry["ppm"] == pytest.approx(-30.0, abs=5.0)  # its clock runs 30 ppm fast
    assert not entry["nidq_meta"].startswith("/")  # relative, no machine path


def test_nidq_files_are_sync_inputs(session):
    s = load_session(session["root"], SID)
    assert {f.role for f in s.files if f.role.startswith("nidq")} == {"nidq_bin", "nidq_meta"}
    assert STAGES["sync"].reads_role("nidq_meta") and STAGES["sync"].reads_role("nidq_bin")
    assert not any(STAGES[name].reads_role("nidq_bin") for name in ("behaviour", "spikes", "lfp"))
    record = json.loads((session["out"] / ".records" / "sync.json").read_text())
    assert {n for n in record["inputs"]["raw"] if ".nidq." in n} == {
        "NIDQ_g0_t0.nidq.bin", "NIDQ_g0_t0.nidq.meta"}


def test_a_nidq_without_pulses_fails_only_its_entry(session, tmp_path):
    meta, _ = _nidq(session["interim"])
    bad = _with_meta(meta, tmp_path)
    data = np.memmap(bad.with_suffix(".bin"), dtype=np.int16, mode="r+").reshape(-1, 4)
    data[:, 3] = 0  # the digital word carries nothing
    data.flush()
    del data
    interim = session["interim"]
    stem = "NIDQ_g0_t0.imec0"
    summary = run_sync(ap_meta=interim / f"{stem}.ap.meta", ap_bin=interim / f"{stem}.ap.bin",
                       lf_meta=interim / f"{stem}.lf.meta", lf_bin=interim / f"{stem}.lf.bin",
                       behaviour_tdms=interim / "NeuropixelBehaviour(0).tdms",
                       out_dir=tmp_path / "out", nidq=NidqFiles(bad, bad.with_suffix(".bin")),
                       params=SyncParams(train_within_probe=True))
    assert summary["pass"] is True and summary["streams"]["behaviour"]["pass"] is True
    assert summary["streams"]["nidq"]["pass"] is False
    assert any(w.startswith("nidq: no clock map") and "0 rising sync edge(s) on digital line 0" in w
               and str(bad.with_suffix(".bin")) in w for w in summary["warnings"])
    with pytest.raises(SyncError, match="'nidq' map failed"):
        ClockMap.load(tmp_path / "out", "nidq")


def test_analog_sync_channel_is_thresholded_in_volts(session, tmp_path):
    """The same sync wave on analog channel XA1 (0/5 V and noise, in int16 counts of the ±10 V
    range): edges where the digital line's are, within a sample."""
    meta, _ = _nidq(session["interim"])
    analog = _with_meta(meta, tmp_path, syncNiChanType=1, syncNiChan=1, syncNiThresh=2.5)
    data = np.memmap(analog.with_suffix(".bin"), dtype=np.int16, mode="r+").reshape(-1, 4)
    volts = (data[:, 3] & 1) * 5.0 + np.random.default_rng(0).normal(0, 0.05, len(data))
    data[:, 1] = np.round(volts * 32768 / 10.0)
    data.flush()
    del data
    line = nidq_sync_line(analog)
    assert (line.kind, line.column, line.threshold_v) == ("analog", 1, 2.5)
    assert line.volts_per_bit == pytest.approx(10.0 / 32768)  # XA: unity gain
    digital = nidq_sync_edges(meta.with_suffix(".bin"), meta)
    got = nidq_sync_edges(analog.with_suffix(".bin"), analog, chunk_samples=4096)
    assert len(got.rising) == len(digital.rising) and len(got.falling) == len(digital.falling)
    assert np.abs(got.rising - digital.rising).max() < 0.5
    assert np.abs(got.falling - digital.falling).max() < 0.5
    # an analog channel read the other way: above a threshold the wave never reaches, no edge
    (tmp_path / "high").mkdir()
    high = _with_meta(analog, tmp_path / "high", syncNiThresh=6.0)
    assert len(nidq_sync_edges(high.with_suffix(".bin"), high)) == 0


def test_analog_gain_of_multiplexed_channels(tmp_path, realdata):
    """MN and MA channels divide by their gain (SpikeGLX's niMNGain / niMAGain); XA by 1."""
    meta = realdata / "spikeglx" / "Noise4Sam_g0" / "Noise4Sam_g0_t0.nidq.meta"
    counts = dict(acqMnMaXaDw="2,2,4,1", snsMnMaXaDw="2,2,4,1", niMNGain=200, niMAGain=4,
                  syncNiChanType=1, syncNiThresh=0.5)
    for channel, gain in ((1, 200), (2, 4), (5, 1)):
        m = _with_meta(meta, tmp_path, syncNiChan=channel, **counts)
        line = nidq_sync_line(m)
        assert line.column == channel
        assert line.volts_per_bit == pytest.approx(2.0 / 32768 / gain)  # no niMaxInt: 32768


@pytest.mark.parametrize("changes, match", [
    ({"syncNiChanType": None}, "syncNiChanType=None"),
    ({"syncNiChan": None}, "syncNiChan=None"),
    ({"syncNiChanType": 2}, "syncNiChanType=2"),
    ({"syncNiChan": 16}, "syncNiChan=16 .digital line: bit 0 of digital word 1"),
    ({"syncNiChanType": 1, "syncNiChan": 3}, "syncNiChan=3 .analog channel"),
    ({"syncNiChanType": 1, "syncNiChan": 0, "syncNiThresh": None}, "syncNiThresh"),
    ({"syncNiChanType": 1, "syncNiChan": 0, "niMaxInt": 0}, "positive gain, range and niMaxInt"),
    ({"syncNiChanType": 1, "syncNiChan": 0, "syncNiThresh": "nan"}, "finite threshold"),
    ({"snsSaveChanSubset": "0", "nSavedChans": 1}, "not saved"),
])
def test_a_bad_sync_declaration_is_refused_naming_the_file(tmp_path, realdata, changes, match):
    meta = realdata / "spikeglx" / "NP2_with_sync" / "all_chan_g0_t0.nidq.meta"
    bad = _with_meta(meta, tmp_path, **changes)
    with pytest.raises(MetaError, match=match) as info:
        nidq_sync_edges(bad.with_suffix(".bin"), bad)
    assert str(bad) in str(info.value)


def test_discovery_finds_the_nidq_of_real_runs(tmp_path, realdata):
    spikeglx = realdata / "spikeglx"
    data = tmp_path / "data"
    # NIDQ files in the session folder beside the probe folder; a run folder holding the NIDQ
    # files and its probe folder (SpikeGLX's own layout)
    shutil.copytree(spikeglx / "NP2_with_sync", data / "raw" / "230904_NP2SYNC")
    shutil.copytree(spikeglx / "Noise4Sam_g0", data / "raw" / "201103_NOISE4SAM" / "Noise4Sam_g0")
    for sid, stem in (("230904_NP2SYNC", "all_chan_g0_t0"), ("201103_NOISE4SAM", "Noise4Sam_g0_t0")):
        s = load_session(data, sid)
        nidq = {f.role: f for f in s.files if f.role.startswith("nidq")}
        assert {r: f.name for r, f in nidq.items()} == {"nidq_bin": f"{stem}.nidq.bin",
                                                        "nidq_meta": f"{stem}.nidq.meta"}
        assert all(f.gate == 0 and f.trigger == "0" and f.probe is None for f in nidq.values())
        assert s.probes == ["imec0"]
        assert stream_info(nidq["nidq_meta"].raw_path).kind == "nidq"


def test_a_nidq_of_a_gate_without_probe_files_is_ignored(tmp_path, realdata, caplog):
    raw = tmp_path / "data" / "raw" / "230904_NP2SYNC"
    shutil.copytree(realdata / "spikeglx" / "NP2_with_sync", raw)
    for suffix in ("bin", "meta"):
        (raw / f"all_chan_g0_t0.nidq.{suffix}").rename(raw / f"all_chan_g1_t0.nidq.{suffix}")
    with caplog.at_level("WARNING"):
        s = load_session(tmp_path / "data", "230904_NP2SYNC")
    assert s.probes == ["imec0"] and not [f for f in s.files if f.role.startswith("nidq")]
    assert "all_chan_g1_t0.nidq.bin" in caplog.text and "without probe files" in caplog.text


def test_np2_with_sync_nidq_edges_agree_with_the_probe(realdata):
    """The real stub: the NIDQ's sync on digital bit 0 and the probe's SY bit 6, in the same 33 ms
    of the run (by firstSample), both low: no edge in either, one sync period declared by both."""
    folder = realdata / "spikeglx" / "NP2_with_sync"
    nidq_meta = folder / "all_chan_g0_t0.nidq.meta"
    ap_meta = folder / "all_chan_g0_imec0" / "all_chan_g0_t0.imec0.ap.meta"
    line = nidq_sync_line(nidq_meta)
    assert (line.kind, line.column, line.bit) == ("digital", 1, 0)
    nidq, ap = stream_info(nidq_meta), stream_info(ap_meta)
    nidq_edges = nidq_sync_edges(nidq.bin_path, nidq)
    probe_edges = sync_edges(ap.bin_path, ap, 6)
    assert len(nidq_edges) == len(probe_edges) == 0
    words = np.fromfile(nidq.bin_path, np.int16).reshape(-1, nidq.n_saved_chans)[:, line.column]
    sy = np.fromfile(ap.bin_path, np.int16).reshape(-1, ap.n_saved_chans)[:, ap.sync_channel]
    assert not (words & 1).any() and not ((sy >> 6) & 1).any()
    # the probe file lies inside the NIDQ file on the run's clock: the same low phase
    start_n, start_p = nidq.first_sample / nidq.rate_hz, ap.first_sample / ap.rate_hz
    assert start_n < start_p and start_p + ap.duration_s < start_n + nidq.duration_s
    assert read_meta(nidq_meta)["syncSourcePeriod"] == read_meta(ap_meta)["syncSourcePeriod"] == 1


def test_digital_only_nidq_edges_have_the_declared_period(realdata):
    """DigitalChannelTest_g0 (one digital word, 2500 Hz): the pulser on line 0 at the meta's
    syncSourcePeriod, 50 % duty, to within a sample (the pulser runs on another clock: now and
    then a period is one NI sample short)."""
    meta = realdata / "spikeglx" / "DigitalChannelTest_g0" / "DigitalChannelTest_g0_t0.nidq.meta"
    s = stream_info(meta)
    edges = nidq_sync_edges(s.bin_path, s, chunk_samples=10_000)
    period = read_meta(meta)["syncSourcePeriod"] * s.rate_hz
    assert len(edges.rising) > 100
    assert np.abs(np.diff(edges.rising) - period).max() <= 1
    assert np.mean(np.diff(edges.rising)) == pytest.approx(period, rel=1e-4)
    assert np.abs(edges.falling - edges.rising - period / 2).max() <= 1
