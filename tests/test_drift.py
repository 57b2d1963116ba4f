"""Drift: the simulator's imposed motion, the sorter's motion correction and its stored estimate."""

from __future__ import annotations

import numpy as np
import pytest

from pixbin.errors import ConfigError, SortingError
from pixbin.simulate import SimulationParams, load_ground_truth, simulate_session
from pixbin.simulate_probe import N_CHANNELS, PROBE_MODELS, write_ap
from pixbin.simulate_units import DRIFT_PIVOT_UM, DriftParams, imposed_displacement, unit_footprint


def _positions() -> np.ndarray:
    """NP1.0 bank-0 site positions (x = 43/11/59/27 µm by channel, 20 µm rows)."""
    x = np.array([43.0, 11.0, 59.0, 27.0])[np.arange(N_CHANNELS) % 4]
    return np.column_stack([x, (np.arange(N_CHANNELS) // 2) * 20.0])


def test_imposed_displacement_ramp_jumps_and_depth_gain():
    drift = DriftParams(ramp_um_per_min=30.0, jumps=((10.0, 15.0), (20.0, -5.0)))
    t = np.array([0.0, 9.999, 10.0, 20.0, 40.0])
    np.testing.assert_allclose(imposed_displacement(drift, t, 500.0),
                               [0.0, 30 * 9.999 / 60, 5.0 + 15.0, 10.0 + 10.0, 20.0 + 10.0])
    nonrigid = DriftParams(ramp_um_per_min=60.0, depth_gain_per_mm=0.5)
    got = imposed_displacement(nonrigid, np.full(3, 30.0), [DRIFT_PIVOT_UM, DRIFT_PIVOT_UM + 1000, 0.0])
    np.testing.assert_allclose(got, [30.0, 45.0, 30.0 * (1 - 0.5 * DRIFT_PIVOT_UM / 1000)])
    assert not DriftParams().moves and drift.moves


def test_drift_params_refused_when_unusable():
    with pytest.raises(ConfigError, match="jumps"):
        SimulationParams(duration_s=20.0, drift=DriftParams(jumps=((25.0, 10.0),))).validate()
    with pytest.raises(ConfigError, match="depth_gain_per_mm"):
        DriftParams(ramp_um_per_min=1.0, depth_gain_per_mm=0.6).validate(60.0)
    assert SimulationParams.from_dict({"drift": {"jumps": [[5.0, 10.0]]}}).drift.jumps == ((5.0, 10.0),)


def test_footprint_follows_the_soma():
    positions = _positions()
    soma = np.array([40.0, 1000.0, 20.0])
    channels0, weights0 = unit_footprint(positions, soma, 100.0)
    channels1, weights1 = unit_footprint(positions, soma, 100.0, shift_um=60.0)
    peak0 = positions[channels0[np.argmax(weights0)], 1]
    peak1 = positions[channels1[np.argmax(weights1)], 1]
    assert peak1 - peak0 == pytest.approx(60.0, abs=20.0)
    assert weights0.max() == pytest.approx(100.0)  # the nearest site at the unmoved position


def _write(tmp_path, name, drift, units, times, ids, n_samples=3000):
    path = tmp_path / name
    p = SimulationParams()
    write_ap(path, p, n_samples, units, times, ids, np.array([0.05]), 7, PROBE_MODELS["NP1.0"],
             drift=drift, positions=_positions())
    return np.fromfile(path, dtype=np.int16).reshape(n_samples, N_CHANNELS + 1)


def test_write_ap_moves_spikes_and_leaves_drift_free_files_unchanged(tmp_path):
    positions = _positions()
    soma = [40.0, 1000.0, 20.0]
    channels, weights = unit_footprint(positions, np.array(soma), 2000.0)
    waveform = -np.exp(-0.5 * (np.arange(90) - 30.0) ** 2 / 4.0)
    units = [{"soma_um": soma, "amplitude_uv": 2000.0, "footprint_channels": channels.tolist(),
              "_weights": weights, "_waveform": waveform}]
    rate = SimulationParams().ap_rate_hz
    times, ids = np.array([0.02, 0.08]), np.zeros(2, dtype=np.int64)
    fixed = _write(tmp_path, "fixed.bin", None, units, times, ids)
    still = _write(tmp_path, "still.bin", DriftParams(), units, times, ids)
    np.testing.assert_array_equal(fixed, still)
    moved = _write(tmp_path, "moved.bin", DriftParams(jumps=((0.05, 60.0),)), units, times, ids)
    for t, shift in zip(times, (0.0, 60.0)):
        sample = int(round(t * rate))
        trough = moved[sample, :N_CHANNELS].astype(float)
        assert positions[np.argmin(trough), 1] - positions[np.argmin(fixed[int(round(0.02 * rate)), :N_CHANNELS]), 1] \
            == pytest.approx(shift, abs=20.0)


def test_simulated_session_records_its_drift(tmp_path):
    drift = DriftParams(ramp_um_per_min=20.0, jumps=((6.0, 15.0),), depth_gain_per_mm=0.2)
    raw = simulate_session(tmp_path, duration_s=10.0, n_units=4, compress=False, write_ap=False, drift=drift)
    truth = load_ground_truth(raw)
    recorded = truth["parameters"]["drift"]
    assert SimulationParams.from_dict({"drift": recorded}).drift == drift


def test_resolve_motion_auto_follows_the_probe_length():
    import spikeinterface.core as sc

    from pixbin.sorting import DEFAULT_MOTION_PRESET, MOTION_MIN_SPAN_UM, resolve_motion

    long, _ = sc.generate_ground_truth_recording(durations=[1.0], num_channels=64, num_units=2, seed=0)
    long.set_dummy_probe_from_locations(np.column_stack([np.zeros(64), np.arange(64) * 20.0]))
    short = long.select_channels(long.channel_ids[:8])
    on = resolve_motion("tridesclous2", long, "auto")
    assert on["apply"] and on["preset"] == DEFAULT_MOTION_PRESET and on["span_um"] >= MOTION_MIN_SPAN_UM
    assert not resolve_motion("tridesclous2", short, "auto")["apply"]
    assert resolve_motion("tridesclous2", long) == on  # the default (docs/SORTING.md's table)
    # 'sorter': each sorter as SpikeInterface configures it (no parameters passed on)
    own = resolve_motion("tridesclous2", long, "sorter")
    assert own["sorter_default"] and not own["apply"]
    assert resolve_motion("spykingcircus2", long, "sorter")["apply"]  # SpykingCircus 2 corrects by default
    assert resolve_motion("tridesclous2", short, True)["apply"]
    assert not resolve_motion("tridesclous2", long, False)["apply"]
    with pytest.raises(ConfigError, match="no motion option"):
        resolve_motion("simple", long, True)
    with pytest.raises(ConfigError, match="motion_preset"):
        resolve_motion("tridesclous2", long, True, "no_such_preset")


def test_sort_key_holds_the_motion_setting(tmp_path):
    from pixbin.spikes import SpikesParams, _sort_key

    ap_bin = tmp_path / "x.imec0.ap.bin"
    ap_bin.write_bytes(b"\0" * 8)
    ap_bin.with_suffix(".meta").write_text("imSampRate=30000\n")
    params = SpikesParams()
    on = {"apply": True, "preset": params.motion_preset}
    off = {"apply": False, "preset": None}
    assert _sort_key(params, "tridesclous2", ap_bin, on) != _sort_key(params, "tridesclous2", ap_bin, off)
    other = SpikesParams(motion_preset="kilosort_like")
    assert _sort_key(params, "tridesclous2", ap_bin, on) != _sort_key(other, "tridesclous2", ap_bin, on)


def test_motion_in_sorter_params_is_refused(tmp_path):
    from pixbin.spikes import ProbeInput, SpikesParams, run_spikes

    raw = simulate_session(tmp_path, duration_s=10.0, n_units=2, compress=False)
    ap_bin = next(raw.glob("*.imec0.ap.bin"))
    params = SpikesParams(sorter_params={"apply_motion_correction": True})
    with pytest.raises(SortingError, match="spikes.motion_correction"):
        run_spikes(probes={"imec0": ProbeInput(ap_bin=ap_bin)}, out_dir=tmp_path / "out", params=params)


def test_unit_displacements_average_over_the_units_spikes():
    from spikeinterface.core.motion import Motion

    from pixbin.sorting import unit_displacements

    t_bins = np.array([0.5, 1.5, 2.5])
    depth_bins = np.array([100.0, 300.0])
    displacement = np.array([[0.0, 0.0], [10.0, 20.0], [10.0, 20.0]])
    motion = Motion([displacement], [t_bins], depth_bins)
    times = np.array([1.5, 2.5, 0.5, 1.5])
    clusters = np.array([0, 0, 1, 1])
    got = unit_displacements(motion, times, clusters, np.array([0, 1, 2]), np.array([100.0, 300.0, 200.0]))
    np.testing.assert_allclose(got[:2], [10.0, 10.0])
    assert np.isnan(got[2])  # no spikes


#: The motion estimate's stated error on the slow test's rigid drift (RMS over time bins and unit
#: depths, mean difference removed): about a fifth of the imposed 35 µm range.
MOTION_RMS_LIMIT_UM = 7.0


@pytest.mark.slow
@pytest.mark.drift  # two sorts, 4.5 min on 2 quiet cores (CI: ~16 min without it)
def test_auto_motion_correction_corrects_simulated_drift(tmp_path):
    """The spikes stage with motion_correction 'auto' on a drifting session: motion estimated close to the imposed one,
    stored and reported; at least as many well-detected units as the same sorter without it."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    from pixbin.readers import read_spikes, read_units
    from pixbin.sorting import load_motion, read_ap_recording, resolve_motion, run_sorter_on_recording
    from pixbin.spikes import ProbeInput, SpikesParams, run_spikes

    drift = DriftParams(ramp_um_per_min=30.0, jumps=((15.0, 20.0),))
    raw = simulate_session(tmp_path, session_id="240101_DRIFT", duration_s=30.0, seed=5, n_units=16,
                           compress=False, drift=drift)
    truth = load_ground_truth(raw)
    ap = next(raw.glob("*.imec0.ap.bin"))
    out = tmp_path / "processed"
    run_spikes(probes={"imec0": ProbeInput(ap_bin=ap)}, out_dir=out,
               params=SpikesParams(presence_ratio_bin_s=10.0, motion_correction="auto"))
    recording = read_ap_recording(ap)
    rate = recording.sampling_frequency
    gt = NumpySorting.from_samples_and_labels(
        [np.round(truth["arrays"]["spike_times_s"] * rate).astype(np.int64)], [truth["arrays"]["spike_unit_ids"]],
        rate)

    def well_detected(sorting) -> int:
        return compare_sorter_to_ground_truth(gt, sorting, exhaustive_gt=True).count_well_detected_units(0.8)

    times, ids = read_spikes(out)["imec0"]
    corrected = well_detected(NumpySorting.from_samples_and_labels(
        [np.round(times * rate).astype(np.int64)], [ids], rate))
    uncorrected = well_detected(run_sorter_on_recording(
        recording, tmp_path / "off", export_phy=False, motion=resolve_motion("tridesclous2", recording, False)))
    # measured 2026-12-02 (2 loaded cores, 13 min): 6 of 16 well detected with the correction,
    # 0 without; passed again 2026-12-03 with the motion-error check (4.5 min, quiet cores)
    assert corrected >= uncorrected and corrected > 0

    units = read_units(out)
    record = units.attrs["pixbin"]["probes"][0]["motion"]
    assert record["apply"] and record["stored"] and record["folder"].endswith("sorting/imec0/motion")
    motion = load_motion(out / "sorting" / "imec0" / "motion")["motion"]
    depths = np.array([u["soma_um"][1] for u in truth["units"]])
    t = motion.temporal_bins_s[0]
    est = np.concatenate([motion.get_displacement_at_time_and_depth(t, np.full(t.size, d)) for d in depths])
    imposed = np.concatenate([imposed_displacement(drift, t, d) for d in depths])
    diff = est - imposed
    assert np.sqrt(np.mean((diff - diff.mean()) ** 2)) < MOTION_RMS_LIMIT_UM
    # units carry the estimate: depth in the motion's frame = recorded depth - mean displacement
    assert units["motion_displacement_um"].notna().all()
    np.testing.assert_allclose(units["depth_corrected_um"], units["depth_um"] - units["motion_displacement_um"])
