"""pixbin.binning against an independent plain-numpy reference (one trial, one unit at a time)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pixbin import binning
from pixbin.binning import BinnedSpikes, bin_edges, bin_spikes, signal_windows, values_at_bin_centres
from pixbin.errors import ConfigError, DatasetError

ENGINES = ["numba", "numpy"]


def reference_counts(times, units, unit_ids, align, window_s, bin_size_s):
    """True (unsaturated) int64 counts (trial, time, unit) by explicit comparisons per trial/unit.

    Edges follow the written definition: ``pre + arange(n + 1) * bin_size``, absolute edges
    ``a + e`` in float64, bin k = ``[a + e[k], a + e[k + 1])``.
    """
    pre, post = window_s
    n_bins = int(round((post - pre) / bin_size_s))
    e = pre + np.arange(n_bins + 1) * bin_size_s
    out = np.zeros((len(align), n_bins, len(unit_ids)), dtype=np.int64)
    for j, a in enumerate(align):
        abs_e = a + e
        for c, u in enumerate(unit_ids):
            t = times[units == u]
            for k in range(n_bins):
                out[j, k, c] = np.count_nonzero((t >= abs_e[k]) & (t < abs_e[k + 1]))
    return out


def check_against_reference(result: BinnedSpikes, times, units, unit_ids, align, window_s, bin_size_s):
    true = reference_counts(times, units, unit_ids, align, window_s, bin_size_s)
    np.testing.assert_array_equal(result.counts, np.minimum(true, 255).astype(np.uint8))
    assert result.counts.dtype == np.uint8
    assert result.n_saturated == int(np.count_nonzero(true >= 255))
    np.testing.assert_array_equal(result.n_spikes, true.sum(axis=(0, 1)))
    np.testing.assert_array_equal(result.unit_ids, np.asarray(unit_ids, dtype=np.int64))
    assert result.unit_ids.dtype == np.int64
    e = bin_edges(window_s, bin_size_s)
    np.testing.assert_array_equal(result.time_s, (e[:-1] + e[1:]) / 2)
    assert result.time_s.dtype == np.float64


def edge_heavy_session(rng: np.random.Generator, n_trials: int = 30, n_units: int = 12):
    """Random spikes plus spikes exactly on absolute bin edges and one ulp either side."""
    window_s, bin_size_s = (-0.5, 0.3), 0.02
    e = bin_edges(window_s, bin_size_s)
    align = np.sort(rng.uniform(1.0, 50.0, n_trials))
    align[1] = align[0] + 0.13  # overlapping windows
    align[2] = align[0]  # identical window
    j = rng.integers(0, n_trials, 3000)
    k = rng.integers(0, e.size, 3000)
    on_edge = align[j] + e[k]  # computed exactly as the definition does
    times = np.concatenate(
        [
            rng.uniform(0.0, 52.0, 20000),
            on_edge,
            np.nextafter(on_edge[:1000], -np.inf),
            np.nextafter(on_edge[1000:2000], np.inf),
        ]
    )
    order = np.argsort(times, kind="stable")
    times = times[order]
    units = rng.integers(0, n_units + 3, times.size)[order].astype(np.int64)  # some not requested
    unit_ids = np.array([7, 2, 11, 0, 99, 5, 3, 1], dtype=np.int64)  # out of order; 99 has no spikes
    return times, units, unit_ids, align, window_s, bin_size_s


@pytest.mark.parametrize("engine", ENGINES)
def test_random_edges_overlap_against_reference(engine):
    rng = np.random.default_rng(1)
    times, units, unit_ids, align, window_s, bin_size_s = edge_heavy_session(rng)
    result = bin_spikes(times, units, unit_ids, align, window_s, bin_size_s, engine=engine)
    check_against_reference(result, times, units, unit_ids, align, window_s, bin_size_s)
    np.testing.assert_array_equal(result.counts[0], result.counts[2])  # identical windows
    assert result.counts[:, :, list(unit_ids).index(99)].sum() == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", [2, 3])
def test_non_dyadic_bins_large_times_against_reference(engine, seed):
    """Bin sizes not representable in binary and align times ~1 h in, where rounding bites."""
    rng = np.random.default_rng(seed)
    window_s, bin_size_s = (-0.3, 0.21), 0.003
    e = bin_edges(window_s, bin_size_s)
    align = np.sort(rng.uniform(3000.0, 3600.0, 12))
    j, k = rng.integers(0, align.size, 2000), rng.integers(0, e.size, 2000)
    times = np.sort(np.concatenate([rng.uniform(2990.0, 3610.0, 30000), align[j] + e[k]]))
    units = rng.integers(0, 6, times.size).astype(np.int32)  # another integer dtype
    unit_ids = np.array([4, 0, 5, 1], dtype=np.int64)
    result = bin_spikes(times, units, unit_ids, align, window_s, bin_size_s, engine=engine)
    check_against_reference(result, times, units, unit_ids, align, window_s, bin_size_s)


def test_engines_identical_on_larger_random_session():
    rng = np.random.default_rng(4)
    times = np.sort(rng.uniform(0.0, 600.0, 300_000))
    units = rng.integers(0, 40, times.size)
    unit_ids = rng.permutation(45)[:35]
    align = rng.uniform(-5.0, 605.0, 200)  # unsorted, overlapping, some beyond the spikes
    results = [bin_spikes(times, units, unit_ids, align, (-1.0, 1.5), 0.025, engine=e) for e in ENGINES]
    np.testing.assert_array_equal(results[0].counts, results[1].counts)
    np.testing.assert_array_equal(results[0].n_spikes, results[1].n_spikes)
    assert results[0].counts.sum() > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_windows_beyond_first_and_last_spike(engine):
    rng = np.random.default_rng(5)
    times = np.sort(rng.uniform(10.0, 20.0, 2000))
    units = rng.integers(0, 3, times.size)
    align = np.array([times[0] + 0.1, times[-1] - 0.1, 5.0, 30.0, 10.0, 20.0])
    unit_ids = np.array([0, 1, 2])
    result = bin_spikes(times, units, unit_ids, align, (-1.0, 1.0), 0.05, engine=engine)
    check_against_reference(result, times, units, unit_ids, align, (-1.0, 1.0), 0.05)
    assert result.counts[2].sum() == 0 and result.counts[3].sum() == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_saturation_and_binarize_loss(engine):
    # unit 3: 300 spikes in one cell (saturates) + 1 spike in another bin
    # unit 1: 4 spikes in 2 cells (2 + 2); unit 8: 3 spikes in 3 cells; unit 6: no spikes
    times = np.concatenate([np.full(300, 0.015), [0.05, 0.05, 0.051, 0.071, 0.072], [0.11, 0.13, 0.15]])
    units = np.concatenate([np.full(300, 3), [3, 1, 1, 1, 1], [8, 8, 8]])
    order = np.argsort(times, kind="stable")
    times, units = times[order], units[order]
    unit_ids = np.array([3, 1, 8, 6])
    result = bin_spikes(times, units, unit_ids, np.array([0.0]), (0.0, 0.2), 0.02, engine=engine)
    check_against_reference(result, times, units, unit_ids, np.array([0.0]), (0.0, 0.2), 0.02)
    assert result.counts[0, 0, 0] == 255
    assert result.n_saturated == 1
    np.testing.assert_array_equal(result.n_spikes, [301, 4, 3, 0])
    np.testing.assert_allclose(result.binarize_loss(), [1 - 2 / 301, 0.5, 0.0, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(result.spike_data, result.counts > 0)
    assert result.spike_data.dtype == bool


@pytest.mark.parametrize("engine", ENGINES)
def test_exactly_255_spikes_counts_as_saturated(engine):
    times = np.full(255, 0.5)
    result = bin_spikes(times, np.zeros(255, int), np.array([0]), np.array([0.0]), (0.0, 1.0), 1.0, engine=engine)
    assert result.counts[0, 0, 0] == 255 and result.n_saturated == 1 and result.n_spikes[0] == 255


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_inputs(engine):
    empty_t, empty_u = np.zeros(0), np.zeros(0, dtype=np.int64)
    r = bin_spikes(empty_t, empty_u, np.array([4, 2]), np.array([1.0, 2.0]), (-0.5, 0.5), 0.1, engine=engine)
    assert r.counts.shape == (2, 10, 2) and r.counts.sum() == 0 and r.n_saturated == 0
    np.testing.assert_array_equal(r.binarize_loss(), [0.0, 0.0])
    times, units = np.array([0.5, 1.2]), np.array([2, 4])
    r = bin_spikes(times, units, np.array([4, 2]), np.zeros(0), (-0.5, 0.5), 0.1, engine=engine)
    assert r.counts.shape == (0, 10, 2) and r.counts.dtype == np.uint8
    np.testing.assert_array_equal(r.n_spikes, [0, 0])
    r = bin_spikes(times, units, np.zeros(0, dtype=np.int64), np.array([1.0]), (-0.5, 0.5), 0.1, engine=engine)
    assert r.counts.shape == (1, 10, 0) and r.binarize_loss().shape == (0,)


@pytest.mark.parametrize("engine", ENGINES)
def test_widely_spread_unit_ids_use_sorted_mapping(engine):
    big = 10**12
    times = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    units = np.array([big, 5, big + 1, -3, big])
    r = bin_spikes(times, units, np.array([big, -3, 5]), np.array([0.0]), (0.0, 1.0), 0.25, engine=engine)
    check_against_reference(r, times, units, [big, -3, 5], np.array([0.0]), (0.0, 1.0), 0.25)
    np.testing.assert_array_equal(r.n_spikes, [2, 1, 1])


def test_numba_missing_falls_back_to_numpy(monkeypatch, caplog):
    monkeypatch.setattr(binning, "_numba_engine", lambda: None)
    rng = np.random.default_rng(6)
    times = np.sort(rng.uniform(0, 10, 500))
    units = rng.integers(0, 3, 500)
    with caplog.at_level(logging.WARNING, logger="pixbin.binning"):
        r = bin_spikes(times, units, np.array([2, 0]), np.array([3.0, 6.0]), (-1.0, 1.0), 0.1)
    assert "numba" in caplog.text
    check_against_reference(r, times, units, [2, 0], np.array([3.0, 6.0]), (-1.0, 1.0), 0.1)


def test_inputs_not_mutated():
    rng = np.random.default_rng(7)
    times = np.sort(rng.uniform(0, 10, 300))
    units = rng.integers(0, 3, 300)
    unit_ids, align = np.array([2, 0, 1]), np.array([5.0, 2.0])
    copies = [a.copy() for a in (times, units, unit_ids, align)]
    for engine in ENGINES:
        bin_spikes(times, units, unit_ids, align, (-1.0, 1.0), 0.1, engine=engine)
    for a, b in zip((times, units, unit_ids, align), copies):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("engine", ENGINES)
def test_unsorted_spikes_refused(engine):
    times = np.array([0.1, 0.3, 0.2, 0.4])
    with pytest.raises(DatasetError, match="sorted ascending"):
        bin_spikes(times, np.zeros(4, int), np.array([0]), np.array([0.0]), (0.0, 1.0), 0.1, engine=engine)
    with pytest.raises(DatasetError, match="sorted ascending"):
        bin_spikes(np.array([0.1, np.nan, 0.4]), np.zeros(3, int), np.array([0]), np.array([0.0]),
                   (0.0, 1.0), 0.1, engine=engine)  # fmt: skip


@pytest.mark.parametrize(
    ("window_s", "bin_size_s"),
    [((-1.0, 1.0), 0.03), ((1.0, 1.0), 0.1), ((1.0, -1.0), 0.1), ((-1.0, 1.0), 0.0),
     ((-1.0, 1.0), -0.1), ((-1.0, np.inf), 0.1), ((-1.0, 1.0), np.nan), ((0.0, 0.1), 0.3)],
)  # fmt: skip
def test_bad_window_refused(window_s, bin_size_s):
    with pytest.raises(DatasetError):
        bin_edges(window_s, bin_size_s)
    with pytest.raises(DatasetError):
        bin_spikes(np.array([0.5]), np.array([0]), np.array([0]), np.array([0.0]), window_s, bin_size_s)


def test_other_bad_inputs_refused():
    t, u, ids, a = np.array([0.1, 0.2]), np.array([0, 1]), np.array([0, 1]), np.array([0.0])
    w = (0.0, 1.0)
    with pytest.raises(DatasetError, match="same|entries"):
        bin_spikes(t, u[:1], ids, a, w, 0.1)
    with pytest.raises(DatasetError, match="integer"):
        bin_spikes(t, u.astype(float), ids, a, w, 0.1)
    with pytest.raises(DatasetError, match="unique"):
        bin_spikes(t, u, np.array([1, 0, 1]), a, w, 0.1)
    with pytest.raises(DatasetError, match="finite"):
        bin_spikes(t, u, ids, np.array([0.0, np.nan]), w, 0.1)
    with pytest.raises(ConfigError, match="engine"):
        bin_spikes(t, u, ids, a, w, 0.1, engine="cuda")  # type: ignore[arg-type]


def test_bin_edges_values():
    e = bin_edges((-1.0, 1.0), 0.02)
    assert e.size == 101 and e.dtype == np.float64
    np.testing.assert_array_equal(e, -1.0 + np.arange(101) * 0.02)
    np.testing.assert_array_equal(bin_edges((0.0, 0.3), 0.1), 0.0 + np.arange(4) * 0.1)  # 0.3/0.1 != 3.0


def test_binned_spikes_requires_n_spikes_when_saturated():
    counts = np.full((1, 1, 1), 255, dtype=np.uint8)
    with pytest.raises(DatasetError, match="n_spikes"):
        BinnedSpikes(counts, np.zeros(1), np.zeros(1, dtype=np.int64), n_saturated=1)
    b = BinnedSpikes(np.ones((2, 3, 1), np.uint8), np.zeros(3), np.zeros(1, dtype=np.int64), n_saturated=0)
    np.testing.assert_array_equal(b.n_spikes, [6])


# ------------------------------------------------------------------------- continuous signals


def test_values_at_bin_centres_ramp_exact():
    rate_hz, t0_s = 1024.0, 0.25  # dyadic, so every time and value below is exact
    n = 4096
    signal = np.stack([np.arange(n, dtype=np.float64), -2.0 * np.arange(n)], axis=1)
    align = np.array([1.0, 2.5, 3.0 + 1 / 256])
    time_s = (bin_edges((-0.5, 0.5), 1 / 64)[:-1] + 1 / 128).astype(np.float64)
    out = values_at_bin_centres(signal, rate_hz, align, time_s, t0_s=t0_s)
    assert out.shape == (3, 64, 2) and out.dtype == np.float32
    expected = (align[:, None] + time_s[None, :] - t0_s) * rate_hz
    np.testing.assert_array_equal(out[..., 0], expected.astype(np.float32))
    np.testing.assert_array_equal(out[..., 1], (-2.0 * expected).astype(np.float32))


def test_values_at_bin_centres_ramp_1khz_and_nan():
    rate_hz = 1000.0
    signal = 5.0 + 0.5 * np.arange(10_000, dtype=np.float32)  # 10 s
    align = np.array([0.2, 5.0, 9.9, 20.0])
    time_s = np.array([-0.31, -0.01, 0.0, 0.0005, 0.09, 0.1])
    out = values_at_bin_centres(signal, rate_hz, align, time_s)
    t = align[:, None] + time_s[None, :]
    expected = 5.0 + 0.5 * t * rate_hz
    inside = (t >= 0) & (t <= 9.999)
    np.testing.assert_allclose(out[inside], expected[inside], rtol=1e-6)
    assert np.isnan(out[~inside]).all()
    assert np.isnan(out[3]).all() and np.isnan(out[0, 0]) and np.isfinite(out[2, -2])


def test_values_at_bin_centres_nan_neighbours():
    signal = np.array([0.0, 1.0, np.nan, 3.0, 4.0])
    out = values_at_bin_centres(signal, 1.0, np.array([0.0]), np.array([0.5, 1.0, 1.5, 2.5, 3.0, 4.0, 4.5, -0.5]))
    np.testing.assert_array_equal(np.isnan(out[0]), [False, False, True, True, False, False, True, True])
    np.testing.assert_array_equal(out[0, [0, 1, 4, 5]], [0.5, 1.0, 3.0, 4.0])


def test_signal_windows_ramp():
    rate_hz = 1000.0
    signal = np.stack([np.arange(5000.0), np.arange(5000.0) * 10], axis=1)  # (sample, channel)
    align = np.array([1.0, 2.0004, 0.05, 4.99])
    windows, lfp_time_s = signal_windows(signal, rate_hz, align, (-0.1, 0.2))
    assert windows.shape == (4, 300, 2) and windows.dtype == np.float32
    np.testing.assert_allclose(lfp_time_s, -0.1 + np.arange(300) / 1000.0)
    np.testing.assert_array_equal(windows[0, :, 0], np.arange(900, 1200))
    np.testing.assert_array_equal(windows[1, :, 0], np.arange(1900, 2200))  # nearest sample
    np.testing.assert_array_equal(windows[1, :, 1], np.arange(1900, 2200) * 10)
    np.testing.assert_array_equal(np.isnan(windows[2, :, 0]), np.arange(300) < 50)  # before t=0
    np.testing.assert_array_equal(windows[2, 50:, 0], np.arange(0, 250))
    np.testing.assert_array_equal(np.isnan(windows[3, :, 0]), np.arange(300) >= 110)  # past the end
    np.testing.assert_array_equal(windows[3, :110, 0], np.arange(4890, 5000))


def test_signal_windows_refuses_fractional_samples_and_t0():
    windows, _ = signal_windows(np.arange(100.0), 10.0, np.array([5.0]), (-0.5, 0.5), t0_s=1.0)
    np.testing.assert_array_equal(windows[0], np.arange(35, 45))
    with pytest.raises(DatasetError):
        signal_windows(np.arange(100.0), 1000.0, np.array([0.5]), (-0.1, 0.10005))
    with pytest.raises(DatasetError):
        signal_windows(np.arange(100.0), 0.0, np.array([0.5]), (-0.1, 0.1))
