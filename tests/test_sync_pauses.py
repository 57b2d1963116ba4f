"""pixbin.sync: behaviour recordings that pause and restart (issue #15 item 3, docs/SYNC.md §4).

The simulator's ``pause=(start_s, length_s)`` stops the behaviour DAQ at a probe time and
restarts it later, its sample count going on as if no time passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pixbin.clock import ClockMap, PiecewiseClockMap
from pixbin.errors import SyncError
from pixbin.sync import SyncParams, run_sync
from pixbin.synthetic import write_sync_session


def run(s: dict, out: Path, **params) -> dict:
    return run_sync(ap_meta=s["ap_meta"], lf_meta=s["lf_meta"], lf_bin=s["lf_bin"],
                    behaviour_tdms=s["behaviour_tdms"], out_dir=out, ap_bin=s["ap_bin"],
                    params=SyncParams(**{"figure": False, **params}))


def true_probe_s(truth: dict, k: np.ndarray) -> np.ndarray:
    """The simulator's probe time of behaviour sample ``k``."""
    late = np.where(k >= truth.get("pause_sample", np.inf), truth.get("pause_s", 0.0), 0.0)
    return truth["offset_s"] + late + k / truth["rate_true_hz"]


def test_piecewise_clock_map_leaves_the_pause_unplaced():
    m = PiecewiseClockMap("behaviour", (ClockMap("behaviour", -2.0, 1.0 + 1e-5),
                                        ClockMap("behaviour", 1.3, 1.0 + 1e-5)),
                          ((0.0, 10.0), (10.5, 20.0)))
    t = np.array([-1.0, 3.0, 10.2, 12.0, 25.0])
    p = m.to_probe(t)
    assert np.isnan(p[2]) and np.isfinite(np.delete(p, 2)).all()
    np.testing.assert_allclose(m.from_probe(np.delete(p, 2)), np.delete(t, 2), atol=1e-12)
    # probe times inside the pause, or mapping into the unplaced stream interval: no stream time
    assert np.isnan(m.from_probe([8.5, 10.0, 11.5])).all()
    back = PiecewiseClockMap.from_dict("behaviour", m.to_dict())
    assert back == m
    with pytest.raises(SyncError, match="negative"):
        PiecewiseClockMap("behaviour", (ClockMap("behaviour", 0.0), ClockMap("behaviour", -1.0)),
                          ((0.0, 10.0), (10.5, 20.0)))


def test_pause_with_a_sync_code_is_placed_segment_by_segment(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=-4.2, tail_s=2.0,
                           random_intervals=(0.7, 1.3), pause=(25.3, 3.7), write_ap=True,
                           dropped=(40,))
    out = tmp_path / "processed"
    summary = run(s, out, figure=True)
    truth = s["truth"]
    assert summary["pass"] is True
    b = summary["streams"]["behaviour"]
    assert b["clock_model"] == "piecewise" and b["drift"] == "shared"
    assert len(b["segments"]) == 2 and len(b["pauses"]) == 1
    assert b["pauses"][0]["length_s"] == pytest.approx(3.7, abs=2e-4)
    pause_at = truth["pause_sample"] / truth["rate_nominal_hz"]
    (a0, a1), (b0, b1) = (seg["stream_s"] for seg in b["segments"])
    assert a0 == 0.0 and a1 < pause_at < b0 and b1 == truth["n_samples"] / truth["rate_nominal_hz"]
    for seg in b["segments"]:
        assert seg["decided_by"] in ("proof", "only candidate")
        assert seg["residual_us"]["max"] < 1000 and seg["matched"] > 40
    assert b["ppm"] == pytest.approx(-truth["drift_ppm"], abs=2.0)
    # every placed sample to within one behaviour sample of the truth; the others are NaN
    m = ClockMap.load(out, "behaviour")
    assert isinstance(m, PiecewiseClockMap)
    k = np.arange(truth["n_samples"])
    got = m.to_probe(k / truth["rate_nominal_hz"])
    placed = np.isfinite(got)
    assert np.abs(got[placed] - true_probe_s(truth, k[placed])).max() < 1 / truth["rate_true_hz"]
    unplaced = k[~placed] / truth["rate_nominal_hz"]
    assert unplaced.min() > a1 and unplaced.max() < b0
    # probe times inside the pause have no behaviour time
    inside = np.linspace(25.4, 28.9, 20)
    assert np.isnan(m.from_probe(inside)).all()
    lag = json.loads((out / "lag.json").read_text())
    assert lag == [{"lag_start": truth["lag_start"], "lag_end": truth["lag_end"]}]
    assert (out / "sync_0.png").stat().st_size > 0
    assert any("paused 1 time" in w for w in summary["warnings"])


def test_fractional_pause_with_a_periodic_train_is_refused_naming_the_segment(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=-4.2, tail_s=-2.0,
                           pause=(25.3, 3.3))
    out = tmp_path / "processed"
    with pytest.raises(SyncError, match=r"segment 1 of 2 \(behaviour 0\.000–2\d\.\d+ s\) sync "
                                        r"is ambiguous: offset"):
        run(s, out)  # by default the first segment, placed by its start only, is refused
    # even accepting the fewest lost pulses for the first, the second cannot be placed
    with pytest.raises(SyncError, match=r"segment 2 of 2 \(behaviour 29\.\d+–5\d\.\d+ s\) sync "
                                        r"is ambiguous: offset") as err:
        run(s, out, require_proof=False)
    assert "shift_periods=+1" in str(err.value)
    assert "shift_periods: [N1, ..., N2]" in str(err.value)
    assert "pseudo-random sync code" in str(err.value)
    doc = json.loads((out / "sync.json").read_text())
    assert doc["pass"] is False and "segment 2 of 2" in doc["reason"]
    assert not (out / "lag.json").exists()


def test_fractional_pause_is_placed_when_the_train_stops_inside_the_last_segment(tmp_path):
    # train_within_probe: behaviour edges mapped past the probe's end rule out the longer
    # pauses, and a pause cannot be negative: one alignment is left
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=-4.2, tail_s=0.3,
                           pause=(25.3, 0.4), write_ap=True)
    out = tmp_path / "processed"
    summary = run(s, out, train_within_probe=True, require_proof=False)
    truth = s["truth"]
    b = summary["streams"]["behaviour"]
    # the first segment is placed by its start only (fewest lost pulses), the second by proof
    assert [seg["decided_by"] for seg in b["segments"]] == ["fewest missing", "proof"]
    assert b["pauses"][0]["length_s"] == pytest.approx(0.4, abs=2e-4)
    m = ClockMap.load(out, "behaviour")
    k = np.arange(0, truth["n_samples"], 5)
    got = m.to_probe(k / truth["rate_nominal_hz"])
    placed = np.isfinite(got)
    assert np.abs(got[placed] - true_probe_s(truth, k[placed])).max() < 1 / truth["rate_true_hz"]


def test_whole_period_pause_with_a_periodic_train_is_refused_by_default(tmp_path):
    """A pause of whole sync periods leaves a periodic train as if no time had passed but for
    its ends: the behaviour's train ends that many periods early, which a shift explains as well
    (docs/SYNC.md §4, Pauses). By default the stage refuses; accepting the fewest lost pulses
    (``require_proof: false``) it passes with one linear map and every behaviour time after the
    pause off by the pause. Sync codes are the way out."""
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=-4.2, tail_s=2.0,
                           pause=(25.3, 3.0), write_ap=True)
    out = tmp_path / "processed"
    for within in (False, True):
        with pytest.raises(SyncError, match="ambiguous"):
            run(s, out, train_within_probe=within)
        assert not (out / "lag.json").exists()
    summary = run(s, out, require_proof=False)
    truth = s["truth"]
    assert summary["pass"] is True
    assert "segments" not in summary["streams"]["behaviour"]
    m = ClockMap.load(out, "behaviour")
    assert isinstance(m, ClockMap)
    k = np.arange(0, truth["n_samples"], 5)
    err = m.to_probe(k / truth["rate_nominal_hz"]) - true_probe_s(truth, k)
    before = k < truth["pause_sample"]
    assert np.abs(err[before]).max() < 1 / truth["rate_true_hz"]
    np.testing.assert_allclose(err[~before], -3.0, atol=1 / truth["rate_true_hz"])


def test_no_pause_keeps_the_linear_map(tmp_path):
    s = write_sync_session(tmp_path / "raw", duration_s=60, offset_s=-4.2, tail_s=2.0,
                           random_intervals=(0.7, 1.3), write_ap=True)
    out = tmp_path / "processed"
    summary = run(s, out)
    b = summary["streams"]["behaviour"]
    assert summary["pass"] is True and "segments" not in b and "pauses" not in b
    assert "pause_sample" not in s["truth"]
    m = ClockMap.load(out, "behaviour")
    assert isinstance(m, ClockMap)
    k = np.arange(0, s["truth"]["n_samples"], 5)
    err = m.to_probe(k / s["truth"]["rate_nominal_hz"]) - true_probe_s(s["truth"], k)
    assert np.abs(err).max() < 1 / s["truth"]["rate_true_hz"]
    # one shift per segment for a recording that does not pause is refused
    with pytest.raises(SyncError, match="does not pause"):
        run(s, tmp_path / "again", shift_periods=(None, 0))
