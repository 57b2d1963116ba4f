"""pixbin.sync: edge matching, clock maps, lag.json, refusal of ambiguous or bad syncs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pixbin.edges import Edges
from pixbin.errors import ConfigError, SyncError
from pixbin.clock import ClockMap
from pixbin.sync import SyncParams, run_sync
from pixbin.sync_match import check_match, match_edges
from pixbin.synthetic import write_sync_session


# ----------------------------------------------------------------------------- helpers
def run(s: dict, out: Path, **kw) -> dict:
    # write_sync_session's pulser starts and stops with the probe file (unless train_overrun_s)
    params = kw.pop("params", SyncParams(figure=kw.pop("figure", False), train_within_probe=True))
    return run_sync(ap_meta=s["ap_meta"], lf_meta=s["lf_meta"], lf_bin=s["lf_bin"],
                    behaviour_tdms=s["behaviour_tdms"], out_dir=out, params=params,
                    ap_bin=kw.pop("ap_bin", s["ap_bin"]))


def max_map_error_s(out: Path, truth: dict) -> float:
    m = ClockMap.load(out, "behaviour")
    k = np.linspace(0, truth["n_samples"] - 1, 101)
    true_probe = truth["offset_s"] + k / truth["rate_true_hz"]
    return float(np.abs(m.to_probe(k / truth["rate_nominal_hz"]) - true_probe).max())


# --------------------------------------------------------------------------------------- tests
def test_params_from_dict_refuses_unknown():
    p = SyncParams.from_dict({"tolerance_s": 5e-4, "sync_bit": 6})
    assert p.tolerance_s == 5e-4
    with pytest.raises(ConfigError, match="tolerence_s"):
        SyncParams.from_dict({"tolerence_s": 1e-3})
    with pytest.raises(ConfigError, match="threshold"):
        SyncParams(threshold_low=1.0)


def test_clock_map_roundtrip_and_io(tmp_path):
    m = ClockMap("behaviour", offset_s=-2.5, rate=1 - 50e-6)
    t = np.array([0.0, 1.0, 3600.0])
    np.testing.assert_allclose(m.from_probe(m.to_probe(t)), t, atol=1e-12)
    assert m.ppm == pytest.approx(-50.0)
    m.save(tmp_path, matched=10)
    assert ClockMap.load(tmp_path, "behaviour") == m
    assert ClockMap.load(tmp_path, "imec0.ap") == ClockMap.identity()
    with pytest.raises(SyncError, match="no clock map"):
        ClockMap.load(tmp_path, "camera")
    doc = json.loads((tmp_path / "sync.json").read_text())
    doc["pass"] = False
    (tmp_path / "sync.json").write_text(json.dumps(doc))
    with pytest.raises(SyncError, match="failed"):
        ClockMap.load(tmp_path, "behaviour")
    with pytest.raises(SyncError, match="not found"):
        ClockMap.load(tmp_path / "nope", "behaviour")


def _edges(rising, high=0.5):
    rising = np.asarray(rising, float)
    return Edges(rising, rising + high)


def test_match_edges_with_train_start_and_dropped_pulses():
    rng = np.random.default_rng(1)
    probe_r = np.arange(0.4, 600, 1.0)
    offset, rate = -3.21, 1 + 40e-6
    beh_r = np.delete((probe_r - offset) / rate, [50, 51, 300])  # behaviour seconds
    beh_r = beh_r + rng.normal(0, 20e-6, len(beh_r))
    m = match_edges(_edges(probe_r), Edges(beh_r, beh_r + 0.5 / rate),
                    probe_span_s=(0, 600.2), stream_span_s=(0, 606.0))
    assert m.offset_s == pytest.approx(offset, abs=20e-6)
    assert m.ppm == pytest.approx(40, abs=0.5)
    assert len(m.missing_in_stream_s) == 6  # 3 pulses x 2 edges
    np.testing.assert_allclose(np.sort(m.missing_in_stream_s)[::2], probe_r[[50, 51, 300]])
    assert m.margin >= 2


def test_match_edges_periodic_without_start_or_stop_is_ambiguous():
    probe_r = np.arange(0.4, 600, 1.0)
    # behaviour inside the probe recording, regular pulses throughout: no unique alignment
    beh_r = probe_r[(probe_r > 100) & (probe_r < 400)] - 95.0
    with pytest.raises(SyncError, match="ambiguous"):
        match_edges(_edges(probe_r), _edges(beh_r), probe_span_s=(0, 600),
                    stream_span_s=(0, 310))


def test_match_edges_other_session_is_refused():
    """A behaviour file from another session: different dropped pulses, no train start/stop."""
    probe_r = np.delete(np.arange(0.4, 900, 1.0), [100, 400, 401, 700])
    other = np.delete(np.arange(0.8, 900, 1.0), [150, 500, 620])
    beh_r = other[(other > 45.2) & (other < 800)] - 45.0  # pulses from start to end
    try:
        m = match_edges(_edges(probe_r), _edges(beh_r), probe_span_s=(0, 900),
                        stream_span_s=(0, 755.0))
    except SyncError as exc:
        assert "ambiguous" in str(exc)
    else:  # the best alignment leaves behaviour pulses the probe never sent
        assert any("no probe edge" in p for p in check_match(m))
    # the same behaviour pulses cut from the probe's own train pass
    own = probe_r[(probe_r > 45.0) & (probe_r < 800)] - 45.0
    m = match_edges(_edges(probe_r), _edges(own), probe_span_s=(0, 900), stream_span_s=(0, 755.0))
    assert check_match(m) == [] and m.offset_s == pytest.approx(45.0)


def test_match_edges_irregular_train_unique():
    rng = np.random.default_rng(5)
    probe_r = np.cumsum(rng.uniform(0.5, 1.5, 500))
    offset, rate = 4.0, 1 - 30e-6
    beh_r = (probe_r[20:480] - offset) / rate
    m = match_edges(Edges(probe_r, probe_r + 0.2), Edges(beh_r, beh_r + 0.2 / rate),
                    probe_span_s=(0, probe_r[-1] + 1), stream_span_s=(0, beh_r[-1] + 1))
    assert m.offset_s == pytest.approx(offset, abs=1e-6) and m.ppm == pytest.approx(-30, abs=0.1)


@pytest.mark.parametrize(
    "offset_s,drift_ppm,tail_s,within",
    [
        (-5.0, 50.0, 2.0, False),  # behaviour starts first: the train starts inside it
        (-4.2, -50.0, -3.0, False),  # ... and stops before the probe
        (5.0, -50.0, 3.0, True),  # behaviour starts later, ends later: needs the end bound
    ],
)
def test_run_sync_synthetic(tmp_path, offset_s, drift_ppm, tail_s, within):
    s = write_sync_session(tmp_path / "raw", duration_s=150, offset_s=offset_s,
                           drift_ppm=drift_ppm, tail_s=tail_s, dropped=(20, 21, 90), seed=3)
    out = tmp_path / "processed"
    # one end of the train is seen by the behaviour and bounded: only the fewest lost pulses
    # decide (the lab's usual session), so the map is accepted only with require_proof: false
    summary = run(s, out, params=SyncParams(figure=False, train_within_probe=within,
                                            require_proof=False))
    truth = s["truth"]
    assert summary["pass"] is True
    b = summary["streams"]["behaviour"]
    # LF-only timing (400 µs samples, a phase that barely moves in 150 s): ppm to a few ppm
    assert b["ppm"] == pytest.approx(-drift_ppm, abs=4.0)
    assert b["missing"]["in_behaviour"] == 6 and b["missing"]["in_probe"] == 0
    assert b["residual_us"]["max"] < 1000
    # LF-only timing: within one LF sample period (400 µs) of the truth everywhere
    assert max_map_error_s(out, truth) < 4e-4
    lag = json.loads((out / "lag.json").read_text())
    assert lag == [{"lag_start": truth["lag_start"], "lag_end": truth["lag_end"]}]
    assert ClockMap.load(out, "imec0.lf") == ClockMap("imec0.lf", 0.0, 1.0)


def test_train_spanning_probe_end_is_ambiguous_without_the_bound(tmp_path):
    """Behaviour starts after the probe and ends after it: the only evidence is the train's end,
    which tells shift 0 from shift +1 only if the pulser stops with the probe file."""
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=5.0, drift_ppm=-50.0,
                           tail_s=3.0)
    with pytest.raises(SyncError, match="ambiguous"):
        run(s, tmp_path / "processed", params=SyncParams(figure=False))
    assert not (tmp_path / "processed" / "lag.json").exists()


def test_behaviour_inside_probe_train_is_ambiguous(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=5.0, drift_ppm=50.0,
                           tail_s=-5.0, dropped=(20,))
    with pytest.raises(SyncError, match="ambiguous"):
        run(s, tmp_path / "processed", params=SyncParams(figure=False, train_within_probe=True))


# ------------------------------------------- lost end pulses: the one-period ambiguity (issue #15)
def _run_fewest_missing(s: dict, out: Path, *, params: SyncParams = SyncParams(figure=False),
                        **kw) -> dict:
    """``run`` with ``sync: {require_proof: false}``: the alignment needing the fewest lost
    pulses is accepted."""
    return run(s, out, params=dataclasses.replace(params, require_proof=False), **kw)


def _right_or_refused(run_it, s: dict, out: Path) -> str:
    """Run; the map must be within 0.1 ms of the truth or the match refused as ambiguous."""
    try:
        run_it(s, out)
    except SyncError as exc:
        assert "ambiguous" in str(exc)
        assert not (out / "lag.json").exists()
        return "refused"
    assert max_map_error_s(out, s["truth"]) < 1e-4
    assert json.loads((out / "lag.json").read_text())[0]["lag_start"] == s["truth"]["lag_start"]
    return "pass"


_UNDECIDABLE = ("undecidable: with require_proof: false a shift needing fewer lost pulses wins "
                "(issue #15)")
# (session, train_within_probe, outcome with require_proof: false, outcome by default)
_LOST_END_PULSES = {
    # the behaviour starts first and loses the train's first pulse(s); nothing pins the other end
    "lost first, behaviour ends first": (dict(lost_first=1, tail_s=-3.0), False, None, "refused"),
    "lost first two, behaviour ends first": (dict(lost_first=2, tail_s=-3.0), False, None,
                                             "refused"),
    "lost first, pulser runs past the probe": (dict(lost_first=1, train_overrun_s=10.0), False,
                                               None, "refused"),
    "lost first and last, pulser runs past": (dict(lost_first=1, lost_last=1,
                                                   train_overrun_s=10.0), False, None, "refused"),
    # the behaviour starts after the probe and loses the last pulse before the train stops
    "lost last, train within the probe": (dict(offset_s=5.0, tail_s=3.0, lost_last=1), True, None,
                                          "refused"),
    # both ends seen by the behaviour: the rival needs the mirror loss, a tie
    "lost last, train stops with the probe": (dict(lost_last=1), False, "refused", "refused"),
    "lost last, pulser runs past the probe": (dict(lost_last=1, train_overrun_s=10.0), False,
                                              "refused", "refused"),
    "lost first and last": (dict(lost_first=1, lost_last=1), False, "refused", "refused"),
    "lost first, train within the probe": (dict(lost_first=1), True, "refused", "refused"),
    # decidable: a pulse the pulser skipped (both sides lack it) pins the alignment
    "lost first, a gap in the train": (dict(lost_first=1, tail_s=-3.0, train_gaps=(30,)), False,
                                       "pass", "pass"),
    # decidable: the train starts and stops with the probe, the behaviour sees both
    "train within the probe, interior drop": (dict(dropped=(20,)), True, "pass", "pass"),
}


def _lost_end_session(tmp_path: Path, session: dict) -> dict:
    kw = dict(duration_s=60, offset_s=-5.0, tail_s=2.0, drift_ppm=30.0, write_ap=True, seed=2)
    return write_sync_session(tmp_path / "raw", **{**kw, **session})


def _params(within: bool) -> SyncParams:
    return SyncParams(figure=False, train_within_probe=within)


@pytest.mark.parametrize("case", list(_LOST_END_PULSES))
def test_lost_end_pulses_accepting_the_fewest_missing(tmp_path, case, request):
    """``require_proof: false`` passes the undecidable cases one period off (xfail, strict)."""
    session, within, lenient, _ = _LOST_END_PULSES[case]
    if lenient is None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=_UNDECIDABLE))
    s = _lost_end_session(tmp_path, session)
    outcome = _right_or_refused(
        lambda s, out: _run_fewest_missing(s, out, params=_params(within)), s,
        tmp_path / "processed")
    assert outcome == lenient


@pytest.mark.parametrize("case", list(_LOST_END_PULSES))
def test_lost_end_pulses_by_default(tmp_path, case):
    """By default (proof required) no case passes off by a period: refused, or right when the
    data decide."""
    session, within, _, strict = _LOST_END_PULSES[case]
    s = _lost_end_session(tmp_path, session)
    outcome = _right_or_refused(lambda s, out: run(s, out, params=_params(within)), s,
                                tmp_path / "processed")
    assert outcome == strict
    if outcome == "pass":
        doc = json.loads((tmp_path / "processed" / "sync.json").read_text())
        assert doc["pass"] is True


def test_a_lost_first_pulse_writes_the_same_files_as_a_one_period_shift(tmp_path):
    """Why no rule can tell: test_run_sync_synthetic's session (behaviour from -4.2 s, ends 3 s
    before the probe) and one whose behaviour started at -3.2 s and lost the train's first pulse
    (and the same three later ones) write byte-identical files; their truths differ by 1 s."""
    common = dict(duration_s=150, drift_ppm=-50.0, seed=3)
    a = write_sync_session(tmp_path / "a", offset_s=-4.2, tail_s=-3.0, dropped=(20, 21, 90),
                           **common)
    b = write_sync_session(tmp_path / "b", offset_s=-3.2, tail_s=-2.0, dropped=(21, 22, 91),
                           lost_first=1, **common)
    for key in ("ap_meta", "lf_meta", "lf_bin", "behaviour_tdms"):
        assert Path(a[key]).read_bytes() == Path(b[key]).read_bytes()
    assert a["truth"]["lag_start"] - b["truth"]["lag_start"] == 1000
    # accepting the alignment needing fewer lost pulses: a's truth, 1 s off for b
    summary = _run_fewest_missing(a, tmp_path / "out")
    assert max_map_error_s(tmp_path / "out", a["truth"]) < 4e-4
    b_entry = summary["streams"]["behaviour"]
    assert b_entry["offset_s"] == pytest.approx(b["truth"]["offset_s"] - 1.0, abs=1e-3)
    # by default (proof required) both are refused, naming the two offsets and the ways out
    with pytest.raises(SyncError, match="ambiguous") as info:
        run(b, tmp_path / "strict")
    msg = str(info.value)
    assert "offset -4.200" in msg and "offset -3.200" in msg
    assert "shift_periods=+1" in msg and "train_within_probe" in msg and "fileCreateTime" in msg
    assert "require_proof: false" in msg


def _lost_first_edges():
    """Probe train from 0.4 s; the behaviour (from -5 s, ending 40 s before the probe) lost the
    train's first pulse. Behaviour seconds = probe seconds + 5."""
    probe_r = np.arange(0.4, 300, 1.0)
    beh_r = probe_r[1:260] + 5.0  # recorded from probe time -5 s to 260 s
    return _edges(probe_r), _edges(beh_r), dict(probe_span_s=(0, 300.2),
                                                 stream_span_s=(0, 265.0),
                                                 train_starts_with_probe=True)


def test_match_edges_reports_what_decided():
    probe, beh, spans = _lost_first_edges()
    m = match_edges(probe, beh, **spans)  # the fewest lost pulses: one period off
    assert m.offset_s == pytest.approx(-6.0, abs=1e-6) and m.n_missing == 0
    assert m.decided_by == "fewest missing" and m.period_s == pytest.approx(1.0)
    assert any(abs(o + 5.0) < 1e-6 for o in m.unproven_offsets_s)  # the truth, not ruled out
    with pytest.raises(SyncError, match=r"ambiguous.*shift_periods=\+1: 2 edges missing, 2 of "
                                        r"them at the ends"):
        match_edges(probe, beh, **spans, require_proof=True)
    truth = match_edges(probe, beh, **spans, shift_periods=1)
    assert truth.offset_s == pytest.approx(-5.0, abs=1e-6) and truth.decided_by == "shift_periods"
    assert truth.n_missing == 2 and truth.n_missing_at_ends == 2 and truth.n_missing_interior == 0
    assert len(truth.missing_in_stream_s) == 2 and truth.second_offset_s == pytest.approx(-6.0)
    # with the train's end bound and a behaviour recording past it, proof decides
    probe_r = np.arange(0.4, 300, 1.0)
    beh_r = np.delete(probe_r, [100]) + 5.0
    m = match_edges(_edges(probe_r), _edges(beh_r), probe_span_s=(0, 300.2),
                    stream_span_s=(0, 307.0), params=SyncParams(train_within_probe=True),
                    require_proof=True)
    assert m.offset_s == pytest.approx(-5.0, abs=1e-6) and m.decided_by == "proof"
    assert m.n_missing_interior == 2 and m.n_missing_at_ends == 0 and m.n_outside_train == 0
    with pytest.raises(SyncError, match="irregular"):
        rng = np.random.default_rng(5)
        t = np.cumsum(rng.uniform(0.5, 1.5, 300))
        match_edges(Edges(t, t + 0.2), Edges(t[10:290], t[10:290] + 0.2),
                    probe_span_s=(0, t[-1] + 1), stream_span_s=(0, t[-1] + 1), shift_periods=1)


def test_run_sync_30_min(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=1800, offset_s=-5.0, drift_ppm=50.0,
                           dropped=(100, 900, 901, 1500), beh_rate=2500.0, seed=4)
    out = tmp_path / "processed"
    summary = run(s, out, figure=True)
    assert summary["pass"]
    assert max_map_error_s(out, s["truth"]) < 1e-4
    assert json.loads((out / "lag.json").read_text())[0]["lag_start"] == s["truth"]["lag_start"]
    assert (out / "sync_0.png").stat().st_size > 10_000


def test_ap_refinement_beats_lf_quantisation(tmp_path):
    """Integer rates put every edge at the same LF phase: LF alone is off by up to ±200 µs,
    AP windows fix it."""
    s = write_sync_session(tmp_path / "raw", duration_s=60, ap_rate=30000.0, offset_s=-2.0,
                           tail_s=1.5, drift_ppm=-20.0, phase=0.30001, beh_rate=25000.0,
                           write_ap=True, dropped=(10,))
    out = tmp_path / "processed"
    summary = run(s, out, figure=True)
    assert summary["probe"]["edge_source"] == "lf+ap"
    assert summary["probe"]["n_refine_failed"] == 0
    assert max_map_error_s(out, s["truth"]) < 3e-5
    assert (out / "sync_0.png").is_file()


def test_lf_rate_disagreeing_with_ap(tmp_path):
    """An LF meta whose rate is not AP/12: refused without the AP file, fitted from edges with it."""
    s = write_sync_session(tmp_path / "raw", duration_s=40, ap_rate=30000.0, offset_s=-2.0,
                           write_ap=True, lf_meta_rate_factor=1 + 20e-6)
    hidden = s["ap_bin"].rename(s["ap_bin"].with_suffix(".hidden"))  # not found beside the meta
    with pytest.raises(SyncError, match="ratio"):
        run(s, tmp_path / "p0", ap_bin=None)
    hidden.rename(s["ap_bin"])
    summary = run(s, tmp_path / "p1")
    lf = summary["streams"]["imec0.lf"]
    assert lf["source"] == "edges"
    assert lf["ppm"] == pytest.approx(20.0, abs=2.0)  # LF seconds as declared run 20 ppm slow
    assert max_map_error_s(tmp_path / "p1", s["truth"]) < 1e-4


def test_no_pulses_in_behaviour_is_refused(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=40, behaviour_pulses=np.empty(0))
    out = tmp_path / "processed"
    (out).mkdir()
    (out / "lag.json").write_text("[]")  # stale
    with pytest.raises(SyncError, match="NpxlSync_Signal"):
        run(s, out)
    doc = json.loads((out / "sync.json").read_text())
    assert doc["pass"] is False and doc["reason"]
    assert not (out / "lag.json").exists()
    with pytest.raises(SyncError, match="failed"):
        ClockMap.load(out, "behaviour")


def test_no_pulses_in_probe_is_refused(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=40, probe_sync=False)
    with pytest.raises(SyncError, match="rising sync edge"):
        run(s, tmp_path / "processed")


def test_behaviour_from_other_session_refused(tmp_path):
    """Pulses that are not the probe's: a different dropped-pulse pattern and no train start/stop."""
    s = write_sync_session(tmp_path / "raw", duration_s=120, offset_s=10.0, tail_s=-10.0,
                           pulses=(0.37, 1000.0), dropped=(40,),
                           behaviour_pulses=np.delete(np.arange(0.81, 1000, 1.0), [30, 70]))
    with pytest.raises(SyncError):
        run(s, tmp_path / "processed")
    assert json.loads((tmp_path / "processed" / "sync.json").read_text())["pass"] is False


def test_residual_tolerance_refuses(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=-3.0, noise_v=0.05)
    with pytest.raises(SyncError, match="worst residual"):
        run(s, tmp_path / "processed", params=SyncParams(tolerance_s=1e-6, figure=False, train_within_probe=True))


# ------------------------------------------------------------------ simulated sessions (pixbin.simulate)
def _simulated(tmp_path: Path, **kw) -> tuple[Path, dict, dict]:
    simulate = pytest.importorskip("pixbin.simulate")
    d = simulate.simulate_session(tmp_path / "data", session_id="240101_SIM01", seed=kw.pop("seed", 7),
                                  compress=False, n_units=4, dropped_frames=0, **kw)
    gt = json.loads((d / "ground_truth.json").read_text())
    stem = next(d.glob("*.imec0.lf.bin")).name[: -len(".lf.bin")]
    files = dict(ap_meta=d / f"{stem}.ap.meta", lf_meta=d / f"{stem}.lf.meta", lf_bin=d / f"{stem}.lf.bin",
                 behaviour_tdms=d / "NeuropixelBehaviour(0).tdms")
    return d, gt, files


def _truth_error_s(out: Path, gt: dict) -> float:
    m = ClockMap.load(out, "behaviour")
    b = gt["behaviour"]
    k = np.linspace(0, b["n_samples"] - 1, 201)
    return float(np.abs(m.to_probe(k / b["rate_nominal_hz"]) - (b["offset_s"] + k / b["rate_true_hz"])).max())


@pytest.mark.parametrize(
    "offset_s,drift_ppm,tail_s,within",
    [(-5.0, 50.0, 1.5, False), (-5.0, -50.0, -2.0, False), (5.0, -50.0, 1.5, True), (5.0, 50.0, 2.0, True)],
)
def test_simulated_session(tmp_path, offset_s, drift_ppm, tail_s, within):
    _, gt, files = _simulated(tmp_path, duration_s=30, write_ap=False, offset_s=offset_s,
                              drift_ppm=drift_ppm, behaviour_tail_s=tail_s, dropped_pulses=2)
    out = tmp_path / "processed"
    # one end of the train decides, by the fewest lost pulses: accepted with require_proof: false
    summary = run_sync(**files, out_dir=out, params=SyncParams(figure=False, train_within_probe=within,
                                                              require_proof=False))
    b = summary["streams"]["behaviour"]
    assert b["missing"]["in_behaviour"] == 4 and b["missing"]["in_probe"] == 0
    np.testing.assert_allclose(np.sort(b["missing"]["in_behaviour_probe_s"])[::2],
                               gt["sync"]["dropped_behaviour_pulse_times_s"], atol=1e-3)
    assert json.loads((out / "lag.json").read_text()) == [gt["lag"]]
    # probe edges from the LF (2.5 kHz, 400 µs samples) over 30 s: within one LF sample
    assert _truth_error_s(out, gt) < 4e-4
    assert b["ppm"] == pytest.approx(-drift_ppm, abs=10)  # 30 s of LF-timed edges


def test_simulated_behaviour_later_needs_train_bound(tmp_path):
    _, gt, files = _simulated(tmp_path, duration_s=20, write_ap=False, offset_s=5.0,
                              drift_ppm=50.0, behaviour_tail_s=1.5, dropped_pulses=1)
    with pytest.raises(SyncError, match="ambiguous"):
        run_sync(**files, out_dir=tmp_path / "processed", params=SyncParams(figure=False))


@pytest.mark.slow
def test_simulated_session_with_ap(tmp_path):
    """AP written (385 ch, 30 kHz): probe edges timed at AP resolution → within 0.1 ms."""
    d, gt, files = _simulated(tmp_path, duration_s=12, write_ap=True, offset_s=-3.0,
                              drift_ppm=-50.0, behaviour_tail_s=1.0, dropped_pulses=1)
    out = tmp_path / "processed"
    summary = run_sync(**files, out_dir=out, ap_bin=files["ap_meta"].with_suffix(".bin"),
                       params=SyncParams(train_within_probe=True))
    assert summary["probe"]["edge_source"] == "lf+ap" and summary["probe"]["n_refine_failed"] == 0
    assert _truth_error_s(out, gt) < 1e-4
    assert json.loads((out / "lag.json").read_text()) == [gt["lag"]]
    assert (out / "sync_0.png").is_file()


# ----------------------------------------------------------------------------- file times
@pytest.fixture()
def timed(tmp_path):
    """A sync session whose behaviour TDMS starts 2024-01-01T10:00:00 UTC, 5 s before the probe."""
    return write_sync_session(tmp_path / "raw", duration_s=40, offset_s=-5.0, drift_ppm=30.0)


def _created(session: dict, when: str) -> None:
    meta = Path(session["ap_meta"])
    meta.write_text(meta.read_text() + f"fileCreateTime={when}\n")


def test_file_times_that_agree_with_the_fit_pass(timed, tmp_path):
    _created(timed, "2024-01-01T10:00:05")
    times = run(timed, tmp_path / "out")["file_times"]
    assert times["checked"] and times["pass"] and abs(times["clock_difference_s"]) < 0.01
    assert times["probe_utc_offset_h"] == 0


def test_a_time_zone_between_the_two_pcs_is_reported_not_refused(timed, tmp_path):
    _created(timed, "2024-01-01T12:00:05")  # the SpikeGLX PC keeps local time, UTC+2
    times = run(timed, tmp_path / "out")["file_times"]
    assert times["pass"] and times["probe_utc_offset_h"] == 2.0
    with pytest.raises(SyncError, match=r"UTC\+0 h.*disagree by -7200.0 s"):  # stated zone: strict
        run(timed, tmp_path / "out2", params=SyncParams(figure=False, file_times_utc_offset_h=0, train_within_probe=True))


def test_a_behaviour_file_of_another_day_is_refused_naming_both_times(timed, tmp_path):
    """A periodic train fits any train: only the files' start times show the file is foreign."""
    _created(timed, "2024-01-05T10:00:05")  # the probe recorded 4 days after this TDMS
    with pytest.raises(SyncError) as info:
        run(timed, tmp_path / "out")
    msg = str(info.value)
    assert "2024-01-01T10:00:00" in msg and "2024-01-05T10:00:05" in msg
    assert "another session" in msg and "ignore_file_times" in msg
    doc = json.loads((tmp_path / "out" / "sync.json").read_text())
    assert doc["pass"] is False and doc["file_times"]["pass"] is False
    assert not (tmp_path / "out" / "lag.json").exists()
    forced = run(timed, tmp_path / "forced", params=SyncParams(figure=False, ignore_file_times=True, train_within_probe=True))
    assert forced["pass"] and forced["file_times"]["warning"].startswith("ignored")


def test_files_without_start_times_are_reported_as_not_checked(timed, tmp_path):
    times = run(timed, tmp_path / "out")["file_times"]  # the meta has no fileCreateTime
    assert times["checked"] is False and "fileCreateTime" in times["reason"]


def test_sync_json_says_what_decided_and_shift_periods_chooses(tmp_path):
    """An unproven choice is recorded with its rivals; ``shift_periods`` picks one of them."""
    s = _lost_end_session(tmp_path, dict(lost_first=1, tail_s=-3.0))
    summary = _run_fewest_missing(s, tmp_path / "default", params=_params(False))
    entry = summary["streams"]["behaviour"]
    assert entry["decided_by"] == "fewest missing"
    assert any("require_proof: false" in w for w in summary["warnings"])
    assert any("shift_periods=+1" in w for w in summary["warnings"])
    shift = round((entry["unproven_offsets_s"][0] - entry["offset_s"]))
    assert shift == 1
    chosen = run(s, tmp_path / "chosen", params=SyncParams(figure=False, shift_periods=shift))
    assert chosen["streams"]["behaviour"]["decided_by"] == "shift_periods"
    assert max_map_error_s(tmp_path / "chosen", s["truth"]) < 1e-4


@pytest.mark.parametrize("files_agree", [True, False])
def test_probe_side_drops_tolerated_when_the_file_times_agree(tmp_path, files_agree):
    """The probe's SY word lacks a pulse the behaviour saw: the map is accurate, and tolerated up
    to max_probe_drop_fraction when the files' start times confirm they belong together."""
    _, gt, files = _simulated(tmp_path, duration_s=60, write_ap=False, offset_s=-2.0,
                              drift_ppm=30.0, behaviour_tail_s=1.5, dropped_pulses=0)
    lf = np.memmap(files["lf_bin"], dtype=np.int16, mode="r+").reshape(-1, 385)
    rate = 29999.941586 / 12
    k = gt["sync"]["first_rising_s"] + 15  # the probe drops its 16th pulse
    lf[int(k * rate) - 2: int((k + 0.5) * rate) + 3, 384] = 0
    lf.flush()
    del lf
    params = SyncParams(figure=False, train_within_probe=True,
                        file_time_tolerance_s=120.0 if files_agree else 1e-9,
                        file_times_utc_offset_h=0.0 if files_agree else None)
    if not files_agree:  # the file times are off (a tolerance of 1 ns): refused
        with pytest.raises(SyncError):
            run_sync(**files, out_dir=tmp_path / "processed", params=params)
        return
    summary = run_sync(**files, out_dir=tmp_path / "processed", params=params)
    assert summary["file_times"]["pass"] is True
    assert summary["streams"]["behaviour"]["missing"]["in_probe"] == 2
    assert _truth_error_s(tmp_path / "processed", gt) < 4e-4


@pytest.mark.parametrize("offset_s,tail_s", [(5.0, -5.0), (-5.0, 2.0), (20.0, -30.0)])
def test_pseudo_random_pulse_train_aligns_whatever_the_overlap(tmp_path, offset_s, tail_s):
    """Random intervals (a sync code): the behaviour recording inside the probe's, which a
    periodic train leaves ambiguous, is aligned uniquely, lost pulses included."""
    s = write_sync_session(tmp_path / "raw", duration_s=90, offset_s=offset_s, tail_s=tail_s,
                           drift_ppm=-60.0, write_ap=True, dropped=(12, 13, 40),
                           random_intervals=(0.7, 1.3), seed=4)
    summary = run(s, tmp_path / "processed")
    assert summary["pass"] is True
    assert summary["streams"]["behaviour"]["decided_by"] in ("proof", "only candidate")
    assert max_map_error_s(tmp_path / "processed", s["truth"]) < 1e-4


def test_simulated_session_with_a_sync_code(tmp_path):
    """The full simulator's pseudo-random pulser: the behaviour map passes, proven."""
    _, gt, files = _simulated(tmp_path, duration_s=30, write_ap=False, offset_s=-2.0,
                              drift_ppm=30.0, behaviour_tail_s=1.5, dropped_pulses=2,
                              sync_code=True)
    summary = run_sync(**files, out_dir=tmp_path / "processed", params=SyncParams(figure=False))
    assert summary["streams"]["behaviour"]["decided_by"] in ("proof", "only candidate")
    assert "warnings" not in summary
    assert _truth_error_s(tmp_path / "processed", gt) < 4e-4
