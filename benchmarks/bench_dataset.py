"""Storage benchmark for the binned dataset: compression codec x chunking of the spike tensors.

Writes one realistic (trial, time, unit) spike tensor (bool ``spike_data`` + uint8
``spike_counts``) with xarray + h5netcdf under each candidate encoding and measures file size,
write time, the time to read one trial (all time, all units) and the time to read everything.
The result behind the defaults in ``code/pixbin/default_dataset.yaml`` is recorded in
docs/FORMAT.md, section "Storage".

Run: ``.venv/bin/python benchmarks/bench_dataset.py [--units 50 400] [--trials 300]``
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

logger = logging.getLogger("bench_dataset")

CODECS: dict[str, dict] = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip1": {"compression": "gzip", "compression_opts": 1},
    "gzip4": {"compression": "gzip", "compression_opts": 4},
    "gzip4+shuffle": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
    "gzip9": {"compression": "gzip", "compression_opts": 9},
}
CHUNK_KIB = (None, 64, 256, 1024)  # None: one trial per chunk


def make_tensor(n_trials: int, n_bins: int, n_units: int, seed: int = 0) -> np.ndarray:
    """Poisson counts at lognormal firing rates (median ~4 Hz) in 20 ms bins, with a
    trial-locked modulation, as uint8."""
    rng = np.random.default_rng(seed)
    rates = rng.lognormal(np.log(4.0), 1.0, n_units)
    modulation = 1.0 + 0.5 * np.sin(np.linspace(0, 2 * np.pi, n_bins))[:, None]
    lam = rates[None, :] * modulation * 0.02
    counts = rng.poisson(np.broadcast_to(lam, (n_trials, n_bins, n_units)))
    return np.minimum(counts, 255).astype(np.uint8)


def trials_per_chunk(chunk_kib: int | None, n_bins: int, n_units: int, n_trials: int) -> int:
    if chunk_kib is None:
        return 1
    return int(min(n_trials, max(1, chunk_kib * 1024 // (n_bins * n_units))))


def measure(counts: np.ndarray, codec: str, chunk_kib: int | None, folder: Path) -> dict:
    n_trials, n_bins, n_units = counts.shape
    k = trials_per_chunk(chunk_kib, n_bins, n_units, n_trials)
    ds = xr.Dataset(
        {
            "spike_data": (("trial_id", "time", "unit_id"), counts > 0),
            "spike_counts": (("trial_id", "time", "unit_id"), counts),
        },
        coords={
            "trial_id": np.arange(n_trials),
            "time": -1.0 + 0.01 + 0.02 * np.arange(n_bins),
            "unit_id": np.arange(n_units),
        },
    )
    enc = {v: {**CODECS[codec], "chunksizes": (k, n_bins, n_units)} for v in ds.data_vars}
    path = folder / f"{codec}-{chunk_kib}-{n_units}.h5"
    t0 = time.perf_counter()
    ds.to_netcdf(path, engine="h5netcdf", encoding=enc)
    write_s = time.perf_counter() - t0
    size = path.stat().st_size
    rng = np.random.default_rng(1)
    picks = rng.integers(0, n_trials, 50)
    with h5py.File(path, "r") as f:
        d = f["spike_data"]
        t0 = time.perf_counter()
        for j in picks:
            d[j]
        one_trial_ms = (time.perf_counter() - t0) / picks.size * 1e3
        t0 = time.perf_counter()
        d[()]
        all_ms = (time.perf_counter() - t0) * 1e3
    with xr.open_dataset(path, engine="h5netcdf") as x:
        t0 = time.perf_counter()
        for j in picks[:20]:
            x.spike_data.isel(trial_id=int(j)).values
        xr_trial_ms = (time.perf_counter() - t0) / 20 * 1e3
    path.unlink()
    return {
        "codec": codec,
        "chunk_kib": chunk_kib,
        "trials_per_chunk": k,
        "units": n_units,
        "size_mib": size / 2**20,
        "raw_mib": 2 * counts.nbytes / 2**20,
        "write_s": write_s,
        "read_one_trial_h5py_ms": one_trial_ms,
        "read_one_trial_xarray_ms": xr_trial_ms,
        "read_all_spike_data_ms": all_ms,
    }


def measure_float(codec: str, folder: Path, n_trials: int = 300, n_bins: int = 100) -> dict:
    """A behaviour-like (trial, time) float32 variable: a smooth signal plus sensor noise."""
    rng = np.random.default_rng(2)
    t = np.arange(n_trials * n_bins) * 0.02
    values = (np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)
    ds = xr.Dataset({"v": (("trial_id", "time"), values.reshape(n_trials, n_bins))})
    k = trials_per_chunk(64, n_bins, 4, n_trials)
    path = folder / f"float-{codec}.h5"
    ds.to_netcdf(path, engine="h5netcdf", encoding={"v": {**CODECS[codec], "chunksizes": (k, n_bins)}})
    size = path.stat().st_size
    path.unlink()
    return {"codec": codec, "variable": "float32 behaviour", "size_mib": size / 2**20,
            "raw_mib": values.nbytes / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, nargs="+", default=[50, 400])
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--bins", type=int, default=100)
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_units in args.units:
            counts = make_tensor(args.trials, args.bins, n_units)
            logger.info("units=%d  nonzero fraction %.3f", n_units, np.count_nonzero(counts) / counts.size)
            for codec in CODECS:
                for chunk_kib in CHUNK_KIB:
                    r = measure(counts, codec, chunk_kib, Path(tmp))
                    rows.append(r)
                    logger.info(
                        "%-14s chunk=%-5s (%3d tr) size %6.2f/%6.2f MiB  write %5.2f s  "
                        "1 trial %5.2f ms (xr %5.2f)  all %6.1f ms",
                        codec, chunk_kib or "1tr", r["trials_per_chunk"], r["size_mib"],
                        r["raw_mib"], r["write_s"], r["read_one_trial_h5py_ms"],
                        r["read_one_trial_xarray_ms"], r["read_all_spike_data_ms"],
                    )
        for codec in CODECS:
            r = measure_float(codec, Path(tmp), args.trials, args.bins)
            rows.append(r)
            logger.info("float32 behaviour  %-14s size %6.3f/%6.3f MiB", codec, r["size_mib"], r["raw_mib"])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
