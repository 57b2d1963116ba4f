"""pixbin.lfp: LF → 1 kHz against scipy/numpy references; chunk borders, rates, CMR, memory,
file format, a real LF meta."""

from __future__ import annotations

import math
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pixbin import resample
from pixbin.errors import ConfigError, MetaError
from pixbin.lfp import LfpParams, run_lfp
from pixbin.simulate import simulate_session
from pixbin.spikeglx import lf_source
from scipy import signal

RATE = 2499.9951321666667  # a calibrated, non-integer LF rate (simulated NP1.0)
EDGE = 60  # output samples at each end left out of reference comparisons


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    """A 12 s simulated session (LF + metas; no AP)."""
    root = tmp_path_factory.mktemp("lfp_sim")
    return simulate_session(root, duration_s=12, seed=3, write_ap=False, compress=False,
                            n_units=4)


def _lf_files(session: Path) -> tuple[Path, Path]:
    return next(session.glob("*.lf.bin")), next(session.glob("*.lf.meta"))


def write_lf(folder: Path, template_meta: Path, data: np.ndarray,
             rate_hz: float) -> tuple[Path, Path]:
    """An LF .bin holding ``data`` (n, 385) int16 and a copy of ``template_meta`` at ``rate_hz``."""
    folder.mkdir(parents=True, exist_ok=True)
    bin_path = folder / "x_g0_t0.imec0.lf.bin"
    meta_path = folder / "x_g0_t0.imec0.lf.meta"
    np.ascontiguousarray(data, dtype=np.int16).tofile(bin_path)
    lines = []
    for line in template_meta.read_text().splitlines():
        if line.startswith("imSampRate="):
            line = f"imSampRate={rate_hz!r}"
        elif line.startswith("fileSizeBytes="):
            line = f"fileSizeBytes={data.size * 2}"
        lines.append(line)
    meta_path.write_text("\n".join(lines) + "\n")
    return bin_path, meta_path


def read_out(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def reference_resample(x_uv: np.ndarray, positions: np.ndarray, design: dict) -> np.ndarray:
    """Plain float64 numpy: y_k = sum_n h(p_k - n) x[n], exact kernel, mirrored ends."""
    n_in = x_uv.shape[0]
    radius = (design["n_taps"] - 1) // 2
    out = np.empty((positions.size, x_uv.shape[1]))
    for a in range(0, positions.size, 400):
        p = positions[a : a + 400]
        rows = np.floor(p).astype(np.int64)[:, None] - radius + np.arange(design["n_taps"])
        w = resample._kernel(p[:, None] - rows, design["cutoff_norm"], design["beta"],
                             design["half_width_samples"])
        rows = np.abs(rows)
        rows = np.where(rows > n_in - 1, 2 * (n_in - 1) - rows, rows)
        out[a : a + 400] = np.einsum("kj,kjc->kc", w, x_uv[rows])
    return out


# --------------------------------------------------------------------------- references
def test_exact_2500_hz_equals_scipy_resample_poly(session, tmp_path):
    _, meta = _lf_files(session)
    rng = np.random.default_rng(0)
    n = 15000
    data = np.zeros((n, 385), np.int16)
    data[:, :384] = np.clip(rng.normal(0, 120, (n, 384)), -512, 511)
    data[:, 384] = 64 * (np.arange(n) // 1250 % 2)  # SY bit 6
    bin_path, meta_path = write_lf(tmp_path / "raw", meta, data, 2500.0)
    res = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "out",
                  params=LfpParams(cmr=False, chunk_s=1.7))
    ds = read_out(res["path"])
    src = lf_source(bin_path, meta_path)
    design = resample.kernel_design(2500.0, LfpParams())
    half = 2 * math.ceil(design["half_width_samples"])
    taps = resample._kernel(np.arange(-half, half + 1) / 2.0, design["cutoff_norm"],
                            design["beta"], design["half_width_samples"])
    x_uv = data[:, :384] * src.uv_per_bit
    ref = signal.resample_poly(x_uv, 2, 5, axis=0, window=taps / 2.0)
    n_out = res["n_samples"]
    assert n_out == math.floor(n / 2500.0 * 1000)
    got = ds["lfp"].values
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got[EDGE:-EDGE], ref[EDGE : n_out - EDGE], rtol=0, atol=2e-6 * scale)


def test_non_integer_rate_matches_direct_reference_and_sinusoids(session, tmp_path):
    _, meta = _lf_files(session)
    n = 30000
    t = np.arange(n) / RATE
    rng = np.random.default_rng(1)
    amps = {7.0: 2000.0, 80.0: 1500.0, 300.0: 1000.0, 700.0: 3000.0}  # 700 Hz: stop band
    clean = sum(a * np.sin(2 * np.pi * f * t + f) for f, a in amps.items())
    data = np.zeros((n, 385), np.int16)
    data[:, :384] = np.round(clean[:, None] * np.linspace(0.5, 1.0, 384)[None]
                             + rng.normal(0, 1, (n, 384)))
    bin_path, meta_path = write_lf(tmp_path / "raw", meta, data, RATE)
    res = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "out",
                  params=LfpParams(cmr=False, chunk_s=2.3))
    got = read_out(res["path"])["lfp"].values
    src = lf_source(bin_path, meta_path)
    design = resample.kernel_design(RATE, LfpParams())
    k = np.arange(res["n_samples"])
    ref = reference_resample(data[:, :384] * src.uv_per_bit, k / 1000.0 * RATE, design)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got[EDGE:-EDGE], ref[EDGE:-EDGE], rtol=0, atol=2e-6 * scale)
    # against the continuous truth: pass band kept (ripple ≤ 0.1 %), 700 Hz gone (≥ 60 dB)
    tk = k / 1000.0
    passed = sum(a * np.sin(2 * np.pi * f * tk + f) for f, a in amps.items() if f < 400)
    expect = passed[:, None] * np.linspace(0.5, 1.0, 384)[None] * src.uv_per_bit
    err = got[EDGE:-EDGE] - expect[EDGE:-EDGE]
    assert np.abs(err).max() < 0.004 * 4500 * src.uv_per_bit.max()


class _Shift:
    """A clock map whose stream clock runs ``ppm`` fast and starts ``offset_s`` late."""

    def __init__(self, offset_s: float, ppm: float):
        self.offset_s, self.scale = offset_s, 1 + ppm * 1e-6

    def to_probe(self, t):
        return self.offset_s + np.asarray(t) / self.scale

    def from_probe(self, t):
        return (np.asarray(t) - self.offset_s) * self.scale


def test_clock_map_positions_and_nan_outside(session, tmp_path):
    _, meta = _lf_files(session)
    n = 20000
    t = np.arange(n) / RATE
    wave = 2000 * np.sin(2 * np.pi * 11.0 * t)
    data = np.zeros((n, 385), np.int16)
    data[:, :384] = np.round(wave)[:, None]
    bin_path, meta_path = write_lf(tmp_path / "raw", meta, data, RATE)
    cmap = _Shift(offset_s=0.5, ppm=30.0)
    res = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "out",
                  params=LfpParams(cmr=False), clock_map=cmap, probe_duration_s=9.0)
    ds = read_out(res["path"])
    assert ds.sizes["time"] == 9000
    tk = ds["time"].values
    stream_t = cmap.from_probe(tk)
    inside = (stream_t >= 0) & (stream_t <= (n - 1) / RATE)
    lfp_ch0 = ds["lfp"].values[:, 0]
    assert np.isnan(lfp_ch0[~inside]).all() and np.isfinite(lfp_ch0[inside]).all()
    src = lf_source(bin_path, meta_path)
    expect = 2000 * np.sin(2 * np.pi * 11.0 * stream_t) * src.uv_per_bit[0]
    core = inside.copy()
    core[: np.flatnonzero(inside)[0] + EDGE] = False
    core[np.flatnonzero(inside)[-1] - EDGE :] = False
    np.testing.assert_allclose(lfp_ch0[core], expect[core], atol=0.003 * 2000 * src.uv_per_bit[0])


# --------------------------------------------------------------------------- streaming
def test_chunk_borders_are_invisible(session, tmp_path):
    bin_path, meta_path = _lf_files(session)
    small = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "a",
                    params=LfpParams(chunk_s=0.777))
    whole = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "b",
                    params=LfpParams(chunk_s=100.0))
    a, b = read_out(small["path"]), read_out(whole["path"])
    np.testing.assert_array_equal(a["lfp"].values, b["lfp"].values)
    np.testing.assert_array_equal(a["reference_uV"].values, b["reference_uV"].values)


def test_cmr_is_the_median_of_data_channels_and_ignores_sync(session, tmp_path):
    _, meta = _lf_files(session)
    rng = np.random.default_rng(2)
    n = 12000
    data = np.zeros((n, 385), np.int16)
    data[:, :384] = np.clip(rng.normal(0, 50, (n, 384)) + 80 * np.sin(np.arange(n) / 40.0)[:, None],
                            -512, 511)
    outs = {}
    for label, sy in (("sync_low", 0), ("sync_wild", 32767)):
        d = data.copy()
        d[:, 384] = sy * (np.arange(n) % 7 == 0)
        bin_path, meta_path = write_lf(tmp_path / label, meta, d, RATE)
        for cmr in (False, True):
            res = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / label / str(cmr),
                          params=LfpParams(cmr=cmr))
            outs[label, cmr] = read_out(res["path"])
    raw = outs["sync_low", False]["lfp"].values
    ref = outs["sync_low", True]
    assert raw.shape[1] == 384
    median = np.median(raw, axis=1)
    np.testing.assert_allclose(ref["reference_uV"].values, median, atol=1e-3)
    np.testing.assert_allclose(ref["lfp"].values, raw - median[:, None], atol=1e-3)
    np.testing.assert_array_equal(outs["sync_wild", True]["lfp"].values, ref["lfp"].values)
    assert ref.attrs["cmr"] == 1 and outs["sync_low", False].attrs["cmr"] == 0


def test_memory_is_bounded_by_the_chunk(session, tmp_path):
    bin_path, meta_path = _lf_files(session)
    run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "warm",
            params=LfpParams(chunk_s=0.5))  # imports, numba cache
    tracemalloc.start()
    try:
        res = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "out",
                      params=LfpParams(chunk_s=0.5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output_bytes = res["n_samples"] * res["n_channels"] * 4
    input_bytes = bin_path.stat().st_size
    assert peak < 8e6, peak
    assert peak < 0.5 * min(output_bytes, input_bytes)


# --------------------------------------------------------------------------- files
def test_output_format_and_geometry(session, tmp_path):
    bin_path, meta_path = _lf_files(session)
    res = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path)
    assert res["path"] == tmp_path / "imec0.lf_processed.h5"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    ds = read_out(res["path"])
    src = lf_source(bin_path, meta_path)
    n_expected = math.floor(src.n_samples / src.rate_hz * 1000)
    assert ds["lfp"].dims == ("time", "channel") and ds["lfp"].dtype == np.float32
    assert ds.sizes == {"time": n_expected, "channel": 384}
    np.testing.assert_array_equal(ds["time"].values, np.arange(n_expected) / 1000.0)
    np.testing.assert_array_equal(ds["channel"].values, np.arange(384))
    import probeinterface

    probe = probeinterface.read_spikeglx(next(session.glob("*.ap.meta")))
    np.testing.assert_allclose(ds["x_um"].values, probe.contact_positions[:, 0])
    np.testing.assert_allclose(ds["y_um"].values, probe.contact_positions[:, 1])
    np.testing.assert_allclose(src.uv_per_bit, 0.6 / 512 / 250 * 1e6)
    assert ds.attrs["source_rate_hz"] == pytest.approx(src.rate_hz, rel=0, abs=0)
    assert ds.attrs["rate_hz"] == 1000.0 and ds["lfp"].attrs["units"] == "uV"
    assert '"passband_hz": 400.0' in ds.attrs["filter"] and "parameters" in ds.attrs["provenance"]
    assert np.isfinite(ds["lfp"].values).all()
    assert ds["sd_uV"].shape == (384,) and res["median_sd_uV"] > 0
    # the simulated LF is theta + a slow common source + 10 µV noise: after CMR, SDs are modest
    assert 5 < res["median_sd_uV"] < 200


def test_real_lf_meta_with_lf_numbered_subset(realdata, tmp_path):
    """A real SpikeGLX LF meta (snsSaveChanSubset=384:768, LF gain 125) that probeinterface alone
    cannot read; its .bin is not public, so a small one is written beside a copy of the meta."""
    folder = realdata / "spikeglx" / "Noise4Sam_g0" / "Noise4Sam_g0_imec0"
    real = folder / "Noise4Sam_g0_t0.imec0.lf.meta"
    meta = tmp_path / real.name
    shutil.copy(real, meta)
    bin_path = meta.with_suffix(".bin")
    np.zeros((5000, 385), np.int16).tofile(bin_path)
    src = lf_source(bin_path, meta)
    assert src.rate_hz == 2500.0 and src.n_samples == 5000 and src.n_saved_chans == 385
    np.testing.assert_array_equal(src.channel_ids, np.arange(384))
    np.testing.assert_array_equal(src.data_columns, np.arange(384))
    np.testing.assert_allclose(src.uv_per_bit, 0.6 / 512 / 125 * 1e6)
    assert src.y_um.max() > 3000 and np.unique(src.x_um).size == 4  # NP1.0 checkerboard
    res = run_lfp(lf_bin=bin_path, lf_meta=meta, out_dir=tmp_path / "out")
    assert res["n_samples"] == 2000


def test_saved_channel_subset(session, tmp_path):
    """An LF file saving 100 of 384 channels (two blocks) + SY: ids, positions, gains follow."""
    _, meta = _lf_files(session)
    lines = []
    for line in meta.read_text().splitlines():
        key = line.split("=", 1)[0]
        line = {"snsSaveChanSubset": "snsSaveChanSubset=384:433,584:633,768",
                "nSavedChans": "nSavedChans=101", "snsApLfSy": "snsApLfSy=0,100,1"}.get(key, line)
        lines.append(line)
    sub_meta = tmp_path / "s_g0_t0.imec0.lf.meta"
    sub_meta.write_text("\n".join(lines) + "\n")
    data = np.zeros((5000, 101), np.int16)
    data[:, :100] = 3 * np.arange(100)[None]
    data[:, 100] = 64
    sub_bin = sub_meta.with_suffix(".bin")
    data.tofile(sub_bin)
    src = lf_source(sub_bin, sub_meta)
    np.testing.assert_array_equal(src.channel_ids, np.r_[0:50, 200:250])
    np.testing.assert_array_equal(src.data_columns, np.arange(100))
    import probeinterface

    full = probeinterface.read_spikeglx(next(session.glob("*.ap.meta")))
    np.testing.assert_allclose(src.y_um, full.contact_positions[src.channel_ids, 1])
    res = run_lfp(lf_bin=sub_bin, lf_meta=sub_meta, out_dir=tmp_path / "out",
                  params=LfpParams(cmr=False))
    ds = read_out(res["path"])
    assert ds.sizes["channel"] == 100
    np.testing.assert_array_equal(ds["channel"].values, src.channel_ids)
    # a constant passes with the filter's DC gain (1 within the pass-band ripple)
    np.testing.assert_allclose(ds["lfp"].values[1000], 3 * np.arange(100) * src.uv_per_bit,
                               rtol=1e-3, atol=1e-3)


def test_refusals(session, tmp_path):
    bin_path, meta_path = _lf_files(session)
    with pytest.raises(ConfigError, match="valid"):
        LfpParams.from_dict({"cutoff": 300})
    with pytest.raises(ConfigError, match="stopband_hz"):
        run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path,
                params=LfpParams(passband_hz=400, stopband_hz=600))
    with pytest.raises(MetaError, match="not found"):
        lf_source(tmp_path / "missing.bin", meta_path)
    broken = tmp_path / "broken.meta"
    broken.write_text(meta_path.read_text().replace("imSampRate=", "imSampRateX="))
    with pytest.raises(MetaError, match="imSampRate"):
        lf_source(bin_path, broken)


def test_np2_wide_band_equals_scipy_resample_poly(tmp_path):
    """A single-band probe (NP2.0, no LF file): its 30 kHz AP band through the same resampler
    equals resample_poly(1/30) with the same filter, in short chunks (bounded memory)."""
    from pixbin.simulate import SimulationParams
    from pixbin.simulate_probe import PROBE_MODELS, meta_text

    n = 90000  # 3 s at exactly 30 kHz
    rng = np.random.default_rng(3)
    data = np.zeros((n, 385), np.int16)
    data[:, :384] = np.clip(rng.normal(0, 300, (n, 384)), -8192, 8191)
    folder = tmp_path / "raw"
    folder.mkdir()
    meta_path = folder / "np2_g0_t0.imec0.ap.meta"
    meta_path.write_text(meta_text(SimulationParams(), "ap", n, 30000.0, "imec0",
                                   PROBE_MODELS["NP2.0"]))
    bin_path = meta_path.with_suffix(".bin")
    data.tofile(bin_path)
    params = LfpParams(cmr=False, chunk_s=12.0)  # 12 s of LF rows = 1 s of the wide band
    res = run_lfp(lf_bin=bin_path, lf_meta=meta_path, out_dir=tmp_path / "out", params=params)
    src = lf_source(bin_path, meta_path)
    assert src.uv_per_bit[0] == pytest.approx(0.5 / 8192 / 80 * 1e6)  # NP2.0 gain 80
    design = resample.kernel_design(30000.0, params)
    half = math.ceil(design["half_width_samples"])
    taps = resample._kernel(np.arange(-half, half + 1) / 1.0, design["cutoff_norm"],
                            design["beta"], design["half_width_samples"])
    ref = signal.resample_poly(data[:, :384] * src.uv_per_bit, 1, 30, axis=0, window=taps)
    got = read_out(res["path"])["lfp"].values
    assert res["n_samples"] == 3000
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got[EDGE:-EDGE], ref[EDGE:3000 - EDGE], rtol=0, atol=2e-6 * scale)
