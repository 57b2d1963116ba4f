"""pixbin.edges: hysteresis, interpolation, debounce, streaming equivalence, digital bits."""

from __future__ import annotations

import numpy as np
import pytest

import pixbin.edges
from pixbin.edges import (
    EdgeDetector,
    Edges,
    auto_thresholds,
    digital_edges,
    find_edges,
    ttl_detector,
)


@pytest.fixture(params=["numba", "numpy"])
def engine(request, monkeypatch):
    """The compiled level-change pass, or the vectorised numpy one used without numba."""
    if request.param == "numpy":
        monkeypatch.setattr(pixbin.edges, "_trigger_kernel", lambda: None)
    else:
        assert pixbin.edges._trigger_kernel() is not None
    return request.param


def square(n, period, duty=0.5, phase=0.0):
    t = np.arange(n) + phase
    return ((t % period) < duty * period).astype(np.float64)


def test_simple_step_positions():
    x = np.r_[0.0, 0, 0, 5, 5, 5, 0, 0]
    e = find_edges(x, low=1, high=4)
    np.testing.assert_allclose(e.rising, [2.5])
    np.testing.assert_allclose(e.falling, [5.5])
    d = find_edges(x, low=1, high=4, interpolate=False)
    np.testing.assert_array_equal(d.rising, [3.0])  # first sample at the new level
    np.testing.assert_array_equal(d.falling, [6.0])
    assert d.rising.dtype == np.float64


def test_signal_starting_high_has_no_edge_at_zero():
    e = find_edges(np.r_[5.0, 5, 0, 0, 5], low=1, high=4, interpolate=False)
    np.testing.assert_array_equal(e.rising, [4.0])
    np.testing.assert_array_equal(e.falling, [2.0])


def test_hysteresis_ignores_wobble_between_thresholds():
    x = np.r_[0.0, 3, 0.5, 3, 4.2, 2.0, 4.5, 3.0, 1.2, 0.9, 2.5, 0.2]
    e = find_edges(x, low=1, high=4, interpolate=False)
    np.testing.assert_array_equal(e.rising, [4.0])
    np.testing.assert_array_equal(e.falling, [9.0])


def test_interpolated_ramp_crossing_is_exact():
    # linear ramp 0 -> 5 over 10 samples: mid level 2.5 crossed at t = 5 (sample units)
    x = np.r_[np.zeros(5), np.linspace(0, 5, 11), np.full(5, 5.0), np.linspace(5, 0, 11)[1:], np.zeros(3)]
    e = find_edges(x, low=1.0, high=4.0)
    np.testing.assert_allclose(e.rising, [5 + 5.0], atol=1e-12)
    np.testing.assert_allclose(e.falling, [5 + 10 + 5 + 5.0], atol=1e-12)


def test_subsample_accuracy_of_sampled_square_wave():
    """A 0/5 V square wave with a 3-sample linear rise, sampled at arbitrary phase."""
    rng = np.random.default_rng(1)
    true = np.sort(rng.uniform(100, 99_900, 40))
    true = true[np.r_[True, np.diff(true) > 50]]
    t = np.arange(100_000, dtype=np.float64)
    level = np.zeros_like(t)
    for k, c in enumerate(true):  # alternate rise/fall, 3-sample linear transitions centred on c
        ramp = np.clip((t - c) / 3 + 0.5, 0, 1)
        level = level + (ramp if k % 2 == 0 else -ramp)
    x = 5 * level + rng.normal(0, 0.02, len(t))
    e = find_edges(x, low=1.5, high=3.5)
    np.testing.assert_allclose(e.rising, true[0::2], atol=0.05)
    np.testing.assert_allclose(e.falling, true[1::2], atol=0.05)


@pytest.mark.parametrize("seed", range(6))
def test_streaming_equals_whole_array(seed, engine):
    rng = np.random.default_rng(seed)
    x = 5 * square(50_000, 997.3, phase=rng.uniform(0, 997)) + rng.normal(0, 0.8, 50_000)
    x[rng.integers(0, 50_000, 30)] = rng.choice([-3.0, 8.0], 30)  # spikes/glitches
    kw = dict(low=1.5, high=3.5, min_interval_samples=rng.choice([0, 5]), interpolate=bool(seed % 2))
    whole = find_edges(x, **kw)
    det = EdgeDetector(**kw)
    cuts = np.sort(rng.choice(np.arange(1, 50_000), size=rng.integers(1, 60), replace=False))
    cuts = np.r_[0, cuts, 50_000]
    # include single-sample chunks
    cuts = np.unique(np.r_[cuts, 10, 11, 12])
    for a, b in zip(cuts[:-1], cuts[1:]):
        det.feed(x[a:b], int(a))
    got = det.result()
    np.testing.assert_array_equal(got.rising, whole.rising)
    np.testing.assert_array_equal(got.falling, whole.falling)
    assert len(whole.rising) > 10


def test_streaming_rejects_gaps_and_bad_thresholds():
    det = EdgeDetector(low=0, high=1)
    det.feed(np.zeros(10), 0)
    with pytest.raises(ValueError, match="contiguous"):
        det.feed(np.zeros(10), 11)
    det = EdgeDetector(low=1, high=2)
    det.feed(np.zeros(10), 0)
    with pytest.raises(ValueError, match="contiguous"):
        det.feed(np.zeros(10), 11)
    with pytest.raises(ValueError, match="low < high"):
        EdgeDetector(low=2, high=1)


def test_debounce_drops_short_pairs_and_keeps_alternation():
    x = np.zeros(200)
    x[20:120] = 5  # long pulse
    x[60:62] = 0  # 2-sample dropout inside it (glitch low)
    x[150:151] = 5  # 1-sample glitch high
    raw = find_edges(x, low=1, high=4, interpolate=False)
    assert len(raw.rising) == 3 and len(raw.falling) == 3
    e = find_edges(x, low=1, high=4, interpolate=False, min_interval_samples=5)
    np.testing.assert_array_equal(e.rising, [20.0])
    np.testing.assert_array_equal(e.falling, [120.0])


def test_bad_thresholds():
    with pytest.raises(ValueError, match="low < high"):
        find_edges(np.zeros(3), low=2, high=2)


def test_auto_thresholds():
    rng = np.random.default_rng(3)
    x = 5 * square(10_000, 100) + rng.normal(0, 0.05, 10_000)
    low, high = auto_thresholds(x)
    assert 1.2 < low < 1.8 and 3.2 < high < 3.8
    with pytest.raises(ValueError, match="flat"):
        auto_thresholds(np.ones(100))


def test_digital_edges_bit6_and_sign_bit():
    bits6 = square(5000, 1000).astype(np.int16)
    words = (bits6 << 6) | np.int16(-32768)  # bit 15 set: negative int16 values
    words = words.astype(np.int16)
    assert words.min() < 0
    e = digital_edges(words, 6)
    np.testing.assert_array_equal(e.rising, [1000.0, 2000, 3000, 4000])
    np.testing.assert_array_equal(e.falling, [500.0, 1500, 2500, 3500, 4500])
    ref = find_edges(bits6, low=0, high=1, interpolate=False)
    np.testing.assert_array_equal(e.rising, ref.rising)
    np.testing.assert_array_equal(e.falling, ref.falling)
    assert len(digital_edges(words, 15)) == 0
    # chunked use with the previous bit value
    a = digital_edges(words[:1000], 6)
    b = digital_edges(words[1000:], 6, start_index=1000, previous=int(bits6[999]))
    np.testing.assert_array_equal(np.r_[a.rising, b.rising], e.rising)
    np.testing.assert_array_equal(np.r_[a.falling, b.falling], e.falling)


def test_edges_container():
    e = Edges([3, 1], [2])
    pos, pol = e.all()
    np.testing.assert_array_equal(pos, [1, 2, 3])
    np.testing.assert_array_equal(pol, [1, -1, 1])
    assert len(e) == 3 and e.shifted(1).falling[0] == 3.0


def _reference(x, low, high, interpolate):
    """Plain-Python hysteresis, one sample at a time (the definition in the module docstring)."""
    mid = 0.5 * (low + high)
    state, rising, falling = 0, [], []
    for i, v in enumerate(x):
        new = 1 if v >= high else (-1 if v <= low else 0)
        if new and new != state:
            if state:
                if interpolate:
                    j = i - 1
                    while not ((x[j] < mid) if new > 0 else (x[j] > mid)):
                        j -= 1
                    pos = j + (mid - x[j]) / (x[j + 1] - x[j])
                else:
                    pos = float(i)
                (rising if new > 0 else falling).append(pos)
            state = new
    return np.array(rising), np.array(falling)


@pytest.mark.parametrize("seed", range(4))
def test_against_plain_python_reference(seed, engine):
    rng = np.random.default_rng(100 + seed)
    x = 5 * square(6_000, 211.7, phase=rng.uniform(0, 200)) + rng.normal(0, 1.0, 6_000)
    x[1000:1100] = np.linspace(0, 5, 100)  # a slow ramp: crossing far from the trigger
    for interpolate in (True, False):
        r, f = _reference(x, 1.5, 3.5, interpolate)
        e = find_edges(x, low=1.5, high=3.5, interpolate=interpolate)
        np.testing.assert_allclose(e.rising, r, rtol=0, atol=1e-9)
        np.testing.assert_allclose(e.falling, f, rtol=0, atol=1e-9)
        det = EdgeDetector(low=1.5, high=3.5, interpolate=interpolate)
        for a in range(0, 6_000, 97):
            det.feed(x[a:a + 97], a)
        np.testing.assert_allclose(det.result().rising, r, rtol=0, atol=1e-9)
        np.testing.assert_allclose(det.result().falling, f, rtol=0, atol=1e-9)


def test_detector_any_chunking_equals_find_edges_and_reference(engine):
    """Same conventions as find_edges (hysteresis, crossing, debounce) for any chunking, and
    ``interpolate="auto"`` interpolates float input and not integer input."""
    rng = np.random.default_rng(1)
    for trial in range(150):
        n = int(rng.integers(50, 4000))
        kind = trial % 3
        if kind == 0:  # noisy TTL, noise up to the thresholds
            x = np.repeat((rng.random(n // 20 + 1) < 0.5) * 5.0, 20)[:n]
            x = x + rng.normal(0, rng.choice([0.05, 1.0, 2.0]), n)
        elif kind == 1:  # slow wandering signal: crossings far from the triggers
            x = np.cumsum(rng.normal(0, 0.5, n))
            x = (x - x.min()) / (np.ptp(x) + 1e-9) * 5
        else:  # digital samples: the first sample at the new level
            x = rng.integers(0, 2, n).astype(np.uint8)
        low, high = (1.0, 4.0) if kind != 2 else (0, 1)
        debounce = float(rng.choice([0, 3, 10]))
        ref = find_edges(x, low=low, high=high, min_interval_samples=debounce,
                         interpolate=kind != 2)
        det = EdgeDetector(low=low, high=high, min_interval_samples=debounce, interpolate="auto")
        s = 0
        while s < n:
            m = int(rng.integers(1, 300))
            det.feed(x[s:s + m], s)
            s += m
        got = det.result()
        np.testing.assert_array_equal(got.rising, ref.rising)
        np.testing.assert_array_equal(got.falling, ref.falling)
        if debounce == 0:
            r, f = _reference(x.astype(np.float64), low, high, kind != 2)
            np.testing.assert_allclose(got.rising, r, rtol=0, atol=1e-9)
            np.testing.assert_allclose(got.falling, f, rtol=0, atol=1e-9)
    # more level changes in one chunk than the compiled pass buffers at once
    x = np.tile([0.0, 0.0, 5.0, 5.0, 5.0], 6000) + rng.normal(0, 0.1, 30_000)
    det = EdgeDetector(low=1, high=4)
    det.feed(x, 0)
    ref = find_edges(x, low=1, high=4)
    r, f = _reference(x, 1, 4, True)
    assert det.result().rising.size == 6000
    np.testing.assert_array_equal(det.result().rising, ref.rising)
    np.testing.assert_array_equal(det.result().falling, ref.falling)
    np.testing.assert_allclose(det.result().rising, r, rtol=0, atol=1e-9)
    np.testing.assert_allclose(det.result().falling, f, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ TDMS TTL channels: ttl_detector
def _tdms_channel(path, x, rate=1000.0, unit="V"):
    """A one-channel TDMS file (group "TTL", channel "0"); its ChannelInfo."""
    from nptdms import ChannelObject, GroupObject, RootObject, TdmsWriter

    from pixbin.tdms import list_channels

    with TdmsWriter(path) as w:
        w.write_segment([RootObject({}), GroupObject("TTL"), ChannelObject(
            "TTL", "0", x, properties={"wf_increment": 1.0 / rate, "unit_string": unit})])
    return list_channels(path)["TTL"]


def _feed(det, x, start=0, chunk=777):
    for a in range(start, x.size, chunk):
        det.feed(x[a:a + chunk], a)
    return det.result()


def test_auto_thresholds_checks():
    rng = np.random.default_rng(4)
    ttl = 5 * square(10_000, 100, duty=0.3) + rng.normal(0, 0.05, 10_000)
    assert auto_thresholds(ttl, min_swing=1.0, max_between=0.2) == auto_thresholds(ttl)
    with pytest.raises(ValueError, match="swings by 5.*less than 10"):
        auto_thresholds(ttl, min_swing=10.0)
    with pytest.raises(ValueError, match=r"does not look like a TTL signal: 65% .* at most 20%"):
        auto_thresholds(rng.normal(0, 1, 10_000), max_between=0.2)
    with pytest.raises(ValueError, match="empty"):
        auto_thresholds(np.full(10, np.nan))


def test_ttl_detector_spread_windows(tmp_path):
    rng = np.random.default_rng(5)
    x = 5 * square(200_000, 997.3, duty=0.4) + rng.normal(0, 0.1, 200_000)
    info = _tdms_channel(tmp_path / "a.tdms", x, rate=2000.0)
    det, start = ttl_detector(info, percentiles=(0.5, 99.5), windows=(16, 3000),
                              max_between=0.2, debounce_s=0.01)
    starts = np.unique(np.linspace(0, x.size - 3000, 16).astype(np.int64))
    low, high = auto_thresholds(np.concatenate([x[s:s + 3000] for s in starts]),
                                percentiles=(0.5, 99.5))
    assert start == 0 and (det.low, det.high) == (low, high)
    assert det.min_interval_samples == 0.01 * 2000.0 and det.interpolate is True
    got = _feed(det, x)
    ref = find_edges(x, low=low, high=high, min_interval_samples=20)
    np.testing.assert_array_equal(got.rising, ref.rising)
    np.testing.assert_array_equal(got.falling, ref.falling)
    # windows longer than the channel: the whole channel is the sample
    short = _tdms_channel(tmp_path / "b.tdms", x[:5000])
    det, _ = ttl_detector(short, windows=(64, 4096 * 4))
    assert (det.low, det.high) == auto_thresholds(x[:5000])


def test_ttl_detector_declared_and_interpolate(tmp_path):
    x = (square(50_000, 500) > 0).astype(np.uint8)
    info = _tdms_channel(tmp_path / "d.tdms", x)
    det, start = ttl_detector(info, declared=(0, 1), scan_samples=1000, interpolate="auto")
    assert (det.low, det.high, start) == (0.0, 1.0, 0)
    np.testing.assert_array_equal(_feed(det, x).rising, np.arange(500.0, 50_000, 500))


def test_ttl_detector_scan_starts_at_first_swinging_chunk(tmp_path):
    rng = np.random.default_rng(6)
    x = 5 * square(100_000, 400, duty=0.5) + rng.normal(0, 0.02, 100_000)
    x[:30_000] = 0.0
    x[12_000:12_005] = 5.0  # a pulse in a chunk that does not swing (robust range ~0): ignored
    info = _tdms_channel(tmp_path / "s.tdms", x)
    det, start = ttl_detector(info, percentiles=(1.0, 99.9), scan_samples=10_000, min_swing=1.0)
    assert start == 30_000
    assert (det.low, det.high) == auto_thresholds(x[30_000:40_000], percentiles=(1.0, 99.9))
    got = _feed(det, x, start=start)
    assert got.rising.min() > 30_000
    with pytest.raises(ValueError, match=r"^never swings by 6.0 V$"):
        ttl_detector(info, percentiles=(1.0, 99.9), scan_samples=10_000, min_swing=6.0)


def test_ttl_detector_refusals_give_the_reason(tmp_path):
    flat = _tdms_channel(tmp_path / "f.tdms", np.zeros(20_000), unit="")
    with pytest.raises(ValueError, match="signal is flat"):
        ttl_detector(flat)
    with pytest.raises(ValueError, match=r"^never swings by 1.0$"):
        ttl_detector(flat, scan_samples=5000, min_swing=1.0)
    noise = _tdms_channel(tmp_path / "n.tdms", np.random.default_rng(7).normal(0, 1, 20_000))
    with pytest.raises(ValueError, match="does not look like a TTL signal"):
        ttl_detector(noise, max_between=0.2)
