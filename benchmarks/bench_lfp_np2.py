"""Benchmark LFP from a single-band probe: ``run_lfp`` on a 30 kHz NP2.0 AP file against one
sequential read of the same file.

Usage: ``.venv/bin/python benchmarks/bench_lfp_np2.py [--duration-s 600] [--dir DIR]
[--out PATH]``

Writes an NP2.0 AP ``.bin`` (385 int16 channels at 30 kHz: noise, a 7 Hz common signal, SY bit;
13.9 GB for 10 min) with the simulator's NP2.0 meta, evicts it from the page cache, times one
sequential read, then ``run_lfp`` (CMR on, default filter) in a child process with its peak RSS
(the helpers of ``bench_lfp.py``). Results go to ``benchmarks/results/lfp_np2.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import evict
from bench_lfp import run_child, sequential_read
from pixbin.fileio import versions, write_json

log = logging.getLogger("bench_lfp_np2")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "lfp_np2.json"
RATE_HZ = 30000.0
N_SAVED = 385


def write_ap_file(folder: Path, duration_s: float, seed: int = 0) -> tuple[Path, Path]:
    """An NP2.0 AP .bin/.meta pair of ``duration_s`` seconds, written in 1 s chunks."""
    from pixbin.simulate import SimulationParams
    from pixbin.simulate_probe import PROBE_MODELS, meta_text

    n = int(duration_s * RATE_HZ)
    meta_path = folder / "BENCH_g0_t0.imec0.ap.meta"
    meta_path.write_text(meta_text(SimulationParams(session_id="240101_BENCH"), "ap", n, RATE_HZ,
                                   "imec0", PROBE_MODELS["NP2.0"]))
    bin_path = meta_path.with_suffix(".bin")
    rng = np.random.default_rng(seed)
    chunk = int(RATE_HZ)
    weights = np.linspace(0.5, 1.0, 384).astype(np.float32)
    with open(bin_path, "wb") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            out = np.empty((m, N_SAVED), np.int16)
            t = (start + np.arange(m)) / RATE_HZ
            slow = (400 * np.sin(2 * np.pi * 7.0 * t)).astype(np.float32)
            out[:, :384] = rng.integers(-40, 41, size=(m, 384), dtype=np.int16)
            out[:, :384] += (slow[:, None] * weights[None]).astype(np.int16)
            out[:, 384] = 64 * ((t % 1.0) < 0.5)
            f.write(out.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return bin_path, meta_path


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=600.0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the test file")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = Path(tempfile.mkdtemp(prefix="pixbin-bench-lfp-np2-", dir=args.dir))
    need = args.duration_s * RATE_HZ * N_SAVED * 2 * 1.1
    if shutil.disk_usage(folder).free < need + (2 << 30):
        shutil.rmtree(folder)
        raise SystemExit(f"{folder}: not enough free disk for {need / 1e9:.1f} GB")
    try:
        warm = folder / "warm"
        warm.mkdir()
        run_child(*write_ap_file(warm, 2.0), warm / "out")  # numba compile/cache, not measured
        bin_path, meta_path = write_ap_file(folder, args.duration_s)
        size = bin_path.stat().st_size
        load_start = os.getloadavg()[0]
        evict(bin_path)
        read_s = sequential_read(bin_path)
        evict(bin_path)
        report, wall, peak, cpu = run_child(bin_path, meta_path, folder / "out")
        peak = float(report.get("peak_rss_bytes") or peak)
        log.info("read %.1f s; run_lfp %.1f s, %.1f CPU s, peak RSS %.0f MB", read_s,
                 report["seconds"], cpu, peak / 1e6)
        result = {
            "benchmark": "pixbin.lfp.run_lfp on an NP2.0 AP file (385 ch int16, 30 kHz) -> 1 kHz",
            "duration_s": args.duration_s, "input_bytes": size,
            "n_output_samples": report["n_samples"], "n_channels": report["n_channels"],
            "sequential_read_s": read_s, "lfp_s": report["seconds"], "lfp_cpu_s": cpu,
            "speed_vs_read": read_s / report["seconds"], "peak_rss_MB": peak / 1e6,
            "page_cache": "evicted before the read and before run_lfp (posix_fadvise DONTNEED)",
            "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": load_start,
                        "load_avg_1m_at_end": os.getloadavg()[0], "platform": platform.platform()},
            "versions": versions(),
        }
        write_json(args.out, result)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
